"""Gradual magnitude pruning (Zhu & Gupta, 2017): the dense-to-sparse baseline of the RigL paper.

Training starts dense (``apply_masks(..., start="dense")``) and every
``delta_t`` steps from ``t_start`` to ``t_end`` each masked layer keeps the
blocks of largest Frobenius norm, so that its density follows

    d(t) = d_f + (1 - d_f) * (1 - (t - t_start) / (t_end - t_start)) ** exponent

(``exponent`` 3 as in the paper) and reaches its target ``d_f`` at ``t_end``
(which is always a pruning step).  Pruned blocks never come back.  The masked
mode is needed because the model must exist densely at the start.
"""

from __future__ import annotations

import torch

from rigl_sparse.layout import block_count
from rigl_sparse.rigl.masked import mask_gradients, masked_layers, register_mask_hook, set_active_blocks
from rigl_sparse.rigl.targets import check_optimizer_holds, uncompiled
from rigl_sparse.rigl.schedule import (check_delta_t, check_exponent, check_state, check_stats, check_step_count,
                                       check_t_end, check_t_start)

STATS = {"pruning_steps": 0, "blocks_pruned": 0}


class PruningScheduler:
    """Drive gradual magnitude pruning of the masked layers of ``model``.

    Args:
        model: module whose layers carry block masks (``rs.apply_masks(model, ..., start="dense")``);
            each layer is pruned towards its mask's ``target_density``.
        optimizer: the optimizer that holds the masked weights.
        t_start: first pruning step (>= 0).
        t_end: step at which every layer reaches its target (> t_start).
        delta_t: steps between pruning steps (> 0).
        exponent: of the polynomial schedule (> 0; 3 in the paper).

    Use like ``RigLScheduler``; ``step()`` always returns True (the optimizer
    steps on pruning steps too):

    ```python
    loss.backward()
    if sched.step():
        optimizer.step()
    optimizer.zero_grad()
    ```
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, t_start: int = 0, t_end: int,
                 delta_t: int = 100, exponent: float = 3.0):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        check_t_end(t_end)
        check_t_start(t_start, t_end)
        check_delta_t(delta_t)
        check_exponent(exponent)
        self.masked = masked_layers(uncompiled(model))
        if not self.masked:
            raise ValueError("model has no masked layer: mask it with rs.apply_masks(model, density=..., "
                             "start='dense')")
        check_optimizer_holds(optimizer, {name: m.weight for name, m in self.masked})
        self.optimizer = optimizer
        self.t_start, self.t_end, self.delta_t, self.exponent = t_start, t_end, delta_t, float(exponent)
        self.step_count = 0
        self.stats = dict(STATS)
        self._mask_hook = register_mask_hook(optimizer, self.masked)

    def is_update_step(self, t: int) -> bool:
        """Whether step ``t`` (0-based) prunes."""
        return self.t_start <= t <= self.t_end and ((t - self.t_start) % self.delta_t == 0 or t == self.t_end)

    def density_at(self, t: int, target: float) -> float:
        """Density a layer with final density ``target`` has after step ``t``."""
        if t < self.t_start:
            return 1.0
        progress = min(1.0, (t - self.t_start) / (self.t_end - self.t_start))
        return target + (1.0 - target) * (1.0 - progress) ** self.exponent

    def step(self) -> bool:
        """Advance one step, pruning when it is a pruning step; returns True (step the optimizer)."""
        t = self.step_count
        with torch.no_grad():
            if self.is_update_step(t):
                for _, layer in self.masked:
                    self._prune(layer, t)
                self.stats["pruning_steps"] += 1
            mask_gradients(self.masked)
        self.step_count = t + 1
        return True

    def undo_step(self) -> None:
        """Take back the last ``step()``, one that pruned nothing, whose optimizer step then failed."""
        t = self.step_count - 1
        if t < 0 or self.is_update_step(t):
            raise RuntimeError(f"step {t} cannot be undone: " + ("no step was taken" if t < 0 else "it pruned"))
        self.step_count = t

    def _prune(self, layer: torch.nn.Module, t: int) -> None:
        mask = layer.block_mask
        active = mask.active.flatten()
        keep = block_count(self.density_at(t, float(mask.target_density)), active.numel())
        flat = torch.nonzero(active).flatten()
        if keep >= flat.numel():
            return
        norms = mask.block_norms(layer.weight.detach())[flat]
        kept = flat[torch.sort(norms, descending=True, stable=True).indices[:keep]]
        new_active = torch.zeros_like(active)
        new_active[kept] = True
        self.stats["blocks_pruned"] += flat.numel() - keep
        set_active_blocks(layer, self.optimizer, new_active)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "t_start": self.t_start, "t_end": self.t_end,
                "delta_t": self.delta_t, "exponent": self.exponent, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        """Check every field of ``state`` (a ``state_dict()``) and make it this scheduler's; a refused state
        (``ValueError`` naming the field) changes nothing."""
        t_end = state.get("t_end") if isinstance(state, dict) else None
        check_state("PruningScheduler", state, {
            "step_count": check_step_count, "t_end": check_t_end, "t_start": lambda v: check_t_start(v, t_end),
            "delta_t": check_delta_t, "exponent": check_exponent, "stats": lambda v: check_stats(v, STATS)})
        self.step_count = state["step_count"]
        self.t_start, self.t_end, self.delta_t = state["t_start"], state["t_end"], state["delta_t"]
        self.exponent = float(state["exponent"])
        self.stats = {**STATS, **state["stats"]}

    def __repr__(self) -> str:
        return (f"PruningScheduler(layers={len(self.masked)}, step={self.step_count}, t_start={self.t_start}, "
                f"t_end={self.t_end}, delta_t={self.delta_t}, exponent={self.exponent})")
