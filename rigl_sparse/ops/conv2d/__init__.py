"""``rigl_sparse::conv2d``: a block-sparse 2-D convolution as a custom op (under ``torch.compile``, fake
tensors and ``torch.func``; in plain eager mode the same computation through an ``autograd.Function``,
which costs half as much per call on small layers).

The op's registered autograd calls ``rigl_sparse::conv2d_backward``; both run the computation of
``compute.py`` (implicit GEMM on the native ``cpu`` and the ``triton`` backends, per-chunk patches through
the selected backend's matmuls elsewhere).  A convolution's geometry crosses the op boundary as eleven
ints: kernel (2), stride (2), dilation (2), padding (top, bottom, left, right) and groups.  Grow scores:
given the buffers ``(scores, index, passes)``, the backward merges the best ``scores.numel()`` inactive
blocks of the weight gradient into them (``merge_candidates``), as ``rigl_sparse::grow_tap`` does for a
linear layer; the op never calls back into anything.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rigl_sparse import backends
from rigl_sparse.ops.conv2d import compute
from rigl_sparse.ops.linear import needs_custom_op
from rigl_sparse.ops.conv2d.compute import PATCH_BYTES, ConvGeometry, patches  # noqa: F401 - the package's API


def geometry_list(geometry: ConvGeometry) -> list[int]:
    return [*geometry.kernel, *geometry.stride, *geometry.dilation, *geometry.padding, geometry.groups]


def geometry_of(values: list[int]) -> ConvGeometry:
    kh, kw, sh, sw, dh, dw, top, bottom, left, right, groups = values
    return ConvGeometry((kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right), groups)


def conv2d(x, values, bias, topology, out_channels: int, geometry: ConvGeometry, grow_buffers=None, recorder=None):
    """x: [N, C, H, W]; values: [nnzb, b, b]; bias: [out] or None; topology: the layout's six int32 tensors
    -> y: [N, out, OH, OW] (channels-last memory).  Grow scores, when asked for: the custom op merges them
    into ``grow_buffers`` (see the module's docstring); in plain eager mode ``recorder`` gets each pass's
    top ``k`` (``compute.backward``)."""
    if not needs_custom_op(x, values):  # eager: the same computation without the custom op's Python overhead
        return _EagerConv2d.apply(x, values, bias, tuple(topology), out_channels, geometry, recorder)
    scores, index, passes = grow_buffers if grow_buffers is not None else (None, None, None)
    return torch.ops.rigl_sparse.conv2d(x, values, bias, *topology, out_channels, geometry_list(geometry), scores,
                                        index, passes)


class _EagerConv2d(torch.autograd.Function):
    """``rigl_sparse::conv2d`` in plain eager mode: ``compute.forward``/``backward`` called directly (the
    custom op's Python dispatch costs twice a small layer's step; ``bench_overhead.py`` measures it)."""

    @staticmethod
    def forward(ctx, x, values, bias, topology, out_channels, geometry, recorder):
        ctx.save_for_backward(x, values, *topology)
        ctx.out_channels, ctx.geometry, ctx.has_bias, ctx.recorder = out_channels, geometry, bias is not None, recorder
        backends.remember_forced(ctx)
        return compute.forward(x, values, bias, topology, out_channels, geometry)

    @staticmethod
    @once_differentiable  # double backward of a convolution is not provided: say so instead of a wrong zero
    def backward(ctx, grad_y):
        x, values, *topology = ctx.saved_tensors
        with backends.forced_again(ctx):
            grads = compute.backward(grad_y, x, values, topology, ctx.out_channels, ctx.geometry, ctx.has_bias,
                                     *ctx.needs_input_grad[:3], recorder=ctx.recorder)
        return grads + (None,) * 4


@torch.library.custom_op("rigl_sparse::conv2d", mutates_args=())
def _conv2d(x: Tensor, values: Tensor, bias: Optional[Tensor], block_row: Tensor, block_col: Tensor,
            row_ptr: Tensor, row_slots: Tensor, col_ptr: Tensor, col_slots: Tensor, out_channels: int,
            geometry: list[int], scores: Optional[Tensor], index: Optional[Tensor], passes: Optional[Tensor]) -> Tensor:
    topology = (block_row, block_col, row_ptr, row_slots, col_ptr, col_slots)
    return compute.forward(x, values, bias, topology, out_channels, geometry_of(geometry))


@_conv2d.register_fake
def _(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_channels, geometry, scores,
      index, passes):
    out_h, out_w = geometry_of(geometry).output_size(x.shape[2], x.shape[3])
    return x.new_empty(x.shape[0], out_h, out_w, out_channels).permute(0, 3, 1, 2)


@torch.library.custom_op("rigl_sparse::conv2d_backward", mutates_args=("scores", "index", "passes"))
def _conv2d_backward(grad_y: Tensor, x: Tensor, values: Tensor, block_row: Tensor, block_col: Tensor,
                     row_ptr: Tensor, row_slots: Tensor, col_ptr: Tensor, col_slots: Tensor, out_channels: int,
                     geometry: list[int], has_bias: bool, need_x: bool, need_values: bool, need_bias: bool,
                     scores: Optional[Tensor], index: Optional[Tensor],
                     passes: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_values, grad_bias)``; a gradient that is not needed is an empty tensor."""
    topology = (block_row, block_col, row_ptr, row_slots, col_ptr, col_slots)
    grow = (scores, index, passes) if scores is not None else None
    grad_x, grad_values, grad_bias = compute.backward(grad_y, x, values, topology, out_channels, geometry_of(geometry),
                                                      has_bias, need_x, need_values, need_bias, grow)
    if grad_x is not None:  # in x's own memory format, as the fake says
        grad_x = torch.empty_like(x).copy_(grad_x)
    return tuple(x.new_empty(0) if g is None else g for g in (grad_x, grad_values, grad_bias))


@_conv2d_backward.register_fake
def _(grad_y, x, values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_channels, geometry,
      has_bias, need_x, need_values, need_bias, scores, index, passes):
    return (torch.empty_like(x) if need_x else x.new_empty(0), torch.empty_like(values) if need_values else
            values.new_empty(0), x.new_empty(out_channels) if (has_bias and need_bias) else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, values, bias, *rest = inputs
    topology, (out_channels, geometry, scores, index, passes) = rest[:6], rest[6:]
    ctx.save_for_backward(x, values, *topology)
    ctx.out_channels, ctx.geometry, ctx.has_bias = out_channels, geometry, bias is not None
    ctx.grow = (scores, index, passes)
    backends.remember_forced(ctx)


def _backward(ctx, grad_y):
    x, values, *topology = ctx.saved_tensors
    need_x, need_values, need_bias = ctx.needs_input_grad[:3]
    with backends.forced_again(ctx):
        grad_x, grad_values, grad_bias = torch.ops.rigl_sparse.conv2d_backward(
            grad_y, x, values, *topology, ctx.out_channels, ctx.geometry, ctx.has_bias, need_x, need_values,
            need_bias, *ctx.grow)
    grads = (grad_x if need_x else None, grad_values if need_values else None,
             grad_bias if (ctx.has_bias and need_bias) else None)
    if torch.is_grad_enabled():  # create_graph=True
        grads = tuple(None if g is None else _NoDoubleBackward.apply(g) for g in grads)
    return grads + (None,) * 11


_conv2d.register_autograd(_backward, setup_context=_setup_context)


class _NoDoubleBackward(torch.autograd.Function):
    """The identity on a gradient computed with ``create_graph=True``; differentiating it raises (double
    backward of a sparse convolution is not provided: an error, never a silent zero)."""

    @staticmethod
    def forward(ctx, grad):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError("rigl_sparse::conv2d cannot be differentiated twice: double backward of a sparse "
                           "convolution is not provided")

__all__ = ["ConvGeometry", "conv2d", "geometry_list", "geometry_of", "patches"]
