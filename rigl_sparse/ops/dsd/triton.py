"""Triton ``dsd`` (and, with the column view, ``dds``): dense x block-sparse on active blocks only.

One program computes a ``[BLOCK_M, b]`` tile of the output: rows ``BLOCK_M`` of
the dense operand, one block column of the output.  It walks the slots of that
output block (the row view for ``dsd``, the column view for ``dds``), loads the
matching ``[BLOCK_M, b]`` slab of the dense operand and the ``b x b`` block, and
accumulates ``slab @ block.T`` (``dsd``) or ``slab @ block`` (``dds``) in fp32.
Programs are launched output-block-fastest, so the programs in flight share the
same rows of the dense operand in L2.  The bias is added in the epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rigl_sparse.ops._triton import check_block_size, dot_in_fp32, tuned


@triton.jit
def _sparse_matmul_kernel(
    a_ptr, values_ptr, bias_ptr, out_ptr,
    ptr_ptr, slots_ptr, coord_ptr,
    M, A_COLS, OUT_COLS,
    stride_am, stride_ak, stride_om, stride_on,
    B: tl.constexpr, TRANSPOSE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    j = tl.program_id(0)  # output block column
    pid_m = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_b = tl.arange(0, B)
    start = tl.load(ptr_ptr + j)
    end = tl.load(ptr_ptr + j + 1)
    acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
    row_ok = offs_m[:, None] < M
    for i in range(start, end):
        slot = tl.load(slots_ptr + i).to(tl.int64)
        cols = tl.load(coord_ptr + slot).to(tl.int64) * B + offs_b
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + cols[None, :] * stride_ak,
                    mask=row_ok & (cols[None, :] < A_COLS), other=0.0)
        w = tl.load(values_ptr + slot * B * B + offs_b[:, None] * B + offs_b[None, :])
        if DOT_FP32:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        if TRANSPOSE:
            acc += tl.dot(a, tl.trans(w))
        else:
            acc += tl.dot(a, w)
    offs_n = j.to(tl.int64) * B + offs_b
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < OUT_COLS, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=row_ok & (offs_n[None, :] < OUT_COLS))


_CONFIGS = [
    triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
    for bm, w, s in [(64, 4, 2), (128, 4, 3), (64, 4, 3), (128, 8, 3), (256, 8, 3), (128, 4, 4), (256, 8, 4), (256, 4, 3)]
]
_launch = tuned(_sparse_matmul_kernel, _CONFIGS, key=["M", "A_COLS", "OUT_COLS", "B", "TRANSPOSE"],
                fixed={"BLOCK_M": 32, "num_warps": 4})


def sparse_matmul(a, values, bias, ptr, slots, coord, out_cols: int, *, transpose: bool) -> torch.Tensor:
    """``a [M, A] @ (W.T if transpose else W)`` over one view of the layout -> ``[M, out_cols]``."""
    b = values.shape[1]
    check_block_size(b)
    a = a.contiguous()
    values = values.contiguous()
    M = a.shape[0]
    out = torch.empty(M, out_cols, device=a.device, dtype=a.dtype)
    n_out_blocks = ptr.numel() - 1

    def grid(meta):
        return (n_out_blocks, triton.cdiv(M, meta["BLOCK_M"]))

    _launch(grid, a, values, bias if bias is not None else values, out, ptr, slots, coord, M, a.shape[1], out_cols,
            a.stride(0), a.stride(1), out.stride(0), out.stride(1), B=b, TRANSPOSE=transpose,
            HAS_BIAS=bias is not None, DOT_FP32=dot_in_fp32(a.dtype), macs=M * slots.numel() * b * b)
    return out


def dsd(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    """x: [M, K]; values: [nnzb, b, b]; bias: [out] or None -> [M, out], over the row view."""
    return sparse_matmul(x, values, bias, row_ptr, row_slots, block_col, out_features, transpose=True)
