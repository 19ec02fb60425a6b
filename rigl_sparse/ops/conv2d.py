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


def _native_cpu(x: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether the registry runs dsd for these tensors on the native cpu backend (then so does the conv)."""
    return x.device.type == "cpu" and backends.select("dsd", "cpu", (x, values))[0] == "cpu"


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
        k = geometry.kernel[0] * geometry.kernel[1] * x.shape[1]
        y = x.new_empty(n, out_h, out_w, out_channels)
        ctx.native = _native_cpu(x, values)
        if ctx.native:
            _cpu.extension().conv_forward_out(padded.contiguous(), values.contiguous(), bias, topology[2],
                                              topology[3], topology[1], _geometry_list(geometry, out_h, out_w),
                                              y.view(n * out_h * out_w, out_channels))
        else:
            for start, stop in _chunks(n, out_h * out_w, k, x.element_size()):
                cols = patches(padded[start:stop], geometry, out_h, out_w)
                y[start:stop] = _run("dsd", cols, values, bias, *topology, out_channels).view(
                    stop - start, out_h, out_w, out_channels)
        ctx.save_for_backward(x, values, *topology)
        ctx.geometry, ctx.out_channels, ctx.has_bias, ctx.grow_request = geometry, out_channels, bias is not None, \
            grow_request
        return y.permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable  # double backward of a convolution is not provided: say so instead of a wrong zero
    def backward(ctx, grad_y):
        x, values, *topology = ctx.saved_tensors
        geometry = ctx.geometry
        block_row, block_col = topology[0], topology[1]
        b = values.shape[1]
        n, c, height, width = x.shape
        out_h, out_w = geometry.output_size(height, width)
        k = geometry.kernel[0] * geometry.kernel[1] * c
        dy = grad_y.permute(0, 2, 3, 1).contiguous().view(n * out_h * out_w, ctx.out_channels)
        padded = _padded_nhwc(x, geometry)
        need_x, need_values, need_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_padded, grad_values = None, None
        native_dx = ctx.native
        geometry_list = _geometry_list(geometry, out_h, out_w)
        if ctx.native:
            padded = padded.contiguous()
            if need_values:
                grad_values = torch.empty_like(values)
                _cpu.extension().conv_weight_grad_out(dy, padded, topology[3], block_row, block_col, geometry_list,
                                                      grad_values)
            if need_x and native_dx:
                grad_padded = torch.zeros(padded.shape, dtype=torch.float32)
                _cpu.extension().conv_input_grad_out(dy, values.contiguous(), topology[4], topology[5], block_row,
                                                     geometry_list, grad_padded)
                grad_padded = grad_padded.to(x.dtype)
        chunked_values = need_values and not ctx.native
        chunked_x = need_x and not native_dx
        if chunked_values:
            grad_values = torch.zeros_like(values)
        if chunked_x:
            grad_padded = padded.new_empty(padded.shape)
        rows_per_image = out_h * out_w
        for start, stop in _chunks(n, rows_per_image, k, x.element_size()) if (chunked_values or chunked_x) else ():
            dy_chunk = dy[start * rows_per_image:stop * rows_per_image]
            if chunked_values:
                cols = patches(padded[start:stop], geometry, out_h, out_w)
                grad_values += _run("sdd", dy_chunk, cols, *topology, b)
            if chunked_x:
                grad_cols = _run("dds", dy_chunk, values, *topology, k)
                grad_padded[start:stop] = fold_patches(grad_cols, geometry, (stop - start,) + tuple(padded.shape[1:]),
                                                       out_h, out_w)
        grad_x = None
        if need_x:
            top, _, left, _ = geometry.padding
            grad_x = grad_padded[:, top:top + height, left:left + width, :].permute(0, 3, 1, 2)
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
