"""Triton ``dds``: ``dX = dY @ W`` over the column view (the ``dsd`` kernel, untransposed blocks)."""

from __future__ import annotations

from rigl_sparse.ops.dsd.triton import sparse_matmul


def dds(dy, values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, in_features):
    """dy: [M, out]; values: [nnzb, b, b] -> dx: [M, in_features]."""
    return sparse_matmul(dy, values, None, col_ptr, col_slots, block_row, in_features, transpose=False)
