"""``RigLOptimizer``: an optimizer whose ``step()`` runs the sparse-training scheduler first.

Trainers (Hugging Face ``Trainer``, Lightning, ``accelerate``) call ``optimizer.step()`` themselves and own
gradient accumulation, mixed precision and checkpoints.  Wrapping the optimizer puts the scheduler where they
already call, so that none of their loops changes:

- ``step(closure=None)`` runs the closure (Lightning's training step and backward), then
  ``scheduler.step()``, then the inner optimizer's step unless the topology changed: exactly the hand-written
  ``if scheduler.step(): optimizer.step()``.
- ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's own objects, so LR schedulers,
  gradient clipping and ``zero_grad`` act on it unchanged.
- ``state_dict()`` is the inner optimizer's with the scheduler's state under ``"rigl_scheduler"``: every
  trainer checkpoints its optimizer, so every checkpoint resumes to the same schedule (the topology itself
  is in the model's state dict).
- Under a ``torch.amp.GradScaler`` it tells the scaler that it handles scaling itself
  (``_step_supports_amp_scaling``): ``scaler.step`` then always calls ``step()``, with the overflow flag and
  the scale, and it drops an overflowed step's grow scores (``scheduler.skip_step()``), unscales the
  gradients when the scaler has not, and scores the grown blocks at the true gradient's scale.  When the
  gradients were unscaled before (``scaler.unscale_`` for clipping) it needs the scaler, to know the scale:
  pass ``scaler=`` (the integrations do).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from rigl_sparse.rigl.history import TopologyHistory, write_scalars
from rigl_sparse.rigl.pruning import PruningScheduler
from rigl_sparse.rigl.schedule import check_scaler
from rigl_sparse.rigl.scheduler import RigLScheduler

STATE_KEY = "rigl_scheduler"


def _inner_attribute(name: str) -> property:
    """The inner optimizer's own ``name``, read and written through the wrapper."""
    return property(lambda self: getattr(self.inner, name), lambda self, value: setattr(self.inner, name, value),
                    doc=f"The inner optimizer's ``{name}``.")


