"""``GrowRecorder``: what a sparse layer's backward passes give RigL's grow criterion.

A layer exposes one hook to the grow scoring: its ``grow`` recorder, whose ``tap(y, x)`` the layer's
forward applies to its output.  After ``request(k)`` the recorder's tap is armed, and the coming backward
passes record either the ``k`` best inactive blocks by gradient norm (the streaming ``block_scores`` of
``dY`` and ``X``, summed block by block over several passes) or, in exact mode, the ``(dY, X)`` pairs
themselves, which whoever scores them (the layer locally, or the scheduler over a process group) turns
into the accumulated gradient one band at a time.  Nothing here communicates between processes.

Under ``torch.compile`` a graph cannot write Python state: the streaming tap is the ``rigl_sparse::grow_tap``
op writing into fixed-size buffers the recorder owns (made outside any graph), and the exact tap is
``rigl_sparse::keep_tap``, whose backward's ``keep_grow_inputs`` copies the pair into this module's store
under the recorder's token (a number of its own, never an object's id, dropped with the recorder).
"""

from __future__ import annotations

import itertools
import weakref

import torch
from torch import Tensor

from rigl_sparse import backends, ops
from rigl_sparse.ops.grow_tap import sum_by_block

# ---------------------------------------------------------------- exact mode in compiled graphs
_KEPT: dict[int, list[tuple[Tensor, Tensor]]] = {}
_TOKENS = itertools.count(1)


def kept_pairs() -> int:
    """How many ``(dY, X)`` pairs compiled graphs kept that no recorder has taken (for tests)."""
    return sum(len(pairs) for pairs in _KEPT.values())


@torch.library.custom_op("rigl_sparse::keep_grow_inputs", mutates_args=("passes",))
def keep_grow_inputs(dy: Tensor, x: Tensor, owner: int, passes: Tensor) -> None:
    """Append copies of ``(dy, x)`` (a compiled graph may reuse its intermediates' memory) to the pairs
    kept for recorder ``owner``; ``passes += 1``."""
    if owner in _KEPT:  # a recorder that no longer exists keeps nothing
        _KEPT[owner].append((dy.detach().to(x.dtype, copy=True), x.detach().clone()))
    passes.add_(1)


@keep_grow_inputs.register_fake
def _(dy, x, owner, passes):
    return None


@torch.library.custom_op("rigl_sparse::keep_tap", mutates_args=())
def keep_tap(y: Tensor, x: Tensor, owner: int, passes: Tensor) -> Tensor:
    """The identity on ``y`` (a copy); its backward keeps ``dY`` and ``x`` (``keep_grow_inputs``)."""
    return y.clone()


@keep_tap.register_fake
def _(y, x, owner, passes):
    return torch.empty_like(y)


def _setup_keep(ctx, inputs, output):
    _, x, owner, passes = inputs
    ctx.save_for_backward(x, passes)
    ctx.owner = owner


def _backward_keep(ctx, grad):
    x, passes = ctx.saved_tensors
    torch.ops.rigl_sparse.keep_grow_inputs(grad, x, ctx.owner, passes)
    return grad, None, None, None


torch.library.register_autograd("rigl_sparse::keep_tap", _backward_keep, setup_context=_setup_keep)


