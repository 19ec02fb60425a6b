"""The CUDA kernels (csrc/cuda) against the reference, on a GPU machine with the extension built.

Without a GPU these tests skip; the kernels are still compiled for sm_80 and sm_90a by `make test`
(ctest target cuda_compile_check).  The registry logic that picks cuda or triton from measurements
is tested on the CPU in test_backends_and_info.py.
"""

import pytest
import torch
from op_cases import block_scores_extra_bytes, check_backend, make_case, train_with_rigl

import rigl_sparse as rs
from rigl_sparse import backends, ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(backends.BACKENDS["cuda"].unavailable_reason() is not None,
                       reason=f"cuda backend unavailable: {backends.BACKENDS['cuda'].unavailable_reason()}"),
]
BLOCKS = [32, 64, 128]
DTYPES = [torch.bfloat16, torch.float16]


def _case(out_f, in_f, b, density, M, dtype, seed=0):
    return make_case(out_f, in_f, b, density, M, dtype, "cuda", seed)


@pytest.mark.parametrize("b", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_cuda_ops_match_reference_ragged(b, dtype, density):
    # Neither dimension is a multiple of b (nor of 8: no 16-byte copies), M is not a multiple of any tile.
    layout, values, x, dy, bias = _case(2 * b + 5, 3 * b - 7, b, density, 37, dtype)
    check_backend("cuda", layout, values, x, dy, bias)


@pytest.mark.parametrize("b", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ops_match_reference_large(b, dtype):
    layout, values, x, dy, bias = _case(2048 + b // 2, 1536, b, 0.1, 1000, dtype, seed=3)
    check_backend("cuda", layout, values, x, dy, bias, k=64)


@pytest.mark.parametrize("b", BLOCKS)
def test_cuda_block_scores_top_k_covers_every_inactive_block(b):
    # k above the number of inactive blocks: every one is returned once, the tail is -inf / -1.
    layout, _, x, dy, _ = _case(4 * b, 3 * b, b, 0.5, 64, torch.bfloat16, seed=5)
    n_blocks = 12
    n_inactive = n_blocks - layout.nnzb
    with rs.use_backend("cuda"):
        scores, index = ops.block_scores(dy, x, layout, n_blocks + 3)
    assert sorted(index[:n_inactive].tolist()) == sorted(
        set(range(n_blocks)) - set((layout.block_row.long() * 3 + layout.block_col.long()).tolist()))
    assert torch.all(index[n_inactive:] == -1) and torch.all(scores[n_inactive:] == float("-inf"))


def test_cuda_block_scores_puts_nan_first():
    b = 32
    layout, _, x, dy, _ = _case(4 * b, 4 * b, b, 0.25, 64, torch.bfloat16, seed=6)
    x[3, 2 * b + 1] = float("nan")  # poisons block column 2 of every row
    active = set((layout.block_row.long() * 4 + layout.block_col.long()).tolist())
    poisoned = [r * 4 + 2 for r in range(4) if r * 4 + 2 not in active]
    assert poisoned, "the seed must leave a block of column 2 inactive"
    with rs.use_backend("cuda"):
        scores, index = ops.block_scores(dy, x, layout, 4)
    assert torch.isnan(scores[: len(poisoned)]).all() and index[: len(poisoned)].tolist() == poisoned


def test_cuda_empty_rows_and_no_active_blocks():
    b = 64
    layout, values, x, dy, bias = _case(3 * b, 2 * b, b, 1 / 6, 130, torch.bfloat16, seed=7)
    check_backend("cuda", layout, values, x, dy, bias)


def test_cuda_rejects_float32_when_forced_and_other_backends_take_it():
    layout, values, x, _, _ = _case(64, 64, 32, 0.5, 8, torch.float32)
    with rs.use_backend("cuda"), pytest.raises(RuntimeError, match="float32"):
        ops.dsd(x, values, layout)
    assert backends.select("dsd", "cuda", (x, values, None, *layout.topology(), 64))[0] != "cuda"


def test_cuda_binding_checks_arguments():
    from rigl_sparse.ops.cuda_extension import extension

    layout, values, x, _, _ = _case(64, 64, 32, 0.5, 8, torch.bfloat16)
    out = torch.empty(8, 64, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        extension().dsd_out(x.t(), values, None, layout.row_ptr, layout.row_slots, layout.block_col, out)
    with pytest.raises(RuntimeError, match="row_ptr must have"):
        extension().dsd_out(x, values, None, layout.row_ptr[:-1], layout.row_slots, layout.block_col, out)


def test_sparse_linear_trains_with_rigl_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        rs.SparseLinear(256, 128, density=0.3, block_size=32, device="cuda", dtype=torch.bfloat16), torch.nn.ReLU(),
        rs.SparseLinear(128, 10, density=0.5, block_size=32, device="cuda", dtype=torch.bfloat16))
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, 10, (64,), device="cuda")
    losses, sched = train_with_rigl("cuda", model, x, y)
    assert losses[-1] < losses[0] and sched.stats["blocks_moved"] > 0


def test_cuda_block_scores_adds_only_o_blocks_memory():
    b, n = 64, 4096
    layout, _, x, dy, _ = _case(n, n, b, 0.1, n, torch.bfloat16, seed=4)
    extra = block_scores_extra_bytes("cuda", layout, x, dy, 100)
    blocks = (n // b) ** 2
    assert extra <= 64 * blocks + (1 << 20), f"{extra} bytes for {blocks} blocks"


@pytest.mark.parametrize("b", BLOCKS)
def test_cuda_block_scores_with_no_blocks_returns_the_empty_tail(b):
    # dy without columns: no block rows, no candidates (this once divided by zero on the host).
    x = torch.randn(16, 2 * b, device="cuda", dtype=torch.bfloat16)
    none = torch.zeros(0, dtype=torch.int32, device="cuda")
    with rs.use_backend("cuda"):
        scores, index = torch.ops.rigl_sparse.block_scores(torch.zeros(16, 0, device="cuda", dtype=torch.bfloat16), x,
                                                            none, none, b, 3)
    assert index.tolist() == [-1] * 3 and torch.all(scores == float("-inf"))


def test_cuda_binding_checks_slot_counts_and_grid_limits():
    from rigl_sparse.ops.cuda_extension import extension

    layout, values, x, _, _ = _case(64, 64, 32, 0.5, 8, torch.bfloat16)
    out = torch.empty(8, 64, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(RuntimeError, match="row_slots must have one entry per block"):
        extension().dsd_out(x, values, None, layout.row_ptr, layout.row_slots[:-1], layout.block_col, out)
    with pytest.raises(RuntimeError, match="block_col must have one entry per block"):
        extension().dsd_out(x, values, None, layout.row_ptr, layout.row_slots, layout.block_col[:-1], out)
    wide = torch.empty(1, 32 * 65536, dtype=torch.bfloat16, device="cuda")
    ptr = torch.zeros(65537, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="grid limit"):
        extension().dsd_out(x[:1], values[:0], None, ptr, layout.row_slots[:0], layout.block_col[:0], wide)


@pytest.mark.parametrize("b", BLOCKS)
def test_cuda_ops_meet_the_rule_above_the_autotune_size(b):
    # The size the triton backend autotunes at (2^30 multiply-adds), for the same cases on both GPU backends.
    layout, values, x, dy, bias = _case(4096 + b // 2, 4096, b, 0.25, 4096, torch.bfloat16, seed=11)
    check_backend("cuda", layout, values, x, dy, bias, k=256)
