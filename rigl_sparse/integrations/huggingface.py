"""RigL under ``transformers.Trainer``: pass a ``rs.RigLOptimizer`` as the Trainer's optimizer and add
``RigLCallback``::

    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer = rs.RigLOptimizer(inner, rs.RigLScheduler(model, inner, delta_t=100, t_end=None))
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                      callbacks=[RigLCallback()])

The Trainer calls ``optimizer.step()`` once per optimizer step (after its gradient accumulation), so the
scheduler counts the same steps as ``state.global_step``; its ``save_steps`` checkpoints hold the scheduler's
state in ``optimizer.pt`` and the topology in the model's weights, so ``resume_from_checkpoint`` continues the
same schedule.  The callback sets ``t_end`` to 3/4 of the Trainer's ``max_steps`` when the scheduler has
none, gives the optimizer accelerate's ``GradScaler`` under ``fp16`` (the Trainer unscales before clipping),
and adds the scheduler's counters (``rigl/updates``, ``rigl/blocks_moved``, ...) to the printed logs and
``state.log_history``; for TensorBoard give the ``RigLOptimizer`` a ``writer=``.  Under ``fp16`` an
overflowed step is reported as skipped, so the Trainer's LR schedule waits as RigL's does.
"""

from __future__ import annotations

from transformers import TrainerCallback

from rigl_sparse.integrations.common import T_END_FRACTION, attach


class RigLCallback(TrainerCallback):
    """Connects a ``rs.RigLOptimizer`` given as ``Trainer(optimizers=(optimizer, None))`` to the Trainer.

    Args:
        t_end_fraction: ``t_end`` as a fraction of the Trainer's ``max_steps``, used when the scheduler was
            built with ``t_end=None`` (default 0.75, as in the paper).
    """

    def __init__(self, *, t_end_fraction: float = T_END_FRACTION):
        self.t_end_fraction = t_end_fraction
        self.rigl = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rigl = attach(optimizer, total_steps=state.max_steps, t_end_fraction=self.t_end_fraction)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Adds the counters to the logs and to ``state.log_history`` (the reporting callbacks, which the
        Trainer calls first, do not see them: give ``rs.RigLOptimizer`` a ``writer=`` for TensorBoard)."""
        if self.rigl is None or logs is None:
            return
        counters = {f"rigl/{name}": value for name, value in self.rigl.scheduler.stats.items()}
        logs.update(counters)
        if state.log_history:
            state.log_history[-1].update(counters)
