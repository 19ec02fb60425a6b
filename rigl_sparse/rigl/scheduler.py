"""``RigLScheduler``: drop and grow blocks every ``delta_t`` steps (RigL, SET, SNFS, static).

Steps are counted from 0: the ``t``-th call of ``step()`` (after the ``t``-th backward pass) is an update step
when ``t > 0``, ``t % delta_t == 0`` and ``t <= t_end``.  On an update step each sparse layer with ``n``
active blocks:

1. drops the ``k = floor(drop_fraction(t) * n)`` active blocks of smallest Frobenius norm (``drop="magnitude"``);
2. grows ``k`` blocks among those not kept (inactive, or just dropped): the largest dense-gradient norms
   (``grow="gradient"``, RigL), uniformly at random (``grow="random"``, SET), or the largest norms of an
   exponential moving average of the dense gradient (``grow="momentum"``, SNFS without redistribution, as in
   the official code; masked layers only);
   both criteria are objects (``criteria.py``): a new one is a subclass passed as ``drop=`` or ``grow=``;
3. writes the grown blocks into the freed slots with value 0 and zero optimizer state; a dropped block that is
   grown again keeps its slot, value and optimizer state.

``step()`` returns False on an update step: as in the official code, the optimizer does not step then.  Ties
(equal norms or scores) go to the lower row-major block index.

The gradient criterion comes from the layers: before the backward of an update step the scheduler asks every
layer for its top-``k`` inactive blocks (``SparseModule.request_grow_scores``), computed in its backward by the
streaming ``block_scores`` op.  The active blocks' scores are the norms of ``values.grad``, so "top-k inactive
∪ dropped" holds every block that can win, and no dense gradient is ever stored.  Compressed layers
(``SparseModule``) and masked dense layers (``apply_masks``, scored by the block norms of ``weight.grad``) go
through one update path (``targets.py``), with the same decisions for the same topology, weights and gradients.
``last_update`` says what the last update did to each layer (``history.update_record``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import warnings
import weakref

import torch

from rigl_sparse.rigl.distributed import (check_same_topology, gradients_finite, is_dtensor, scheduling_group,
                                          take_grow_scores)
from rigl_sparse.rigl.history import update_record
from rigl_sparse.rigl.masked import mask_gradients, register_mask_hook
from rigl_sparse.rigl.schedule import (check_alpha, check_choice, check_delta_t, check_loss_scale, check_momentum,
                                       check_scaler, check_t_end, drop_fraction)
from rigl_sparse.rigl.criteria import DropCriterion, GrowCriterion
from rigl_sparse.rigl.state import STATS, drop_criterion, grow_criterion, load_scheduler_state, scheduler_state
from rigl_sparse.rigl.targets import (CompressedTarget, accumulate_average, check_optimizer_holds, find_targets,
                                      not_kept, smallest, uncompiled)

GROW_SCORES = ("backward", "exact")


@contextlib.contextmanager
def interrupts_deferred():
    """SIGINT (Ctrl-C) that arrives inside the block is delivered when it ends, so the block runs whole (on
    the main thread; elsewhere signals cannot arrive anyway)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # elsewhere no signal arrives; a handler installed from C could not be put back
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there before: KeyboardInterrupt


