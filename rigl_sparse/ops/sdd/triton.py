"""Triton ``sdd``: ``dvalues[s] = dY[:, rows(s)].T @ X[:, cols(s)]`` for the active slots only.

One program per slot, launched in row-view order so that neighbouring programs
read the same ``dY`` columns; each reduces over all ``M`` rows in chunks of
``BLOCK_M`` with an fp32 ``b x b`` accumulator.  Padding rows/columns are masked
to zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rigl_sparse.ops._triton import check_block_size, dot_in_fp32, tuned


@triton.jit
def _sdd_kernel(
    dy_ptr, x_ptr, out_ptr, row_slots_ptr, block_row_ptr, block_col_ptr,
    M, N, K, stride_dym, stride_dyn, stride_xm, stride_xk,
    B: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
):
    slot = tl.load(row_slots_ptr + tl.program_id(0)).to(tl.int64)
    rows = tl.load(block_row_ptr + slot).to(tl.int64) * B + tl.arange(0, B)
    cols = tl.load(block_col_ptr + slot).to(tl.int64) * B + tl.arange(0, B)
    acc = tl.zeros((B, B), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_ok = offs_m[:, None] < M
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + rows[None, :] * stride_dyn,
                     mask=m_ok & (rows[None, :] < N), other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + cols[None, :] * stride_xk,
                    mask=m_ok & (cols[None, :] < K), other=0.0)
        if DOT_FP32:
            dy = dy.to(tl.float32)
            x = x.to(tl.float32)
        acc += tl.dot(tl.trans(dy), x)
    offs = tl.arange(0, B)
    tl.store(out_ptr + slot * B * B + offs[:, None] * B + offs[None, :], acc.to(out_ptr.dtype.element_ty))


_CONFIGS = [
    triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
    for bm, w, s in [(64, 4, 2), (64, 4, 3), (32, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (64, 8, 4)]
]
_launch = tuned(_sdd_kernel, _CONFIGS, key=["M", "N", "K", "B"], fixed={"BLOCK_M": 16, "num_warps": 4})


def sdd(dy, x, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, block_size):
    """dy: [M, out]; x: [M, K] -> dvalues [nnzb, b, b] (x's dtype)."""
    check_block_size(block_size)
    M, N = dy.shape
    K = x.shape[1]
    out = torch.empty(block_row.numel(), block_size, block_size, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    _launch((block_row.numel(),), dy, x, out, row_slots, block_row, block_col, M, N, K,
            dy.stride(0), dy.stride(1), x.stride(0), x.stride(1), B=block_size,
            DOT_FP32=dot_in_fp32(x.dtype), macs=M * block_row.numel() * block_size * block_size)
    return out
