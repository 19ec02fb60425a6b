"""RigLScheduler: the update rule against a brute-force masked-dense RigL, and its invariants."""

import warnings

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.layout import BlockSparseLayout


def _model(seed=0, b=4, density=0.25, in_features=24, hidden=32):
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(rs.SparseLinear(in_features, hidden, density=density, block_size=b, generator=g), nn.Tanh(),
                         rs.SparseLinear(hidden, 12, density=density, block_size=b, generator=g))


def _batch(step, n=16, in_features=24):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, in_features, generator=g), torch.randint(0, 12, (n,), generator=g)


def _brute_force_update(layer, dense_grad, k):
    """RigL on the masked dense weight: the expected active set and which blocks keep their value."""
    b = layer.block_size
    flat = layer.layout.flat_index().tolist()
    w_norms = layer.values.detach().float().flatten(1).norm(dim=1).tolist()
    dropped = sorted(range(len(flat)), key=lambda s: (w_norms[s], flat[s]))[:k]
    kept = {flat[s] for s in range(len(flat)) if s not in set(dropped)}
    g_norms = BlockSparseLayout.block_norms(dense_grad, b).flatten().tolist()
    candidates = [i for i in range(len(g_norms)) if i not in kept]
    grown = sorted(candidates, key=lambda i: (-g_norms[i], i))[:k]
    regrown = {flat[s] for s in dropped} & set(grown)
    return kept | set(grown), kept | regrown


def _dense_weight_grads(model, x, y):
    """Dense gradients of every sparse layer's weight, from a dense twin of the model."""
    twins = nn.Sequential(*[m.to_linear() if isinstance(m, rs.SparseLinear) else m for m in model])
    nn.functional.cross_entropy(twins(x), y).backward()
    return [m.weight.grad for m in twins if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("b", [1, 4, 8])
def test_update_matches_brute_force_masked_dense_rigl(b):
    model = _model(b=b, density=0.3, in_features=6 * b, hidden=8 * b)  # 12 outputs: padded for b=8
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = rs.RigLScheduler(model, opt, delta_t=5, t_end=40, alpha=0.5)
    layers = [m for m in model if isinstance(m, rs.SparseLinear)]
    checked = 0
    for step in range(41):
        x, y = _batch(step, in_features=6 * b)
        if sched.is_update_step(step):
            expected = []
            grads = _dense_weight_grads(model, x, y)
            for layer, grad in zip(layers, grads):
                k = sched.drop_count(step, layer.layout.nnzb)
                expected.append((k, *_brute_force_update(layer, grad, k), layer.to_dense()))
        nn.functional.cross_entropy(model(x), y).backward()
        stepped = sched.step()
        assert stepped == (not sched.is_update_step(step))
        if not stepped:
            for layer, (k, active, keep_value, before) in zip(layers, expected):
                assert set(layer.layout.flat_index().tolist()) == active
                after = layer.to_dense()
                for i in active:
                    r, c = divmod(i, layer.layout.grid[1])
                    blk = (slice(r * b, (r + 1) * b), slice(c * b, (c + 1) * b))
                    if i in keep_value:
                        assert torch.equal(after[blk], before[blk])  # kept and regrown blocks keep their value
                    else:
                        assert torch.all(after[blk] == 0)  # newly grown blocks start at zero
                layer.layout.validate(layer.values)
                checked += k > 0
        else:
            opt.step()
        opt.zero_grad()
    assert checked >= 8  # updates that moved blocks were checked, in both layers


OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
              "adam": lambda p: torch.optim.Adam(p, lr=1e-2), "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
              "adafactor": lambda p: torch.optim.Adafactor(p, lr=1e-2),
              "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
              "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2)}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_grown_blocks_have_zero_value_and_optimizer_state(optimizer):
    """Every state tensor with an entry per slot is zeroed on the moved slots, whatever its other dimensions
    (Adafactor's factored [nnzb, b, 1] and [nnzb, 1, b])."""
    model = _model(seed=3)
    opt = OPTIMIZERS[optimizer](model.parameters())
    sched = rs.RigLScheduler(model, opt, delta_t=4, t_end=30, alpha=0.5)
    layers = [m for m in model if isinstance(m, rs.SparseLinear)]
    moved_total = 0
    for step in range(31):
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        before = [(m.layout.flat_index().clone(), m.values.detach().clone()) for m in layers]
        if sched.step():
            opt.step()
        else:
            for m, (old_flat, old_values) in zip(layers, before):
                moved = m.layout.flat_index() != old_flat
                moved_total += int(moved.sum())
                assert torch.all(m.values[moved] == 0)
                assert torch.equal(m.values[~moved], old_values[~moved])
                per_slot = [(name, state) for name, state in opt.state[m.values].items()
                            if torch.is_tensor(state) and state.dim() > 0]
                assert per_slot and all(state.shape[0] == m.layout.nnzb for _, state in per_slot)
                for name, state in per_slot:
                    assert torch.all(state[moved] == 0), name
                    assert state[~moved].abs().sum() > 0, name
        opt.zero_grad()
    assert moved_total > 0


def test_masked_layers_refuse_factored_optimizer_state_before_anything_moves():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    rs.apply_masks(model, density=0.5, distribution="uniform", first_dense=False, block_size=4)
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    sched = rs.RigLScheduler(model, opt, delta_t=2, t_end=10, alpha=0.5)
    for step in range(3):
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x[:, :16]), y % 8).backward()
        if step < 2:
            assert sched.step()
            opt.step()
            opt.zero_grad()
    masks = [m.block_mask.active.clone() for m in (model[0], model[2])]
    with pytest.raises(NotImplementedError, match=r"masked layer '0': the optimizer's state 'row_var' .* use "
                                                  r"compressed layers"):
        sched.step()
    assert all(torch.equal(m.block_mask.active, before) for m, before in zip((model[0], model[2]), masks))
    assert sched.step_count == 2 and sched.stats["blocks_moved"] == 0


