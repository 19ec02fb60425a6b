"""Shared by the kernel-backend tests: random cases and the comparison of every op with the reference."""

import math

import torch

import rigl_sparse as rs
from rigl_sparse import ops
from rigl_sparse.testing import assert_close, random_block_sparse


def make_case(out_f, in_f, b, density, M, dtype, device, seed=0):
    """A random layout, values, x, dy and bias on ``device``."""
    layout, values = random_block_sparse((out_f, in_f), b, density, dtype=dtype, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(M, in_f, generator=g).to(device, dtype)
    dy = torch.randn(M, out_f, generator=g).to(device, dtype)
    bias = torch.randn(out_f, generator=g).to(device, dtype)
    return layout, values, x, dy, bias


def tolerance_scale(dtype, reduction, device):
    # fp32 runs on TF32 tensor cores on the GPU; half types round the output.
    base = 100.0 if (dtype == torch.float32 and device == "cuda") else 1.0
    return base * max(1.0, math.sqrt(reduction / 16))


def run_all(backend, layout, values, x, dy, bias, k):
    """dsd, dds, sdd and block_scores of one case on ``backend``."""
    b = layout.block_size
    out_f, in_f = layout.shape
    topo = layout.topology()
    with rs.use_backend(backend):
        return (ops.dsd(x, values, bias, *topo, out_f), ops.dds(dy, values, *topo, in_f), ops.sdd(dy, x, *topo, b),
                ops.block_scores(dy, x, topo[0], topo[1], b, k))


def compare_with_reference(backend, layout, values, x, dy, bias, k=5, exact_top_k=False):
    """Every op on ``backend`` equals the reference within the dtype's tolerance."""
    dtype, device = x.dtype, x.device.type
    out_f, in_f = layout.shape
    ref = run_all("reference", layout, values, x, dy, bias, k)
    got = run_all(backend, layout, values, x, dy, bias, k)
    assert_close(got[0], ref[0], dtype, scale=tolerance_scale(dtype, in_f, device))
    assert_close(got[1], ref[1], dtype, scale=tolerance_scale(dtype, out_f, device))
    assert_close(got[2], ref[2], dtype, scale=tolerance_scale(dtype, x.shape[0], device))
    pad = layout.padding_mask()
    if pad is not None:
        assert torch.all(got[2][~pad] == 0)
    # Top-k: the same number of candidates, scores close (near-ties may swap places).
    ref_scores, ref_index = ref[3]
    scores, index = got[3]
    valid = ref_index >= 0
    assert torch.equal(index >= 0, valid)
    assert_close(scores[valid], ref_scores[valid], dtype, scale=4 * tolerance_scale(dtype, x.shape[0], device))
    assert torch.all(scores[:-1] >= scores[1:]), "scores must be in descending order"
    n_blocks = math.ceil(out_f / layout.block_size) * math.ceil(in_f / layout.block_size)
    active = set((layout.block_row.long() * math.ceil(in_f / layout.block_size) + layout.block_col.long()).tolist())
    assert not active & set(index[valid].tolist()), "an active block was offered as a grow candidate"
    assert all(0 <= i < n_blocks for i in index[valid].tolist())
    if exact_top_k:
        assert torch.equal(index, ref_index)


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
    b = layout.block_size
    with rs.use_backend(backend):
        ops.block_scores(dy, x, layout.block_row, layout.block_col, b, k)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ops.block_scores(dy, x, layout.block_row, layout.block_col, b, k)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
