"""``rigl_sparse::update_topology`` — rewrite dropped slots with grown blocks, in place, on device.

Mutates ``values`` (the rewritten slots become zero) and the six topology
tensors.  ``nnzb`` and every tensor's storage stay the same, so optimizers,
CUDA graphs and compiled graphs keep working across updates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rigl_sparse import _checks, backends
from rigl_sparse.ops import _common
from rigl_sparse.ops.update_topology import reference


def _check(values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, slots, new_row, new_col):
    _checks.check_topology_args(values, (block_row, block_col, row_ptr, row_slots, col_ptr, col_slots),
                                values.shape[-1] if values.dim() == 3 else -1, values.device)
    for name, t in (("slots", slots), ("new_row", new_row), ("new_col", new_col)):
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if not (slots.shape == new_row.shape == new_col.shape):
        raise ValueError(f"slots, new_row and new_col must have one length, got {tuple(slots.shape)}, "
                         f"{tuple(new_row.shape)}, {tuple(new_col.shape)}")
    _checks.check_same_device(values=values, block_row=block_row, slots=slots, new_row=new_row, new_col=new_col)


@torch.library.custom_op(
    "rigl_sparse::update_topology",
    mutates_args=("values", "block_row", "block_col", "row_ptr", "row_slots", "col_ptr", "col_slots"),
)
def update_topology_op(values: Tensor, block_row: Tensor, block_col: Tensor, row_ptr: Tensor, row_slots: Tensor,
                    col_ptr: Tensor, col_slots: Tensor, slots: Tensor, new_row: Tensor, new_col: Tensor) -> None:
    """Move ``slots`` ([n] int) to blocks ``(new_row, new_col)``, zero their values, rebuild both views."""
    _check(values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, slots, new_row, new_col)
    args = (values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, slots, new_row, new_col)
    _common.dispatch("update_topology", values.device, args)(*args)


@update_topology_op.register_fake
def _(values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, slots, new_row, new_col):
    _check(values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, slots, new_row, new_col)


def update_topology(values: Tensor, layout, slots: Tensor, new_row: Tensor, new_col: Tensor) -> None:
    """Move ``slots`` ([n] int) of ``layout`` to blocks ``(new_row, new_col)`` in place: their ``values`` become
    zero and both views are rebuilt."""
    update_topology_op(values, *layout.topology(), slots, new_row, new_col)


backends.register_impl("update_topology", "reference", reference.update_topology)
# The bookkeeping is a handful of device-wide torch ops (scatter, argsort, bincount) that already run
# natively on either device; the triton, cuda and cpu backends use them as they are.
backends.register_impl("update_topology", "triton", reference.update_topology)
backends.register_impl("update_topology", "cpu", reference.update_topology)
backends.register_impl("update_topology", "cuda", reference.update_topology)

__all__ = ["update_topology", "update_topology_op"]
