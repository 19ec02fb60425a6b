"""``rigl_sparse::block_scores`` — RigL's grow criterion, streamed.

Frobenius norm of every ``b x b`` block of the dense gradient ``dY.T @ X``, the
active blocks masked out, the best ``k`` kept.  Not differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rigl_sparse import _checks
from rigl_sparse.ops import _common
from rigl_sparse.ops.block_scores import reference


def _check(dy, x, block_row, block_col, block_size, k):
    _checks.check_gradient_pair(dy, x, block_size)
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    for name, t in (("block_row", block_row), ("block_col", block_col)):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int32 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    _checks.check_same_device(dy=dy, x=x, block_row=block_row, block_col=block_col)


@torch.library.custom_op("rigl_sparse::block_scores", mutates_args=())
def block_scores_op(dy: Tensor, x: Tensor, block_row: Tensor, block_col: Tensor, block_size: int,
                 k: int) -> tuple[Tensor, Tensor]:
    """dy: [M, out]; x: [M, K]; block_row/col: [nnzb] int32 -> (scores [k] float32, index [k] int64).

    ``index`` is the row-major block index ``r * ceil(K/b) + c``; entries past the
    number of inactive blocks hold ``-inf`` / ``-1``.
    """
    _check(dy, x, block_row, block_col, block_size, k)
    args = (dy, x, block_row, block_col, block_size, k)
    return _common.dispatch("block_scores", x.device, args)(*args)


@block_scores_op.register_fake
def _(dy, x, block_row, block_col, block_size, k):
    _check(dy, x, block_row, block_col, block_size, k)
    return x.new_empty(k, dtype=torch.float32), x.new_empty(k, dtype=torch.int64)


def block_scores(dy: Tensor, x: Tensor, layout, k: int) -> tuple[Tensor, Tensor]:
    """The best ``k`` inactive blocks of ``layout`` by the Frobenius norm of ``dY.T @ X`` over each block:
    ``(scores [k] float32, index [k] int64)``, best first, ``index = r * grid_cols + c``; entries past the
    number of inactive blocks hold ``-inf`` / ``-1``.  dy: [M, out]; x: [M, K]."""
    return block_scores_op(dy, x, layout.block_row, layout.block_col, layout.block_size, k)


_common.register_kernels("block_scores", reference.block_scores, dtype_of=lambda dy, x, *_: x.dtype,
                         block_size_of=lambda dy, x, block_row, block_col, block_size, k: block_size)

__all__ = ["block_scores", "block_scores_op"]