def test_active_count_constant_and_topology_frozen_after_t_end():
    model = _model(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=20, alpha=0.4)
    layers = [m for m in model if isinstance(m, rs.SparseLinear)]
    counts = [m.layout.nnzb for m in layers]
    history = []
    for step in range(40):
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        if sched.step():
            opt.step()
        opt.zero_grad()
        assert [m.layout.nnzb for m in layers] == counts
        assert [m.values.shape[0] for m in layers] == counts
        history.append([m.layout.flat_index().clone() for m in layers])
    changes = [t for t in range(1, 40) if any(not torch.equal(a, b) for a, b in zip(history[t], history[t - 1]))]
    assert changes and max(changes) <= 20
    assert all(t % 3 == 0 for t in changes)
    assert sched.stats["updates"] == len([t for t in range(1, 21) if t % 3 == 0])


def test_values_parameter_and_optimizer_state_are_never_reallocated():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = rs.RigLScheduler(model, opt, delta_t=2, t_end=10)
    layer = model[0]
    ptrs = None
    for step in range(12):
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        if sched.step():
            opt.step()
        opt.zero_grad()
        now = (layer.values.data_ptr(), opt.state[layer.values]["exp_avg"].data_ptr() if opt.state[layer.values] else 0,
               layer.layout.block_row.data_ptr(), layer.layout.row_slots.data_ptr())
        if ptrs is not None and ptrs[1]:
            assert now == ptrs
        ptrs = now


