"""The block-sparse format: which ``b x b`` blocks of a ``[out, K]`` weight are active.

A layer's logical weight ``W[out, K]`` is cut into a grid of ``R x C`` blocks of
size ``b x b`` (``R = ceil(out / b)``, ``C = ceil(K / b)``).  Where ``b`` does not
divide a dimension the edge blocks are padded; the padding entries are kept at
zero, receive zero gradient from every op, and are never counted as parameters.

Only ``nnzb`` blocks are stored.  Slot ``s`` holds block ``(block_row[s],
block_col[s])``; its values live in ``values[s]`` (owned by the module, see
``rigl_sparse.nn``).  Slots are stable: a topology update rewrites coordinates
in place, so ``values`` and the optimizer state attached to it are never
reallocated.  Two sorted views serve the kernels:

* row view ``row_ptr[R + 1]``, ``row_slots[nnzb]``: the slots of block row ``r``
  are ``row_slots[row_ptr[r]:row_ptr[r + 1]]``, ordered by column;
* column view ``col_ptr[C + 1]``, ``col_slots[nnzb]``: likewise per block column,
  ordered by row.

All topology tensors are ``int32`` and live on the same device as the values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rigl_sparse._checks import TOPOLOGY, check_density, check_generator, check_positive_int, check_topology
from rigl_sparse.topology import Topology

__all__ = ["BlockSparseLayout", "block_count", "build_views", "check_topology", "rebuild_views"]

def block_count(density: float, n_blocks: int) -> int:
    """Number of active blocks for ``density`` of a grid of ``n_blocks`` (at least one)."""
    check_density(density)
    return min(n_blocks, max(1, round(density * n_blocks)))


class BlockSparseLayout(nn.Module):
    """Topology of one block-sparse weight (buffers only; the values live in the layer).

    Args:
        shape: logical weight shape ``(out, K)``.
        block_size: ``b``; any positive int on the reference path.
        block_row: ``[nnzb] int`` block row of each slot.
        block_col: ``[nnzb] int`` block column of each slot.
    """

    block_row: torch.Tensor
    block_col: torch.Tensor
    row_ptr: torch.Tensor
    row_slots: torch.Tensor
    col_ptr: torch.Tensor
    col_slots: torch.Tensor

    def __init__(self, shape: tuple[int, int], block_size: int, block_row: torch.Tensor, block_col: torch.Tensor):
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"shape must be (out, K), got {tuple(shape)}")
        check_positive_int("shape[0] (out)", shape[0])
        check_positive_int("shape[1] (K)", shape[1])
        check_positive_int("block_size", block_size)
        self.shape = (int(shape[0]), int(shape[1]))
        self.block_size = int(block_size)
        if block_row.shape != block_col.shape or block_row.dim() != 1:
            raise ValueError(
                f"block_row and block_col must be 1-D of equal length, got {tuple(block_row.shape)} "
                f"and {tuple(block_col.shape)}"
            )
        if block_row.device != block_col.device:
            raise ValueError(f"block_row is on {block_row.device} but block_col is on {block_col.device}")
        for name, t in (("block_row", block_row), ("block_col", block_col)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
        device = block_row.device
        R, C = self.grid
        if device.type != "meta" and block_row.numel():  # checked before the views are built from them
            for name, t, limit in (("block_row", block_row, R), ("block_col", block_col, C)):
                low, high = int(t.min()), int(t.max())
                if low < 0 or high >= limit:
                    raise ValueError(f"{name} holds {low if low < 0 else high}, outside [0, {limit}) for shape "
                                     f"{self.shape} and block_size {self.block_size}")
            flat = block_row.long() * C + block_col.long()
            if flat.unique().numel() != flat.numel():
                raise ValueError("block_row/block_col name a block more than once (duplicate blocks)")
        self.register_buffer("block_row", block_row.to(torch.int32).clone())
        self.register_buffer("block_col", block_col.to(torch.int32).clone())
        self.register_buffer("row_ptr", torch.zeros(R + 1, dtype=torch.int32, device=device))
        self.register_buffer("row_slots", torch.zeros_like(self.block_row))
        self.register_buffer("col_ptr", torch.zeros(C + 1, dtype=torch.int32, device=device))
        self.register_buffer("col_slots", torch.zeros_like(self.block_row))
        if device.type != "meta":
            self.rebuild_views()

    # ----------------------------------------------------------------- constructors
    @classmethod
    def random(
        cls,
        shape: tuple[int, int],
        block_size: int,
        *,
        density: float,
        generator: torch.Generator | None = None,
        device=None,
    ) -> BlockSparseLayout:
        """A uniformly random topology with exactly ``block_count(density, R*C)`` blocks.

        The draw is made with ``generator`` on its own device (torch's default CPU
        generator if None), so a CPU seed gives the same topology on every device.
        """
        check_positive_int("block_size", block_size)
        check_generator(generator)
        R, C = math.ceil(shape[0] / block_size), math.ceil(shape[1] / block_size)
        nnzb = block_count(density, R * C)
        draw_device = generator.device if generator is not None else "cpu"
        flat = random_subset(R * C, nnzb, generator, draw_device).sort().values
        return cls.from_flat(shape, block_size, flat, device=device)

    @classmethod
    def from_flat(cls, shape, block_size: int, flat: torch.Tensor, *, device=None) -> BlockSparseLayout:
        """Layout whose slots hold the row-major block indices ``flat`` (in that order)."""
        C = math.ceil(shape[1] / block_size)
        device = torch.device(device) if device is not None else flat.device
        flat = flat.to(device=device, dtype=torch.int64)
        return cls(shape, block_size, flat // C, flat % C)

    # ----------------------------------------------------------------- properties
    @property
    def grid(self) -> tuple[int, int]:
        """``(R, C)``: number of block rows and block columns."""
        b = self.block_size
        return math.ceil(self.shape[0] / b), math.ceil(self.shape[1] / b)

    @property
    def padded_shape(self) -> tuple[int, int]:
        R, C = self.grid
        return R * self.block_size, C * self.block_size

    @property
    def nnzb(self) -> int:
        return self.block_row.numel()

    @property
    def n_blocks(self) -> int:
        R, C = self.grid
        return R * C

    @property
    def block_density(self) -> float:
        return self.nnzb / self.n_blocks

    def nnz(self) -> int:
        """Number of real (non-padding) weight entries in the active blocks."""
        out, K = self.shape
        b = self.block_size
        rows = (out - self.block_row.long() * b).clamp(max=b)
        cols = (K - self.block_col.long() * b).clamp(max=b)
        return int((rows * cols).sum())

    def density(self) -> float:
        """Fraction of the real weight entries that are active."""
        return self.nnz() / (self.shape[0] * self.shape[1])

    def flat_index(self) -> torch.Tensor:
        """``[nnzb] int64`` row-major block index of every slot."""
        return self.block_row.long() * self.grid[1] + self.block_col.long()

    def active_mask(self) -> torch.Tensor:
        """``[R, C] bool``: True where a block is active (O(blocks) memory)."""
        R, C = self.grid
        mask = torch.zeros(R * C, dtype=torch.bool, device=self.block_row.device)
        mask[self.flat_index()] = True
        return mask.view(R, C)

    def padding_mask(self) -> torch.Tensor | None:
        """``[nnzb, b, b] bool``: True on real entries; None when no dimension is padded."""
        return padding_mask(self.shape, self.block_size, self.block_row, self.block_col)

    def topology(self) -> Topology:
        """The six topology tensors, named, in the order the ops take them."""
        buffers = self._buffers  # every op call reads them: a dict lookup each, not Module.__getattr__
        return tuple.__new__(Topology, (buffers["block_row"], buffers["block_col"], buffers["row_ptr"],
                                        buffers["row_slots"], buffers["col_ptr"], buffers["col_slots"]))

    # ----------------------------------------------------------------- views
    @torch.no_grad()
    def rebuild_views(self) -> None:
        """Recompute the row and column views from ``block_row``/``block_col`` (on device)."""
        rebuild_views(self.block_row, self.block_col, self.row_ptr, self.row_slots, self.col_ptr, self.col_slots)

    # ----------------------------------------------------------------- checks
    @torch.no_grad()
    def validate(self, values: torch.Tensor | None = None) -> None:
        """Check every invariant of the format; raise ``ValueError`` naming the first broken one.

        With ``values`` (``[nnzb, b, b]``) also checks its shape and device and that
        padding entries are zero.
        """
        check_topology(self.shape, self.block_size, *self.topology())
        if values is not None:
            b = self.block_size
            if values.shape != (self.nnzb, b, b):
                raise ValueError(f"values must have shape {(self.nnzb, b, b)}, got {tuple(values.shape)}")
            if values.device != self.block_row.device:
                raise ValueError(f"values are on {values.device} but the topology is on {self.block_row.device}")
            pad = self.padding_mask()
            if pad is not None and bool((values.detach()[~pad] != 0).any()):
                raise ValueError("values hold non-zero entries in the padding of edge blocks")

    # ----------------------------------------------------------------- dense conversion
    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """Dense ``[out, K]`` weight from ``values [nnzb, b, b]`` (for export and tests)."""
        R, C = self.grid
        b = self.block_size
        grid = values.new_zeros(R * C, b, b)
        grid[self.flat_index()] = values
        dense = grid.view(R, C, b, b).permute(0, 2, 1, 3).reshape(R * b, C * b)
        return dense[: self.shape[0], : self.shape[1]]

    @staticmethod
    def block_norms(dense: torch.Tensor, block_size: int) -> torch.Tensor:
        """``[R, C]`` fp32 Frobenius norm of every ``b x b`` block of a dense ``[out, K]`` tensor."""
        return _blocked(dense.float(), block_size).norm(dim=(2, 3)).view(
            math.ceil(dense.shape[0] / block_size), math.ceil(dense.shape[1] / block_size)
        )

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, *, density: float, block_size: int
    ) -> tuple[BlockSparseLayout, torch.Tensor]:
        """Keep the ``block_count(density)`` blocks of largest Frobenius norm.

        Returns the layout and the ``[nnzb, b, b]`` values (same dtype and device as
        ``weight``).  Ties are broken by the lower row-major block index.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out, K], got shape {tuple(weight.shape)}")
        check_positive_int("block_size", block_size)
        norms = cls.block_norms(weight.detach(), block_size).flatten()
        nnzb = block_count(density, norms.numel())
        order = torch.sort(norms, descending=True, stable=True).indices[:nnzb]
        layout = cls.from_flat(tuple(weight.shape), block_size, order.sort().values)
        values = _blocked(weight.detach(), block_size).flatten(0, 1)[layout.flat_index()].clone()
        return layout, values

    @staticmethod
    def blocks_of(dense: torch.Tensor, block_size: int) -> torch.Tensor:
        """``[R * C, b, b]`` every ``b x b`` block of a dense ``[out, K]`` tensor in row-major block order,
        zero-padded past a ragged edge."""
        return _blocked(dense, block_size).flatten(0, 1)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """``[nnzb, b, b]`` blocks of a dense ``[out, K]`` tensor at this layout's slots."""
        if tuple(dense.shape) != self.shape:
            raise ValueError(f"dense tensor must have shape {self.shape}, got {tuple(dense.shape)}")
        return _blocked(dense, self.block_size).flatten(0, 1)[self.flat_index()]

    def extra_repr(self) -> str:
        R, C = self.grid
        return f"shape={self.shape}, block_size={self.block_size}, nnzb={self.nnzb}/{R * C}"

    # ----------------------------------------------------------------- state dict
    def check_state(self, state_dict: dict, prefix: str = "") -> None:
        """Raise ``ValueError`` naming the entry unless the topology under ``prefix`` in ``state_dict`` (where
        it is there at all) is one this layout can load: int32 tensors of its shapes, a valid topology."""
        keys = [prefix + name for name in TOPOLOGY]
        if not all(key in state_dict for key in keys):
            return  # missing entries are load_state_dict's to report
        incoming = [state_dict[key] for key in keys]
        for key, tensor, own in zip(keys, incoming, self.topology()):
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int32:
                got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"state dict entry {key!r} must be an int32 tensor, got {got}")
            if tensor.shape != own.shape:
                raise ValueError(
                    f"state dict entry {key!r} has shape {tuple(tensor.shape)}, this layout needs "
                    f"{tuple(own.shape)} (shape={self.shape}, block_size={self.block_size}, nnzb={self.nnzb})"
                )
        try:
            check_topology(self.shape, self.block_size, *incoming)
        except ValueError as err:
            raise ValueError(f"state dict under {prefix!r} holds an invalid topology: {err}") from None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.check_state(state_dict, prefix)  # before anything is copied: a bad checkpoint leaves it untouched
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# Grids of more blocks than this draw a few blocks among many without a permutation of them all.
_PERMUTED_BLOCKS = 1 << 24