class RigLOptimizer(torch.optim.Optimizer):
    """Wraps ``optimizer`` so that its ``step()`` first runs ``scheduler`` (a ``RigLScheduler`` built on that
    optimizer, or a ``PruningScheduler``) and skips the inner step on update steps.

    Args:
        optimizer: the ``torch.optim.Optimizer`` that ``scheduler`` was built with.
        scheduler: the ``RigLScheduler`` (or ``PruningScheduler``) that drives the sparse layers.
        scaler: the ``torch.amp.GradScaler`` of an fp16 run, needed only when the gradients are unscaled
            before ``scaler.step`` (gradient clipping); the trainer integrations pass it.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``): after every
            topology update, each layer's density, blocks dropped, grown and regrown, their fraction and the
            grow scores of the grown blocks, as ``rigl/<layer>/<quantity>`` at the update's step.
        history: an ``rs.TopologyHistory`` to ``observe`` after every step (block ages, snapshots, pictures).

    Use:

    ```python
    optimizer = rs.RigLOptimizer(torch.optim.AdamW(model.parameters()), scheduler)
    loss.backward()
    optimizer.step()        # or scaler.step(optimizer), or a trainer's own call
    optimizer.zero_grad()
    ```
    """

    _step_supports_amp_scaling = True  # GradScaler.step calls step() with found_inf and grad_scale set

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler, *, scaler: torch.amp.GradScaler | None = None,
                 writer=None, history: TopologyHistory | None = None):
        # Optimizer.__init__ is not called: the groups, the state and the defaults are the inner optimizer's
        if isinstance(optimizer, RigLOptimizer) or not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer (not a RigLOptimizer), got "
                            f"{type(optimizer).__name__}")
        if not isinstance(scheduler, (RigLScheduler, PruningScheduler)):
            raise TypeError(f"scheduler must be a RigLScheduler or PruningScheduler, got {type(scheduler).__name__}")
        if scheduler.optimizer is not optimizer:
            raise ValueError("scheduler was built with another optimizer: build it with this one "
                             "(rs.RigLScheduler(model, optimizer, ...)) and wrap that")
        check_scaler(scaler)
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have add_scalar (a torch.utils.tensorboard.SummaryWriter), got "
                            f"{type(writer).__name__}")
        if writer is not None and not isinstance(scheduler, RigLScheduler):
            raise TypeError("writer= records RigL's topology updates: it needs a RigLScheduler")
        if history is not None and not isinstance(history, TopologyHistory):
            raise TypeError(f"history must be an rs.TopologyHistory or None, got {type(history).__name__}")
        # ``inner``, not ``optimizer``: wrappers such as Lightning's LightningOptimizer subclass this class and
        # define an ``optimizer`` property of their own
        self.inner, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.writer, self.history = writer, history
        self.last_step_overflowed = False
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = OrderedDict(), OrderedDict()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped optimizer."""
        return self.inner

    param_groups = _inner_attribute("param_groups")
    state = _inner_attribute("state")
    defaults = _inner_attribute("defaults")

    def __getstate__(self):
        return self.__dict__.copy()  # not Optimizer's: that keeps only its own three fields

    def __setstate__(self, state):
        self.__dict__.update(state)

    def step(self, closure=None):
        """Runs ``closure`` (if given, with grad enabled), the scheduler, and the inner step unless the topology
        changed or the gradients overflowed; returns the closure's loss."""
        try:
            return self._step(closure)
        except BaseException:
            for name in ("found_inf", "grad_scale"):  # GradScaler deletes them only after a step that returned
                self.__dict__.pop(name, None)
            raise

    def _step(self, closure):
        for hook in list(self._optimizer_step_pre_hooks.values()):
            if hook(self, (closure,), {}) is not None:
                raise NotImplementedError("a step pre-hook of RigLOptimizer cannot replace step()'s arguments")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by GradScaler.step for an optimizer that handles scaling (and deleted after this call)
        found_inf, grad_scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
        self.last_step_overflowed = found_inf is not None and bool(found_inf)
        if self.last_step_overflowed:
            if isinstance(self.scheduler, RigLScheduler):
                self.scheduler.skip_step()
            return loss
        stats = dict(self.scheduler.stats)
        if self._scheduler_step(found_inf is not None, grad_scale):
            try:
                self.inner.step()
            except BaseException:
                try:
                    self.scheduler.undo_step()  # the step was not taken: retried, it counts once
                except RuntimeError:
                    pass  # a pruning step has pruned: it stays counted, and the user's error is what matters
                raise
        changed = self.scheduler.stats != stats  # an update (or pruning) step
        if changed and self.writer is not None:
            write_scalars(self.writer, self.scheduler.last_update)
        if self.history is not None:
            self.history.observe(self.scheduler.step_count - 1, changed=changed)  # the step just taken, 0-based
        for hook in list(self._optimizer_step_post_hooks.values()):
            hook(self, (closure,), {})
        return loss

    def _scheduler_step(self, in_scaler: bool, grad_scale) -> bool:
        """The scheduler's step, after unscaling the gradients that ``scaler.step`` left scaled."""
        if in_scaler and grad_scale is not None:
            inverse = grad_scale.double().reciprocal().float()  # as GradScaler.unscale_ computes it
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad.mul_(inverse.to(p.grad.device))
        if not isinstance(self.scheduler, RigLScheduler):
            return self.scheduler.step()  # pruning ranks weights, not gradients: no scale to know
        if not in_scaler or not self.scheduler.is_update_step(self.scheduler.step_count):
            return self.scheduler.step()  # no grow scores to rank: the scale does not matter
        if grad_scale is None:  # the scaler unscaled the gradients before its step
            if self.scaler is None:
                raise RuntimeError("the gradients were unscaled before scaler.step (scaler.unscale_, e.g. for "
                                   "gradient clipping), so RigLOptimizer cannot know the loss scale its grow "
                                   "scores were computed at: pass the GradScaler "
                                   "(rs.RigLOptimizer(optimizer, scheduler, scaler=scaler))")
            return self.scheduler.step(loss_scale=float(self.scaler.get_scale()))
        return self.scheduler.step(loss_scale=float(grad_scale))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.inner.add_param_group(param_group)

    def _no_hooks(self, *args, **kwargs):
        raise NotImplementedError("RigLOptimizer does not run state-dict hooks: register them on its inner "
                                  "optimizer (RigLOptimizer.optimizer)")

    register_state_dict_pre_hook = register_state_dict_post_hook = _no_hooks
    register_load_state_dict_pre_hook = register_load_state_dict_post_hook = _no_hooks

    def state_dict(self) -> dict:
        """The inner optimizer's state dict, with the scheduler's state under ``"rigl_scheduler"``."""
        return {**self.inner.state_dict(), STATE_KEY: self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads a ``state_dict()`` of a ``RigLOptimizer``: the scheduler's part first (checked), then the inner
        optimizer's; a refused state dict changes nothing."""
        if not isinstance(state_dict, dict) or STATE_KEY not in state_dict:
            raise ValueError(f"state_dict has no {STATE_KEY!r} entry: it was not saved by a RigLOptimizer (an inner "
                             "optimizer's own state dict loads into RigLOptimizer.optimizer, and the scheduler then "
                             "starts from step 0)")
        inner = {k: v for k, v in state_dict.items() if k != STATE_KEY}
        before = self.scheduler.state_dict()
        self.scheduler.load_state_dict(state_dict[STATE_KEY])
        try:
            self.inner.load_state_dict(inner)
        except BaseException:
            self.scheduler.load_state_dict(before)
            raise

    def __repr__(self) -> str:
        return f"RigLOptimizer({self.scheduler!r}, optimizer={type(self.inner).__name__})"
