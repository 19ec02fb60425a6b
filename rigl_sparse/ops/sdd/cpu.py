"""Native CPU ``sdd`` (csrc/cpu/sdd.cpp): allocates the output and calls the kernel."""

import torch

from rigl_sparse.ops.cpu_extension import extension


def sdd(dy, x, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, block_size):
    out = torch.empty(block_row.numel(), block_size, block_size, dtype=x.dtype)
    extension().sdd_out(dy.contiguous(), x.contiguous(), row_slots, block_row, block_col, out)
    return out
