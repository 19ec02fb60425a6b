"""Triton kernels against the reference: on the CPU interpreter without a GPU, on the GPU when there is one."""

import math

import pytest
import torch

import rigl_sparse as rs
from rigl_sparse import backends, ops
from rigl_sparse.testing import assert_close, random_block_sparse

pytestmark = pytest.mark.skipif(
    backends.BACKENDS["triton"].unavailable_reason() is not None,
    reason=f"triton backend unavailable: {backends.BACKENDS['triton'].unavailable_reason()}",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCKS = [16, 32, 64, 128]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(out_f, in_f, b, density, M, dtype, seed=0):
    layout, values = random_block_sparse((out_f, in_f), b, density, dtype=dtype, device=DEVICE, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(M, in_f, generator=g).to(DEVICE, dtype)
    dy = torch.randn(M, out_f, generator=g).to(DEVICE, dtype)
    bias = torch.randn(out_f, generator=g).to(DEVICE, dtype)
    return layout, values, x, dy, bias


def _tol_scale(dtype, reduction):
    # fp32 runs on TF32 tensor cores on the GPU; half types round the output.
    base = 100.0 if (dtype == torch.float32 and DEVICE == "cuda") else 1.0
    return base * max(1.0, math.sqrt(reduction / 16))


def _compare_all(layout, values, x, dy, bias, k=5):
    b = layout.block_size
    out_f, in_f = layout.shape
    topo = layout.topology()
    dtype = x.dtype
    with rs.use_backend("reference"):
        ref = (ops.dsd(x, values, bias, *topo, out_f), ops.dds(dy, values, *topo, in_f), ops.sdd(dy, x, *topo, b),
               ops.block_scores(dy, x, topo[0], topo[1], b, k))
    with rs.use_backend("triton"):
        got = (ops.dsd(x, values, bias, *topo, out_f), ops.dds(dy, values, *topo, in_f), ops.sdd(dy, x, *topo, b),
               ops.block_scores(dy, x, topo[0], topo[1], b, k))
    assert_close(got[0], ref[0], dtype, scale=_tol_scale(dtype, in_f))
    assert_close(got[1], ref[1], dtype, scale=_tol_scale(dtype, out_f))
    assert_close(got[2], ref[2], dtype, scale=_tol_scale(dtype, x.shape[0]))
    pad = layout.padding_mask()
    if pad is not None:
        assert torch.all(got[2][~pad] == 0)
    # Top-k: same candidates up to near-ties, scores close.
    ref_scores, ref_index = ref[3]
    scores, index = got[3]
    valid = ref_index >= 0
    assert torch.equal(index >= 0, valid)
    assert_close(scores[valid], ref_scores[valid], dtype, scale=4 * _tol_scale(dtype, x.shape[0]))
    if dtype == torch.float32 and DEVICE == "cpu":
        assert torch.equal(index, ref_index)


@pytest.mark.parametrize("b", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_triton_ops_match_reference_small(b, dtype, density):
    # Ragged: neither dimension is a multiple of b, and M is not a multiple of any tile.
    layout, values, x, dy, bias = _case(2 * b + 5, 3 * b - 7, b, density, 37, dtype)
    _compare_all(layout, values, x, dy, bias)


def test_triton_is_chosen_on_cuda_and_unsupported_arguments_warn():
    if DEVICE != "cuda":
        assert backends.select("dsd", "cpu")[0] != "triton"  # the interpreter is used only when forced
        return
    layout, values, x, _, _ = _case(64, 64, 16, 0.5, 8, torch.float32)
    assert backends.select("dsd", "cuda", (x, values, None, *layout.topology(), 64))[0] == "triton"
    layout4, values4, x4, _, _ = _case(64, 64, 4, 0.5, 8, torch.float32)
    with pytest.warns(RuntimeWarning, match="block_size 4"):
        backends._WARNED.clear()
        ops.dsd(x4, values4, None, *layout4.topology(), 64)


def test_triton_rejects_unsupported_block_size_when_forced():
    layout, values, x, _, _ = _case(24, 24, 8, 0.5, 4, torch.float32)
    with rs.use_backend("triton"), pytest.raises(RuntimeError, match="block_size 8"):
        ops.dsd(x, values, None, *layout.topology(), 24)


def test_sparse_linear_trains_with_rigl_on_triton():
    torch.manual_seed(0)
    model = torch.nn.Sequential(rs.SparseLinear(96, 64, density=0.3, block_size=16, device=DEVICE), torch.nn.ReLU(),
                                rs.SparseLinear(64, 10, density=0.5, block_size=16, device=DEVICE))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=12)
    x = torch.randn(32, 96, device=DEVICE)
    y = torch.randint(0, 10, (32,), device=DEVICE)
    losses = []
    with rs.use_backend("triton"):
        for _ in range(15):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if sched.step():
                opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < losses[0] and sched.stats["blocks_moved"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("b", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_ops_match_reference_large(b, dtype):
    layout, values, x, dy, bias = _case(2048 + b // 2, 1536, b, 0.1, 1000, dtype, seed=3)
    _compare_all(layout, values, x, dy, bias, k=64)


@pytest.mark.gpu
def test_block_scores_adds_only_o_blocks_memory():
    b, n, m = 64, 4096, 4096
    layout, _, x, dy, _ = _case(n, n, b, 0.1, m, torch.bfloat16, seed=4)
    with rs.use_backend("triton"):
        ops.block_scores(dy, x, layout.block_row, layout.block_col, b, 100)  # warm-up, autotune
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ops.block_scores(dy, x, layout.block_row, layout.block_col, b, 100)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    blocks = (n // b) ** 2
    assert extra <= 64 * blocks + (1 << 20), f"{extra} bytes for {blocks} blocks"
    assert extra < n * n * 2 / 50  # far below one dense bf16 gradient