class GrowRecorder:
    """The grow-score state of one sparse layer between a request and the scheduler's take."""

    def __init__(self) -> None:
        self.k: int | None = None
        self.armed = False
        self.exact = False
        self._scores: tuple[Tensor, Tensor] | None = None
        self._inputs: list[tuple[Tensor, Tensor]] = []
        self._buffers: tuple[Tensor, Tensor, Tensor] | None = None
        self._passes = 0  # eager passes recorded since the request
        self.passes_taken = 0  # backward passes behind the last take_candidates()
        self.token = next(_TOKENS)
        _KEPT[self.token] = []
        weakref.finalize(self, _KEPT.pop, self.token, None)

    def __setstate__(self, state: dict) -> None:
        """A copy (``copy.deepcopy``, unpickling) records under a token of its own."""
        self.__dict__.update(state)
        self.token = next(_TOKENS)
        _KEPT[self.token] = []
        weakref.finalize(self, _KEPT.pop, self.token, None)

    def request(self, k: int | None, exact: bool, nnzb: int, device: torch.device) -> None:
        """Record the coming backward passes for the top ``k`` (None: stop); forgets what was recorded."""
        self.k, self.armed, self.exact = k, k is not None, exact
        self._scores, self._inputs, self._passes, self.passes_taken = None, [], 0, 0
        _KEPT[self.token] = []
        if k is not None:
            self._reset_buffers(nnzb, device)

    # ------------------------------------------------------------ recording
    def record(self, candidates: tuple[Tensor, Tensor]) -> None:
        """Keep one backward pass's candidates; a further pass sums scores block by block."""
        self._passes += 1
        if self._scores is None:
            self._scores = candidates
            return
        self._scores = sum_by_block(torch.cat([self._scores[0], candidates[0]]),
                                    torch.cat([self._scores[1], candidates[1]]))

    def keep(self, dy: Tensor, x: Tensor) -> None:
        """Exact mode: keep one backward pass's ``(dY, X)``."""
        self._inputs.append((dy, x))

    def tap(self, y: Tensor, x: Tensor, layout) -> Tensor:
        """Identity on ``y`` whose backward records from ``dY`` and ``x`` (the layer's ``[M, K]`` input)."""
        if not self.armed or not torch.is_grad_enabled() or not y.requires_grad:
            return y  # reads a bool, not k: a compiled graph must not depend on the drop count
        if torch.compiler.is_compiling():
            scores, index, passes = self._buffers
            if self.exact:
                return keep_tap(y, x, self.token, passes)
            return ops.grow_tap(y, x, layout.block_row, layout.block_col, layout.block_size, scores, index, passes)
        return _GrowScoreTap.apply(y, x, self, layout)

    @property
    def buffers(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(scores [nnzb], index [nnzb], passes [])`` that an op records candidates into (grow_tap, conv2d)."""
        return self._buffers

    # ------------------------------------------------------------ taking
    def take_candidates(self) -> tuple[Tensor, Tensor] | None:
        """Streaming mode: the candidates of the passes since the request (eager and compiled passes merged
        as separate passes), or None; clears them.  ``passes_taken`` says how many passes they sum."""
        scores, self._scores = self._scores, None
        self.passes_taken, self._passes = self._passes, 0
        compiled = self._take_buffers()
        if compiled is None or scores is None:
            return compiled if scores is None else scores
        return sum_by_block(torch.cat([scores[0], compiled[0]]), torch.cat([scores[1], compiled[1]]))

    def take_inputs(self) -> list[tuple[Tensor, Tensor]]:
        """Exact mode: the ``(dY, X)`` pairs of the passes since the request, eager and compiled; clears them."""
        inputs, self._inputs = self._inputs + _KEPT.get(self.token, []), []
        _KEPT[self.token] = []
        return inputs

    def _reset_buffers(self, nnzb: int, device: torch.device) -> None:
        """Empty ``(scores [nnzb], index [nnzb], passes [])``, what compiled graphs record into (made here,
        outside any graph, so that a graph only reads them).  A pass writes over the scores while ``passes``
        is 0, so emptying them is zeroing ``passes``: no device sync."""
        buffers = self._buffers
        if buffers is None or buffers[0].numel() != nnzb or buffers[0].device != device:
            self._buffers = (torch.full((nnzb,), -float("inf"), device=device),
                             torch.full((nnzb,), -1, dtype=torch.int64, device=device),
                             torch.zeros((), dtype=torch.int64, device=device))
        else:
            buffers[2].zero_()

    def _take_buffers(self) -> tuple[Tensor, Tensor] | None:
        """The candidates an op recorded into the buffers since the request (best first; every block any
        pass kept: a compiled graph keeps ``nnzb`` per pass, an eager convolution its ``k``), or None;
        empties them."""
        if self.k is None or self._buffers is None or int(self._buffers[2]) == 0:
            return None
        scores, index, passes = self._buffers
        self.passes_taken += int(passes)
        passes.zero_()
        kept = index >= 0
        return scores[kept].clone(), index[kept].clone()


class _GrowScoreTap(torch.autograd.Function):
    """Passes ``dY`` through unchanged and records the layer's grow candidates (or its ``dY``, ``X``)."""

    @staticmethod
    def forward(ctx, y, x, recorder, layout):
        ctx.save_for_backward(x)
        ctx.recorder, ctx.layout = recorder, layout
        backends.remember_forced(ctx)
        return y.clone()  # not a view: wrappers such as FSDP2 hook the output

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        recorder, layout = ctx.recorder, ctx.layout
        # What this pass found is recorded when the whole backward pass has finished: a pass that fails later
        # (out of memory in another layer, an interrupt) leaves nothing to be mixed into its retry.
        if recorder.k is not None and recorder.exact:
            kept = (grad_y.detach().to(x.dtype), x.detach())
            _when_backward_ends(lambda: recorder.keep(*kept))
        elif recorder.k is not None:
            with torch.no_grad(), backends.forced_again(ctx):
                try:
                    candidates = ops.block_scores(grad_y.detach().to(x.dtype), x.detach(), layout, recorder.k)
                except (MemoryError, RuntimeError) as err:  # torch's allocators raise RuntimeError subclasses
                    if not (isinstance(err, MemoryError) or "memory" in str(err).lower()):
                        raise
                    out, K = layout.shape
                    raise MemoryError(
                        f"the grow scores of a [{out}, {K}] sparse layer (blocks of {layout.block_size}, top "
                        f"{recorder.k} of its inactive blocks, {grad_y.shape[0]} rows) ran out of memory ({err}); "
                        "nothing was recorded: a smaller batch, or RigLScheduler(grow_scores='exact'), needs less"
                    ) from err
            _when_backward_ends(lambda: recorder.record(candidates))
        return grad_y, None, None, None


def _when_backward_ends(callback) -> None:
    """Run ``callback`` once the running backward pass has finished without error (autograd drops the callbacks
    of a pass that fails)."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)
