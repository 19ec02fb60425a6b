"""CUDA ``dds`` (csrc/cuda): allocates the output and calls the kernel."""

import torch

from rigl_sparse.ops.cuda_extension import extension


def dds(dy, values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, in_features):
    out = torch.empty(dy.shape[0], in_features, dtype=dy.dtype, device=dy.device)
    extension().dds_out(dy.contiguous(), values.contiguous(), col_ptr, col_slots, block_row, out)
    return out
