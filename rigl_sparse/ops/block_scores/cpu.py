"""Native CPU ``block_scores`` (csrc/cpu/block_scores.cpp): allocates the outputs and calls the kernel."""

import torch

from rigl_sparse.ops.cpu_extension import extension


def block_scores(dy, x, block_row, block_col, block_size, k):
    scores = torch.empty(k, dtype=torch.float32)
    index = torch.empty(k, dtype=torch.int64)
    extension().block_scores_out(dy.contiguous(), x.contiguous(), block_row, block_col, block_size, scores, index)
    return scores, index
