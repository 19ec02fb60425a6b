"""RigL under Lightning: return a ``rs.RigLOptimizer`` from ``configure_optimizers`` and add
``RigLCallback`` to the ``Trainer``::

    def configure_optimizers(self):
        inner = torch.optim.AdamW(self.parameters(), lr=1e-3)
        return rs.RigLOptimizer(inner, rs.RigLScheduler(self, inner, delta_t=100, t_end=None))

    trainer = lightning.pytorch.Trainer(..., callbacks=[RigLCallback()])

Lightning calls ``optimizer.step(closure)`` once per optimizer step (after ``accumulate_grad_batches``
backward passes), or ``scaler.step(optimizer)`` under ``precision="16-mixed"``; its checkpoints save
``optimizer.state_dict()``, which holds the scheduler's state, so resuming from one continues the same
schedule.  The callback sets ``t_end`` to 3/4 of ``trainer.estimated_stepping_batches`` when the scheduler
has none, gives the optimizer the precision plugin's ``GradScaler`` and logs the scheduler's counters
(``rigl/updates``, ``rigl/blocks_moved``, ...) through ``pl_module.log_dict`` at Lightning's logging
cadence.  Under ``16-mixed`` the optimizer unscales the gradients itself, and Lightning then refuses
``gradient_clip_val``; ``bf16-mixed`` has no such limit.
"""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import Callback

from rigl_sparse.integrations.common import T_END_FRACTION, attach, find_rigl_optimizer


class RigLCallback(Callback):
    """Connects the ``rs.RigLOptimizer`` that ``configure_optimizers`` returned to the Lightning ``Trainer``.

    Args:
        t_end_fraction: ``t_end`` as a fraction of ``trainer.estimated_stepping_batches``, used when the
            scheduler was built with ``t_end=None`` (default 0.75, as in the paper).
    """

    def __init__(self, *, t_end_fraction: float = T_END_FRACTION):
        self.t_end_fraction = t_end_fraction
        self.rigl = []

    def on_fit_start(self, trainer, pl_module):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        steps = trainer.estimated_stepping_batches
        total = int(steps) if math.isfinite(steps) else None
        self.rigl = [attach(opt, total_steps=total, scaler=scaler, t_end_fraction=self.t_end_fraction)
                     for opt in trainer.optimizers if find_rigl_optimizer(opt) is not None]
        if not self.rigl:
            raise TypeError("RigLCallback found no rs.RigLOptimizer among the trainer's optimizers: return one "
                            "from configure_optimizers")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for i, rigl in enumerate(self.rigl):  # every batch: Lightning's log_every_n_steps sets what is written
            prefix = "rigl/" if len(self.rigl) == 1 else f"rigl{i}/"
            pl_module.log_dict({prefix + name: float(value) for name, value in rigl.scheduler.stats.items()})
