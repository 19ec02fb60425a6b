"""Drop and grow criteria as objects: criteria defined here, outside the package, drive RigLScheduler on
compressed and masked layers, are saved by name, and are refused with a message when they cannot work."""

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.layout import BlockSparseLayout


class GradientTimesWeight(rs.DropCriterion):
    """Drop the blocks whose weight times gradient has the smallest norm (a first-order saliency)."""

    name = "gradient_times_weight"

    def scores(self, blocks):
        return (blocks.values().float() * blocks.grads().float()).flatten(1).norm(dim=1)


class GradientNoMomentum(rs.GrowCriterion):
    """SNFS without momentum: the largest norms of this step's dense gradient, ranked here."""

    name, statistic = "snfs_no_momentum", "gradient"

    def choose(self, scores, index, k, generator):
        order = torch.argsort(index)
        scores, index = scores[order], index[order]
        return index[torch.sort(scores, descending=True, stable=True).indices[:k]], None


class LowestIndex(rs.GrowCriterion):
    """Grows the candidates of lowest block index: no statistic, so it is easy to predict."""

    name, statistic = "lowest_index", None

    def choose(self, scores, index, k, generator):
        assert scores is None and bool((index[1:] > index[:-1]).all())
        return index[:k], None


def _model(masked: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if masked:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8))
        return rs.apply_masks(model, density=0.4, block_size=4, generator=g)
    return nn.Sequential(rs.SparseLinear(16, 24, density=0.4, block_size=4, generator=g), nn.Tanh(),
                         rs.SparseLinear(24, 8, density=0.4, block_size=4, generator=g))


def _active(layer) -> set[int]:
    if isinstance(layer, rs.SparseModule):
        return set(layer.layout.flat_index().tolist())
    return set(torch.nonzero(layer.block_mask.active.flatten()).flatten().tolist())


def _train(model, sched, opt, steps):
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 8, (32,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        if sched.step():
            opt.step()
        opt.zero_grad()


def _layers(model):
    return [m for m in model if isinstance(m, (rs.SparseModule, nn.Linear))]


@pytest.mark.parametrize("masked", [False, True])
def test_a_grow_criterion_defined_outside_the_package_takes_rigls_decisions_when_it_ranks_as_rigl(masked):
    topologies = []
    for grow in ("gradient", GradientNoMomentum()):
        model = _model(masked)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=12, alpha=0.5, grow=grow)
        _train(model, sched, opt, 13)
        assert sched.stats["blocks_moved"] > 0
        topologies.append([_active(m) for m in _layers(model)])
    assert topologies[0] == topologies[1]


def _blocks(layer):
    """(weight blocks, gradient blocks) of every block of the layer, [n_blocks, b, b] in row-major order."""
    if isinstance(layer, rs.SparseModule):
        b = layer.block_size
        grad = torch.zeros(layer.layout.n_blocks, b, b)
        grad[layer.layout.flat_index()] = layer.values.grad.float()
        return BlockSparseLayout.blocks_of(layer.to_dense().detach(), b), grad
    b = layer.block_mask.block_size
    return BlockSparseLayout.blocks_of(layer.weight.detach(), b), BlockSparseLayout.blocks_of(layer.weight.grad, b)


