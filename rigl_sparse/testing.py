"""Test helpers shared by the test suite and by users checking a backend: the tolerance rule and dense twins.

The tolerance rule, one for every op and backend: a result's error against the exact result (computed in
float64) may be at most a few times the error that torch's own dense op makes in the same dtype, the
rounding a correct kernel cannot avoid.  Its largest absolute error may be at most ``ERROR_FACTOR`` times
torch's largest, and its mean absolute error at most ``MEAN_ERROR_FACTOR`` times torch's mean; each bound
adds a floor of ``FLOOR_ULPS`` units in the last place of the accumulator (fp32; fp64 for fp64 inputs)
times the exact values' largest (or mean) magnitude, which allows for another order of summation.  The
first bound catches a kernel wrong on a few entries, the second one slightly wrong on all of them.  fp32
inputs on a CUDA device are compared with the product of TF32-truncated inputs, because the GPU kernels
run fp32 as TF32.
"""

from __future__ import annotations

import math

import torch

from rigl_sparse.layout import BlockSparseLayout

ERROR_FACTOR = 3.0
MEAN_ERROR_FACTOR = 2.0
FLOOR_ULPS = 4.0


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def tf32_inputs(t: torch.Tensor) -> torch.Tensor:
    """fp32 ``t`` with the 13 low mantissa bits cleared (TF32 by truncation), in float64.

    A TF32 matmul rounds or truncates its fp32 operands to 10 mantissa bits and accumulates in fp32; the
    product of truncated operands, computed in float64 and rounded to fp32, errs at least as much as either
    (Triton truncates on Hopper, cuBLAS rounds), so it is the baseline of the GPU kernels' fp32 results.
    """
    return (t.float().contiguous().view(torch.int32) & -8192).view(torch.float32).double()


