import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.models import TransformerLM


def _model():
    sparse = rs.SparseLinear.from_parts(
        BlockSparseLayout.from_flat((10, 12), 4, torch.tensor([0, 4, 5])),  # blocks (0,0), (1,1), (1,2)
        torch.ones(3, 4, 4), torch.zeros(10))
    sparse._zero_padding_()
    return nn.Sequential(sparse, nn.ReLU(), nn.Linear(10, 3))


def test_flops_by_hand():
    model = _model()
    # 3 blocks in a (10, 12) weight, b=4: blocks (0,0) and (1,1), (1,2) are whole -> 48 real weights.
    assert model[0].layout.nnz() == 48
    report = rs.flops(model, (5, 12), delta_t=100)
    f_s = 2 * 48 * 5 + 2 * 10 * 3 * 5
    f_d = 2 * 10 * 12 * 5 + 2 * 10 * 3 * 5
    assert report.forward == f_s and report.dense_forward == f_d
    assert report.training_step == 3 * f_s and report.dense_training_step == 3 * f_d
    assert report.rigl_step == pytest.approx((3 * f_s * 100 + 2 * f_s + f_d) / 101)
    assert report.layers["0"] == (2 * 48 * 5, 2 * 120 * 5)


def test_flops_counts_only_real_weights_of_edge_blocks():
    sparse = rs.SparseLinear.from_parts(BlockSparseLayout.from_flat((10, 12), 4, torch.tensor([8])),  # (2,2): 2 rows
                                       torch.ones(1, 4, 4), None)
    assert rs.flops(sparse, (3, 12)).forward == 2 * (2 * 4) * 3


def test_memory_report_by_hand():
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 12)).sum().backward()
    opt.step()
    report = rs.memory_report(model, opt)
    n_params = 3 * 16 + 10 + 30 + 3
    assert report.parameters == 4 * n_params and report.gradients == 4 * n_params
    assert report.optimizer_state == 2 * 4 * n_params + 4 * 4  # exp_avg, exp_avg_sq + a float32 step per tensor
    # topology: block_row, block_col, row_slots, col_slots (3 each) + row_ptr (R+1 = 4) + col_ptr (C+1 = 4), int32
    assert report.topology == 4 * (4 * 3 + 4 + 4)
    assert report.total == report.parameters + report.gradients + report.optimizer_state + report.topology


def test_flops_of_a_transformer_by_hand():
    torch.manual_seed(0)
    model = TransformerLM(vocab=11, width=8, layers=2, heads=2, ffn=16, max_length=5)
    report = rs.flops(model, (3, 5), dtype=torch.long)
    rows = 3 * 5
    per_block = 4 * (8 * 8) + 16 * 8 + 8 * 16  # q, k, v, out; ffn_in; ffn_out (attention scores not counted)
    assert report.dense_forward == report.forward == 2 * rows * (2 * per_block + 11 * 8)
    assert set(report.layers) == {f"blocks.{i}.{n}" for i in range(2) for n in ("q", "k", "v", "out", "ffn_in",
                                                                                 "ffn_out")} | {"head"}

    rs.sparsify(model, density=0.5, distribution="uniform", block_size=4, dense=("head",), first_dense=False)
    sparse = rs.flops(model, (3, 5), dtype=torch.long)
    # every 8x8 projection keeps 2 of its 4 blocks, each ffn matrix 4 of its 8: half the weights of each layer
    assert sparse.forward == 2 * rows * (per_block + 11 * 8)
    assert sparse.dense_forward == report.dense_forward


def test_memory_report_of_a_masked_model_by_hand():
    model = nn.Sequential(nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3))
    rs.apply_masks(model, density=0.5, distribution="uniform", dense=("2",), first_dense=False, block_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    report = rs.memory_report(model, opt)
    n_params = 12 * 8 + 8 * 3 + 3  # masked layers keep dense weights
    assert report.parameters == 4 * n_params and report.gradients == 0 and report.optimizer_state == 0
    assert report.topology == 2 * 3 + 8  # a [2, 3] bool block mask and its float64 target density
    model(torch.randn(2, 12)).sum().backward()
    opt.step()
    report = rs.memory_report(model, opt)
    assert report.gradients == 4 * n_params and report.optimizer_state == 4 * n_params  # SGD momentum buffers


def test_memory_report_counts_shared_tensors_once():
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert rs.memory_report(model).parameters == 4 * (36 + 6)


@pytest.mark.parametrize("call, error, message", [
    (lambda: rs.flops("model", (1, 2)), TypeError, "model must be an nn.Module"),
    (lambda: rs.flops(nn.Linear(2, 2), 3), ValueError, "batch_shape"),
    (lambda: rs.flops(nn.Linear(2, 2), (1, 0)), ValueError, "batch_shape"),
    (lambda: rs.memory_report(nn.Linear(2, 2), optimizer="adam"), TypeError, "optimizer must be"),
    (lambda: rs.memory_report(None), TypeError, "model must be an nn.Module"),
])
def test_accounting_rejects_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()
