"""``Topology``: the six int32 tensors that say which blocks of a block-sparse weight exist, by name.

Every op takes them whole, in this order (the order of ``Topology._fields``, which are also the names of the
layout's buffers and of their state-dict entries):

* ``block_row``, ``block_col`` ``[nnzb]``: each stored block's block row and block column, in storage order;
* ``row_ptr`` ``[R + 1]``, ``row_slots`` ``[nnzb]``: the row view (CSR over block rows: the storage slots of row
  ``r`` are ``row_slots[row_ptr[r]:row_ptr[r + 1]]``);
* ``col_ptr`` ``[C + 1]``, ``col_slots`` ``[nnzb]``: the column view, likewise.

The dispatcher hands an op's implementation a plain list; ``Topology(*topology)`` names it again.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Topology(NamedTuple):
    block_row: torch.Tensor
    block_col: torch.Tensor
    row_ptr: torch.Tensor
    row_slots: torch.Tensor
    col_ptr: torch.Tensor
    col_slots: torch.Tensor

    @property
    def nnzb(self) -> int:
        """Stored blocks."""
        return self.block_row.shape[0]

    @property
    def rows(self) -> int:
        """Block rows of the grid (``R``)."""
        return self.row_ptr.shape[0] - 1

    @property
    def cols(self) -> int:
        """Block columns of the grid (``C``)."""
        return self.col_ptr.shape[0] - 1
