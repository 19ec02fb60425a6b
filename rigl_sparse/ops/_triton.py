"""What the Triton kernels share: interpreter detection and autotuning on the GPU only.

Imported only when a Triton kernel is about to run, never at package import.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors through Triton's
interpreter with one fixed configuration; on a GPU each kernel is autotuned per
problem key.
"""

from __future__ import annotations

import os
import time

import triton

SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Below this many multiply-adds a launch takes the first config instead of autotuning: tuning costs a
# compile per config, which small problems (tests, tiny layers) never pay back.  Each kernel's first
# config is therefore a modest one that fits shared memory for every dtype and block size.
AUTOTUNE_MIN_MACS = 1 << 30
# RIGL_SPARSE_TRITON_AUTOTUNE=always autotunes every launch, below the threshold and under the interpreter
# too (timed by the wall clock there), so that tests reach the configurations and the autotuner's handling of
# the kernels' outputs (a kernel that accumulates into its output must be reset before each trial).
AUTOTUNE_VARIABLE = "RIGL_SPARSE_TRITON_AUTOTUNE"


def autotune_forced() -> bool:
    value = os.environ.get(AUTOTUNE_VARIABLE, "")
    if value not in ("", "always"):
        raise ValueError(f"{AUTOTUNE_VARIABLE}={value!r}: set it to 'always' or leave it unset")
    return value == "always"


def _wall_clock_bench(fn, quantiles=None, **_):
    start = time.perf_counter()
    fn()
    elapsed = (time.perf_counter() - start) * 1e3
    return [elapsed] * len(quantiles) if quantiles else elapsed


def tuned(kernel, configs: list[triton.Config], key: list[str], fixed: dict, reset_to_zero: list[str] | None = None):
    """``kernel`` autotuned over ``configs`` on the GPU; under the interpreter, ``fixed`` meta-parameters.

    Returns ``launch(grid, *args, macs=..., **kwargs)``, where ``grid`` takes the
    chosen meta-parameters and ``macs`` (the problem's multiply-adds) decides
    whether the launch is worth autotuning.  ``reset_to_zero`` names the
    arguments the kernel accumulates into (atomic adds): the autotuner zeroes
    them before each trial, so the result does not depend on how many it ran.
    """
    first = configs[0]
    default = dict(first.kwargs, num_warps=first.num_warps, num_stages=first.num_stages)
    autotuned = []

    def autotuner():
        if not autotuned:
            timing = {"do_bench": _wall_clock_bench} if interpreting() else {}
            autotuned.append(triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero, **timing)(kernel))
        return autotuned[0]

    def launch(grid, *args, macs=0, **kwargs):
        if autotune_forced():
            return autotuner()[grid](*args, **kwargs)
        if interpreting():
            return kernel[grid](*args, **kwargs, **fixed)
        if macs < AUTOTUNE_MIN_MACS:
            return kernel[grid](*args, **kwargs, **default)
        return autotuner()[grid](*args, **kwargs)

    return launch


def dot_in_fp32(dtype) -> bool:
    """Whether to upcast ``tl.dot`` operands: Triton's CPU interpreter computes bf16 dots wrongly."""
    import torch

    return interpreting() and dtype == torch.bfloat16


def check_block_size(block_size: int) -> None:
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"the triton backend needs block_size in {SUPPORTED_BLOCK_SIZES}, got {block_size}; "
                         "use the reference backend for other block sizes")
