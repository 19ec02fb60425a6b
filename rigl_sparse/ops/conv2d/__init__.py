"""``rigl_sparse::conv2d``: a block-sparse 2-D convolution as an operator (``ops/_library.py``: the one path
of eager calls, compiled graphs, fake tensors and ``torch.func.functional_call``).

Its autograd calls ``rigl_sparse::conv2d_backward``; both run the computation of ``compute.py`` (implicit
GEMM on the native ``cpu`` and the ``triton`` backends, per-chunk patches through the selected backend's
matmuls elsewhere), the path being ``conv2d``'s implementation in the backend registry.  A convolution's
geometry crosses the op boundary as eleven ints: kernel (2), stride (2), dilation (2), padding (top, bottom,
left, right) and groups.  Grow scores: given the buffers
``(scores, index, passes)``, each backward pass merges its best ``keep`` inactive blocks of the weight
gradient into them (``merge_candidates``), as ``rigl_sparse::grow_tap`` does for a linear layer; the op
never calls back into anything.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rigl_sparse import backends
from rigl_sparse.ops import _library
from rigl_sparse.ops.conv2d import compute
from rigl_sparse.ops.conv2d.compute import PATCH_BYTES, ConvGeometry, patches  # noqa: F401 - the package's API


def geometry_list(geometry: ConvGeometry) -> list[int]:
    return [*geometry.kernel, *geometry.stride, *geometry.dilation, *geometry.padding, geometry.groups]


def geometry_of(values: list[int]) -> ConvGeometry:
    kh, kw, sh, sw, dh, dw, top, bottom, left, right, groups = values
    return ConvGeometry((kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right), groups)


def conv2d(x, values, layout, bias, geometry: ConvGeometry, grow_buffers=None, keep: int = 0):
    """x: [N, C, H, W]; values: [nnzb, b, b]; layout: the weight's ``BlockSparseLayout`` (``[out, C/groups *
    kh * kw]``); bias: [out] or None -> y: [N, out, OH, OW] (channels-last memory).  Grow scores, when asked
    for: each backward pass merges its best ``keep`` candidates into ``grow_buffers`` (see the module's
    docstring)."""
    scores, index, passes = grow_buffers if grow_buffers is not None else (None, None, None)
    return conv2d_op(x, values, bias, layout.topology(), layout.shape[0], geometry_list(geometry), scores, index,
                     passes, keep)


def python_kernel(x: Tensor, values: Tensor, bias: Optional[Tensor], topology: list[Tensor], out_channels: int,
             geometry: list[int], scores: Optional[Tensor], index: Optional[Tensor], passes: Optional[Tensor],
             keep: int) -> Tensor:
    return compute.forward(x, values, bias, topology, out_channels, geometry_of(geometry))


def _forward_fake(x, values, bias, topology, out_channels, geometry, scores, index, passes, keep):
    out_h, out_w = geometry_of(geometry).output_size(x.shape[2], x.shape[3])
    return x.new_empty(x.shape[0], out_h, out_w, out_channels).permute(0, 3, 1, 2)


def backward_python_kernel(grad_y: Tensor, x: Tensor, values: Tensor, topology: list[Tensor], out_channels: int,
                     geometry: list[int], has_bias: bool, need_x: bool, need_values: bool, need_bias: bool,
                     scores: Optional[Tensor], index: Optional[Tensor], passes: Optional[Tensor],
                     keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_values, grad_bias)``; a gradient that is not needed is an empty tensor."""
    grow = (scores, index, passes, keep) if scores is not None else None
    grad_x, grad_values, grad_bias = compute.backward(grad_y, x, values, topology, out_channels, geometry_of(geometry),
                                                      has_bias, need_x, need_values, need_bias, grow)
    if grad_x is not None:  # in x's own memory format, as the fake says
        grad_x = torch.empty_like(x).copy_(grad_x)
    return tuple(x.new_empty(0) if g is None else g for g in (grad_x, grad_values, grad_bias))


def _backward_fake(grad_y, x, values, topology, out_channels, geometry, has_bias, need_x, need_values, need_bias,
                   scores, index, passes, keep):
    return (torch.empty_like(x) if need_x else x.new_empty(0), torch.empty_like(values) if need_values else
            values.new_empty(0), x.new_empty(out_channels) if (has_bias and need_bias) else x.new_empty(0))


conv2d_backward_op = _library.define("conv2d_backward", backward_python_kernel, _backward_fake,
                                     mutates_args=("scores", "index", "passes"))


def _setup_context(ctx, inputs, output):
    x, values, bias, topology, out_channels, geometry, scores, index, passes, keep = inputs
    ctx.save_for_backward(x, values, *topology)
    ctx.out_channels, ctx.geometry, ctx.has_bias = out_channels, geometry, bias is not None
    ctx.grow = (scores, index, passes, keep)
    backends.remember_forced(ctx)


def _backward(ctx, grad_y):
    x, values, *topology = ctx.saved_tensors
    need_x, need_values, need_bias = ctx.needs_input_grad[:3]
    with backends.forced_again(ctx):
        grad_x, grad_values, grad_bias = conv2d_backward_op(
            grad_y, x, values, topology, ctx.out_channels, ctx.geometry, ctx.has_bias, need_x, need_values,
            need_bias, *ctx.grow)
    grads = (grad_x if need_x else None, grad_values if need_values else None,
             grad_bias if (ctx.has_bias and need_bias) else None)
    if torch.is_grad_enabled():  # create_graph=True
        grads = tuple(None if g is None else _NoDoubleBackward.apply(g) for g in grads)
    return grads + (None,) * 7


conv2d_op = _library.define("conv2d", python_kernel, _forward_fake, setup_context=_setup_context,
                            backward=_backward)


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
