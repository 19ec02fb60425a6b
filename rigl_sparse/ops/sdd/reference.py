"""Reference ``sdd``: ``dvalues[s] = dY[:, rows(s)].T @ X[:, cols(s)]`` for active slots only.

The weight gradient restricted to the active blocks; the dense ``[out, K]``
gradient is never formed.  Padding entries come out zero because the padded
rows of ``dY`` and columns of ``X`` are zero.  Fp32 accumulation.
"""

from __future__ import annotations

import torch

from rigl_sparse.ops._common import accumulation_dtype
from rigl_sparse.ops.dsd.reference import blocks_of


def sdd(dy, x, block_row, block_col, block_size: int) -> torch.Tensor:
    """dy: [M, out]; x: [M, K]; block_row/col: [nnzb] int32 -> dvalues [nnzb, b, b] (x's dtype)."""
    acc = accumulation_dtype(x.dtype)
    dy_blocks = blocks_of(dy, block_size, acc)[:, block_row.long()]  # [M, nnzb, b]
    x_blocks = blocks_of(x, block_size, acc)[:, block_col.long()]  # [M, nnzb, b]
    return torch.einsum("msi,msj->sij", dy_blocks, x_blocks).to(x.dtype)
