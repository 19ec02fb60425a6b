"""``rigl_sparse::sdd`` — weight gradient on the active blocks: ``dvalues[s] = dY[:, rows(s)].T @ X[:, cols(s)]``.

Dense ``dY`` and ``X``, sparse output with the layer's topology.  Differentiable
(for double backward): ``d(dY)`` is ``dsd(X, G)``, ``dX`` is ``dds(dY, G)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rigl_sparse import _checks, backends
from rigl_sparse.topology import Topology
from rigl_sparse.ops import _common, _library
from rigl_sparse.ops.sdd import reference


def _check(dy, x, topology, block_size):
    _checks.check_gradient_pair(dy, x, block_size)
    _checks.check_topology_args(None, topology, block_size, x.device)
    grid = Topology(*topology)
    _checks.check_dim_matches_grid("dy.shape[1] (out_features)", dy.shape[1], grid.rows, block_size)
    _checks.check_dim_matches_grid("x.shape[1] (in_features)", x.shape[1], grid.cols, block_size)
    _checks.check_same_device(dy=dy, x=x)


def python_kernel(dy: Tensor, x: Tensor, topology: list[Tensor], block_size: int) -> Tensor:
    """dy: [M, out]; x: [M, K] (same dtype); topology: the layout's six int32 tensors -> dvalues:
    [nnzb, b, b] (x's dtype)."""
    _check(dy, x, topology, block_size)
    return _common.run("sdd", dy, x, *topology, block_size)


def _fake(dy, x, topology, block_size):
    _check(dy, x, topology, block_size)
    return x.new_empty(Topology(*topology).nnzb, block_size, block_size)


def _setup_context(ctx, inputs, output):
    dy, x, topology, _ = inputs
    ctx.save_for_backward(dy, x, *topology)
    backends.remember_forced(ctx)


def _backward(ctx, grad_values):
    dy, x, *topology = ctx.saved_tensors
    grad_dy = grad_x = None
    with backends.forced_again(ctx):
        if ctx.needs_input_grad[0]:
            grad_dy = torch.ops.rigl_sparse.dsd(x, grad_values, None, topology, dy.shape[1])
        if ctx.needs_input_grad[1]:
            grad_x = torch.ops.rigl_sparse.dds(dy, grad_values, topology, x.shape[1])
    return grad_dy, grad_x, None, None


sdd_op = _library.define("sdd", python_kernel, _fake, setup_context=_setup_context, backward=_backward)


def sdd(dy: Tensor, x: Tensor, layout) -> Tensor:
    """``dvalues[s] = dY[:, rows(s)].T @ X[:, cols(s)]`` on the active blocks of ``layout``: dy: [M, out]; x:
    [M, K] -> [nnzb, b, b].  Differentiable in ``dy`` and ``x``."""
    return sdd_op(dy, x, layout.topology(), layout.block_size)


def _reference(dy, x, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, block_size):
    return reference.sdd(dy, x, block_row, block_col, block_size)


_common.register_kernels("sdd", _reference, dtype_of=lambda dy, x, *_: x.dtype,
                         block_size_of=lambda *args: args[-1])

__all__ = ["sdd", "sdd_op"]
