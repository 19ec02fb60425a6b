"""Reference ``update_topology``: move dropped slots to newly grown blocks, in place.

Writes the new coordinates into ``slots``, zeroes those slots' values and
rebuilds the row and column views, all on the tensors' device.  Everything is
checked before the first write, so a rejected update leaves the topology as it
was.
"""

from __future__ import annotations

import torch

from rigl_sparse.layout import rebuild_views


@torch.no_grad()
def update_topology(values, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, slots, new_row, new_col):
    """values: [nnzb, b, b]; topology int32; slots/new_row/new_col: [n] int64. Returns nothing."""
    n_rows, n_cols = row_ptr.numel() - 1, col_ptr.numel() - 1
    nnzb = block_row.numel()
    slots, new_row, new_col = slots.long(), new_row.long(), new_col.long()
    if slots.numel():
        if int(slots.min()) < 0 or int(slots.max()) >= nnzb:
            raise ValueError(f"update_topology: slots must lie in [0, {nnzb})")
        if torch.unique(slots).numel() != slots.numel():
            raise ValueError("update_topology: slots holds duplicates")
        if int(new_row.min()) < 0 or int(new_row.max()) >= n_rows:
            raise ValueError(f"update_topology: new_row must lie in [0, {n_rows})")
        if int(new_col.min()) < 0 or int(new_col.max()) >= n_cols:
            raise ValueError(f"update_topology: new_col must lie in [0, {n_cols})")
    flat = block_row.long() * n_cols + block_col.long()
    flat[slots] = new_row * n_cols + new_col
    if torch.unique(flat).numel() != nnzb:
        raise ValueError("update_topology: the new blocks collide with each other or with kept blocks")
    values[slots] = 0
    block_row[slots] = new_row.to(torch.int32)
    block_col[slots] = new_col.to(torch.int32)
    rebuild_views(block_row, block_col, row_ptr, row_slots, col_ptr, col_slots)
