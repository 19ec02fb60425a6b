"""Triton implicit-GEMM kernels of the block-sparse convolution (GPU; CPU under ``TRITON_INTERPRET=1``).

The patch matrix ``P[M = N*OH*OW, K = KH*KW*C/groups]`` (tap-major, channel-inner) is
never formed: a program computes the addresses of its ``P`` tile in the padded
NHWC input from the output positions of its rows and the (tap, channel) of its
columns, and loads it straight from there.

* forward: ``Y = P @ W.T`` over the row view (one program per ``[BLOCK_M, b]``
  output tile, walking the slots of its block row), bias in the epilogue;
* input gradient: ``dP = dY @ W`` over the column view, each ``[BLOCK_M, b]``
  tile added onto the input gradient with atomic adds (neighbouring output
  positions share input pixels);
* weight gradient: ``dvalues[s] = dY[:, rows(s)].T @ P[:, cols(s)]``, one program
  per active slot, reducing over all rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rigl_sparse.ops._triton import check_block_size, dot_in_fp32, tuned


@triton.jit
def _patch_offsets(offs_m, cols, base, M, K, C, CG, OH, OW, HP, WP, KW, SH, SW, DH, DW):
    """Offsets into the padded NHWC input of patch rows ``offs_m`` and columns ``cols`` of the group whose
    channels start at ``base`` (``CG`` channels per group), and their mask."""
    n = offs_m // (OH * OW)
    rest = offs_m % (OH * OW)
    origin = ((n * HP + (rest // OW) * SH) * WP + (rest % OW) * SW) * C
    tap = cols // CG
    col_offset = ((tap // KW) * DH * WP + (tap % KW) * DW) * C + base + cols % CG
    mask = (offs_m[:, None] < M) & (cols[None, :] < K)
    return origin[:, None] + col_offset[None, :], mask


@triton.jit
def _conv_forward_kernel(
    x_ptr, values_ptr, bias_ptr, out_ptr, row_ptr_ptr, row_slots_ptr, block_col_ptr,
    M, K, OUT_COLS, C, CG, OG, OH, OW, HP, WP, KW, SH, SW, DH, DW,
    B: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
):
    j = tl.program_id(0)
    offs_m = (tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_b = tl.arange(0, B)
    base = (j.to(tl.int64) * B // OG) * CG
    acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
    for i in range(tl.load(row_ptr_ptr + j), tl.load(row_ptr_ptr + j + 1)):
        slot = tl.load(row_slots_ptr + i).to(tl.int64)
        cols = tl.load(block_col_ptr + slot).to(tl.int64) * B + offs_b
        offsets, mask = _patch_offsets(offs_m, cols, base, M, K, C, CG, OH, OW, HP, WP, KW, SH, SW, DH, DW)
        p = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        w = tl.load(values_ptr + slot * B * B + offs_b[:, None] * B + offs_b[None, :])
        if DOT_FP32:
            p = p.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(p, tl.trans(w))
    offs_n = j.to(tl.int64) * B + offs_b
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < OUT_COLS, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * OUT_COLS + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < OUT_COLS))


@triton.jit
def _conv_input_grad_kernel(
    dy_ptr, values_ptr, dx_ptr, col_ptr_ptr, col_slots_ptr, block_row_ptr,
    M, K, DY_COLS, C, CG, OG, OH, OW, HP, WP, KW, SH, SW, DH, DW,
    B: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # Program (c, m-tile, group): the slots of block column c in this group only, added onto its channels.
    c = tl.program_id(0)
    offs_m = (tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    group = tl.program_id(2).to(tl.int64)
    offs_b = tl.arange(0, B)
    acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
    for i in range(tl.load(col_ptr_ptr + c), tl.load(col_ptr_ptr + c + 1)):
        slot = tl.load(col_slots_ptr + i).to(tl.int64)
        row0 = tl.load(block_row_ptr + slot).to(tl.int64) * B
        if row0 // OG == group:
            rows = row0 + offs_b
            g = tl.load(dy_ptr + offs_m[:, None] * DY_COLS + rows[None, :],
                        mask=(offs_m[:, None] < M) & (rows[None, :] < DY_COLS), other=0.0)
            w = tl.load(values_ptr + slot * B * B + offs_b[:, None] * B + offs_b[None, :])
            if DOT_FP32:
                g = g.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(g, w)
    cols = c.to(tl.int64) * B + offs_b
    offsets, mask = _patch_offsets(offs_m, cols, group * CG, M, K, C, CG, OH, OW, HP, WP, KW, SH, SW, DH, DW)
    tl.atomic_add(dx_ptr + offsets, acc, mask=mask)


@triton.jit
def _conv_weight_grad_kernel(
    dy_ptr, x_ptr, out_ptr, row_slots_ptr, block_row_ptr, block_col_ptr,
    M, K, DY_COLS, C, CG, OG, OH, OW, HP, WP, KW, SH, SW, DH, DW,
    B: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
):
    slot = tl.load(row_slots_ptr + tl.program_id(0)).to(tl.int64)
    row0 = tl.load(block_row_ptr + slot).to(tl.int64) * B
    rows = row0 + tl.arange(0, B)
    base = (row0 // OG) * CG
    cols = tl.load(block_col_ptr + slot).to(tl.int64) * B + tl.arange(0, B)
    acc = tl.zeros((B, B), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        g = tl.load(dy_ptr + offs_m[:, None] * DY_COLS + rows[None, :],
                    mask=(offs_m[:, None] < M) & (rows[None, :] < DY_COLS), other=0.0)
        offsets, mask = _patch_offsets(offs_m, cols, base, M, K, C, CG, OH, OW, HP, WP, KW, SH, SW, DH, DW)
        p = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        if DOT_FP32:
            g = g.to(tl.float32)
            p = p.to(tl.float32)
        acc += tl.dot(tl.trans(g), p)
    offs = tl.arange(0, B)
    tl.store(out_ptr + slot * B * B + offs[:, None] * B + offs[None, :], acc.to(out_ptr.dtype.element_ty))


def _matmul_configs():
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
            for bm, w, s in [(64, 4, 2), (128, 4, 3), (64, 4, 3), (128, 8, 3), (256, 8, 3)]]


def _weight_configs():
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
            for bm, w, s in [(64, 4, 2), (64, 4, 3), (32, 4, 3), (128, 4, 3), (128, 8, 3)]]


_KEY = ["M", "K", "C", "B"]
_forward = tuned(_conv_forward_kernel, _matmul_configs(), key=_KEY + ["OUT_COLS"],
                 fixed={"BLOCK_M": 32, "num_warps": 4})
# Its output accumulates atomic adds: zeroed again before every autotuning trial.
_input_grad = tuned(_conv_input_grad_kernel, _matmul_configs(), key=_KEY + ["DY_COLS"],
                    fixed={"BLOCK_M": 32, "num_warps": 4}, reset_to_zero=["dx_ptr"])
_weight_grad = tuned(_conv_weight_grad_kernel, _weight_configs(), key=_KEY + ["DY_COLS"],
                     fixed={"BLOCK_M": 16, "num_warps": 4})


def _shape_args(padded_shape, geometry, out_channels, out_h, out_w):
    """The scalars every kernel takes after M, K and the dense column count."""
    (_, hp, wp, c), (_, kw), (sh, sw), (dh, dw) = padded_shape, geometry.kernel, geometry.stride, geometry.dilation
    return (c, c // geometry.groups, out_channels // geometry.groups, out_h, out_w, hp, wp, kw, sh, sw, dh, dw)


def _patch_cols(padded_shape, geometry):
    return geometry.kernel[0] * geometry.kernel[1] * padded_shape[3] // geometry.groups


def forward(padded, values, bias, row_ptr, row_slots, block_col, out_channels, geometry, out_h, out_w):
    """padded: [N, H', W', C] contiguous -> y [N*OH*OW, out_channels]."""
    b = values.shape[1]
    check_block_size(b)
    M = padded.shape[0] * out_h * out_w
    out = torch.empty(M, out_channels, device=padded.device, dtype=padded.dtype)
    _forward(lambda meta: (row_ptr.numel() - 1, triton.cdiv(M, meta["BLOCK_M"])), padded, values,
             values if bias is None else bias, out, row_ptr, row_slots, block_col, M,
             _patch_cols(padded.shape, geometry), out_channels,
             *_shape_args(padded.shape, geometry, out_channels, out_h, out_w), B=b, HAS_BIAS=bias is not None,
             DOT_FP32=dot_in_fp32(padded.dtype), macs=M * row_slots.numel() * b * b)
    return out


def input_grad(dy, values, col_ptr, col_slots, block_row, padded_shape, geometry, out_h, out_w):
    """dy: [M, out] contiguous -> fp32 gradient of the padded input [N, H', W', C]."""
    b = values.shape[1]
    check_block_size(b)
    dx = torch.zeros(padded_shape, device=dy.device, dtype=torch.float32)
    M = dy.shape[0]
    _input_grad(lambda meta: (col_ptr.numel() - 1, triton.cdiv(M, meta["BLOCK_M"]), geometry.groups), dy, values, dx,
                col_ptr, col_slots, block_row, M, _patch_cols(padded_shape, geometry), dy.shape[1],
                *_shape_args(padded_shape, geometry, dy.shape[1], out_h, out_w), B=b, DOT_FP32=dot_in_fp32(dy.dtype),
                macs=M * col_slots.numel() * b * b)
    return dx


def weight_grad(dy, padded, row_slots, block_row, block_col, block_size, geometry, out_h, out_w):
    """dy: [M, out] contiguous; padded: [N, H', W', C] contiguous -> dvalues [nnzb, b, b]."""
    check_block_size(block_size)
    out = torch.empty(block_row.numel(), block_size, block_size, device=padded.device, dtype=padded.dtype)
    if out.numel() == 0:
        return out
    M = dy.shape[0]
    _weight_grad((block_row.numel(),), dy, padded, out, row_slots, block_row, block_col, M,
                 _patch_cols(padded.shape, geometry), dy.shape[1],
                 *_shape_args(padded.shape, geometry, dy.shape[1], out_h, out_w), B=block_size,
                 DOT_FP32=dot_in_fp32(padded.dtype), macs=M * block_row.numel() * block_size * block_size)
    return out
