"""CUDA ``sdd`` (csrc/cuda): allocates the output and calls the kernel."""

import torch

from rigl_sparse.ops.cuda_extension import extension


def sdd(dy, x, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, block_size):
    out = torch.empty(block_row.numel(), block_size, block_size, dtype=x.dtype, device=x.device)
    extension().sdd_out(dy.contiguous(), x.contiguous(), block_row, block_col, out)
    return out
