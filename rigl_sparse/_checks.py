"""Argument checks shared by the whole package (one private module; its names are public to the package).

Each check raises ``TypeError`` or ``ValueError`` with a message that names the argument and what was
expected; none returns anything.
"""

from __future__ import annotations

import math
import numbers

import torch

from rigl_sparse.topology import Topology

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TOPOLOGY = Topology._fields  # the names of the layout's six topology tensors, in the order the ops take them


def check_density(density) -> None:
    """``density`` is a number in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a float in (0, 1], got {type(density).__name__} {density!r}")
    if not (0.0 < float(density) <= 1.0):  # also rejects NaN
        raise ValueError(f"density must be in (0, 1], got {density!r}")


def check_generator(generator) -> None:
    """``generator`` is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = f" (a seed: generator=torch.Generator().manual_seed({generator}))" if isinstance(generator, int) else ""
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__} "
                        f"{generator!r}{hint}")


def check_positive_int(name: str, value) -> None:
    """``value`` (the argument ``name``) is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


@torch.no_grad()
def check_topology(shape, block_size, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots) -> None:
    """Raise ``ValueError`` naming the first broken invariant of a topology (its six int32 tensors)."""
    R, C = math.ceil(shape[0] / block_size), math.ceil(shape[1] / block_size)
    tensors = dict(zip(TOPOLOGY, (block_row, block_col, row_ptr, row_slots, col_ptr, col_slots)))
    device = block_row.device
    nnzb = block_row.numel()
    for name, t in tensors.items():
        if t.dtype != torch.int32:
            raise ValueError(f"layout.{name} must be int32, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"layout.{name} is on {t.device}, block_row on {device}")
        if t.dim() != 1:
            raise ValueError(f"layout.{name} must be 1-D, got shape {tuple(t.shape)}")
    expected = {"block_col": nnzb, "row_slots": nnzb, "col_slots": nnzb, "row_ptr": R + 1, "col_ptr": C + 1}
    for name, n in expected.items():
        if tensors[name].numel() != n:
            raise ValueError(f"layout.{name} has {tensors[name].numel()} entries, expected {n}")
    if nnzb == 0:
        raise ValueError("layout has no active block (nnzb == 0)")
    row, col = block_row.long(), block_col.long()
    if int(row.min()) < 0 or int(row.max()) >= R:
        raise ValueError(f"layout.block_row out of range [0, {R}): min {int(row.min())}, max {int(row.max())}")
    if int(col.min()) < 0 or int(col.max()) >= C:
        raise ValueError(f"layout.block_col out of range [0, {C}): min {int(col.min())}, max {int(col.max())}")
    if torch.unique(row * C + col).numel() != nnzb:
        raise ValueError("layout holds duplicate blocks (two slots with the same (block_row, block_col))")
    check_view("row", row_ptr, row_slots, row, row * C + col, R)
    check_view("col", col_ptr, col_slots, col, col * R + row, C)


def check_view(kind, ptr, slots, major, order_key, n_major) -> None:
    """One view of a topology (``ptr`` over ``slots``) is consistent with the block coordinates."""
    nnzb = slots.numel()
    ptr = ptr.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != nnzb or bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"layout.{kind}_ptr must rise from 0 to nnzb={nnzb}")
    s = slots.long()
    if int(s.min()) < 0 or int(s.max()) >= nnzb or torch.unique(s).numel() != nnzb:
        raise ValueError(f"layout.{kind}_slots must be a permutation of the {nnzb} slots")
    if not torch.equal(torch.bincount(major, minlength=n_major), ptr[1:] - ptr[:-1]):
        raise ValueError(f"layout.{kind}_ptr does not match the block coordinates")
    key = order_key[s]
    if bool((key[1:] <= key[:-1]).any()):
        raise ValueError(f"layout.{kind}_slots is not sorted by block coordinates")


# ---------------------------------------------------------------- the ops' arguments
def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_topology_args(values_or_none, topology, block_size, device: torch.device) -> None:
    """Shape/dtype/device checks that need no data (they also run on fake tensors): ``topology`` holds the
    layout's six int32 tensors, on ``device`` (the device of the op's first operand), as does ``values``
    when given.  Every op call runs them, so the passing case reads each tensor's metadata once and builds
    no message."""
    if len(topology) != len(TOPOLOGY):
        raise ValueError(f"topology must hold the layout's {len(TOPOLOGY)} tensors ({', '.join(TOPOLOGY)}), "
                         f"got {len(topology)}")
    int32 = torch.int32
    for t in topology:
        if t.dtype != int32 or t.dim() != 1 or t.device != device:
            for name, t in zip(TOPOLOGY, topology):  # say which
                if t.dtype != int32:
                    raise TypeError(f"{name} must be int32, got {t.dtype}")
                if t.dim() != 1:
                    raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
                if t.device != device:
                    raise ValueError(f"all tensors must be on one device, got {name} on {t.device}, the operands "
                                     f"on {device}")
    block_row, block_col, _, row_slots, _, col_slots = topology
    nnzb = block_row.shape[0]
    if block_col.shape[0] != nnzb or row_slots.shape[0] != nnzb or col_slots.shape[0] != nnzb:
        for name, t in (("block_col", block_col), ("row_slots", row_slots), ("col_slots", col_slots)):
            if t.shape[0] != nnzb:
                raise ValueError(f"{name} has {t.shape[0]} entries but block_row has {nnzb}")
    if values_or_none is not None:
        v = values_or_none
        check_float("values", v)
        if v.dim() != 3 or v.shape[0] != nnzb or v.shape[1] != block_size or v.shape[2] != block_size:
            raise ValueError(f"values must have shape [nnzb={nnzb}, {block_size}, {block_size}], got {tuple(v.shape)}")
        if v.device != device:
            raise ValueError(f"all tensors must be on one device, got values on {v.device}, the operands on {device}")


def check_dim_matches_grid(name: str, size: int, n_blocks: int, block_size: int) -> None:
    if -(-size // block_size) != n_blocks:  # ceil(size / block_size), in integers
        raise ValueError(
            f"{name}={size} does not fit a grid of {n_blocks} blocks of size {block_size} "
            f"(needs ceil({name}/{block_size}) == {n_blocks})"
        )


def check_same_device(**tensors) -> None:
    """Every tensor given (None skipped) is on one device."""
    device = None
    for t in tensors.values():
        if t is not None:
            if device is None:
                device = t.device
            elif t.device != device:
                listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if t is not None)
                raise ValueError(f"all tensors must be on one device, got {listing}")


def check_matrix(name: str, t: torch.Tensor) -> None:
    check_float(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [M, features], got shape {tuple(t.shape)}")


def check_gradient_pair(dy: torch.Tensor, x: torch.Tensor, block_size: int) -> None:
    """The ``(dY, X)`` pair from which a weight gradient is formed (``sdd``, ``block_scores``)."""
    check_matrix("dy", dy)
    check_matrix("x", x)
    if dy.dtype != x.dtype:
        raise TypeError(f"dy ({dy.dtype}) and x ({x.dtype}) must have the same dtype")
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"dy and x must have the same number of rows, got {dy.shape[0]} and {x.shape[0]}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
