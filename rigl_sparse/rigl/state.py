"""The checkpoint state of ``RigLScheduler``: what ``state_dict`` saves and what ``load_state_dict`` accepts."""

from __future__ import annotations

import torch

from rigl_sparse.rigl.criteria import DROP, GROW, DropCriterion, GrowCriterion, criterion
from rigl_sparse.rigl.schedule import (check_alpha, check_delta_t, check_momentum, check_state, check_stats,
                                       check_step_count, check_t_end)

STATS = {"updates": 0, "blocks_moved": 0, "skipped_nonfinite": 0, "skipped_no_gradient": 0, "skipped_zero_gradient": 0,
         "skipped_overflow": 0}
OPTIONAL = {"momentum", "gradient_average"}  # absent from checkpoints of older versions


def scheduler_state(scheduler) -> dict:
    return {
        "step_count": scheduler.step_count, "delta_t": scheduler.delta_t, "t_end": scheduler.t_end,
        "alpha": scheduler.alpha, "grow": scheduler.grow_criterion.name, "drop": scheduler.drop_criterion.name,
        "generator": scheduler.generator.get_state(), "stats": dict(scheduler.stats), "momentum": scheduler.momentum,
        "gradient_average": {name: t.clone() for name, t in scheduler.gradient_average.items()},
    }


def load_scheduler_state(scheduler, state: dict) -> None:
    """Check every field of ``state`` against its type, its range and ``scheduler``'s model, then make it
    ``scheduler``'s; a refused state (``ValueError`` naming the field) changes nothing."""
    check_state("RigLScheduler", state, {
        "step_count": check_step_count, "delta_t": check_delta_t, "t_end": lambda v: check_t_end(v, unset=True),
        "alpha": check_alpha,
        "grow": lambda v: grow_criterion(scheduler, saved("grow", scheduler.grow_criterion, v, GROW, GrowCriterion)),
        "drop": lambda v: saved("drop", scheduler.drop_criterion, v, DROP, DropCriterion),
        "generator": _check_generator, "stats": lambda v: check_stats(v, STATS), "momentum": check_momentum,
        "gradient_average": lambda v: _check_average(scheduler, v)}, optional=OPTIONAL)
    weights = dict(scheduler.masked)
    average = {name: t.to(weights[name].weight.device).clone() for name, t in state.get("gradient_average", {}).items()}
    scheduler.step_count = state["step_count"]
    scheduler.delta_t, scheduler.t_end, scheduler.alpha = state["delta_t"], state["t_end"], float(state["alpha"])
    scheduler.grow_criterion = saved("grow", scheduler.grow_criterion, state["grow"], GROW,
                                      GrowCriterion)
    scheduler.drop_criterion = saved("drop", scheduler.drop_criterion, state["drop"], DROP,
                                      DropCriterion)
    scheduler.generator.set_state(state["generator"].cpu())
    scheduler.stats = {**STATS, **state["stats"]}  # counters added since the checkpoint start at 0
    scheduler.momentum = float(state.get("momentum", scheduler.momentum))
    scheduler.gradient_average = average


def grow_criterion(scheduler, grow) -> GrowCriterion:
    """``grow`` (a name or a ``GrowCriterion``) as the criterion of ``scheduler``, whose layers must provide
    its statistic."""
    grow = criterion("grow", grow, GROW, GrowCriterion)
    if grow.statistic == "gradient_average" and scheduler.layers:
        raise ValueError(f"grow={grow.name!r} ranks a moving average of the dense gradient (SNFS), which needs the "
                         "dense gradient of every layer at every step, which compressed layers never form; use "
                         "masked layers (rs.apply_masks)")
    return grow


def drop_criterion(drop) -> DropCriterion:
    return criterion("drop", drop, DROP, DropCriterion)


def saved(kind: str, current, name, builtins: dict, base: type):
    """The ``kind`` criterion a checkpoint names: the scheduler's own when the names agree, else a built-in."""
    if isinstance(name, str) and name == current.name:
        return current
    if isinstance(name, str) and name not in builtins:
        raise ValueError(f"{kind}: the checkpoint's criterion {name!r} is not built in: pass an instance of it as "
                         f"RigLScheduler({kind}=...) (built in: {tuple(builtins)})")
    return criterion(kind, name, builtins, base)


def _check_generator(state) -> None:
    """A ``torch.Generator.get_state()``: a uint8 tensor (on any device: trainers move checkpoints to theirs)."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        got = f"{state.dtype} on {state.device}" if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"generator must be a uint8 tensor (torch.Generator.get_state()), got {got}")
    try:
        torch.Generator().set_state(state.cpu())  # on a scratch generator: torch checks the size and contents
    except RuntimeError as err:
        raise ValueError(f"generator is not a torch.Generator state: {err}") from None


def _check_average(scheduler, average) -> None:
    """``gradient_average``: one floating tensor per masked layer it names, shaped like the layer's weight."""
    if not isinstance(average, dict):
        raise ValueError(f"gradient_average must be a dict of layer name -> tensor, got {type(average).__name__}")
    weights = dict(scheduler.masked)
    for name, t in average.items():
        if name not in weights:
            raise ValueError(f"gradient_average names layer {name!r}, not a masked layer of this model "
                             f"({sorted(weights)})")
        shape = tuple(weights[name].weight.shape)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"gradient_average[{name!r}] must be a floating tensor of shape {shape}, got {got}")