def _backward(model):
    g = torch.Generator().manual_seed(99)
    x, y = torch.randn(32, 16, generator=g), torch.randint(0, 8, (32,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()


def _before_update(masked, **criteria):
    """A model and scheduler after three steps and the backward of step 3, an update step."""
    model = _model(masked)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=12, alpha=0.5, **criteria)
    _train(model, sched, opt, 3)
    _backward(model)
    return model, sched


def _lowest(scores, flat, k):
    return set(sorted(flat, key=lambda i: (scores[i].item(), i))[:k])


@pytest.mark.parametrize("masked", [False, True])
def test_a_grow_criterion_chooses_the_grown_blocks(masked):
    model, sched = _before_update(masked, grow=LowestIndex())
    expected = []
    for layer in _layers(model):
        old = _active(layer)
        k = sched.drop_count(3, len(old))
        dropped = _lowest(_blocks(layer)[0].flatten(1).norm(dim=1), sorted(old), k)
        n_blocks = _blocks(layer)[0].shape[0]
        candidates = [i for i in range(n_blocks) if i not in old or i in dropped]
        expected.append((old - dropped) | set(candidates[:k]))
    assert sched.step() is False
    assert [_active(m) for m in _layers(model)] == expected


@pytest.mark.parametrize("masked", [False, True])
def test_drop_is_honoured_a_drop_criterion_defined_outside_the_package_picks_the_dropped_blocks(masked):
    model, sched = _before_update(masked, drop=GradientTimesWeight())
    by_saliency, by_magnitude, old = [], [], []
    for layer in _layers(model):
        weight, grad = _blocks(layer)
        flat, k = sorted(_active(layer)), sched.drop_count(3, len(_active(layer)))
        by_saliency.append(_lowest((weight * grad).flatten(1).norm(dim=1), flat, k))
        by_magnitude.append(_lowest(weight.flatten(1).norm(dim=1), flat, k))
        old.append(_active(layer))
    assert by_saliency != by_magnitude  # the two criteria disagree here, so the test sees which one ran
    assert sched.step() is False  # step 3: the update
    gone = [before - _active(layer) for layer, before in zip(_layers(model), old)]
    # every block that left is one of the k of lowest saliency (a dropped block may be grown again)
    assert all(g <= drop for g, drop in zip(gone, by_saliency)) and sum(map(len, gone)) > 0
    assert sched.drop == "gradient_times_weight"


def test_criteria_are_saved_by_name_and_a_checkpoint_of_a_criterion_not_built_in_needs_its_instance():
    model = _model(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=12, grow=GradientNoMomentum(), drop=GradientTimesWeight())
    _train(model, sched, opt, 4)
    state = sched.state_dict()
    assert (state["grow"], state["drop"]) == ("snfs_no_momentum", "gradient_times_weight")
    again = rs.RigLScheduler(model, opt, delta_t=3, t_end=12, grow=GradientNoMomentum(), drop=GradientTimesWeight())
    again.load_state_dict(state)
    assert again.step_count == 4 and isinstance(again.grow_criterion, GradientNoMomentum)
    plain = rs.RigLScheduler(model, opt, delta_t=3, t_end=12)
    with pytest.raises(ValueError, match="snfs_no_momentum.*not built in"):
        plain.load_state_dict(state)
    assert plain.step_count == 0 and plain.grow == "gradient"  # nothing loaded


class NoName(rs.GrowCriterion):
    statistic = "gradient"


class BadStatistic(rs.GrowCriterion):
    name, statistic = "bad", "hessian"


class Average(rs.GrowCriterion):
    name, statistic = "average", "gradient_average"


class TooFew(rs.GrowCriterion):
    name, statistic = "too_few", None

    def choose(self, scores, index, k, generator):
        return index[:max(k - 1, 0)], None


@pytest.mark.parametrize("grow, error, match", [
    (NoName(), ValueError, "needs a name"),
    (BadStatistic(), ValueError, "statistic must be one of"),
    (Average(), ValueError, "compressed layers never form"),
    ("hessian", ValueError, "grow must be one of"),
    (GradientTimesWeight(), ValueError, "grow must be one of"),  # a drop criterion given as grow=
])
def test_a_criterion_that_cannot_work_is_refused_with_a_message(grow, error, match):
    model = _model(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        rs.RigLScheduler(model, opt, delta_t=3, t_end=12, grow=grow)


def test_a_grow_criterion_that_chooses_a_wrong_set_raises_and_moves_nothing():
    model = _model(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=12, alpha=0.5, grow=TooFew())
    _train(model, sched, opt, 3)
    before = [_active(m) for m in _layers(model)]
    with pytest.raises(RuntimeError, match="too_few.*must choose"):
        _train(model, sched, opt, 1)
    assert [_active(m) for m in _layers(model)] == before and sched.step_count == 3
