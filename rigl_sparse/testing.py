"""Test helpers shared by the test suite and by users checking a backend: tolerances and dense twins."""

from __future__ import annotations

import torch

from rigl_sparse.layout import BlockSparseLayout

# Tolerances of an op against the fp32 (fp64 for fp64) reference, per input dtype.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0):
    """``torch.testing.assert_close`` with this project's tolerance for ``dtype`` (times ``scale``)."""
    tol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def random_block_sparse(shape, block_size, density, *, dtype=torch.float32, device="cpu", seed=0):
    """A random layout and values ``[nnzb, b, b]`` with zero padding, for tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    layout = BlockSparseLayout.random(shape, block_size, density=density, generator=g, device=device)
    values = torch.randn(layout.nnzb, block_size, block_size, generator=g).to(device=device, dtype=dtype)
    pad = layout.padding_mask()
    if pad is not None:
        values[~pad] = 0
    return layout, values


def masked_dense_weight(layout: BlockSparseLayout, values: torch.Tensor) -> torch.Tensor:
    """The dense ``[out, K]`` weight equal to the sparse one (zeros off the active blocks)."""
    return layout.to_dense(values)
