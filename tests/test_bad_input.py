"""Bad input across the public API: every case raises the expected exception type with a message that
names the argument, and leaves what it was given unmodified."""

import math

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.layout import BlockSparseLayout


def _linear():
    torch.manual_seed(0)
    return rs.SparseLinear(16, 12, density=0.5, block_size=4)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _sparse_mlp():
    return rs.sparsify(_mlp(), density=0.5, block_size=4, distribution="uniform", first_dense=False)


def _scheduler(**kwargs):
    model = _sparse_mlp()
    args = dict(t_end=10)
    args.update(kwargs)
    return rs.RigLScheduler(model, torch.optim.SGD(model.parameters(), lr=0.1), **args)


def _corrupt_state(key, value):
    layer = _linear()
    state = layer.state_dict()
    state[key] = value(state[key])
    return state


def _topology(layer):
    return layer.layout.topology()


CASES = [
    # construction
    ("density 0", lambda: rs.SparseLinear(16, 12, density=0.0), ValueError, "density"),
    ("density negative", lambda: rs.SparseLinear(16, 12, density=-0.5), ValueError, "density"),
    ("density above 1", lambda: rs.SparseLinear(16, 12, density=1.5), ValueError, "density"),
    ("density NaN", lambda: rs.SparseLinear(16, 12, density=math.nan), ValueError, "density"),
    ("density a string", lambda: rs.SparseLinear(16, 12, density="0.5"), (TypeError, ValueError), "density"),
    ("block size 0", lambda: rs.SparseLinear(16, 12, density=0.5, block_size=0), ValueError, "block_size"),
    ("block size a float", lambda: rs.SparseLinear(16, 12, density=0.5, block_size=4.0), (TypeError, ValueError),
     "block_size"),
    ("in_features 0", lambda: rs.SparseLinear(0, 12, density=0.5), ValueError, "in_features"),
    ("integer dtype", lambda: rs.SparseLinear(16, 12, density=0.5, dtype=torch.int32), (TypeError, ValueError),
     "dtype"),
    ("conv kernel 0", lambda: rs.SparseConv2d(8, 8, 0, density=0.5, block_size=4), ValueError, "kernel_size"),
    ("conv groups not dividing", lambda: rs.SparseConv2d(8, 8, 3, groups=3, density=0.5, block_size=4),
     ValueError, "groups"),
    ("conv padding mode", lambda: rs.SparseConv2d(8, 8, 3, padding_mode="reflect", density=0.5, block_size=4),
     ValueError, "padding_mode"),
    ("conv stride 0", lambda: rs.SparseConv2d(8, 8, 3, stride=0, density=0.5, block_size=4), ValueError, "stride"),
    # forward
    ("linear input width", lambda: _linear()(torch.randn(3, 15)), ValueError, "input"),
    ("linear input dtype", lambda: _linear()(torch.randn(3, 16, dtype=torch.float64)), TypeError, "dtype"),
    ("linear integer input", lambda: _linear()(torch.ones(3, 16, dtype=torch.long)), TypeError, "dtype"),
    ("conv input rank", lambda: rs.SparseConv2d(8, 8, 3, density=0.5, block_size=4)(torch.randn(8, 5, 5)),
     ValueError, "input"),
    ("conv input too small", lambda: rs.SparseConv2d(8, 8, 3, density=0.5, block_size=4)(torch.randn(1, 8, 2, 2)),
     ValueError, "input"),
    # layouts
    ("layout float block_row", lambda: BlockSparseLayout((12, 16), 4, torch.tensor([0.0]), torch.tensor([0])),
     TypeError, "block_row"),
    ("layout duplicate blocks", lambda: BlockSparseLayout((12, 16), 4, torch.tensor([0, 0], dtype=torch.int32),
                                                          torch.tensor([1, 1], dtype=torch.int32)),
     ValueError, "duplicate"),
    ("layout column out of range", lambda: BlockSparseLayout((12, 16), 4, torch.tensor([0], dtype=torch.int32),
                                                             torch.tensor([4], dtype=torch.int32)),
     ValueError, "block_col"),
    ("layout shape", lambda: BlockSparseLayout((12, 0), 4, torch.tensor([], dtype=torch.int32),
                                               torch.tensor([], dtype=torch.int32)), ValueError, "shape"),
    ("from_dense on a vector", lambda: BlockSparseLayout.from_dense(torch.randn(16), density=0.5, block_size=4),
     ValueError, "weight"),
    # state dicts
    ("state dict of another layer", lambda: _linear().load_state_dict(
        rs.SparseLinear(16, 16, density=0.5, block_size=4).state_dict()), (RuntimeError, ValueError), "shape"),
    ("state dict with duplicate blocks", lambda: _linear().load_state_dict(
        _corrupt_state("layout.block_col", lambda t: torch.zeros_like(t))), (RuntimeError, ValueError),
     "duplicate blocks"),
    ("state dict with a broken row view", lambda: _linear().load_state_dict(
        _corrupt_state("layout.row_ptr", lambda t: t.flip(0))), (RuntimeError, ValueError), "row_ptr"),
    # ops
    ("dsd 1-D input", lambda: rs.ops.dsd(torch.randn(16), _linear().values, _linear().layout), ValueError,
     "x must be 2-D"),
    ("dsd values dtype", lambda: rs.ops.dsd(torch.randn(3, 16), _linear().values.double(), _linear().layout),
     TypeError, "dtype"),
    ("dsd topology dtype", lambda: torch.ops.rigl_sparse.dsd(torch.randn(3, 16), _linear().values, None,
                                                             [t.long() for t in _topology(_linear())], 12),
     TypeError, "int32"),
    ("block_scores k negative", lambda: rs.ops.block_scores(torch.randn(3, 12), torch.randn(3, 16),
                                                            _linear().layout, -1), ValueError,
     "k must be non-negative"),
    ("update_topology slot out of range", lambda: rs.ops.update_topology(
        _linear().values.detach(), _linear().layout, torch.tensor([99]), torch.tensor([0]), torch.tensor([0])),
     ValueError, "slots"),
    ("grow-score request", lambda: _linear().request_grow_scores(-1), ValueError, "k must be a non-negative int"),
    # sparsify, masks, densities
    ("sparsify density 0", lambda: rs.sparsify(_mlp(), density=0.0), ValueError, "density"),
    ("sparsify distribution", lambda: rs.sparsify(_mlp(), density=0.5, distribution="erkk"), ValueError,
     "distribution"),
    ("sparsify a tensor", lambda: rs.sparsify(torch.randn(3), density=0.5), TypeError, "model"),
    ("sparsify block size", lambda: rs.sparsify(_mlp(), density=0.5, block_size=-1), ValueError, "block_size"),
    ("sparsify unknown custom layer", lambda: rs.sparsify(_mlp(), density=0.5, custom={"nope": 0.5}), ValueError,
     "nope"),
    ("sparsify unknown dense layer", lambda: rs.sparsify(_mlp(), density=0.5, dense=("nope",)), ValueError, "nope"),
    ("masks start", lambda: rs.apply_masks(_mlp(), density=0.5, start="middle"), ValueError, "start"),
    ("masks twice", lambda: rs.apply_masks(rs.apply_masks(_mlp(), density=0.5), density=0.5), ValueError,
     "already carry a block mask"),
    ("densities of nothing", lambda: rs.layer_densities({}, 0.5), ValueError, "shapes"),
    # schedulers
    ("t_end 0", lambda: _scheduler(t_end=0), ValueError, "t_end"),
    ("t_end negative", lambda: _scheduler(t_end=-5), ValueError, "t_end"),
    ("delta_t 0", lambda: _scheduler(delta_t=0), ValueError, "delta_t"),
    ("delta_t a float", lambda: _scheduler(delta_t=2.5), (TypeError, ValueError), "delta_t"),
    ("alpha above 1", lambda: _scheduler(alpha=1.5), ValueError, "alpha"),
    ("grow method", lambda: _scheduler(grow="magic"), ValueError, "grow"),
    ("drop method", lambda: _scheduler(drop="random"), ValueError, "drop"),
    ("momentum 1", lambda: _scheduler(momentum=1.0), ValueError, "momentum"),
    ("optimizer missing the values", lambda: rs.RigLScheduler(
        _sparse_mlp(), torch.optim.SGD(_sparse_mlp().parameters(), lr=0.1), t_end=10), ValueError, "optimizer"),
    ("optimizer not an optimizer", lambda: rs.RigLScheduler(_sparse_mlp(), "sgd", t_end=10), TypeError, "optimizer"),
    ("scheduler state step", lambda: _scheduler().load_state_dict({**_scheduler().state_dict(), "step_count": -1}),
     ValueError, "step_count"),
    ("scheduler state garbage", lambda: _scheduler().load_state_dict({"nothing": 1}), ValueError, "state"),
    ("pruning t_end before t_start", lambda: rs.PruningScheduler(
        rs.apply_masks(_mlp(), density=0.5, start="dense"), torch.optim.SGD(_mlp().parameters(), lr=0.1), t_start=10,
        t_end=5), ValueError, "t_end"),
    ("drop fraction at a negative step", lambda: rs.drop_fraction(-1, alpha=0.3, t_end=10), ValueError, "step"),
    ("unknown backend", lambda: rs.use_backend("magic").__enter__(), ValueError, "magic"),
    ("a seed as the generator", lambda: rs.SparseLinear(8, 8, density=0.5, block_size=4, generator=42), TypeError,
     "generator"),
    ("a seed as sparsify's generator", lambda: rs.sparsify(_mlp(), density=0.5, generator=7), TypeError, "generator"),
    ("a seed as apply_masks' generator", lambda: rs.apply_masks(_mlp(), density=0.5, generator=7), TypeError,
     "generator"),
    ("a float padding", lambda: rs.SparseConv2d(8, 8, 3, padding=1.0, density=0.5, block_size=4), TypeError,
     "padding"),
    ("a 0-d input", lambda: _linear()(torch.tensor(1.0)), ValueError, "input"),
    ("more grow candidates than blocks", lambda: _linear().request_grow_scores(10 ** 12), ValueError, "k"),
]


