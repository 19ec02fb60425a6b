"""CUDA ``dsd`` (csrc/cuda): allocates the output and calls the kernel."""

import torch

from rigl_sparse.ops.cuda_extension import extension


def dsd(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    out = torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)
    extension().dsd_out(x.contiguous(), values.contiguous(), None if bias is None else bias.contiguous(), row_ptr,
                        row_slots, block_col, out)
    return out
