"""Triton kernels against the reference: on the CPU interpreter without a GPU, on the GPU when there is one."""

import pytest
import torch
from op_cases import block_scores_extra_bytes, check_backend, make_case, train_with_rigl

import rigl_sparse as rs
from rigl_sparse import backends, ops

pytestmark = [pytest.mark.triton, pytest.mark.skipif(
    backends.BACKENDS["triton"].unavailable_reason() is not None,
    reason=f"triton backend unavailable: {backends.BACKENDS['triton'].unavailable_reason()}",
)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCKS = [16, 32, 64, 128]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(out_f, in_f, b, density, M, dtype, seed=0):
    return make_case(out_f, in_f, b, density, M, dtype, DEVICE, seed)


def _compare_all(layout, values, x, dy, bias, k=5):
    check_backend("triton", layout, values, x, dy, bias, k,
                           exact_top_k=x.dtype == torch.float32 and DEVICE == "cpu")


@pytest.mark.parametrize("b", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_triton_ops_match_reference_small(b, dtype, density):
    # Ragged: neither dimension is a multiple of b, and M is not a multiple of any tile.
    layout, values, x, dy, bias = _case(2 * b + 5, 3 * b - 7, b, density, 37, dtype)
    _compare_all(layout, values, x, dy, bias)


def test_the_interpreter_runs_only_when_forced():
    assert backends.select("dsd", "cpu")[0] != "triton"
    layout, values, x, _, _ = _case(64, 64, 16, 0.5, 8, torch.float32)
    with rs.use_backend("triton"):
        assert backends.select("dsd", "cpu", (x, values, None, *layout.topology(), 64))[0] == "triton"


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (the interpreter runs only when forced)")
def test_triton_is_chosen_on_cuda_and_unsupported_arguments_warn():
    layout, values, x, _, _ = _case(64, 64, 16, 0.5, 8, torch.float32)
    assert backends.select("dsd", "cuda", (x, values, None, *layout.topology(), 64))[0] == "triton"
    layout4, values4, x4, _, _ = _case(64, 64, 4, 0.5, 8, torch.float32)
    backends.fallbacks(clear=True)
    with pytest.warns(RuntimeWarning, match="block_size 4"):
        ops.dsd(x4, values4, layout4)


def test_triton_rejects_unsupported_block_size_when_forced():
    layout, values, x, _, _ = _case(24, 24, 8, 0.5, 4, torch.float32)
    with rs.use_backend("triton"), pytest.raises(RuntimeError, match="block_size 8"):
        ops.dsd(x, values, layout)


def test_sparse_linear_trains_with_rigl_on_triton():
    torch.manual_seed(0)
    model = torch.nn.Sequential(rs.SparseLinear(96, 64, density=0.3, block_size=16, device=DEVICE), torch.nn.ReLU(),
                                rs.SparseLinear(64, 10, density=0.5, block_size=16, device=DEVICE))
    x = torch.randn(32, 96, device=DEVICE)
    y = torch.randint(0, 10, (32,), device=DEVICE)
    losses, sched = train_with_rigl("triton", model, x, y)
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
    extra = block_scores_extra_bytes("triton", layout, x, dy, 100)
    blocks = (n // b) ** 2
    assert extra <= 64 * blocks + (1 << 20), f"{extra} bytes for {blocks} blocks"
    assert extra < n * n * 2 / 50  # far below one dense bf16 gradient


def test_triton_ops_are_right_when_autotuned(monkeypatch):
    # Every configuration of every matmul kernel is tried (and the best one then runs) on a small case.
    from rigl_sparse.ops import _triton

    if DEVICE == "cuda":
        pytest.skip("on a GPU the cases above the autotune size (and the gpu-quick probe) run the tuned configurations"
                    " without compiling every configuration for this small case")

    monkeypatch.setenv(_triton.AUTOTUNE_VARIABLE, "always")
    layout, values, x, dy, bias = _case(2 * 32 + 5, 3 * 32 - 7, 32, 0.5, 37, torch.float32, seed=9)
    _compare_all(layout, values, x, dy, bias)


def test_autotune_variable_refuses_other_values(monkeypatch):
    from rigl_sparse.ops import _triton

    monkeypatch.setenv(_triton.AUTOTUNE_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="RIGL_SPARSE_TRITON_AUTOTUNE='sometimes'"):
        _triton.autotune_forced()


@pytest.mark.gpu
@pytest.mark.parametrize("b", [64])  # the gpu-quick probe autotunes every block size at 8192
def test_triton_ops_match_reference_above_the_autotune_size(b):
    from rigl_sparse.ops import _triton

    layout, values, x, dy, bias = _case(4096 + b // 2, 4096, b, 0.25, 4096, torch.bfloat16, seed=11)
    assert 4096 * layout.row_slots.numel() * b * b >= _triton.AUTOTUNE_MIN_MACS  # dsd, dds and sdd autotune
    _compare_all(layout, values, x, dy, bias, k=256)
