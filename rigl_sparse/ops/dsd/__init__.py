"""``rigl_sparse::dsd`` — forward of a block-sparse linear layer: ``Y = X @ W.T (+ bias)``.

Dense input, sparse weight, dense output.  Differentiable in ``x``, ``values``
and ``bias``: ``dX`` is ``dds``, ``dvalues`` is ``sdd``, ``dbias`` a column sum.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rigl_sparse import _checks, backends
from rigl_sparse.ops import _common, cpu_extension as _cpu, cuda_extension as _cuda
from rigl_sparse.ops.dsd import reference


def check_arguments(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    _checks.check_matrix("x", x)
    _checks.check_topology_args(values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots,
                                values.shape[-1] if values.dim() == 3 else -1)
    if values.dtype != x.dtype:
        raise TypeError(f"values ({values.dtype}) and x ({x.dtype}) must have the same dtype")
    b = values.shape[1]
    _checks.check_dim_matches_grid("out_features", out_features, row_ptr.shape[0] - 1, b)
    _checks.check_dim_matches_grid("x.shape[1] (in_features)", x.shape[1], col_ptr.shape[0] - 1, b)
    if bias is not None:
        if bias.dtype != x.dtype:
            raise TypeError(f"bias ({bias.dtype}) and x ({x.dtype}) must have the same dtype")
        if bias.shape != (out_features,):
            raise ValueError(f"bias must have shape [{out_features}], got {tuple(bias.shape)}")
    _checks.check_same_device(x=x, values=values, bias=bias, block_row=block_row, block_col=block_col,
                              row_ptr=row_ptr, row_slots=row_slots, col_ptr=col_ptr, col_slots=col_slots)


@torch.library.custom_op("rigl_sparse::dsd", mutates_args=())
def dsd(x: Tensor, values: Tensor, bias: Optional[Tensor], block_row: Tensor, block_col: Tensor, row_ptr: Tensor,
        row_slots: Tensor, col_ptr: Tensor, col_slots: Tensor, out_features: int) -> Tensor:
    """x: [M, K]; values: [nnzb, b, b] (x's dtype); bias: [out] or None; topology int32 -> y: [M, out]."""
    check_arguments(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features)
    args = (x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features)
    return _common.dispatch("dsd", x.device, args)(*args).contiguous()


@dsd.register_fake
def _(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    check_arguments(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features)
    return x.new_empty(x.shape[0], out_features)


def _setup_context(ctx, inputs, output):
    x, values, bias, *topology, out_features = inputs
    ctx.save_for_backward(x, values, *topology)
    ctx.has_bias = bias is not None
    backends.remember_forced(ctx)


def gradients(grad_y, x, values, topology, needs_input_grad, has_bias, dds, sdd):
    """``(dX, dvalues, dbias)`` of ``dsd`` (None where not needed), with the given ``dds``/``sdd`` callables."""
    grad_x = grad_values = grad_bias = None
    if needs_input_grad[0]:
        grad_x = dds(grad_y, values, *topology, x.shape[1])
    if needs_input_grad[1]:
        grad_values = sdd(grad_y, x, *topology, values.shape[1])
    if has_bias and needs_input_grad[2]:
        grad_bias = grad_y.sum(0, dtype=_common.accumulation_dtype(grad_y.dtype)).to(grad_y.dtype)
    return grad_x, grad_values, grad_bias


def _backward(ctx, grad_y):
    x, values, *topology = ctx.saved_tensors
    with backends.forced_again(ctx):
        grads = gradients(grad_y, x, values, topology, ctx.needs_input_grad, ctx.has_bias,
                          torch.ops.rigl_sparse.dds, torch.ops.rigl_sparse.sdd)
    return grads + (None,) * 7


dsd.register_autograd(_backward, setup_context=_setup_context)


def _reference(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    return reference.dsd(x, values, bias, block_row, block_col, out_features)


backends.register_block_size("dsd", lambda x, values, *_: values.shape[1])
backends.register_impl("dsd", "reference", _reference)
backends.register_impl("dsd", "cpu", backends.lazy("rigl_sparse.ops.dsd.cpu", "dsd"),
                       supports=lambda x, values, *_: _cpu.supports(x.dtype, values.shape[1]))
backends.register_impl("dsd", "triton", backends.lazy("rigl_sparse.ops.dsd.triton", "dsd"),
                       supports=lambda x, values, *_: _common.triton_supports(x.dtype, values.shape[1]))
backends.register_impl("dsd", "cuda", backends.lazy("rigl_sparse.ops.dsd.cuda", "dsd"),
                       supports=lambda x, values, *_: _cuda.supports(x.dtype, values.shape[1]))

__all__ = ["dsd"]