def round_toward_zero(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` rounded to bfloat16 by truncation, as Triton's CPU interpreter stores fp32 as bf16."""
    if dtype != torch.bfloat16:
        return t.to(dtype)
    return (t.float().contiguous().view(torch.int32) & -65536).view(torch.float32).to(dtype)


def dense_results(fn, *inputs, tf32: bool | None = None, toward_zero: bool = False):
    """``(exact, baseline)``: ``fn(*inputs)`` with every floating tensor in float64, and as given.

    ``fn`` computes the op with torch's dense ops (a masked dense weight in place of the sparse one);
    the baseline is what torch makes of it in the inputs' own dtype; for fp32 CUDA tensors (unless ``tf32``
    says otherwise) the product of TF32-truncated inputs (``tf32_inputs``).  ``toward_zero``: the baseline
    is computed in fp32 and rounded to bf16 by truncation, the rounding of Triton's CPU interpreter (a GPU
    rounds to nearest).
    """
    exact = fn(*(t.double() if _floating(t) else t for t in inputs))
    first = next(t for t in inputs if _floating(t))
    if tf32 is None:
        tf32 = first.dtype == torch.float32 and first.device.type == "cuda"
    with torch.no_grad():
        if tf32:
            baseline = fn(*(tf32_inputs(t) if _floating(t) else t for t in inputs)).float()
        elif toward_zero and first.dtype == torch.bfloat16:
            baseline = round_toward_zero(fn(*(t.float() if _floating(t) else t for t in inputs)), first.dtype)
        else:
            baseline = fn(*inputs)
    return exact, baseline


def error_bound(exact: torch.Tensor, baseline: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(largest, mean) absolute error a result in ``dtype`` may have against ``exact``."""
    err = (baseline.double() - exact.double()).abs()
    if err.numel() == 0:
        return 0.0, 0.0
    ulp = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps * FLOOR_ULPS
    size = exact.double().abs()
    return (ERROR_FACTOR * err.max().item() + ulp * size.max().item(),
            MEAN_ERROR_FACTOR * err.mean().item() + ulp * size.mean().item())


def assert_close_to_exact(actual: torch.Tensor, exact: torch.Tensor, baseline: torch.Tensor, *,
                          name: str = "result"):
    """``actual`` meets the tolerance rule against ``exact`` (float64) given torch's ``baseline``."""
    if tuple(actual.shape) != tuple(exact.shape):
        raise AssertionError(f"{name}: shape {tuple(actual.shape)}, expected {tuple(exact.shape)}")
    if actual.numel() == 0:
        return
    finite = torch.isfinite(exact)
    if not torch.equal(torch.isfinite(actual), finite):
        raise AssertionError(f"{name}: {int((torch.isfinite(actual) != finite).sum())} entries are non-finite "
                             "where the exact result is finite, or finite where it is not")
    if not torch.isfinite(baseline[finite]).all():
        raise AssertionError(f"{name}: torch's own {baseline.dtype} result is not finite where the exact one is: "
                             "the case leaves the dtype's range, so it cannot bound the error")
    actual, exact, baseline = actual[finite], exact[finite], baseline[finite]
    max_bound, mean_bound = error_bound(exact, baseline, actual.dtype)
    err = (actual.double() - exact.double()).abs()
    if err.max().item() > max_bound or err.mean().item() > mean_bound:
        worst = int(err.argmax())
        raise AssertionError(
            f"{name}: largest error {err.max().item():.3g} (bound {max_bound:.3g}), mean error "
            f"{err.mean().item():.3g} (bound {mean_bound:.3g}); torch's own {baseline.dtype} result errs "
            f"{(baseline.double() - exact).abs().max().item():.3g} at most; worst entry {worst}: "
            f"{actual.flatten()[worst].item()!r} against {exact.flatten()[worst].item()!r}")


def assert_matches_dense(actual: torch.Tensor, fn, *inputs, name: str = "result", tf32: bool | None = None,
                         toward_zero: bool = False):
    """``actual`` meets the tolerance rule for ``fn(*inputs)`` (see ``dense_results``)."""
    exact, baseline = dense_results(fn, *inputs, tf32=tf32, toward_zero=toward_zero)
    assert_close_to_exact(actual, exact, baseline, name=name)


def block_score_grid(dy: torch.Tensor, x: torch.Tensor, block_size: int, dtype: torch.dtype | None = None,
                     tf32: bool | None = None) -> torch.Tensor:
    """Every block's grow score (Frobenius norm of ``dy.T @ x`` over the block), flattened row-major.

    In float64 when ``dtype`` is None, else as torch's dense path forms it: the gradient in ``dtype``, its
    block norms in fp32.
    """
    if dtype is None:
        grad = dy.double().T @ x.double()
    else:
        tf32 = (dtype == torch.float32 and dy.device.type == "cuda") if tf32 is None else tf32
        with torch.no_grad():
            grad = (tf32_inputs(dy).T @ tf32_inputs(x)).float() if tf32 else (dy.to(dtype).T @ x.to(dtype)).float()
    b = block_size
    rows, cols = math.ceil(grad.shape[0] / b), math.ceil(grad.shape[1] / b)
    padded = grad.new_zeros(rows * b, cols * b)
    padded[: grad.shape[0], : grad.shape[1]] = grad
    return padded.view(rows, b, cols, b).pow(2).sum(dim=(1, 3)).sqrt().flatten()


def assert_top_k_matches(scores: torch.Tensor, index: torch.Tensor, dy: torch.Tensor, x: torch.Tensor,
                         block_row: torch.Tensor, block_col: torch.Tensor, block_size: int, k: int):
    """``block_scores``'s result is the top ``k`` of the inactive blocks, within the tolerance rule
    (``assert_top_k_of_grid`` against the score grids of ``dy.T @ x``)."""
    exact = block_score_grid(dy, x, block_size).cpu()
    cols = math.ceil(x.shape[1] / block_size)
    active = (block_row.long() * cols + block_col.long()).cpu()
    assert_top_k_of_grid(scores, index, exact, block_score_grid(dy, x, block_size, dy.dtype).cpu(), active, k,
                         dy.dtype)


def assert_top_k_of_grid(scores: torch.Tensor, index: torch.Tensor, exact: torch.Tensor, baseline: torch.Tensor,
                         active: torch.Tensor, k: int, dtype: torch.dtype):
    """Top-``k`` grow candidates against a flat score grid: ``exact`` (float64) and torch's ``baseline``.

    Each returned index names an inactive block (not in ``active``, flat indices) once, its score meets the
    rule against the exact score at that index, the scores descend, the tail past the inactive blocks is
    ``-inf`` / ``-1``, and the returned set is the exact top ``k`` except among blocks whose exact scores lie
    within the error bound of the ``k``-th (near-ties may swap).
    """
    if scores.shape != (k,) or index.shape != (k,):
        raise AssertionError(f"scores {tuple(scores.shape)} and index {tuple(index.shape)} must both be ({k},)")
    if scores.dtype != torch.float32 or index.dtype != torch.int64:
        raise AssertionError(f"scores must be float32 and index int64, got {scores.dtype} and {index.dtype}")
    exact, baseline = exact.double().cpu(), baseline.double().cpu()
    bound, _ = error_bound(exact, baseline, dtype)
    inactive = torch.ones(exact.numel(), dtype=torch.bool)
    inactive[active.long().cpu()] = False
    n = min(k, int(inactive.sum()))
    scores, index = scores.cpu(), index.cpu()
    got = index[:n].tolist()
    if not (torch.all(index[n:] == -1) and torch.all(scores[n:] == -math.inf)):
        raise AssertionError(f"past the {n} inactive blocks the tail must be -inf / -1, got {scores[n:].tolist()[:8]}"
                             f" / {index[n:].tolist()[:8]}")
    if len(set(got)) != n or not all(0 <= i < exact.numel() and inactive[i] for i in got):
        raise AssertionError(f"the {n} returned indices must be distinct inactive blocks in [0, {exact.numel()}): "
                             f"{got[:16]}")
    if not torch.all(scores[:n][:-1] >= scores[:n][1:]):
        raise AssertionError("the scores must descend")
    err = (scores[:n].double() - exact[index[:n]]).abs()
    if n and err.max().item() > bound:
        worst = int(err.argmax())
        raise AssertionError(f"score of block {got[worst]} is {scores[worst].item():.6g}, its exact score "
                             f"{exact[got[worst]].item():.6g} (error {err.max().item():.3g} > bound {bound:.3g})")
    if n:
        kth = exact[inactive].sort(descending=True).values[n - 1].item()
        returned = set(got)
        above = torch.nonzero(inactive & (exact > kth + 2 * bound)).flatten().tolist()
        missed = [i for i in above if i not in returned]
        if missed or exact[index[:n]].min().item() < kth - 2 * bound:
            raise AssertionError(f"the returned blocks are not the top {k}: missed {missed[:8]}, lowest returned exact "
                                 f"score {exact[index[:n]].min().item():.6g} against the k-th {kth:.6g} "
                                 f"(near-tie margin {2 * bound:.3g})")


def random_block_sparse(shape, block_size, density, *, dtype=torch.float32, device="cpu", seed=0):
    """A random layout and values ``[nnzb, b, b]`` with zero padding, for tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    layout = BlockSparseLayout.random(shape, block_size, density=density, generator=g, device=device)
    values = torch.randn(layout.nnzb, block_size, block_size, generator=g).to(device=device, dtype=dtype)
    pad = layout.padding_mask()
    if pad is not None:
        values[~pad] = 0
    return layout, values


def masked_dense_op(op: str, layout: BlockSparseLayout):
    """torch's dense computation of ``dsd``, ``dds`` or ``sdd`` over ``layout``'s masked weight, as a function of
    the op's floating inputs: ``(x, values, bias)``, ``(dy, values)`` and ``(dy, x)`` (for ``dense_results``)."""
    import torch.nn.functional as F

    ops = {"dsd": lambda x, v, bias=None: F.linear(x, layout.to_dense(v), bias),
           "dds": lambda dy, v: dy @ layout.to_dense(v),
           "sdd": lambda dy, x: layout.gather(dy.T @ x)}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    return ops[op]


def masked_dense_weight(layout: BlockSparseLayout, values: torch.Tensor) -> torch.Tensor:
    """The dense ``[out, K]`` weight equal to the sparse one (zeros off the active blocks)."""
    return layout.to_dense(values)
