"""What every trainer integration does: find the ``RigLOptimizer`` inside a trainer's wrapped optimizer, give
it the trainer's ``GradScaler``, and set the scheduler's ``t_end`` from the trainer's number of steps."""

from __future__ import annotations

import torch

from rigl_sparse.rigl import RigLOptimizer, RigLScheduler

T_END_FRACTION = 0.75  # the paper stops changing the topology after 3/4 of training


def find_rigl_optimizer(optimizer) -> RigLOptimizer | None:
    """The ``RigLOptimizer`` that ``optimizer`` is or wraps (``accelerate``'s ``AcceleratedOptimizer`` keeps it
    as ``.optimizer``, Lightning's ``LightningOptimizer`` as ``._optimizer``), or None."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        wrapped = vars(optimizer).get("_optimizer") if hasattr(optimizer, "__dict__") else None
        if wrapped is not None:  # a LightningOptimizer: a subclass of the class it wraps, so unwrap it first
            optimizer = wrapped
            continue
        if isinstance(optimizer, RigLOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def report_overflow_to_accelerate(prepared, rigl: RigLOptimizer) -> None:
    """``accelerate`` decides that ``scaler.step`` skipped a step when the optimizer's ``step`` was not called;
    a ``RigLOptimizer`` handles scaling itself, so its ``step`` is always called.  Makes the prepared
    optimizer's ``step_was_skipped`` (which the Hugging Face Trainer reads before stepping its LR schedule)
    say whether the gradients overflowed."""
    patched = getattr(prepared, "_optimizer_patched_step_method", None)
    if patched is None or getattr(patched, "_rigl_reports_overflow", False):
        return

    def step(*args, **kwargs):
        result = patched(*args, **kwargs)
        prepared._accelerate_step_called = not rigl.last_step_overflowed
        return result

    step._rigl_reports_overflow = True
    prepared._optimizer_patched_step_method = step


def attach(optimizer, *, total_steps: int | None = None, scaler: torch.amp.GradScaler | None = None,
           t_end_fraction: float = T_END_FRACTION) -> RigLOptimizer:
    """Finds the ``RigLOptimizer`` in ``optimizer`` and gives it ``scaler`` (by default the scaler that
    ``optimizer`` carries, as ``accelerate``'s prepared optimizer does); when its ``RigLScheduler`` has no
    ``t_end``, sets ``t_end = int(t_end_fraction * total_steps)``.  Returns the ``RigLOptimizer``."""
    rigl = find_rigl_optimizer(optimizer)
    if rigl is None:
        raise TypeError(f"{type(optimizer).__name__} is not and does not wrap a rs.RigLOptimizer: build the "
                        "trainer's optimizer as rs.RigLOptimizer(torch_optimizer, rs.RigLScheduler(model, "
                        "torch_optimizer, ...))")
    scaler = scaler if scaler is not None else getattr(optimizer, "scaler", None)
    if isinstance(scaler, torch.amp.GradScaler):
        rigl.scaler = scaler
    report_overflow_to_accelerate(optimizer, rigl)
    scheduler = rigl.scheduler
    if isinstance(scheduler, RigLScheduler) and scheduler.t_end is None:
        if total_steps is None or total_steps <= 0:
            raise ValueError(f"the RigLScheduler has no t_end and the trainer's number of steps is {total_steps!r}: "
                             "pass t_end= to RigLScheduler")
        if not 0 < t_end_fraction <= 1:
            raise ValueError(f"t_end_fraction must be in (0, 1], got {t_end_fraction!r}")
        scheduler.t_end = max(1, int(t_end_fraction * total_steps))
    return rigl
