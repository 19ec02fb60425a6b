"""Reference ``dsd``: ``Y[M, out] = X[M, K] @ W.T (+ bias)`` touching active blocks only.

This pure-PyTorch version is the specification every backend is tested against.
It gathers, for every slot, the ``b`` input columns of its block column, multiplies
by the block, and scatters into the block row; memory is ``O(M * nnzb * b)``,
which scales with density.  Accumulation is fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rigl_sparse.ops._common import accumulation_dtype


def blocks_of(t: torch.Tensor, block_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``[M, n] -> [M, ceil(n/b), b]`` in ``dtype``, zero-padded to whole blocks."""
    M, n = t.shape
    n_blocks = math.ceil(n / block_size)
    t = t.to(dtype)
    if n_blocks * block_size != n:
        t = F.pad(t, (0, n_blocks * block_size - n))
    return t.view(M, n_blocks, block_size)


def dsd(x, values, bias, block_row, block_col, out_features: int) -> torch.Tensor:
    """x: [M, K]; values: [nnzb, b, b]; bias: [out] or None; block_row/col: [nnzb] int32 -> [M, out]."""
    M = x.shape[0]
    b = values.shape[1]
    acc = accumulation_dtype(x.dtype)
    n_rows = math.ceil(out_features / b)
    x_blocks = blocks_of(x, b, acc)[:, block_col.long()]  # [M, nnzb, b]
    partial = torch.einsum("msj,sij->msi", x_blocks, values.to(acc))  # [M, nnzb, b]
    y = x_blocks.new_zeros(M, n_rows, b).index_add_(1, block_row.long(), partial)
    y = y.view(M, n_rows * b)[:, :out_features]
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)
