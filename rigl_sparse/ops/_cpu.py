"""Access to the native CPU extension ``rigl_sparse._C_cpu`` (built by setup.py from csrc/cpu)."""

from __future__ import annotations

import importlib

import torch

CPU_DTYPES = (torch.float32, torch.bfloat16)
CPU_BLOCK_SIZES = (4, 8, 16, 32, 64, 128)


def extension():
    return importlib.import_module("rigl_sparse._C_cpu")


def unavailable_reason() -> str | None:
    """None when the extension imports, else why not."""
    try:
        extension()
    except ImportError as err:
        return (f"the native extension rigl_sparse._C_cpu is not built ({err}); reinstall with "
                "`pip install --no-build-isolation -e .` on a machine with a C++ compiler")
    return None


def supports(dtype: torch.dtype, block_size: int) -> str | None:
    if dtype not in CPU_DTYPES:
        return f"dtype {dtype} (the cpu kernels take float32, bfloat16)"
    if block_size not in CPU_BLOCK_SIZES:
        return f"block_size {block_size} (the cpu kernels take {', '.join(map(str, CPU_BLOCK_SIZES))})"
    return None
