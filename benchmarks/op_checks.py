"""Shared by the GPU probe and the GPU benchmark: one op on one case, checked by the tolerance rule.

A case is a random layout with values, ``x``, ``dy`` and a bias on one device.  ``check`` compares an
op's result with the exact result (float64, masked dense) by ``rigl_sparse.testing``'s rule, and
``block_scores`` by index against the exact score grid; both return the numbers the rule compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rigl_sparse import ops
from rigl_sparse.testing import (assert_close_to_exact, assert_top_k_matches, dense_results, error_bound,
                                 masked_dense_op, random_block_sparse)

OPS = ("dsd", "dds", "sdd", "block_scores")


@dataclass
class Case:
    layout: object
    values: torch.Tensor
    x: torch.Tensor
    dy: torch.Tensor
    bias: torch.Tensor
    k: int


def make_case(n_out: int, n_in: int, m: int, block_size: int, density: float, dtype, device, seed: int) -> Case:
    layout, values = random_block_sparse((n_out, n_in), block_size, density, dtype=dtype, device=device, seed=seed)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    x = torch.randn(m, n_in, generator=g, device=device).to(dtype)
    dy = torch.randn(m, n_out, generator=g, device=device).to(dtype)
    bias = torch.randn(n_out, generator=g, device=device).to(dtype)
    return Case(layout, values, x, dy, bias, max(1, int(0.3 * layout.nnzb)))


def run(op: str, case: Case):
    """``op`` on ``case`` with the backend in force (``rigl_sparse.use_backend``)."""
    layout = case.layout
    if op == "dsd":
        return ops.dsd(case.x, case.values, layout, case.bias)
    if op == "dds":
        return ops.dds(case.dy, case.values, layout)
    if op == "sdd":
        return ops.sdd(case.dy, case.x, layout)
    if op == "block_scores":
        return ops.block_scores(case.dy, case.x, layout, case.k)
    raise ValueError(f"unknown op {op!r}; one of {OPS}")


def dense_reference(op: str, case: Case):
    """(exact float64, torch's own result in the case's dtype) of a matmul op; computed once per case."""
    inputs = {"dsd": (case.x, case.values, case.bias), "dds": (case.dy, case.values), "sdd": (case.dy, case.x)}
    if op not in inputs:
        raise ValueError(f"{op} has no dense reference of one tensor")
    return dense_results(masked_dense_op(op, case.layout), *inputs[op])


def check(op: str, case: Case, result, reference=None) -> dict:
    """``{"ok": bool, "error": str or None, ...}`` with the largest error, its bound and torch's error."""
    try:
        if op == "block_scores":
            scores, index = result
            assert_top_k_matches(scores, index, case.dy, case.x, case.layout.block_row, case.layout.block_col,
                                 case.layout.block_size, case.k)
            return {"ok": True, "error": None}
        exact, baseline = reference if reference is not None else dense_reference(op, case)
        bound, _ = error_bound(exact, baseline, result.dtype)
        stats = {"max_error": (result.double() - exact).abs().max().item() if result.numel() else 0.0,
                 "bound": bound,
                 "torch_error": (baseline.double() - exact).abs().max().item() if result.numel() else 0.0}
        if op == "sdd" and (pad := case.layout.padding_mask()) is not None and not torch.all(result[~pad] == 0):
            return {"ok": False, "error": "sdd wrote into the padding of a ragged block", **stats}
        assert_close_to_exact(result, exact, baseline, name=op)
        return {"ok": True, "error": None, **stats}
    except AssertionError as err:
        return {"ok": False, "error": str(err).splitlines()[0][:300]}


def error_line(err: Exception, limit: int = 300) -> str:
    """``Type: first line of the message`` (an exception's message may be empty or many lines long)."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:limit]}"


def bitwise_equal(a, b) -> bool:
    """Two results (tensors or tuples of them) are the same bits, NaN included."""
    if isinstance(a, tuple):
        return all(bitwise_equal(x, y) for x, y in zip(a, b))
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.numel() == 0 or torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