@pytest.mark.parametrize("call, error, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_it(call, error, names):
    with pytest.raises(error, match=rf"(?<!\w){names}(?!\w)"):  # the whole name, not a letter of a word
        call()


@pytest.mark.parametrize("bad", [dict(density=0.0), dict(density=0.5, distribution="nope"),
                                 dict(density=0.5, exclude="nope"), dict(density=0.5, custom={"2": 2.0})])
def test_a_refused_conversion_leaves_the_model_as_it_was(bad):
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    with pytest.raises((ValueError, TypeError)):
        rs.sparsify(model, **bad)
    with pytest.raises((ValueError, TypeError)):
        rs.apply_masks(model, **bad)
    assert [type(m) for m in model.modules()] == types and not any(hasattr(m, "block_mask") for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_refused_state_dict_leaves_the_layer_as_it_was():
    layer = _linear()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises((RuntimeError, ValueError)):
        layer.load_state_dict(_corrupt_state("layout.block_col", lambda t: torch.zeros_like(t)))
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
    layer.layout.validate(layer.values)


def test_zero_size_and_non_contiguous_inputs_work():
    layer = _linear()
    assert layer(torch.randn(0, 16)).shape == (0, 12)
    x = torch.randn(16, 6).T  # non-contiguous
    torch.testing.assert_close(layer(x), layer(x.contiguous()))


def test_a_layer_moved_to_meta_still_has_a_repr():
    model = _sparse_mlp().to("meta")
    assert "density=unknown (on meta)" in repr(model)


def test_a_very_sparse_layer_on_a_huge_grid_draws_its_blocks_without_permuting_the_grid():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = torch.Generator().manual_seed(0)
    layout = BlockSparseLayout.random((131072, 131072), 4, density=1e-5, generator=g)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert layout.nnzb == round(1e-5 * 32768 ** 2) and grown_mib < 200  # a permutation would take 8 GiB
    flat = layout.flat_index()
    assert flat.unique().numel() == layout.nnzb and int(flat.max()) < 32768 ** 2
    again = BlockSparseLayout.random((131072, 131072), 4, density=1e-5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.flat_index(), flat)  # seeded
    rows = layout.block_row.float()  # spread over the grid, not bunched at the start
    assert 0.4 < float(rows.mean()) / 32768 < 0.6
