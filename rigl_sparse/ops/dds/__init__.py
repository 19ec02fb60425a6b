"""``rigl_sparse::dds`` — input gradient of a block-sparse linear layer: ``dX = dY @ W``.

Dense ``dY``, sparse weight, dense ``dX``; kernels walk the column view.
Differentiable (for double backward): ``d(dY)`` is ``dsd``, ``dvalues`` is ``sdd``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rigl_sparse import _checks, backends
from rigl_sparse.topology import Topology
from rigl_sparse.ops import _common, _library
from rigl_sparse.ops.dds import reference


def _check(dy, values, topology, in_features):
    _checks.check_matrix("dy", dy)
    _checks.check_topology_args(values, topology, values.shape[-1] if values.dim() == 3 else -1, dy.device)
    if values.dtype != dy.dtype:
        raise TypeError(f"values ({values.dtype}) and dy ({dy.dtype}) must have the same dtype")
    b, grid = values.shape[1], Topology(*topology)
    _checks.check_dim_matches_grid("dy.shape[1] (out_features)", dy.shape[1], grid.rows, b)
    _checks.check_dim_matches_grid("in_features", in_features, grid.cols, b)


def python_kernel(dy: Tensor, values: Tensor, topology: list[Tensor], in_features: int) -> Tensor:
    """dy: [M, out]; values: [nnzb, b, b] (dy's dtype); topology: the layout's six int32 tensors
    -> dx: [M, in_features]."""
    _check(dy, values, topology, in_features)
    return _common.run("dds", dy, values, *topology, in_features)


def _fake(dy, values, topology, in_features):
    _check(dy, values, topology, in_features)
    return dy.new_empty(dy.shape[0], in_features)


def _setup_context(ctx, inputs, output):
    dy, values, topology, _ = inputs
    ctx.save_for_backward(dy, values, *topology)
    backends.remember_forced(ctx)


def _backward(ctx, grad_dx):
    dy, values, *topology = ctx.saved_tensors
    grad_dy = grad_values = None
    with backends.forced_again(ctx):
        if ctx.needs_input_grad[0]:
            grad_dy = torch.ops.rigl_sparse.dsd(grad_dx, values, None, topology, dy.shape[1])
        if ctx.needs_input_grad[1]:
            grad_values = torch.ops.rigl_sparse.sdd(dy, grad_dx, topology, values.shape[1])
    return grad_dy, grad_values, None, None


dds_op = _library.define("dds", python_kernel, _fake, setup_context=_setup_context, backward=_backward)


def dds(dy: Tensor, values: Tensor, layout) -> Tensor:
    """``dX = dY @ W`` for the block-sparse ``W`` given by ``values`` on ``layout``: dy: [M, out] -> dx:
    [M, layout.shape[1]].  Differentiable in ``dy`` and ``values``."""
    return dds_op(dy, values, layout.topology(), layout.shape[1])


def _reference(dy, values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, in_features):
    return reference.dds(dy, values, block_row, block_col, in_features)


_common.register_kernels("dds", _reference, dtype_of=lambda dy, *_: dy.dtype,
                         block_size_of=lambda dy, values, *_: values.shape[1])

__all__ = ["dds", "dds_op"]
