"""Masked reference mode: apply_masks, RigL/SET/SNFS on masked dense layers, gradual pruning."""

import copy
import math

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.layout import block_count


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 12))


class _ConvNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8 * 6 * 6, 12)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def _batch(step, shape=(16, 24)):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(*shape, generator=g), torch.randint(0, 12, (shape[0],), generator=g)


def _sparse_weight(layer):
    return layer.to_dense() if isinstance(layer, rs.SparseModule) else layer.weight.detach()


def _active(layer):
    return layer.layout.active_mask() if isinstance(layer, rs.SparseModule) else layer.block_mask.active


def _weight_layers(model):
    return [m for m in model.modules() if isinstance(m, (rs.SparseModule, nn.Linear, nn.Conv2d))]


# ---------------------------------------------------------------------------------------------------- apply_masks
@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("b", [1, 4])
def test_apply_masks_starts_from_sparsifys_topology_and_weights(distribution, b):
    options = dict(density=0.3, distribution=distribution, block_size=b)
    compressed = rs.sparsify(_mlp(), **options, generator=torch.Generator().manual_seed(5))
    masked = rs.apply_masks(_mlp(), **options, generator=torch.Generator().manual_seed(5))
    for c, m in zip(_weight_layers(compressed), _weight_layers(masked)):
        if isinstance(c, rs.SparseModule):
            assert torch.equal(_active(c), m.block_mask.active)
            assert m.block_mask.nnz() == c.layout.nnz()
            torch.testing.assert_close(_sparse_weight(c), m.weight.detach(), rtol=0, atol=0)
        else:  # a layer that stayed dense (first layer for uniform, or made dense by ERK)
            assert not hasattr(m, "block_mask")
    if distribution == "uniform":
        assert not hasattr(masked[0], "block_mask")


