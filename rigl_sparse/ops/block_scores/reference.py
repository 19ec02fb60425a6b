"""Reference ``block_scores``: top-k grow candidates among the inactive blocks.

The score of block ``(r, c)`` is the Frobenius norm of the ``b x b`` block of the
dense weight gradient ``G = dY.T @ X``.  ``G`` is formed one band of block rows at
a time (at most ``_BAND_ELEMENTS`` entries), each band is reduced to block
scores, active blocks are masked out, and only the best ``k`` candidates
survive the merge with the previous bands.  Peak extra memory is one band plus
``O(k + blocks)``; the dense gradient of the layer never exists.

Ties are broken by the lower row-major block index, so the result is
deterministic.  NaN scores sort first (torch orders NaN above every number), so
a caller that checks the returned scores for non-finite values sees them.
"""

from __future__ import annotations

import math

import torch

from rigl_sparse.ops._common import accumulation_dtype
from rigl_sparse.ops.dsd.reference import blocks_of

_BAND_ELEMENTS = 1 << 22  # 16 MiB of fp32 per band


def top_candidates(scores: torch.Tensor, index: torch.Tensor, k: int):
    """Best ``k`` of ``scores`` (descending, ties to the earlier entry); index follows."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return scores[order], index[order]


def block_scores(dy, x, block_row, block_col, block_size: int, k: int):
    """dy: [M, out]; x: [M, K]; block_row/col: [nnzb] int32.

    Returns ``scores [k] float32`` (descending) and ``index [k] int64`` (row-major
    block index ``r * C + c``).  Where fewer than ``k`` blocks are inactive, the
    tail holds score ``-inf`` and index ``-1``.
    """
    b = block_size
    acc = accumulation_dtype(x.dtype)
    dy_b = blocks_of(dy, b, acc)  # [M, R, b]
    x_pad = blocks_of(x, b, acc).flatten(1)  # [M, C*b]
    n_rows, n_cols = dy_b.shape[1], x_pad.shape[1] // b
    active = torch.zeros(n_rows * n_cols, dtype=torch.bool, device=x.device)
    active[block_row.long() * n_cols + block_col.long()] = True
    return scores_by_bands(lambda r0, r1: dy_b[:, r0:r1].flatten(1).T @ x_pad, n_rows, n_cols, b, active, k)


def scores_by_bands(gradient_band, n_rows: int, n_cols: int, block_size: int, active: torch.Tensor, k: int):
    """``block_scores`` over a dense gradient given one band of block rows at a time.

    ``gradient_band(r0, r1)`` returns the gradient rows of block rows ``r0:r1``,
    ``[(r1 - r0) * b, n_cols * b]`` (zero where padded); ``active`` is the
    ``[n_rows * n_cols]`` bool mask of the active blocks.  Same result format as
    ``block_scores``.
    """
    b = block_size
    device = active.device
    best_scores = torch.empty(0, dtype=torch.float32, device=device)
    best_index = torch.empty(0, dtype=torch.int64, device=device)
    band = max(1, _BAND_ELEMENTS // (b * b * max(1, n_cols)))
    for r0 in range(0, n_rows, band):
        r1 = min(n_rows, r0 + band)
        grad = gradient_band(r0, r1)
        scores = grad.view(r1 - r0, b, n_cols, b).pow(2).sum(dim=(1, 3)).sqrt().flatten().float()
        index = torch.arange(r0 * n_cols, r1 * n_cols, device=device)
        keep = ~active[r0 * n_cols : r1 * n_cols]
        best_scores, best_index = top_candidates(
            torch.cat([best_scores, scores[keep]]), torch.cat([best_index, index[keep]]), k
        )
    n_found = best_scores.numel()
    if n_found < k:
        best_scores = torch.cat([best_scores, best_scores.new_full((k - n_found,), -math.inf)])
        best_index = torch.cat([best_index, best_index.new_full((k - n_found,), -1)])
    return best_scores, best_index
