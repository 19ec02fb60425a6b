"""Access to the native CPU extension ``rigl_sparse._C_cpu`` (built by setup.py from csrc/cpu).

The extension holds one build of the kernels per instruction set (``baseline``, and on x86-64
``avx2`` and ``avx512``).  On first use the widest variant this CPU runs is chosen, unless the
environment variable ``RIGL_SPARSE_CPU_ISA`` names one; a variant that is not built or that this
CPU lacks is refused with an error rather than replaced.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import torch

ISA_VARIABLE = "RIGL_SPARSE_CPU_ISA"
BUILD_NOTE = Path(__file__).resolve().parent.parent / "_cpu_build_note.txt"


@functools.cache
def _module():
    return importlib.import_module("rigl_sparse._C_cpu")


_selected: list[str] = []  # the variant chosen from the environment, once


def extension():
    """The extension, its instruction-set variant chosen (ValueError for a bad ``RIGL_SPARSE_CPU_ISA``)."""
    module = _module()
    if not _selected:
        select_isa_from_environment()
    return module


def select_isa_from_environment() -> str:
    """(Re)choose the variant from ``RIGL_SPARSE_CPU_ISA`` (unset or empty: the widest this CPU runs)."""
    requested = os.environ.get(ISA_VARIABLE, "").strip()
    chosen = _module().select_isa(requested)  # raises, changing nothing, for a variant it cannot use
    _selected[:] = [chosen]
    return chosen


_dispatch: dict[str, str | None] = {}  # "ops" / "error": what register_dispatch_kernels did


def register_dispatch_kernels(python_kernels: dict) -> None:
    """Make the native kernels of ``python_kernels``' ops (``{op: its Python kernel}``) the operators' CPU
    kernels on torch's dispatcher (csrc/cpu/dispatch.cpp): an eager call on CPU tensors then reaches them
    without a Python kernel; every call they do not take (a forced backend, another dtype or block size, a
    bad argument) goes to the op's Python kernel.  Without the extension, or with a variant the environment
    asks for and this build refuses, nothing is registered and the Python kernels run (``info`` says why)."""
    if unavailable_reason() is not None:
        _dispatch["error"] = unavailable_reason()
        return
    try:
        module = extension()
    except ValueError as err:  # a bad RIGL_SPARSE_CPU_ISA: every op keeps raising it, from its Python kernel
        _dispatch["error"] = str(err)
        return
    from rigl_sparse import backends

    module.register_kernels(python_kernels)
    backends.add_force_listener(module.enter_forced_backend, module.exit_forced_backend)
    _dispatch["ops"] = ", ".join(sorted(python_kernels))


def native_call_counts() -> tuple[int, int]:
    """(calls the registered CPU kernels ran, calls they handed to the ops' Python kernels) in this process;
    (0, 0) when none are registered."""
    return tuple(_module().call_counts()) if "ops" in _dispatch else (0, 0)


def dispatch_status() -> str:
    """For ``info``: which ops' native kernels torch's dispatcher calls directly, or why none."""
    if "ops" in _dispatch:
        return (f"registered with torch's dispatcher for CPU tensors: {_dispatch['ops']} (calls they do not take "
                "run the ops' Python kernels)")
    return f"not registered with torch's dispatcher (the ops' Python kernels run): {_dispatch.get('error')}"


def build_note() -> str | None:
    """What the install said about the native build (a missing variant, no OpenMP), if anything."""
    return BUILD_NOTE.read_text().strip() if BUILD_NOTE.exists() else None


def unavailable_reason() -> str | None:
    """None when the extension imports, else why not."""
    try:
        _module()
    except ImportError as err:
        note = build_note()
        why = f"at install: {note}" if note else str(err)
        return (f"the native extension rigl_sparse._C_cpu is not built ({why}); reinstall with "
                "`pip install --no-build-isolation .` on a machine with a C++ compiler")
    return None


def isa_status() -> dict:
    """The variants built, those this CPU runs, the one in use and why, and the threading."""
    module = extension()
    requested = os.environ.get(ISA_VARIABLE, "").strip()
    return {"built": list(module.isa_variants_built()), "runnable": list(module.isa_variants_runnable()),
            "active": module.active_isa(), "forced_by": f"{ISA_VARIABLE}={requested}" if requested else None,
            "tiles": module.tile_description(), "openmp": bool(module.openmp), "note": build_note()}


def kernel_path(op: str, rows: int, block_size: int, blocks_bytes: int = 0) -> str:
    """Which path the native kernels take for ``op`` (``dsd``, ``dds``, ``sdd``, ``dsd_backward``) on ``rows``
    rows of ``block_size`` blocks, for a layer whose blocks take ``blocks_bytes`` in fp32 (the backward's
    path depends on it), with this process's threads and instruction set, in words."""
    return extension().kernel_path(op, rows, block_size, blocks_bytes)


@functools.cache
def block_sizes() -> tuple[int, ...]:
    """The block sizes the kernels are instantiated for, as the extension states them (kernel_table.h)."""
    return tuple(_module().block_sizes())


@functools.cache
def dtypes() -> tuple[torch.dtype, ...]:
    """The element types the kernels are built for, as the extension states them (common.h)."""
    return tuple(getattr(torch, name) for name in _module().dtypes())


def dtype_names() -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes())


def supports(dtype: torch.dtype, block_size: int) -> str | None:
    if dtype not in dtypes():
        return f"dtype {dtype} (the cpu kernels take {dtype_names()})"
    if block_size not in block_sizes():
        return f"block_size {block_size} (the cpu kernels take {', '.join(map(str, block_sizes()))})"
    return None
