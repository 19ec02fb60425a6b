"""The checkpoint state of ``RigLScheduler``: what ``state_dict`` saves and what ``load_state_dict`` accepts."""

from __future__ import annotations

from rigl_sparse.rigl.schedule import check_alpha, check_t_end

GROW = ("gradient", "random", "momentum", "none")
DROP = ("magnitude",)
STATS = {"updates": 0, "blocks_moved": 0, "skipped_nonfinite": 0, "skipped_no_gradient": 0, "skipped_zero_gradient": 0,
         "skipped_overflow": 0}
EXPECTED = {"step_count", "delta_t", "t_end", "alpha", "grow", "drop", "generator", "stats"}
OPTIONAL = {"momentum", "gradient_average"}


def scheduler_state(scheduler) -> dict:
    return {
        "step_count": scheduler.step_count, "delta_t": scheduler.delta_t, "t_end": scheduler.t_end,
        "alpha": scheduler.alpha, "grow": scheduler.grow, "drop": scheduler.drop,
        "generator": scheduler.generator.get_state(), "stats": dict(scheduler.stats), "momentum": scheduler.momentum,
        "gradient_average": {name: t.clone() for name, t in scheduler.gradient_average.items()},
    }


def load_scheduler_state(scheduler, state: dict) -> None:
    """Check ``state`` and make it ``scheduler``'s."""
    if not isinstance(state, dict) or not EXPECTED <= set(state) <= EXPECTED | OPTIONAL:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state must be a RigLScheduler.state_dict() with keys {sorted(EXPECTED | OPTIONAL)}, "
                         f"got {got}")
    step_count = state["step_count"]
    if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
        raise ValueError(f"state['step_count'] must be an int >= 0, got {step_count!r}")
    check_t_end(state["t_end"])
    check_alpha(state["alpha"])
    if state["grow"] not in GROW or state["drop"] not in DROP:
        raise ValueError(f"state has grow={state['grow']!r}, drop={state['drop']!r}; allowed {GROW}, {DROP}")
    names = {name for name, _ in scheduler.masked}
    average = state.get("gradient_average", {})
    unknown = sorted(set(average) - names)
    if unknown:
        raise ValueError(f"state['gradient_average'] names layers {unknown} that are not masked layers of this "
                         f"model ({sorted(names)})")
    scheduler.step_count = step_count
    scheduler.delta_t, scheduler.t_end, scheduler.alpha = state["delta_t"], state["t_end"], state["alpha"]
    scheduler.grow, scheduler.drop = state["grow"], state["drop"]
    scheduler.generator.set_state(state["generator"])
    scheduler.stats = {**STATS, **state["stats"]}  # counters added since the checkpoint start at 0
    scheduler.momentum = float(state.get("momentum", scheduler.momentum))
    weights = dict(scheduler.masked)
    scheduler.gradient_average = {name: t.to(weights[name].weight.device).clone() for name, t in average.items()}
