"""``rigl_sparse::grow_tap`` and ``rigl_sparse::record_grow_scores``: RigL's grow scores inside a
compiled graph.

Eager layers record their grow candidates with an ``autograd.Function`` that writes to the
layer's recorder.  A compiled graph cannot write Python state, so under ``torch.compile`` a layer routes
its output through ``grow_tap``: the identity in the forward, whose backward passes ``dY`` on
and calls ``record_grow_scores``, an op that writes the top candidates of ``dY.T @ X`` (the
streaming ``block_scores``) into buffers the layer's recorder owns.  The buffers hold ``nnzb`` candidates,
a size that does not change with the drop count, so the graph never recompiles across topology
updates; the scheduler reads the first ``k``.  Several backward passes before the scheduler
reads the buffers sum their scores block by block and keep the best ``nnzb``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rigl_sparse import backends
from rigl_sparse.ops.block_scores import block_scores_op


def sum_by_block(scores: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Candidates of several backward passes merged: ``(summed scores, blocks)``, one entry per block
    index (ascending), the ``-1`` padding of short lists dropped."""
    valid = index >= 0
    blocks, where = torch.unique(index[valid], return_inverse=True)
    summed = torch.zeros(blocks.numel(), dtype=scores.dtype, device=scores.device)
    return summed.index_add_(0, where, scores[valid]), blocks


@torch.library.custom_op("rigl_sparse::record_grow_scores", mutates_args=("scores", "index", "passes"))
def record_grow_scores(dy: Tensor, x: Tensor, block_row: Tensor, block_col: Tensor, block_size: int,
                       scores: Tensor, index: Tensor, passes: Tensor) -> None:
    """Write the best ``scores.numel()`` inactive blocks of ``dy.T @ x`` into ``scores``/``index``
    (merged by summed score with what earlier passes wrote, when ``passes > 0``); ``passes += 1``."""
    merge_candidates(scores, index, passes,
                     *block_scores_op(dy.to(x.dtype), x, block_row, block_col, block_size, scores.numel()))


def merge_candidates(scores: Tensor, index: Tensor, passes: Tensor, new_scores: Tensor, new_index: Tensor) -> None:
    """Write one pass's candidates (best first, ``scores.numel()`` of them at most) into the buffers
    ``scores``/``index``: as they are while ``passes`` is 0, else merged by summed score with what the
    earlier passes wrote, the best ``scores.numel()`` kept; ``passes += 1``."""
    k = scores.numel()
    if int(passes) > 0:
        summed, blocks = sum_by_block(torch.cat([scores, new_scores]), torch.cat([index, new_index]))
        best = torch.sort(summed, descending=True, stable=True).indices[:k]  # blocks ascend: ties to the lower
        new_scores = torch.full_like(scores, -float("inf"))
        new_index = torch.full_like(index, -1)
        new_scores[:best.numel()] = summed[best]
        new_index[:best.numel()] = blocks[best]
    n = min(k, new_scores.numel())  # a pass may hand fewer than k candidates
    scores[:n].copy_(new_scores[:n])
    index[:n].copy_(new_index[:n])
    scores[n:].fill_(-float("inf"))
    index[n:].fill_(-1)
    passes.add_(1)


@record_grow_scores.register_fake
def _(dy, x, block_row, block_col, block_size, scores, index, passes):
    return None


@torch.library.custom_op("rigl_sparse::grow_tap", mutates_args=())
def grow_tap(y: Tensor, x: Tensor, block_row: Tensor, block_col: Tensor, block_size: int, scores: Tensor,
             index: Tensor, passes: Tensor) -> Tensor:
    """The identity on ``y`` (a copy); its backward records the grow scores (``record_grow_scores``)."""
    return y.clone()


@grow_tap.register_fake
def _(y, x, block_row, block_col, block_size, scores, index, passes):
    return torch.empty_like(y)


def _setup(ctx, inputs, output):
    _, x, block_row, block_col, block_size, scores, index, passes = inputs
    ctx.save_for_backward(x, block_row, block_col, scores, index, passes)
    ctx.block_size = block_size
    backends.remember_forced(ctx)


def _backward(ctx, grad):
    x, block_row, block_col, scores, index, passes = ctx.saved_tensors
    with backends.forced_again(ctx):
        torch.ops.rigl_sparse.record_grow_scores(grad, x, block_row, block_col, ctx.block_size, scores, index,
                                                 passes)
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd("rigl_sparse::grow_tap", _backward, setup_context=_setup)

__all__ = ["grow_tap", "record_grow_scores", "merge_candidates", "sum_by_block"]
