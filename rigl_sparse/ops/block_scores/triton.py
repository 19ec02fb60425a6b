"""Triton ``block_scores``: block norms of ``dY.T @ X`` computed tile by tile in registers.

Each program forms one ``[BLOCK_N, BLOCK_K]`` tile of the dense gradient in fp32
registers (reducing over all ``M`` rows), squares it, sums each ``b x b`` block
of the tile to one number, masks the active blocks with ``-inf`` and writes the
``(BLOCK_N/b) x (BLOCK_K/b)`` scores.  Global memory holds only the ``[R, C]``
score grid (``1/b²`` of the dense gradient); the top-``k`` is then taken on
device with a stable sort, so ties go to the lower block index as in the
reference.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rigl_sparse.ops._triton import check_block_size, dot_in_fp32, tuned


@triton.jit
def _block_scores_kernel(
    dy_ptr, x_ptr, active_ptr, scores_ptr,
    M, N, K, R, C, stride_dym, stride_dyn, stride_xm, stride_xk,
    B: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, GROUP: tl.constexpr,
):
    # Grouped launch order: GROUP tiles along N share each X slab while it is in L2.
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_k = tl.cdiv(K, BLOCK_K)
    per_group = GROUP * tiles_k
    first_n = (pid // per_group) * GROUP
    group_size = tl.minimum(tiles_n - first_n, GROUP)
    pid_n = first_n + (pid % per_group) % group_size
    pid_k = (pid % per_group) // group_size
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_ok = offs_m[:, None] < M
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn,
                     mask=m_ok & (offs_n[None, :] < N), other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_ok & (offs_k[None, :] < K), other=0.0)
        if DOT_FP32:
            dy = dy.to(tl.float32)
            x = x.to(tl.float32)
        acc += tl.dot(tl.trans(dy), x)
    squares = tl.reshape(acc * acc, (BLOCK_N // B, B, BLOCK_K // B, B))
    scores = tl.sqrt(tl.sum(tl.sum(squares, axis=3), axis=1))
    rows = pid_n * (BLOCK_N // B) + tl.arange(0, BLOCK_N // B)
    cols = pid_k * (BLOCK_K // B) + tl.arange(0, BLOCK_K // B)
    inside = (rows[:, None] < R) & (cols[None, :] < C)
    flat = rows[:, None].to(tl.int64) * C + cols[None, :]
    active = tl.load(active_ptr + flat, mask=inside, other=0)
    scores = tl.where(active != 0, float("-inf"), scores)
    tl.store(scores_ptr + flat, scores, mask=inside)


def _configs():
    out = []
    for bn, bk, bm, w, s in [(128, 128, 32, 4, 2), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 256, 64, 8, 4),
                             (128, 128, 64, 8, 4), (256, 128, 32, 8, 4), (128, 256, 32, 8, 4)]:
        out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_M": bm, "GROUP": 8}, num_warps=w,
                                 num_stages=s))
    return out


_launch = tuned(_block_scores_kernel, _configs(), key=["M", "N", "K", "B"],
                fixed={"BLOCK_N": 128, "BLOCK_K": 128, "BLOCK_M": 16, "GROUP": 2, "num_warps": 4})


def score_grid(dy, x, block_row, block_col, block_size) -> torch.Tensor:
    """``[R, C]`` fp32 block scores of ``dY.T @ X``; active blocks are ``-inf``."""
    check_block_size(block_size)
    M, N = dy.shape
    K = x.shape[1]
    R, C = math.ceil(N / block_size), math.ceil(K / block_size)
    active = torch.zeros(R, C, dtype=torch.int8, device=x.device)
    active[block_row.long(), block_col.long()] = 1
    scores = torch.empty(R, C, dtype=torch.float32, device=x.device)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    _launch(grid, dy, x, active, scores, M, N, K, R, C, dy.stride(0), dy.stride(1), x.stride(0), x.stride(1),
            B=block_size, DOT_FP32=dot_in_fp32(x.dtype), macs=M * N * K)
    return scores


def block_scores(dy, x, block_row, block_col, block_size, k):
    """dy: [M, out]; x: [M, K] -> (scores [k] float32, index [k] int64), as the reference."""
    scores = score_grid(dy, x, block_row, block_col, block_size).flatten()
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    top = scores[order]
    index = torch.where(top == float("-inf"), -1, order)
    if top.numel() < k:
        top = torch.cat([top, top.new_full((k - top.numel(),), float("-inf"))])
        index = torch.cat([index, index.new_full((k - index.numel(),), -1)])
    return top, index