class RigLScheduler:
    """Dynamic sparse training driver.

    Args:
        model: module whose ``SparseModule`` layers are trained sparse.
        optimizer: the ``torch.optim`` optimizer that holds every sparse layer's ``values``.
        delta_t: steps between topology updates (> 0).
        t_end: last step at which the topology may change (> 0; the paper uses 3/4 of training), or None
            until it is set (``rs.RigLOptimizer``'s integrations set 3/4 of the trainer's steps); ``step()``
            refuses to run without it.
        alpha: initial drop fraction, annealed to 0 at ``t_end`` by a cosine.
        grow: ``"gradient"`` (RigL), ``"random"`` (SET), ``"momentum"`` (SNFS; needs a dense
            gradient every step, so masked layers only), ``"none"`` (static topology), or a
            ``rs.GrowCriterion`` of your own (``rigl_sparse.rigl.criteria``).
        drop: ``"magnitude"``, or a ``rs.DropCriterion`` of your own.
        seed: seeds the generator of random growth.
        momentum: decay of the gradient moving average of ``grow="momentum"`` (0.9 as in the official code).
        grow_scores: how compressed layers score the inactive blocks of an update step.
            ``"backward"``: each backward pass computes its top-``k`` candidates with the streaming
            ``block_scores`` (extra memory O(k + blocks)); with gradient accumulation the passes' scores
            are summed block by block, an upper bound of the accumulated gradient's norm (said once in a
            warning: the just-dropped blocks are ranked by their accumulated gradient's norm).
            ``"exact"``: the backward passes of an update step keep each sparse layer's ``dY`` and
            ``X`` (activation-sized) and ``step()`` scores the accumulated gradient exactly.
            Default: ``"exact"`` under DDP or with a ``process_group``, else ``"backward"``.
        process_group: ranks whose gradients are averaged (data parallelism): update steps score
            the rank-averaged gradient, one band of block rows at a time (``all_reduce``), so all
            ranks make the same decisions.  Default: the process group of a
            ``DistributedDataParallel`` model (or of the mesh FSDP2 shards the values over); else,
            when ``torch.distributed`` runs several ranks, the default group (logged); else None.
            Every rank must call ``step()``.
        check_topology: with a process group, check after every update that all its ranks hold the same
            topology (one all-reduce of a checksum per layer); a mismatch raises, naming the layer.

    Masked layers need neither: their ``weight.grad`` already is the accumulated (and, under
    DDP, averaged) dense gradient.  Use: ``loss.backward()``, ``if sched.step(): optimizer.step()``,
    ``optimizer.zero_grad()``; or let ``rs.RigLOptimizer(optimizer, sched)`` do it in its ``step()``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, delta_t: int = 100,
                 t_end: int | None, alpha: float = 0.3, grow: str | GrowCriterion = "gradient",
                 drop: str | DropCriterion = "magnitude", seed: int = 0,
                 momentum: float = 0.9, grow_scores: str | None = None, process_group=None,
                 check_topology: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        check_delta_t(delta_t)
        check_t_end(t_end, unset=True)
        check_alpha(alpha)
        drop = drop_criterion(drop)
        check_momentum(momentum)
        model = uncompiled(model)  # a torch.compile'd model: its module, for names and the DDP check
        process_group = scheduling_group(model) if process_group is None else process_group
        grow_scores = ("exact" if process_group is not None else "backward") if grow_scores is None else grow_scores
        check_choice("grow_scores", grow_scores, GROW_SCORES)
        if process_group is not None and grow_scores != "exact":
            raise ValueError("a process_group needs grow_scores='exact' (the ranks' gradients are averaged before "
                             "scoring)")
        self.grow_scores, self.process_group, self.check_topology = grow_scores, process_group, bool(check_topology)
        self.targets = find_targets(model)
        self.layers = [(t.name, t.layer) for t in self.targets if isinstance(t, CompressedTarget)]
        self.masked = [(t.name, t.layer) for t in self.targets if not isinstance(t, CompressedTarget)]
        if not self.targets:
            raise ValueError("model has no sparse layer: build it with rs.SparseLinear, convert it with "
                             "rs.sparsify, or mask it with rs.apply_masks")
        sharded = [name for name, m in self.masked if is_dtensor(m.weight)]
        if sharded:
            raise NotImplementedError(f"masked layers {sharded} have sharded (DTensor) weights; masked mode is a "
                                      "single-device reference: shard compressed layers (rs.sparsify) instead")
        grow = grow_criterion(self, grow)
        check_optimizer_holds(optimizer, {t.name: t.parameter for t in self.targets})
        self.optimizer, self.step_count, self.stats = optimizer, 0, dict(STATS)
        self.grow_criterion, self.drop_criterion = grow, drop
        self.delta_t, self.t_end, self.alpha, self.momentum = delta_t, t_end, float(alpha), float(momentum)
        self.gradient_average: dict[str, torch.Tensor] = {}  # statistic "gradient_average": layer name -> average
        self.generator = torch.Generator().manual_seed(seed)
        self._mask_hook = register_mask_hook(optimizer, self.masked) if self.masked else None
        self._score_scale, self._grown_scores = 1.0, {}
        self.last_update: dict[str, dict] = {}  # layer name -> what the last update did (history.update_record)
        self._seen_grads, self._said_no_backward = None, False  # _check_new_gradients
        self._arm()

    def is_update_step(self, t: int) -> bool:
        """Whether step ``t`` (0-based) changes the topology."""
        return self.grow_criterion.moves and 0 < t <= (self.t_end or 0) and t % self.delta_t == 0

    def drop_count(self, t: int, n_active: int) -> int:
        """``k`` for a layer with ``n_active`` blocks at step ``t``."""
        if not self.is_update_step(t):
            return 0
        return math.floor(drop_fraction(t, alpha=self.alpha, t_end=self.t_end) * n_active)

    def _arm(self) -> None:
        """Ask the layers for grow scores in the coming backward when it belongs to an update step."""
        for _, layer in self.layers:
            gradient = self.grow_criterion.statistic == "gradient"
            k = self.drop_count(self.step_count, layer.layout.nnzb) if gradient else 0
            layer.request_grow_scores(k if k > 0 else None, exact=self.grow_scores == "exact")

    # ---------------------------------------------------------------- stepping
    def step(self, scaler: torch.amp.GradScaler | None = None, *, loss_scale: float = 1.0) -> bool:
        """Advance one training step; returns False when the topology changed (skip ``optimizer.step()``).

        With a ``torch.amp.GradScaler``, call it after ``scaler.scale(loss).backward()`` and before
        ``scaler.step(optimizer)``, then ``scaler.update()``: it unscales the gradients (``scaler.unscale_``;
        do not call that yourself before it) and, if they hold Inf/NaN, calls ``skip_step()`` and returns
        True (``scaler.step`` then skips the optimizer and ``scaler.update()`` lowers the scale).
        ``loss_scale``: the factor this step's loss was multiplied by when someone else (``rs.RigLOptimizer``
        inside ``scaler.step``) unscaled the gradients: the grow scores come from the scaled ``dY``.
        """
        if self.t_end is None:
            raise RuntimeError("t_end is not set: pass t_end= to RigLScheduler (3/4 of the training steps in the "
                               "paper), or let a trainer integration of rs.RigLOptimizer set it")
        self._score_scale = 1.0 / check_loss_scale(loss_scale)
        check_scaler(scaler)
        if scaler is not None:
            if scaler.is_enabled():
                scaler.unscale_(self.optimizer)
                grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
                if not gradients_finite(grads):
                    return self.skip_step()
                self._score_scale = 1.0 / scaler.get_scale()  # grow scores come from the scaled dY
        self._check_new_gradients()
        t = self.step_count
        if t == 0 and self.grow_criterion.moves and self.t_end < self.delta_t:
            warnings.warn(f"RigLScheduler: t_end={self.t_end} comes before the first update step (delta_t="
                          f"{self.delta_t}), so the topology will never change: lower delta_t or train longer",
                          UserWarning, stacklevel=2)
        updated = self.is_update_step(t)
        with torch.no_grad():
            if self.grow_criterion.statistic == "gradient_average":
                accumulate_average(self.masked, self.gradient_average, self.momentum)
            if updated:  # every layer decides before any moves: an error leaves the model as it was
                decisions = [(target, self._decide(target, t)) for target in self.targets]
                for target, decision in decisions:
                    if decision is not None:
                        target.check_optimizer_state(self.optimizer)
                with interrupts_deferred():  # Ctrl-C waits for the whole update: every layer moves, or none
                    self._move_all(decisions, t)
                    self.stats["updates"] += 1
                    mask_gradients(self.masked)
                    self.step_count = t + 1
                    self._arm()
                    self._remember_gradients()
                if self.process_group is not None and self.check_topology:
                    check_same_topology(self.targets, self.process_group, t)
                return False
            mask_gradients(self.masked)
        self.step_count = t + 1
        self._arm()
        self._remember_gradients()
        return True

    def _move_all(self, decisions, t: int) -> None:
        """Every layer's move; an error in one puts back the layers moved before it (and the counters), so the
        update happens whole or not at all."""
        stats, last_update, undos = dict(self.stats), self.last_update, []
        self.last_update = {}
        try:
            for target, decision in decisions:
                if decision is not None:
                    undos.append(target.undo_of_move(*decision, self.optimizer))
                moved = 0 if decision is None else target.move(*decision, self.optimizer)
                self.stats["blocks_moved"] += moved
                target.release()
                self.last_update[target.name] = update_record(target, decision, t, moved,
                                                              self._grown_scores.pop(target.name, None))
        except BaseException:
            for undo in reversed(undos):
                if undo is not None:
                    undo()
            self.stats.update(stats)
            self.last_update = last_update
            raise

    def _check_new_gradients(self) -> None:
        """Say once if ``step()`` runs with no gradient at all, or with the very gradients of its last call
        (no backward pass in between): each call advances the schedule one step, so a loop that calls it twice
        per backward runs the schedule twice as fast."""
        grads = [target.parameter.grad for target in self.targets]
        same = self._seen_grads is not None and all(
            g is not None and seen is not None and seen[0]() is g and seen[1] == g._version
            for g, seen in zip(grads, self._seen_grads))
        if (same or all(g is None for g in grads)) and not self._said_no_backward:
            self._said_no_backward = True
            warnings.warn("RigLScheduler.step() was called without a backward pass since its last call (" +
                          ("the same gradients" if same else "no gradients") + "): each call advances the schedule "
                          "one step, so call it once per optimizer step, after loss.backward()", UserWarning,
                          stacklevel=3)

    def _remember_gradients(self) -> None:
        self._seen_grads = [None if t.parameter.grad is None else
                            (weakref.ref(t.parameter.grad), t.parameter.grad._version) for t in self.targets]

    def undo_step(self) -> None:
        """Take back the last ``step()``, an ordinary one, whose optimizer step then failed: retried, it counts
        once.  An update step cannot be taken back (its topology has moved)."""
        t = self.step_count - 1
        if t < 0 or self.is_update_step(t):
            raise RuntimeError(f"step {t} cannot be undone: " + ("no step was taken" if t < 0 else
                                                                 "it updated the topology"))
        self.step_count = t
        self._seen_grads = None  # the retry comes with these gradients again
        self._arm()

    def skip_step(self) -> bool:
        """The gradients overflowed: drop this step's grow scores, retry it at the same ``t`` (counted in
        ``stats["skipped_overflow"]``); returns True."""
        self.stats["skipped_overflow"] += 1
        self._arm()
        return True

    def _decide(self, target, t: int):
        """``(flat, dropped, grown)``: the ``k`` smallest active blocks and the ``k`` grown, or None; moves nothing."""
        compressed = isinstance(target, CompressedTarget)
        flat = target.active()
        k = self.drop_count(t, flat.numel())
        if k == 0:
            if compressed:
                target.layer.take_grow_scores()  # discard what the backward recorded
            return None
        statistic = self.grow_criterion.statistic
        candidates = take_grow_scores(target.layer, self.process_group) if compressed and statistic == "gradient" \
            else None
        dropped = smallest(self.drop_criterion.scores(target.active_blocks(flat)), flat, k)
        grown = self._grow(target, compressed, flat, dropped, k, candidates)
        target.release()  # FSDP2: the gathered copy of the values (move gathers them again)
        return None if grown is None else (flat, dropped, grown)

    def _grow(self, target, compressed, flat, dropped, k, candidates):
        statistic = self.grow_criterion.statistic
        if statistic is None:
            return self._choose(target.name, None, not_kept(target.n_blocks, flat, flat[dropped]), k)
        source = candidates if compressed else (target.layer.weight.grad if statistic == "gradient"
                                                else self.gradient_average.get(target.name))
        pool = target.gradient_pool(flat, dropped, source, self._score_scale)
        if pool is None:
            warnings.warn(f"RigL update at step {self.step_count} skipped for layer {target.name!r}: no gradient was "
                          "recorded for it (call loss.backward() through the layer before scheduler.step())",
                          RuntimeWarning, stacklevel=4)
            self.stats["skipped_no_gradient"] += 1
            return None
        return self._choose(target.name, *pool, k)

    def _choose(self, name, scores, index, k):
        """The grow criterion's ``k`` of the candidates, or None (counted, and said in a warning) when it keeps
        the layer's topology."""
        grown, why = self.grow_criterion.choose(scores, index, k, self.generator)
        if grown is not None and (grown.dim() != 1 or grown.numel() != k or not bool(torch.isin(grown, index).all())
                                  or grown.unique().numel() != k):
            raise RuntimeError(f"grow criterion {self.grow_criterion.name!r} chose {grown.tolist()} for layer "
                               f"{name!r}: it must choose {k} distinct blocks among the candidates")
        self._grown_scores[name] = None if grown is None or scores is None else scores[torch.isin(index, grown)]
        if grown is None and why is not None:
            message = {"skipped_nonfinite": "grow scores hold NaN or Inf", "skipped_zero_gradient":
                       "its gradient is zero (nothing to rank the blocks by), so the topology is kept"}[why]
            warnings.warn(f"RigL update at step {self.step_count} skipped for layer {name!r}: {message}",
                          RuntimeWarning, stacklevel=5)
            self.stats[why] += 1
        return grown

    def state_dict(self) -> dict:
        return scheduler_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_scheduler_state(self, state)
        self._arm()

    def __repr__(self) -> str:
        return (f"RigLScheduler(layers={len(self.targets)}, step={self.step_count}, delta_t={self.delta_t}, "
                f"t_end={self.t_end}, alpha={self.alpha}, grow={self.grow!r}, drop={self.drop!r})")

    @property
    def grow(self) -> str:
        """The grow criterion's name."""
        return self.grow_criterion.name

    @property
    def drop(self) -> str:
        """The drop criterion's name."""
        return self.drop_criterion.name