def test_just_dropped_block_can_regrow_and_keeps_its_value_and_state():
    layer = rs.SparseLinear(8, 8, bias=False, density=0.5, block_size=4, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = rs.RigLScheduler(model, opt, delta_t=1, t_end=10, alpha=1.0)  # k = floor(0.976 * 2) = 1 at step 1
    sched.step()  # step 0 is never an update
    with torch.no_grad():
        layer.values[0] = 0.01  # the smallest block: dropped
        layer.values[1] = 1.0
    x = torch.randn(4, 8)
    layer(x).sum().backward()
    opt.state[layer.values]["momentum_buffer"] = torch.ones_like(layer.values)
    # Make the dropped block's gradient dominate every inactive block's score.
    layer.values.grad[0] = 1e6
    layer.grow._scores = (torch.tensor([1.0]), torch.tensor([_first_inactive(layer)]))
    flat_before = layer.layout.flat_index().clone()
    assert sched.step_count == 1 and sched.is_update_step(1)
    assert sched.step() is False
    assert torch.equal(layer.layout.flat_index(), flat_before)  # regrown in place
    assert torch.all(layer.values[0] == 0.01)
    assert torch.all(opt.state[layer.values]["momentum_buffer"][0] == 1)


def _first_inactive(layer):
    active = set(layer.layout.flat_index().tolist())
    return next(i for i in range(layer.layout.n_blocks) if i not in active)


def test_dropped_block_with_small_gradient_is_replaced():
    layer = rs.SparseLinear(8, 8, bias=False, density=0.5, block_size=4, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=1, t_end=10, alpha=1.0)
    sched.step()  # step 0 is never an update
    with torch.no_grad():
        layer.values[0] = 0.01
    layer(torch.randn(4, 8)).sum().backward()
    layer.values.grad.zero_()
    target = _first_inactive(layer)
    layer.grow._scores = (torch.tensor([5.0]), torch.tensor([target]))
    assert sched.step() is False
    assert int(layer.layout.flat_index()[0]) == target and torch.all(layer.values[0] == 0)


def test_set_grows_at_random_and_differs_from_rigl_and_static_never_changes():
    finals = {}
    for grow in ("gradient", "random", "none"):
        model = _model(seed=7)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = rs.RigLScheduler(model, opt, delta_t=5, t_end=30, grow=grow, seed=1)
        start = [m.layout.flat_index().clone() for m in model if isinstance(m, rs.SparseLinear)]
        for step in range(31):
            x, y = _batch(step)
            nn.functional.cross_entropy(model(x), y).backward()
            assert sched.step() or grow != "none"
            opt.step() if not sched.is_update_step(step) else None
            opt.zero_grad()
        finals[grow] = [m.layout.flat_index().clone() for m in model if isinstance(m, rs.SparseLinear)]
        if grow == "none":
            assert all(torch.equal(a, b) for a, b in zip(start, finals[grow]))
        else:
            assert not all(torch.equal(a, b) for a, b in zip(start, finals[grow]))
    assert not all(torch.equal(a, b) for a, b in zip(finals["gradient"], finals["random"]))


def test_nonfinite_scores_skip_the_layer_with_a_warning_and_a_count():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=1, t_end=10)
    sched.step()
    x, y = _batch(0)
    x[0, 0] = float("nan")
    nn.functional.cross_entropy(model(x), y).backward()
    before = [m.layout.flat_index().clone() for m in model if isinstance(m, rs.SparseLinear)]
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        sched.step()
    assert sched.stats["skipped_nonfinite"] == 2
    after = [m.layout.flat_index() for m in model if isinstance(m, rs.SparseLinear)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_missing_backward_warns_and_skips():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=1, t_end=10)
    sched.step()
    with pytest.warns(RuntimeWarning, match="no gradient"):
        sched.step()
    assert sched.stats["skipped_no_gradient"] == 2


def test_checkpoint_resume_reproduces_the_run_exactly():
    def run(steps, state=None):
        model = _model(seed=5)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=25, grow="random", seed=9)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        losses = []
        for _ in range(steps):
            step = sched.step_count
            x, y = _batch(step)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if sched.step():
                opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses, {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}

    full, final = run(30)
    first, mid = run(12)  # stops right after the update at step 12
    mid = torch.load(_roundtrip(mid), weights_only=False)
    rest, resumed = run(18, mid)
    assert full == first + rest
    for key, value in final["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("kwargs,match", [
    (dict(delta_t=0), "delta_t"), (dict(t_end=0), "t_end"), (dict(alpha=2.0), "alpha"),
    (dict(grow="momentum"), "grow"), (dict(drop="random"), "drop"),
])
def test_bad_arguments(kwargs, match):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = dict(delta_t=10, t_end=100)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rs.RigLScheduler(model, opt, **args)


