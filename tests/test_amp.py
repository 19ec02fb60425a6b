"""Mixed precision: autocast through the sparse layers, GradScaler with the RigL scheduler."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rigl_sparse as rs
from rigl_sparse.testing import assert_close_to_exact


@pytest.mark.filterwarnings("ignore:.*does not support these arguments.*:RuntimeWarning")  # fp16: reference
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_linear_under_cpu_autocast_matches_nn_linear(dtype):
    torch.manual_seed(0)
    layer = rs.SparseLinear(64, 32, density=0.25, block_size=16)
    dense = layer.to_linear()
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
        expected = dense(x)
    assert y.dtype == expected.dtype == dtype
    # Exact: the same autocast inputs (x and the weight rounded to dtype) in float64.
    exact = F.linear(x.to(dtype).double(), dense.weight.to(dtype).double(), dense.bias.to(dtype).double())
    assert_close_to_exact(y, exact, expected)
    y.float().square().sum().backward()
    assert layer.values.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:.*does not support these arguments.*:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_conv_under_cpu_autocast_matches_nn_conv(dtype):
    torch.manual_seed(0)
    layer = rs.SparseConv2d(16, 32, 3, padding=1, density=0.5, block_size=16)
    dense = layer.to_conv()
    x = torch.randn(2, 16, 6, 6)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
        expected = dense(x)
    assert y.dtype == dtype
    exact = F.conv2d(x.to(dtype).double(), dense.weight.to(dtype).double(), dense.bias.to(dtype).double(), padding=1)
    assert_close_to_exact(y, exact, expected.to(y.dtype))
    y.float().sum().backward()
    assert layer.values.grad.dtype == torch.float32


def test_without_autocast_a_mismatched_input_dtype_is_still_refused():
    layer = rs.SparseLinear(16, 16, density=0.5, block_size=8)
    with pytest.raises(TypeError, match="does not match the layer's dtype"):
        layer(torch.randn(2, 16, dtype=torch.bfloat16))


def _run(scaler, *, poison_step=None, steps=8):
    torch.manual_seed(0)
    model = rs.sparsify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), density=0.4,
                        distribution="uniform", first_dense=False, block_size=4,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=steps, alpha=0.5)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 16, generator=g), torch.randint(4, (16,), generator=g)) for _ in range(steps)]
    returned = []
    for i, (x, y) in enumerate(data):
        loss = nn.functional.cross_entropy(model(x), y)
        if i == poison_step:
            loss = loss * float("inf")
        if scaler is None:
            loss.backward()
            ok = scheduler.step()
            if ok:
                optimizer.step()
        else:
            scaler.scale(loss).backward()
            ok = scheduler.step(scaler)
            if ok:
                scaler.step(optimizer)
            scaler.update()
        returned.append(ok)
        optimizer.zero_grad(set_to_none=True)
    return model, scheduler, returned


def _topology(model):
    return [m.layout.flat_index().sort().values for m in model.modules() if isinstance(m, rs.SparseModule)]


def test_grad_scaler_with_a_power_of_two_scale_changes_nothing():
    plain, s1, _ = _run(None)
    scaled, s2, _ = _run(torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000))
    assert s1.stats["blocks_moved"] == s2.stats["blocks_moved"] > 0
    assert all(torch.equal(a, b) for a, b in zip(_topology(plain), _topology(scaled)))
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)


def test_an_overflowing_step_is_not_a_rigl_step_and_its_scores_are_not_used():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    model, scheduler, returned = _run(scaler, poison_step=2)  # step 2 would have been an update step
    assert scheduler.stats["skipped_overflow"] == 1
    assert scheduler.step_count == 7  # 8 backward passes, one of them not counted
    assert returned[2] is True  # the caller lets scaler.step skip it
    assert scaler.get_scale() == 512.0
    # the updates happened at the next backward passes (t = 2, 4, 6), with finite scores only
    assert scheduler.stats["updates"] == 3 and scheduler.stats["skipped_nonfinite"] == 0
    assert [r for i, r in enumerate(returned) if i != 2] == [True, True, False, True, False, True, False]


def test_step_rejects_a_non_scaler():
    model = rs.sparsify(nn.Sequential(nn.Linear(8, 8)), density=0.5, block_size=4, distribution="uniform",
                        first_dense=False)
    scheduler = rs.RigLScheduler(model, torch.optim.SGD(model.parameters(), lr=0.1), t_end=10)
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        scheduler.step(scaler="yes")
