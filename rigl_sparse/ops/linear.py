"""``linear``: a block-sparse linear layer's forward and backward, the way the modules call it.

Under ``torch.compile``, fake tensors or ``torch.func`` transforms, this is the
``rigl_sparse::dsd`` custom op with its registered autograd (``dds``/``sdd``).
In plain eager mode it is an ``autograd.Function`` that calls the same backend
implementations directly: the custom-op dispatcher's per-call cost (several
hundred microseconds per training step) would otherwise exceed the kernels' own
time on small and very sparse layers.  Both paths share the argument checks, the
backend selection and the implementations, and the tests hold them equal.
"""

from __future__ import annotations

import functools

import torch
from torch._subclasses.fake_tensor import FakeTensor

from rigl_sparse import backends
from rigl_sparse.ops import _common
from rigl_sparse.ops.dsd import check_arguments as check_dsd_arguments
from rigl_sparse.ops.dsd import gradients as dsd_gradients


def linear(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features: int):
    """x: [M, K]; values: [nnzb, b, b]; bias: [out] or None; topology int32 -> y: [M, out]."""
    if needs_custom_op(x, values):
        return torch.ops.rigl_sparse.dsd(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr,
                                         col_slots, out_features)
    check_dsd_arguments(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features)
    return _EagerLinear.apply(x, values, bias, (block_row, block_col, row_ptr, row_slots, col_ptr, col_slots),
                              out_features)


def needs_custom_op(*tensors) -> bool:
    if torch.compiler.is_compiling():
        return True
    return any(isinstance(t, FakeTensor) or t.device.type == "meta"
               or torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _run(op: str, *args):
    return _common.dispatch(op, args[0].device, args)(*args).contiguous()


class _EagerLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, topology, out_features):
        ctx.save_for_backward(x, values, *topology)
        ctx.has_bias = bias is not None
        backends.remember_forced(ctx)
        return _run("dsd", x, values, bias, *topology, out_features)

    @staticmethod
    def backward(ctx, grad_y):
        x, values, *topology = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable through the custom ops
            dds, sdd = torch.ops.rigl_sparse.dds, torch.ops.rigl_sparse.sdd
        else:
            dds, sdd = functools.partial(_run, "dds"), functools.partial(_run, "sdd")
        with backends.forced_again(ctx):
            grads = dsd_gradients(grad_y.contiguous(), x, values, topology, ctx.needs_input_grad, ctx.has_bias, dds,
                                  sdd)
        return grads + (None, None)