def test_block_mask_of_a_convolution_is_tap_major_like_sparseconv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    sparse = rs.sparsify(nn.Sequential(copy.deepcopy(conv)), density=0.25, block_size=4,
                         generator=torch.Generator().manual_seed(1))[0]
    masked = rs.apply_masks(nn.Sequential(copy.deepcopy(conv)), density=0.25, block_size=4,
                            generator=torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(sparse.to_dense(), masked.weight.detach(), rtol=0, atol=0)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(sparse(x), masked(x), rtol=1e-5, atol=1e-5)


def test_apply_masks_handles_ragged_blocks():
    model = rs.apply_masks(nn.Sequential(nn.Linear(10, 7)), density=0.5, distribution="uniform", first_dense=False,
                           block_size=4)
    mask = model[0].block_mask
    assert mask.grid == (2, 3)
    assert int(mask.active.sum()) == block_count(0.5, 6)
    elements = mask.expand()
    assert elements.shape == (7, 10)
    assert torch.equal(model[0].weight != 0, elements)
    assert mask.nnz() == int(elements.sum())


def test_apply_masks_bad_input():
    with pytest.raises(ValueError, match="start"):
        rs.apply_masks(_mlp(), density=0.1, start="zeros")
    with pytest.raises(ValueError, match="density"):
        rs.apply_masks(_mlp(), density=1.5)
    with pytest.raises(ValueError, match="block_size"):
        rs.apply_masks(_mlp(), density=0.1, block_size=0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        rs.apply_masks(nn.Sequential(nn.ReLU()), density=0.1)
    model = rs.apply_masks(_mlp(), density=0.1)
    with pytest.raises(ValueError, match="already carry"):
        rs.apply_masks(model, density=0.1)
    with torch.device("meta"):
        meta = _mlp()
    with pytest.raises(ValueError, match="meta"):
        rs.apply_masks(meta, density=0.1)
    with pytest.raises(TypeError, match="model"):
        rs.apply_masks("mlp", density=0.1)


def test_block_mask_state_dict_round_trip():
    model = rs.apply_masks(_mlp(), density=0.2, block_size=4)
    other = rs.apply_masks(_mlp(seed=1), density=0.2, block_size=4, generator=torch.Generator().manual_seed(9))
    other.load_state_dict(model.state_dict())
    for a, b in zip(model, other):
        if hasattr(a, "block_mask"):
            assert torch.equal(a.block_mask.active, b.block_mask.active)
            assert torch.equal(a.weight, b.weight)


def test_flops_count_masked_weights():
    model = rs.apply_masks(_mlp(), density=0.25, block_size=4)
    report = rs.flops(model, (3, 24))
    expected = sum(2.0 * 3 * (m.block_mask.nnz() if hasattr(m, "block_mask") else m.weight.numel())
                   for m in model if isinstance(m, nn.Linear))
    assert report.forward == expected
    assert report.dense_forward == sum(2.0 * 3 * m.weight.numel() for m in model if isinstance(m, nn.Linear))


# ---------------------------------------------------------------------------------------------- masked == compressed
def _train_side_by_side(build, shape, grow, b, steps=25, delta_t=4):
    """Train a compressed and a masked copy of the same model on the same batches; compare every step."""
    compressed = rs.sparsify(build(), density=0.3, block_size=b, generator=torch.Generator().manual_seed(3))
    masked = rs.apply_masks(build(), density=0.3, block_size=b, generator=torch.Generator().manual_seed(3))
    runs = []
    for model in (compressed, masked):
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        runs.append((model, opt, rs.RigLScheduler(model, opt, delta_t=delta_t, t_end=steps, alpha=0.5, grow=grow,
                                                  seed=7)))
    moved = 0
    for step in range(steps):
        x, y = _batch(step, shape)
        for model, opt, sched in runs:
            nn.functional.cross_entropy(model(x), y).backward()
            if sched.step():
                opt.step()
            opt.zero_grad()
        for c, m in zip(_weight_layers(compressed), _weight_layers(masked)):
            if isinstance(c, rs.SparseModule):
                assert torch.equal(_active(c), m.block_mask.active), f"topologies differ at step {step}"
            torch.testing.assert_close(_sparse_weight(c), m.weight.detach(), rtol=1e-4, atol=1e-5)
        moved = runs[1][2].stats["blocks_moved"]
    assert runs[0][2].stats == runs[1][2].stats
    assert moved > 0


@pytest.mark.parametrize("grow", ["gradient", "random"])
@pytest.mark.parametrize("b", [1, 4])
def test_masked_mode_takes_the_compressed_layers_decisions(grow, b):
    with rs.use_backend("reference"):
        _train_side_by_side(_mlp, (16, 24), grow, b)


def test_masked_mode_takes_the_compressed_layers_decisions_for_convolutions():
    with rs.use_backend("reference"):
        _train_side_by_side(_ConvNet, (8, 4, 6, 6), "gradient", 4)


@pytest.mark.parametrize("grow", ["gradient", "random", "momentum", "none"])
def test_masked_invariants_hold_through_training(grow):
    model = rs.apply_masks(_mlp(), density=0.2, block_size=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=30, alpha=0.4, grow=grow)
    counts = [int(m.block_mask.active.sum()) for m in model if hasattr(m, "block_mask")]
    for step in range(35):
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        if sched.step():
            opt.step()
        opt.zero_grad()
        for m in model:
            if hasattr(m, "block_mask"):
                inactive = ~m.block_mask.expand()
                assert bool((m.weight[inactive] == 0).all())
                assert bool((opt.state[m.weight]["momentum_buffer"][inactive] == 0).all())
    assert counts == [int(m.block_mask.active.sum()) for m in model if hasattr(m, "block_mask")]
    assert (sched.stats["blocks_moved"] > 0) == (grow != "none")


def test_optimizer_step_outside_the_scheduler_keeps_inactive_weights_zero():
    model = rs.apply_masks(_mlp(), density=0.2, block_size=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    rs.RigLScheduler(model, opt, t_end=10)
    x, y = _batch(0)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # the scheduler's step() was skipped: the gradients were not masked
    for m in model:
        if hasattr(m, "block_mask"):
            assert bool((m.weight[~m.block_mask.expand()] == 0).all())


# ------------------------------------------------------------------------------------------------------------ SNFS
def test_momentum_growth_uses_the_gradient_moving_average():
    layer = nn.Linear(8, 8, bias=False)
    model = rs.apply_masks(nn.Sequential(layer), density=0.25, distribution="uniform", first_dense=False, block_size=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=10, alpha=0.5, grow="momentum", momentum=0.9)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(8, 8, generator=g) for _ in range(4)]
    average = torch.zeros(8, 8)
    mask = layer.block_mask
    for t, grad in enumerate(grads):
        layer.weight.grad = grad.clone()
        average = 0.9 * average + 0.1 * grad
        if t == 3:
            before = mask.active.flatten().clone()
            weight_norms = mask.block_norms(layer.weight.detach())
        sched.step()
        torch.testing.assert_close(sched.gradient_average["0"], average)
    k = math.floor(rs.drop_fraction(3, alpha=0.5, t_end=10) * int(before.sum()))
    flat = torch.nonzero(before).flatten()
    dropped = flat[sorted(range(len(flat)), key=lambda i: (float(weight_norms[flat[i]]), int(flat[i])))[:k]]
    pool = ~before
    pool[dropped] = True
    scores = mask.block_norms(average)
    candidates = sorted(torch.nonzero(pool).flatten().tolist(), key=lambda i: (-float(scores[i]), i))[:k]
    expected = before.clone()
    expected[dropped] = False
    expected[candidates] = True
    assert torch.equal(mask.active.flatten(), expected)
    # the current gradient alone would have chosen differently in this draw (else the test proves nothing)
    by_gradient = sorted(torch.nonzero(pool).flatten().tolist(),
                         key=lambda i: (-float(mask.block_norms(grads[3])[i]), i))[:k]
    assert set(by_gradient) != set(candidates)


def test_momentum_growth_refuses_compressed_layers():
    model = rs.sparsify(_mlp(), density=0.2, block_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="masked layers"):
        rs.RigLScheduler(model, opt, t_end=10, grow="momentum")
    with pytest.raises(ValueError, match="momentum"):
        rs.RigLScheduler(model, opt, t_end=10, momentum=1.0)


def test_momentum_state_round_trips():
    def run(split):
        model = rs.apply_masks(_mlp(), density=0.2, block_size=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = rs.RigLScheduler(model, opt, delta_t=2, t_end=12, grow="momentum")
        for step in range(14):
            if step == split:
                saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
                model = rs.apply_masks(_mlp(seed=4), density=0.2, block_size=2)
                opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
                sched = rs.RigLScheduler(model, opt, delta_t=2, t_end=12, grow="momentum")
                model.load_state_dict(saved[0])
                opt.load_state_dict(saved[1])
                sched.load_state_dict(saved[2])
            x, y = _batch(step)
            nn.functional.cross_entropy(model(x), y).backward()
            if sched.step():
                opt.step()
            opt.zero_grad()
        return model
    a, b = run(split=-1), run(split=5)
    for m, n in zip(a, b):
        if hasattr(m, "block_mask"):
            assert torch.equal(m.block_mask.active, n.block_mask.active)
            assert torch.equal(m.weight, n.weight)


# --------------------------------------------------------------------------------------------------------- pruning
def test_gradual_pruning_follows_the_cubic_schedule_to_the_target():
    model = rs.apply_masks(_mlp(), density=0.1, distribution="erk", block_size=2, start="dense")
    layers = [m for m in model if hasattr(m, "block_mask")]
    assert all(bool(m.block_mask.active.all()) for m in layers)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = rs.PruningScheduler(model, opt, t_start=4, t_end=20, delta_t=5)
    assert [t for t in range(30) if sched.is_update_step(t)] == [4, 9, 14, 19, 20]
    previous = [int(m.block_mask.active.sum()) for m in layers]
    for step in range(30):
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        if sched.is_update_step(step):
            norms = [m.block_mask.block_norms(m.weight.detach()) for m in layers]
            before = [m.block_mask.active.flatten().clone() for m in layers]
        assert sched.step()
        opt.step()
        opt.zero_grad()
        counts = [int(m.block_mask.active.sum()) for m in layers]
        for m, count, prev in zip(layers, counts, previous):
            target = float(m.block_mask.target_density)
            expected = min(prev, block_count(sched.density_at(step, target), m.block_mask.active.numel()))
            assert count == (expected if sched.is_update_step(step) else prev)
            assert bool((m.weight[~m.block_mask.expand()] == 0).all())
        if sched.is_update_step(step) and step > 4:
            for m, n, was in zip(layers, norms, before):  # the pruned blocks were the weakest active ones
                now = m.block_mask.active.flatten()
                pruned = was & ~now
                if pruned.any():
                    assert float(n[pruned].max()) <= float(n[now].min())
        previous = counts
    for m in layers:
        assert int(m.block_mask.active.sum()) == block_count(float(m.block_mask.target_density),
                                                             m.block_mask.active.numel())
    assert sched.density_at(0, 0.1) == 1.0 and sched.density_at(20, 0.1) == pytest.approx(0.1)


def test_pruning_scheduler_bad_input():
    model = rs.apply_masks(_mlp(), density=0.1, start="dense")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="t_start"):
        rs.PruningScheduler(model, opt, t_start=10, t_end=10)
    with pytest.raises(ValueError, match="t_end"):
        rs.PruningScheduler(model, opt, t_end=0)
    with pytest.raises(ValueError, match="delta_t"):
        rs.PruningScheduler(model, opt, t_end=10, delta_t=0)
    with pytest.raises(ValueError, match="exponent"):
        rs.PruningScheduler(model, opt, t_end=10, exponent=-1)
    with pytest.raises(ValueError, match="no masked layer"):
        rs.PruningScheduler(_mlp(), opt, t_end=10)
    with pytest.raises(ValueError, match="optimizer does not hold"):
        rs.PruningScheduler(model, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), t_end=10)
    sched = rs.PruningScheduler(model, opt, t_end=10)
    with pytest.raises(ValueError, match="keys"):
        sched.load_state_dict({"step_count": 3})


def test_the_element_mask_is_built_once_and_follows_every_change_of_the_blocks():
    model = rs.apply_masks(_mlp(), density=0.5, distribution="uniform", block_size=2)
    mask = next(m for m in model if hasattr(m, "block_mask")).block_mask
    first = mask.expand()
    assert mask.expand() is first  # cached while the blocks do not change
    expected = mask.active.repeat_interleave(2, 0).repeat_interleave(2, 1)[:first.shape[0], :first.shape[1]]
    assert torch.equal(first, expected)
    flipped = ~mask.active
    mask.active.copy_(flipped)  # any in-place write (set_active_blocks, load_state_dict) bumps the version
    assert torch.equal(mask.expand(), ~first) and mask.expand() is not first
    state = {k: v.clone() for k, v in mask.state_dict().items()}
    state["active"] = ~state["active"]
    mask.load_state_dict(state)
    assert torch.equal(mask.expand(), first)