def random_subset(n: int, k: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``k`` distinct indices in ``[0, n)``, uniformly at random, in the order drawn.  Up to 2**24 blocks, or
    when a sixteenth of them or more are drawn, the first ``k`` of a random permutation (so seeded topologies
    stay what they were); beyond, the first ``k`` distinct values of uniform draws, in O(k) memory (a 131072²
    layer in blocks of 4 at density 1e-5 would otherwise permute 8 GiB of indices)."""
    if n <= _PERMUTED_BLOCKS or 16 * k >= n:
        return torch.randperm(n, generator=generator, device=device)[:k]
    chosen = torch.empty(0, dtype=torch.long, device=device)
    while chosen.numel() < k:
        drawn = torch.cat([chosen, torch.randint(n, (2 * (k - chosen.numel()) + 16,), generator=generator,
                                                 device=device)])
        values, inverse = torch.unique(drawn, return_inverse=True)
        first = torch.full((values.numel(),), drawn.numel(), dtype=torch.long, device=device)
        first.scatter_reduce_(0, inverse, torch.arange(drawn.numel(), device=device), reduce="amin")
        chosen = drawn[first.sort().values]  # each value once, at its first draw, in draw order
    return chosen[:k]


def padding_mask(shape: tuple[int, int], block_size: int, block_row: torch.Tensor,
                 block_col: torch.Tensor) -> torch.Tensor | None:
    """``[nnzb, b, b] bool``: True on the real entries of the blocks at ``block_row``/``block_col`` of a
    ``shape`` weight; None when no dimension is padded."""
    out, K = shape
    b = block_size
    if out % b == 0 and K % b == 0:
        return None
    ar = torch.arange(b, device=block_row.device)
    rows = block_row.long()[:, None] * b + ar  # [nnzb, b]
    cols = block_col.long()[:, None] * b + ar
    return (rows < out)[:, :, None] & (cols < K)[:, None, :]


@torch.no_grad()
def build_views(block_row: torch.Tensor, block_col: torch.Tensor, n_rows: int, n_cols: int):
    """Row and column views of a topology, computed on its device.

    Returns ``row_ptr [R+1], row_slots [nnzb], col_ptr [C+1], col_slots [nnzb]`` (int32).
    """
    row, col = block_row.long(), block_col.long()
    row_slots = torch.argsort(row * n_cols + col)
    col_slots = torch.argsort(col * n_rows + row)
    zero = row.new_zeros(1)
    row_ptr = torch.cat([zero, torch.cumsum(torch.bincount(row, minlength=n_rows), 0)])
    col_ptr = torch.cat([zero, torch.cumsum(torch.bincount(col, minlength=n_cols), 0)])
    return tuple(t.to(torch.int32) for t in (row_ptr, row_slots, col_ptr, col_slots))


def rebuild_views(block_row, block_col, row_ptr, row_slots, col_ptr, col_slots) -> None:
    """Overwrite the four view tensors in place from the block coordinates."""
    views = build_views(block_row, block_col, row_ptr.numel() - 1, col_ptr.numel() - 1)
    for dst, src in zip((row_ptr, row_slots, col_ptr, col_slots), views):
        dst.copy_(src)


def _blocked(dense: torch.Tensor, b: int) -> torch.Tensor:
    """``[R, C, b, b]`` view of a dense ``[out, K]`` tensor, zero-padded to whole blocks."""
    out, K = dense.shape
    R, C = math.ceil(out / b), math.ceil(K / b)
    if (R * b, C * b) != (out, K):
        dense = torch.nn.functional.pad(dense, (0, C * b - K, 0, R * b - out))
    return dense.reshape(R, b, C, b).permute(0, 2, 1, 3)
