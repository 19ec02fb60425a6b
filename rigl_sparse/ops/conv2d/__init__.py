"""``conv2d``: a block-sparse 2-D convolution as block-sparse matmuls over input patches.

The weight is the ``[out, K]`` matrix with ``K = kh * kw * in_channels`` in
tap-major, channel-inner order: column ``(i * kw + j) * C + c`` holds
``weight[:, c, i, j]``.  A ``b``-wide block of columns is then ``b`` consecutive
input channels at one kernel tap (when ``b`` divides ``C``), which is contiguous
in a channels-last input.

Where the backend registry picks the native ``cpu`` backend for ``dsd``, the
convolution runs as implicit GEMM (``csrc/cpu/conv_kernels.h``): the kernels
gather each micro-tile's patch rows from the padded input right before use
and scatter the input gradient straight back, so no patch matrix exists at
all.  Elsewhere (another backend, or the input gradient when ``b`` does not
divide the channels) the patches (``[N*OH*OW, K]``, im2col) are built for a
chunk of images at a time (at most about ``PATCH_BYTES``), multiplied with the
selected backend's ``dsd``/``sdd``/``dds``, and dropped; the input gradient's
patches are folded back onto the input.  Either way the weight is never dense
and never more than one chunk's patches exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rigl_sparse import backends
from rigl_sparse.ops import _common, _cpu
from rigl_sparse.ops.linear import _needs_custom_op

PATCH_BYTES = 32 << 20  # patch buffer per chunk of images


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, dilation and the explicit padding (top, bottom, left, right) of a convolution."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right) = (self.kernel, self.stride, self.dilation,
                                                                     self.padding)
        out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
        return out_h, out_w


def _padded_nhwc(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """x: [N, C, H, W] -> zero-padded [N, H', W', C] (a view where no padding is needed)."""
    nhwc = x.permute(0, 2, 3, 1)
    top, bottom, left, right = geometry.padding
    if top or bottom or left or right:
        nhwc = F.pad(nhwc, (0, 0, left, right, top, bottom))
    return nhwc


def _tap_slices(geometry: ConvGeometry, out_h: int, out_w: int):
    """For every kernel tap (i, j): the rows and columns of the padded input it reads."""
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.stride, geometry.dilation
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (out_h - 1) * sh + 1, sh)
            cols = slice(j * dw, j * dw + (out_w - 1) * sw + 1, sw)
            yield rows, cols


def patches(x_padded: torch.Tensor, geometry: ConvGeometry, out_h: int, out_w: int) -> torch.Tensor:
    """Padded NHWC input [n, H', W', C] -> patches [n * out_h * out_w, kh * kw * C] (tap-major)."""
    n, c = x_padded.shape[0], x_padded.shape[3]
    taps = [x_padded[:, rows, cols, :] for rows, cols in _tap_slices(geometry, out_h, out_w)]
    return torch.cat(taps, dim=3).reshape(n * out_h * out_w, len(taps) * c)


def fold_patches(grad_patches: torch.Tensor, geometry: ConvGeometry, padded_shape, out_h: int,
                 out_w: int) -> torch.Tensor:
    """The adjoint of ``patches``: [n * out_h * out_w, kh * kw * C] -> padded NHWC gradient [n, H', W', C]."""
    n, _, _, c = padded_shape
    grad = grad_patches.new_zeros(padded_shape)
    per_tap = grad_patches.view(n, out_h, out_w, -1, c)
    for t, (rows, cols) in enumerate(_tap_slices(geometry, out_h, out_w)):
        grad[:, rows, cols, :] += per_tap[:, :, :, t, :]
    return grad


def _chunks(n_images: int, rows_per_image: int, k: int, element_size: int):
    per_chunk = max(1, PATCH_BYTES // max(1, rows_per_image * k * element_size))
    for start in range(0, n_images, per_chunk):
        yield start, min(n_images, start + per_chunk)


def _path(x: torch.Tensor, values: torch.Tensor) -> str:
    """How the convolution runs: the backend the registry picks for ``dsd`` on these tensors decides.

    ``"cpu"``: native implicit GEMM; ``"triton"``: Triton implicit GEMM; ``"patches"``: per-chunk
    patches through the selected backend's ``dsd``/``dds``/``sdd`` (the reference, or anything else).
    """
    backend = backends.select("dsd", x.device.type, (x, values))[0]
    return backend if backend in ("cpu", "triton") else "patches"


def _geometry_list(geometry: ConvGeometry, out_h: int, out_w: int) -> list[int]:
    return [out_h, out_w, *geometry.kernel, *geometry.stride, *geometry.dilation]


def _run(op: str, *args):
    return _common.dispatch(op, args[0].device, args)(*args)


def conv2d(x, values, bias, topology, out_channels: int, geometry: ConvGeometry, grow_request=None, tap=None):
    """x: [N, C, H, W]; values: [nnzb, b, b]; bias: [out] or None; topology: the layout's six int32
    tensors -> y: [N, out, OH, OW] (channels-last memory).

    ``grow_request`` (optional) is a pair: a callable returning the ``k`` of a
    pending grow-score request (or None) and a callable receiving the result of
    ``block_scores`` computed from the backward's ``dY`` and the patches.

    Under ``torch.compile``, fake tensors or ``torch.func`` the whole batch's
    patches are formed and multiplied with the ``rigl_sparse::dsd`` custom op
    (its registered autograd gives the gradients); ``tap(y, patches)`` then
    attaches the grow-score request.
    """
    if _needs_custom_op(x, values):
        n, _, height, width = x.shape
        out_h, out_w = geometry.output_size(height, width)
        cols = patches(_padded_nhwc(x, geometry), geometry, out_h, out_w)
        y = torch.ops.rigl_sparse.dsd(cols, values, bias, *topology, out_channels)
        if tap is not None:
            y = tap(y, cols)
        return y.view(n, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    return _SparseConv2d.apply(x, values, bias, tuple(topology), out_channels, geometry, grow_request)


class _SparseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, topology, out_channels, geometry, grow_request):
        n, _, height, width = x.shape
        out_h, out_w = geometry.output_size(height, width)
        padded = _padded_nhwc(x, geometry)
        rows = n * out_h * out_w
        ctx.path = _path(x, values)
        if ctx.path == "cpu":
            y = x.new_empty(rows, out_channels)
            _cpu.extension().conv_forward_out(padded.contiguous(), values.contiguous(), bias, topology[2],
                                              topology[3], topology[1], _geometry_list(geometry, out_h, out_w), y)
        elif ctx.path == "triton":
            from rigl_sparse.ops.conv2d import triton as conv_triton

            y = conv_triton.forward(padded.contiguous(), values.contiguous(), bias, topology[2], topology[3],
                                    topology[1], out_channels, geometry, out_h, out_w)
        else:
            y = x.new_empty(rows, out_channels)
            k = geometry.kernel[0] * geometry.kernel[1] * x.shape[1]
            per_image = out_h * out_w
            for start, stop in _chunks(n, per_image, k, x.element_size()):
                cols = patches(padded[start:stop], geometry, out_h, out_w)
                y[start * per_image:stop * per_image] = _run("dsd", cols, values, bias, *topology, out_channels)
        ctx.save_for_backward(x, values, *topology)
        ctx.geometry, ctx.out_channels, ctx.has_bias, ctx.grow_request = geometry, out_channels, bias is not None, \
            grow_request
        return y.view(n, out_h, out_w, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable  # double backward of a convolution is not provided: say so instead of a wrong zero
    def backward(ctx, grad_y):
        x, values, *topology = ctx.saved_tensors
        geometry = ctx.geometry
        block_row, block_col = topology[0], topology[1]
        b = values.shape[1]
        n, _, height, width = x.shape
        out_h, out_w = geometry.output_size(height, width)
        dy = grad_y.permute(0, 2, 3, 1).contiguous().view(n * out_h * out_w, ctx.out_channels)
        padded = _padded_nhwc(x, geometry)
        need_x, need_values, need_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if ctx.path == "patches":
            grad_padded, grad_values = _backward_by_patches(dy, padded, values, topology, geometry, out_h, out_w,
                                                            need_x, need_values)
        else:
            grad_padded, grad_values = _backward_implicit(ctx.path, dy, padded.contiguous(), values.contiguous(),
                                                          topology, geometry, out_h, out_w, need_x, need_values)
        grad_x = None
        if need_x:
            top, _, left, _ = geometry.padding
            grad_x = grad_padded[:, top:top + height, left:left + width, :].to(x.dtype).permute(0, 3, 1, 2)
        grad_bias = dy.sum(dim=0, dtype=torch.float32).to(dy.dtype) if (ctx.has_bias and need_bias) else None
        if ctx.grow_request is not None:
            pending, deliver = ctx.grow_request
            k_grow = pending()
            if k_grow is not None:
                # The grow criterion needs dY^T X over every row at once: the whole batch's patches exist
                # for this call only (on RigL update steps), never the dense weight gradient.
                cols = patches(padded, geometry, out_h, out_w)
                deliver(_run("block_scores", dy, cols, block_row, block_col, b, k_grow))
        return grad_x, grad_values, grad_bias, None, None, None, None


def _backward_implicit(path, dy, padded, values, topology, geometry, out_h, out_w, need_x, need_values):
    """(gradient of the padded input, of the values) by the cpu or triton implicit-GEMM kernels."""
    block_row, block_col, row_ptr, row_slots, col_ptr, col_slots = topology
    grad_padded = grad_values = None
    if path == "cpu":
        geometry_list = _geometry_list(geometry, out_h, out_w)
        if need_values:
            grad_values = torch.empty_like(values)
            _cpu.extension().conv_weight_grad_out(dy, padded, row_slots, block_row, block_col, geometry_list,
                                                  grad_values)
        if need_x:
            grad_padded = torch.zeros(padded.shape, dtype=torch.float32)
            _cpu.extension().conv_input_grad_out(dy, values, col_ptr, col_slots, block_row, geometry_list,
                                                 grad_padded)
        return grad_padded, grad_values
    from rigl_sparse.ops.conv2d import triton as conv_triton

    if need_values:
        grad_values = conv_triton.weight_grad(dy, padded, row_slots, block_row, block_col, values.shape[1], geometry,
                                              out_h, out_w)
    if need_x:
        grad_padded = conv_triton.input_grad(dy, values, col_ptr, col_slots, block_row, padded.shape, geometry, out_h,
                                             out_w)
    return grad_padded, grad_values


def _backward_by_patches(dy, padded, values, topology, geometry, out_h, out_w, need_x, need_values):
    """(gradient of the padded input, of the values) from per-chunk patches and the selected backend's ops."""
    n, b = padded.shape[0], values.shape[1]
    k = geometry.kernel[0] * geometry.kernel[1] * padded.shape[3]
    grad_values = torch.zeros_like(values) if need_values else None
    grad_padded = padded.new_empty(padded.shape) if need_x else None
    per_image = out_h * out_w
    for start, stop in _chunks(n, per_image, k, padded.element_size()):
        dy_chunk = dy[start * per_image:stop * per_image]
        if need_values:
            cols = patches(padded[start:stop], geometry, out_h, out_w)
            grad_values += _run("sdd", dy_chunk, cols, *topology, b)
        if need_x:
            grad_cols = _run("dds", dy_chunk, values, *topology, k)
            grad_padded[start:stop] = fold_patches(grad_cols, geometry, (stop - start,) + tuple(padded.shape[1:]),
                                                   out_h, out_w)
    return grad_padded, grad_values
