"""``linear``: a block-sparse linear layer's forward and backward, the way the modules call it.

It is the ``rigl_sparse::dsd`` custom op with its registered autograd (``dds``/``sdd``), in eager mode,
under ``torch.compile``, on fake tensors and under ``torch.func`` alike: the one way the kernels are
reached (``bench_overhead.py`` measures that the op costs no more per call than the ``autograd.Function``
path it replaced).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor


def linear(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features: int):
    """x: [M, K]; values: [nnzb, b, b]; bias: [out] or None; topology int32 -> y: [M, out]."""
    return torch.ops.rigl_sparse.dsd(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots,
                                     out_features)


def needs_custom_op(*tensors) -> bool:
    if torch.compiler.is_compiling():
        return True
    return any(isinstance(t, FakeTensor) or t.device.type == "meta"
               or torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)