def test_rejects_models_without_sparse_layers_and_optimizers_missing_values():
    with pytest.raises(ValueError, match="no sparse layer"):
        rs.RigLScheduler(nn.Linear(4, 4), torch.optim.SGD(nn.Linear(4, 4).parameters(), lr=1), t_end=10)
    model = _model()
    with pytest.raises(ValueError, match="optimizer does not hold"):
        rs.RigLScheduler(model, torch.optim.SGD([model[0].values], lr=1), t_end=10)
    sched = rs.RigLScheduler(model, torch.optim.SGD(model.parameters(), lr=1), t_end=10)
    with pytest.raises(ValueError, match="state"):
        sched.load_state_dict({"step_count": 3})


def test_a_layer_without_gradient_keeps_its_topology():
    torch.manual_seed(0)
    model = rs.sparsify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), density=0.3, block_size=4,
                        distribution="uniform", first_dense=False, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=6, alpha=0.5)
    before = [m.layout.flat_index().clone() for m in model if isinstance(m, rs.SparseModule)]
    x = torch.randn(8, 16)
    with pytest.warns(RuntimeWarning, match="its gradient is zero"):
        for _ in range(5):
            (model(x) * 0.0).sum().backward()  # every gradient is exactly zero
            if sched.step():
                optimizer.step()
            optimizer.zero_grad()
    after = [m.layout.flat_index() for m in model if isinstance(m, rs.SparseModule)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # both layers at t = 2; at t = 4 the second drops floor(0.125 * 5) = 0 blocks, so only the first tries
    assert sched.stats["skipped_zero_gradient"] == 3 and sched.stats["blocks_moved"] == 0


def test_old_scheduler_checkpoints_without_new_counters_load():
    model = rs.sparsify(nn.Sequential(nn.Linear(16, 32)), density=0.5, block_size=4, distribution="uniform",
                        first_dense=False)
    sched = rs.RigLScheduler(model, torch.optim.SGD(model.parameters(), lr=0.1), t_end=10)
    state = sched.state_dict()
    state["stats"] = {k: v for k, v in state["stats"].items() if k not in ("skipped_zero_gradient", "skipped_overflow")}
    sched.load_state_dict(state)
    assert sched.stats["skipped_zero_gradient"] == 0 and sched.stats["skipped_overflow"] == 0


def test_a_schedule_whose_t_end_comes_before_the_first_update_says_so_at_the_first_step():
    model = _model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=100, t_end=50)
    x, y = _batch(0)
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.warns(UserWarning, match=r"t_end=50 comes before the first update step \(delta_t=100\)"):
        sched.step()
    static = rs.RigLScheduler(model, opt, delta_t=100, t_end=50, grow="none")  # a static topology: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        static.step()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_calling_step_twice_per_backward_is_said_once_and_an_ordinary_loop_says_nothing(set_to_none):
    model = _model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=3, t_end=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(8):  # an ordinary loop, with gradient accumulation over two passes at step 5
            for _ in range(2 if step == 5 else 1):
                x, y = _batch(step)
                nn.functional.cross_entropy(model(x), y).backward()
            if sched.step():
                opt.step()
            opt.zero_grad(set_to_none=set_to_none)
    x, y = _batch(8)
    nn.functional.cross_entropy(model(x), y).backward()
    sched.step()
    with pytest.warns(UserWarning, match=r"step\(\) was called without a backward pass since its last call \(the "
                                         r"same gradients\)"):
        sched.step()  # twice for one backward
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()  # said once
