"""Argument checks and small helpers shared by the ops (no kernels here)."""

from __future__ import annotations

import math

import torch

from rigl_sparse import backends

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dispatch(op: str, device: torch.device, args: tuple):
    """The implementation of ``op`` selected for ``device`` and ``args`` by the backend registry.

    Implementations choose their own compute and accumulation dtypes, so under ``torch.autocast``
    they run with it switched off (the layers cast their operands to the autocast dtype first)."""
    fn = backends.select(op, device.type, args)[1]
    if not torch.is_autocast_enabled(device.type):
        return fn

    def without_autocast(*call_args):
        with torch.autocast(device.type, enabled=False):
            return fn(*call_args)

    return without_autocast


def triton_supports(dtype: torch.dtype, block_size: int) -> str | None:
    """Why the Triton kernels cannot take ``dtype``/``block_size``, or None."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {dtype} (Triton kernels take float16, bfloat16, float32)"
    if block_size not in (16, 32, 64, 128):
        return f"block_size {block_size} (Triton kernels take 16, 32, 64, 128)"
    return None


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_topology_args(values_or_none, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, block_size):
    """Shape/dtype checks that need no data (they also run on fake tensors)."""
    topo = dict(block_row=block_row, block_col=block_col, row_ptr=row_ptr, row_slots=row_slots,
                col_ptr=col_ptr, col_slots=col_slots)
    for name, t in topo.items():
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    nnzb = block_row.shape[0]
    for name in ("block_col", "row_slots", "col_slots"):
        if topo[name].shape[0] != nnzb:
            raise ValueError(f"{name} has {topo[name].shape[0]} entries but block_row has {nnzb}")
    if values_or_none is not None:
        v = values_or_none
        check_float("values", v)
        if v.dim() != 3 or v.shape[0] != nnzb or v.shape[1] != block_size or v.shape[2] != block_size:
            raise ValueError(f"values must have shape [nnzb={nnzb}, {block_size}, {block_size}], got {tuple(v.shape)}")


def check_dim_matches_grid(name: str, size: int, n_blocks: int, block_size: int) -> None:
    if math.ceil(size / block_size) != n_blocks:
        raise ValueError(
            f"{name}={size} does not fit a grid of {n_blocks} blocks of size {block_size} "
            f"(needs ceil({name}/{block_size}) == {n_blocks})"
        )


def check_same_device(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
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
