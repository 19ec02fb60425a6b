"""Small helpers shared by the ops (no kernels here; their argument checks are in ``rigl_sparse._checks``)."""

from __future__ import annotations

import types
from typing import Callable

import torch

from rigl_sparse import backends
from rigl_sparse.ops import cpu_extension as _cpu, cuda_extension as _cuda

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


def run(op: str, *args):
    """``op``'s selected implementation on ``args`` (the first a tensor on the op's device), contiguous."""
    return dispatch(op, args[0].device, args)(*args).contiguous()


def triton_supports(dtype: torch.dtype, block_size: int) -> str | None:
    """Why the Triton kernels cannot take ``dtype``/``block_size``, or None."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {dtype} (Triton kernels take float16, bfloat16, float32)"
    if block_size not in (16, 32, 64, 128):
        return f"block_size {block_size} (Triton kernels take 16, 32, 64, 128)"
    return None


# Why each compiled backend's kernels cannot take a (dtype, block size), or None: the one source of their limits.
KERNEL_LIMITS = types.MappingProxyType({"cpu": _cpu.supports, "triton": triton_supports, "cuda": _cuda.supports})


def register_kernels(op: str, reference: Callable, *, dtype_of: Callable[..., torch.dtype],
                     block_size_of: Callable[..., int]) -> None:
    """Registers ``op`` on the built-in backends: ``reference`` as the reference backend's, and on each compiled
    backend its kernel ``rigl_sparse.ops.<op>.<backend>.<op>`` (imported on first call) for the arguments that
    backend's ``KERNEL_LIMITS`` allow.  ``dtype_of(*args)`` and ``block_size_of(*args)`` read them from
    ``op``'s arguments; the block size also keys the choices measured on a GPU."""
    backends.register_block_size(op, block_size_of)
    backends.register_impl(op, "reference", reference)
    for backend, limits in KERNEL_LIMITS.items():
        backends.register_impl(op, backend, backends.lazy(f"rigl_sparse.ops.{op}.{backend}", op),
                               supports=lambda *args, limits=limits: limits(dtype_of(*args), block_size_of(*args)))
