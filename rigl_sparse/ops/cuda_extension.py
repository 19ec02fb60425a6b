"""Access to the CUDA extension ``rigl_sparse._C_cuda`` (built by setup.py from csrc/cuda).

The extension is built only where torch has CUDA and a CUDA toolkit is found;
``unavailable_reason`` says why it is missing elsewhere (``python -m
rigl_sparse.info`` prints it).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

CUDA_DTYPES = (torch.float16, torch.bfloat16)
CUDA_BLOCK_SIZES = (32, 64, 128)

# setup.py writes why the extension was not built here (no CUDA torch, no toolkit, a failed compile).
BUILD_NOTE = Path(__file__).resolve().parent.parent / "_cuda_build_note.txt"


def extension():
    return importlib.import_module("rigl_sparse._C_cuda")


def unavailable_reason() -> str | None:
    """None when the extension imports and a GPU is visible, else why not."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    try:
        extension()
    except ImportError as err:
        note = BUILD_NOTE.read_text().strip() if BUILD_NOTE.exists() else str(err)
        return (f"the extension rigl_sparse._C_cuda is not built ({note}); reinstall with "
                "`pip install --no-build-isolation -e .` where nvcc and a CUDA build of torch are present")
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def supports(dtype: torch.dtype, block_size: int) -> str | None:
    if dtype not in CUDA_DTYPES:
        return f"dtype {dtype} (the cuda kernels take float16, bfloat16)"
    if block_size not in CUDA_BLOCK_SIZES:
        return f"block_size {block_size} (the cuda kernels take {', '.join(map(str, CUDA_BLOCK_SIZES))})"
    return None
