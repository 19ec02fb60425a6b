import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.layout import BlockSparseLayout


def _model():
    sparse = rs.SparseLinear._assemble(
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
    sparse = rs.SparseLinear._assemble(BlockSparseLayout.from_flat((10, 12), 4, torch.tensor([8])),  # (2,2): 2 rows
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
