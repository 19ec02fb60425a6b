"""CUDA ``block_scores`` (csrc/cuda): allocates the outputs and calls the streaming top-k kernel."""

import torch

from rigl_sparse.ops.cuda_extension import extension


def block_scores(dy, x, block_row, block_col, block_size, k):
    scores = torch.empty(k, dtype=torch.float32, device=x.device)
    index = torch.empty(k, dtype=torch.int64, device=x.device)
    extension().block_scores_out(dy.contiguous(), x.contiguous(), block_row, block_col, block_size, scores, index)
    return scores, index
