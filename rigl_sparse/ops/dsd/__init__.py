"""``rigl_sparse::dsd`` — forward of a block-sparse linear layer: ``Y = X @ W.T (+ bias)``.

Dense input, sparse weight, dense output.  Differentiable in ``x``, ``values``
and ``bias``: ``dX`` is ``dds``, ``dvalues`` is ``sdd``, ``dbias`` a column sum.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rigl_sparse import _checks, backends
from rigl_sparse.topology import Topology
from rigl_sparse.ops import _common, _library
from rigl_sparse.ops.dsd import reference
from rigl_sparse.ops.dds import dds_op
from rigl_sparse.ops.sdd import sdd_op


def check_arguments(x, values, bias, topology, out_features):
    _checks.check_matrix("x", x)
    _checks.check_topology_args(values, topology, values.shape[-1] if values.dim() == 3 else -1, x.device)
    if values.dtype != x.dtype:
        raise TypeError(f"values ({values.dtype}) and x ({x.dtype}) must have the same dtype")
    b, grid = values.shape[1], Topology(*topology)
    _checks.check_dim_matches_grid("out_features", out_features, grid.rows, b)
    _checks.check_dim_matches_grid("x.shape[1] (in_features)", x.shape[1], grid.cols, b)
    if bias is not None:
        if bias.dtype != x.dtype:
            raise TypeError(f"bias ({bias.dtype}) and x ({x.dtype}) must have the same dtype")
        if bias.shape != (out_features,):
            raise ValueError(f"bias must have shape [{out_features}], got {tuple(bias.shape)}")
        _checks.check_same_device(x=x, bias=bias)


def python_kernel(x: Tensor, values: Tensor, bias: Optional[Tensor], topology: list[Tensor],
                  out_features: int) -> Tensor:
    """x: [M, K]; values: [nnzb, b, b] (x's dtype); bias: [out] or None; topology: the layout's six int32
    tensors -> y: [M, out]."""
    check_arguments(x, values, bias, topology, out_features)
    return _common.run("dsd", x, values, bias, *topology, out_features)


def _fake(x, values, bias, topology, out_features):
    check_arguments(x, values, bias, topology, out_features)
    return x.new_empty(x.shape[0], out_features)


def _run_dds(dy, values, topology, in_features):
    return _common.run("dds", dy, values, *topology, in_features)


def _run_sdd(dy, x, topology, block_size):
    return _common.run("sdd", dy, x, *topology, block_size)


def gradients(grad_y, x, values, topology, need_x, need_values, need_bias, dds, sdd):
    """``(dX, dvalues, dbias)`` of ``dsd`` (None where not needed), with ``dds(dy, values, topology,
    in_features)`` and ``sdd(dy, x, topology, block_size)`` (the operators or their implementations)."""
    grad_x = dds(grad_y, values, topology, x.shape[1]) if need_x else None
    grad_values = sdd(grad_y, x, topology, values.shape[1]) if need_values else None
    grad_bias = grad_y.sum(0, dtype=_common.accumulation_dtype(grad_y.dtype)).to(grad_y.dtype) if need_bias else None
    return grad_x, grad_values, grad_bias


def _check_backward(grad_y, x, values, topology):
    check_arguments(x, values, None, topology, grad_y.shape[1] if grad_y.dim() == 2 else -1)
    _checks.check_matrix("grad_y", grad_y)
    if grad_y.dtype != x.dtype:
        raise TypeError(f"grad_y ({grad_y.dtype}) and x ({x.dtype}) must have the same dtype")
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"grad_y and x must have the same number of rows, got {grad_y.shape[0]} and {x.shape[0]}")
    _checks.check_same_device(grad_y=grad_y, x=x)


def backward_python_kernel(grad_y: Tensor, x: Tensor, values: Tensor, topology: list[Tensor], need_x: bool,
                     need_values: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dX, dvalues, dbias)`` of ``dsd`` from ``grad_y`` [M, out] in one call (the ``dds`` and ``sdd``
    implementations and a column sum); a gradient that is not needed is an empty tensor."""
    _check_backward(grad_y, x, values, topology)
    grads = gradients(grad_y.contiguous(), x, values, topology, need_x, need_values, need_bias, _run_dds, _run_sdd)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


def _backward_fake(grad_y, x, values, topology, need_x, need_values, need_bias):
    _check_backward(grad_y, x, values, topology)
    return (torch.empty_like(x) if need_x else x.new_empty(0), torch.empty_like(values) if need_values else
            values.new_empty(0), grad_y.new_empty(grad_y.shape[1]) if need_bias else x.new_empty(0))


def _backward_composite(grad_y, x, values, topology, need_x, need_values, need_bias):
    """``dsd_backward`` from the differentiable ``dds`` and ``sdd`` operators (when it is differentiated)."""
    grads = gradients(grad_y, x, values, topology, need_x, need_values, need_bias, dds_op, sdd_op)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


dsd_backward = _library.define("dsd_backward", backward_python_kernel, _backward_fake,
                               composite=_backward_composite)


def _setup_context(ctx, inputs, output):
    x, values, bias, topology, _ = inputs
    ctx.save_for_backward(x, values, *topology)
    ctx.has_bias = bias is not None
    backends.remember_forced(ctx)


def _backward(ctx, grad_y):
    x, values, *topology = ctx.saved_tensors
    need_x, need_values, need_bias = ctx.needs_input_grad[:3]
    need_bias = need_bias and ctx.has_bias
    with backends.forced_again(ctx):
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable through dds and sdd
            grads = gradients(grad_y, x, values, topology, need_x, need_values, need_bias, dds_op, sdd_op)
        else:
            grads = dsd_backward(grad_y, x, values, topology, need_x, need_values, need_bias)
            grads = tuple(g if need else None for g, need in zip(grads, (need_x, need_values, need_bias)))
    return grads + (None, None)


dsd_op = _library.define("dsd", python_kernel, _fake, setup_context=_setup_context, backward=_backward)


def dsd(x: Tensor, values: Tensor, layout, bias: Optional[Tensor] = None) -> Tensor:
    """``Y = X @ W.T (+ bias)`` for the block-sparse ``W`` given by ``values`` on ``layout``.

    x: [M, K] (K = ``layout.shape[1]``); values: [nnzb, b, b] (x's dtype); layout: a ``BlockSparseLayout``;
    bias: [out] or None -> y: [M, out].  Differentiable in ``x``, ``values`` and ``bias``."""
    return dsd_op(x, values, bias, layout.topology(), layout.shape[0])


def _reference(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    return reference.dsd(x, values, bias, block_row, block_col, out_features)


_common.register_kernels("dsd", _reference, dtype_of=lambda x, *_: x.dtype,
                         block_size_of=lambda x, values, *_: values.shape[1])

__all__ = ["dsd", "dsd_op", "dsd_backward", "check_arguments", "gradients"]
