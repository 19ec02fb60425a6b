"""Reference ``dds``: ``dX[M, K] = dY[M, out] @ W`` touching active blocks only.

Mathematically the transpose of ``dsd``: each slot reads ``b`` columns of ``dY``
from its block row and adds into its block column.  Fp32 accumulation.
"""

from __future__ import annotations

import math

import torch

from rigl_sparse.ops._common import accumulation_dtype
from rigl_sparse.ops.dsd.reference import blocks_of


def dds(dy, values, block_row, block_col, in_features: int) -> torch.Tensor:
    """dy: [M, out]; values: [nnzb, b, b]; block_row/col: [nnzb] int32 -> [M, in_features]."""
    M = dy.shape[0]
    b = values.shape[1]
    acc = accumulation_dtype(dy.dtype)
    n_cols = math.ceil(in_features / b)
    dy_blocks = blocks_of(dy, b, acc)[:, block_row.long()]  # [M, nnzb, b]
    partial = torch.einsum("msi,sij->msj", dy_blocks, values.to(acc))
    dx = dy_blocks.new_zeros(M, n_cols, b).index_add_(1, block_col.long(), partial)
    return dx.view(M, n_cols * b)[:, :in_features].to(dy.dtype)
