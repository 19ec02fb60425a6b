"""Shared by the kernel-backend tests: random cases and the comparison of every op with the reference."""

import contextlib

import torch

import rigl_sparse as rs
from rigl_sparse import ops
from rigl_sparse.testing import assert_matches_dense, assert_top_k_matches, masked_dense_op, random_block_sparse


def make_case(out_f, in_f, b, density, M, dtype, device, seed=0):
    """A random layout, values, x, dy and bias on ``device``."""
    layout, values = random_block_sparse((out_f, in_f), b, density, dtype=dtype, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(M, in_f, generator=g).to(device, dtype)
    dy = torch.randn(M, out_f, generator=g).to(device, dtype)
    bias = torch.randn(out_f, generator=g).to(device, dtype)
    return layout, values, x, dy, bias


def run_all(backend, layout, values, x, dy, bias, k):
    """dsd, dds, sdd and block_scores of one case on ``backend`` ("selected": whatever the registry picks)."""
    with rs.use_backend(backend) if backend != "selected" else contextlib.nullcontext():
        return (ops.dsd(x, values, layout, bias), ops.dds(dy, values, layout), ops.sdd(dy, x, layout),
                ops.block_scores(dy, x, layout, k))


def check_results(results, layout, values, x, dy, bias, k, toward_zero=False):
    """``run_all``'s results meet the tolerance rule against torch's dense ops on the masked weight
    (``toward_zero``: bf16 rounded by truncation, as Triton's CPU interpreter rounds)."""
    y, dx, dv, (scores, index) = results
    assert y.dtype == dx.dtype == dv.dtype == x.dtype
    rounding = dict(toward_zero=toward_zero)
    assert_matches_dense(y, masked_dense_op("dsd", layout), x, values, bias, name="dsd", **rounding)
    assert_matches_dense(dx, masked_dense_op("dds", layout), dy, values, name="dds", **rounding)
    assert_matches_dense(dv, masked_dense_op("sdd", layout), dy, x, name="sdd", **rounding)
    pad = layout.padding_mask()
    if pad is not None:
        assert torch.all(dv[~pad] == 0), "sdd wrote into the padding of a ragged block"
    assert_top_k_matches(scores, index, dy, x, layout.block_row, layout.block_col, layout.block_size, k)


def check_backend(backend, layout, values, x, dy, bias, k=5, exact_top_k=False):
    """Every op on ``backend`` meets the tolerance rule; with ``exact_top_k`` its top-k indices also equal
    the reference backend's (where both compute in the same precision)."""
    got = run_all(backend, layout, values, x, dy, bias, k)
    check_results(got, layout, values, x, dy, bias, k, toward_zero=backend == "triton" and x.device.type == "cpu")
    if exact_top_k:
        assert torch.equal(got[3][1], run_all("reference", layout, values, x, dy, bias, k)[3][1])


def train_with_rigl(backend, model, x, y, steps=15, delta_t=3, t_end=12):
    """RigL-train ``model`` on one batch with every op on ``backend``: (losses, scheduler)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = rs.RigLScheduler(model, opt, delta_t=delta_t, t_end=t_end)
    losses = []
    with rs.use_backend(backend):
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            if sched.step():
                opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    return losses, sched


def block_scores_extra_bytes(backend, layout, x, dy, k):
    """Peak CUDA memory that one ``block_scores`` call adds (after a warm-up call)."""
    with rs.use_backend(backend):
        ops.block_scores(dy, x, layout, k)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ops.block_scores(dy, x, layout, k)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
