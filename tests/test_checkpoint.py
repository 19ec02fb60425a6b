"""Checkpoint and resume: a run stopped anywhere (an update step included) and resumed from standard
state dicts continues bitwise identically."""

import io

import pytest
import torch
from torch import nn

import rigl_sparse as rs

STEPS = 14


def _build(mode, grow, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5))
    if mode == "compressed":
        rs.sparsify(model, density=0.3, distribution="uniform", first_dense=False, dense=("4",), block_size=4,
                    generator=torch.Generator().manual_seed(seed))
    else:
        rs.apply_masks(model, density=0.3, distribution="uniform", first_dense=False, dense=("4",), block_size=4,
                       generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=3, t_end=12, alpha=0.5, grow=grow, seed=seed)
    return model, optimizer, scheduler


def _steps(model, optimizer, scheduler, start, stop):
    losses = []
    for t in range(start, stop):
        g = torch.Generator().manual_seed(100 + t)  # the data of step t, whoever runs it
        x, y = torch.randn(16, 20, generator=g), torch.randint(5, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return losses


def _save(model, optimizer, scheduler) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, grow", [("compressed", "gradient"), ("compressed", "random"),
                                        ("masked", "gradient"), ("masked", "random"), ("masked", "momentum")])
@pytest.mark.parametrize("stop_at", [3, 4, 7])  # before an update step (t=3), right after one, and between
def test_resume_is_bitwise_identical(mode, grow, stop_at):
    reference = _build(mode, grow, seed=0)
    expected = _steps(*reference, 0, STEPS)
    assert reference[2].stats["blocks_moved"] > 0

    first = _build(mode, grow, seed=0)
    losses = _steps(*first, 0, stop_at)
    checkpoint = _save(*first)
    del first

    resumed = _build(mode, grow, seed=7)  # another initialisation and topology, overwritten by the checkpoint
    state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    resumed[0].load_state_dict(state["model"])
    resumed[1].load_state_dict(state["optimizer"])
    resumed[2].load_state_dict(state["scheduler"])
    losses += _steps(*resumed, stop_at, STEPS)

    assert all(torch.equal(a, b) for a, b in zip(losses, expected)), [(float(a), float(b))
                                                                     for a, b in zip(losses, expected)]
    assert resumed[2].stats == reference[2].stats
    for (name, a), b in zip(reference[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name


def test_the_model_round_trips_through_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model, optimizer, scheduler = _build("compressed", "gradient", seed=0)
    _steps(model, optimizer, scheduler, 0, 7)
    safetensors.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    other, _, _ = _build("compressed", "gradient", seed=3)
    other.load_state_dict(safetensors.load_file(str(tmp_path / "model.safetensors")))
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(4, 20)
    assert torch.equal(model(x), other(x))


# ----------------------------------------------------------------------------- checkpoints under faults
def _model_state(model) -> dict:
    return {name: t.clone() for name, t in model.state_dict().items()}


FAULTS = [  # (entry of layer "2", how it is broken, what the error names)
    ("2.layout.block_col", lambda t: torch.zeros_like(t), "'2.layout.' holds an invalid topology: layout holds "
                                                          "duplicate blocks"),
    ("2.layout.block_row", lambda t: t + 100, "'2.layout.' holds an invalid topology: layout.block_row out of range"),
    ("2.values", lambda t: t[:-1], "'2.values' must be a torch.float32 tensor of shape"),
    ("2.values", lambda t: t.double(), r"'2.values' must be a torch.float32 tensor .* got torch.float64"),
    ("2.layout.block_row", lambda t: t.long(), "'2.layout.block_row' must be an int32 tensor, got torch.int64"),
    ("2.layout.row_ptr", lambda t: t[:-1], "'2.layout.row_ptr' has shape"),
]


@pytest.mark.parametrize("key, corrupt, message", FAULTS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(FAULTS)])
def test_a_corrupted_checkpoint_is_refused_naming_the_entry_and_the_model_is_untouched(key, corrupt, message):
    source, _, _ = _build("compressed", "gradient", seed=0)
    state = source.state_dict()
    state["0.values"] = state["0.values"] + 1  # a good first layer, which must not be loaded either
    state[key] = corrupt(state[key])
    model, _, _ = _build("compressed", "gradient", seed=3)
    before = _model_state(model)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_truncated_checkpoint_is_refused_before_anything_is_loaded():
    model, optimizer, scheduler = _build("compressed", "gradient", seed=0)
    data = _save(model, optimizer, scheduler)
    with pytest.raises(Exception):  # torch.load's own error: the file ends early
        torch.load(io.BytesIO(data[: len(data) // 2]), weights_only=True)


@pytest.mark.parametrize("mode", ["compressed", "masked"])
def test_an_update_interrupted_between_drop_and_grow_moves_nothing_and_the_run_resumes_bitwise(mode, monkeypatch):
    """An error while the second layer chooses what to grow (the first has chosen already): no layer has
    moved, and a run resumed from the last checkpoint equals the uninterrupted one bitwise."""
    reference = _build(mode, "gradient", seed=0)
    expected = _steps(*reference, 0, STEPS)

    model, optimizer, scheduler = _build(mode, "gradient", seed=0)
    _steps(model, optimizer, scheduler, 0, 2)
    checkpoint = _save(model, optimizer, scheduler)
    _steps(model, optimizer, scheduler, 2, 3)  # step 3 is an update step
    before = _model_state(model)
    grow, calls = type(scheduler)._grow, []

    def failing_grow(self, target, *args):
        calls.append(target.name)
        if len(calls) == 2:
            raise RuntimeError("killed between drop and grow")
        return grow(self, target, *args)

    monkeypatch.setattr(type(scheduler), "_grow", failing_grow)
    with pytest.raises(RuntimeError, match="killed between drop and grow"):
        _steps(model, optimizer, scheduler, 3, 4)
    monkeypatch.undo()
    after = model.state_dict()
    for name in before:
        if name.endswith(("layout.block_row", "layout.block_col", "block_mask.active")) or "layout" in name:
            assert torch.equal(before[name], after[name]), name  # no topology moved
    assert scheduler.stats["blocks_moved"] == 0 and scheduler.step_count == 3

    resumed = _build(mode, "gradient", seed=7)
    state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    resumed[0].load_state_dict(state["model"])
    resumed[1].load_state_dict(state["optimizer"])
    resumed[2].load_state_dict(state["scheduler"])
    losses = expected[:2] + _steps(*resumed, 2, STEPS)
    assert all(torch.equal(a, b) for a, b in zip(losses, expected))
    for (name, a), b in zip(reference[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- checkpoints of another layer
def _linear(in_features, out_features, bias=True, seed=0):
    torch.manual_seed(seed)
    return rs.sparsify(nn.Sequential(nn.Linear(in_features, out_features, bias=bias)), density=0.5,
                       distribution="uniform", first_dense=False, block_size=4,
                       generator=torch.Generator().manual_seed(seed))


def _conv(in_channels, kernel, seed=0):
    torch.manual_seed(seed)
    return rs.sparsify(nn.Sequential(nn.Conv2d(in_channels, 16, kernel)), density=0.5, distribution="uniform",
                       first_dense=False, block_size=8, generator=torch.Generator().manual_seed(seed))


OTHER_GEOMETRY = [  # (source, target, what the error says of each): equal tensor shapes, another layer
    (lambda: _linear(16, 12), lambda: _linear(15, 12, seed=1), "in_features=16, out_features=12, block_size=4",
     "in_features=15, out_features=12, block_size=4"),
    (lambda: _linear(16, 12, bias=False), lambda: _linear(16, 10, bias=False, seed=1),
     "in_features=16, out_features=12", "in_features=16, out_features=10"),
    (lambda: _conv(8, 3), lambda: _conv(72, 1, seed=1), "in_channels=8, out_channels=16, kernel_height=3",
     "in_channels=72, out_channels=16, kernel_height=1"),
]


@pytest.mark.parametrize("source, target, theirs, ours", OTHER_GEOMETRY, ids=["linear-in", "linear-out", "conv"])
def test_a_checkpoint_of_a_layer_of_another_shape_is_refused_naming_both(source, target, theirs, ours):
    state, model = source().state_dict(), target()
    assert all(state[k].shape == v.shape for k, v in model.state_dict().items())  # only the geometry differs
    before = _model_state(model)
    with pytest.raises(ValueError, match=rf"'0._extra_state' is of a Sparse\w+ of another shape \({theirs}.*\); this "
                                         rf"layer has {ours}"):
        model.load_state_dict(state)
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


def test_a_checkpoint_without_the_geometry_loads_strictly_and_is_still_checked_for_padding():
    source, model = _linear(15, 12), _linear(15, 12, seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("_extra_state")}  # an older checkpoint
    model.load_state_dict(state)  # strict: the missing geometry is not an error
    x = torch.randn(3, 15)
    assert torch.equal(model(x), source(x))
    wider = {k: v for k, v in _linear(16, 12).state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(ValueError, match=r"'0.values' holds non-zeros outside this layer's \[12, 15\] weight"):
        model.load_state_dict(wider)  # 16 inputs into 15: the 16th input's weights would be lost
    assert torch.equal(model(x), source(x))


def test_values_with_non_zeros_in_the_padding_of_edge_blocks_are_refused():
    model = _linear(15, 10)
    state = model.state_dict()
    state["0.values"] = state["0.values"] + 1.0  # the padding entries too
    with pytest.raises(ValueError, match=r"'0.values' holds non-zeros outside this layer's \[10, 15\] weight"):
        _linear(15, 10, seed=2).load_state_dict(state)
    model.load_state_dict(model.state_dict())  # its own state: zero padding, loads


def test_a_sparsified_model_pickles_whole_and_stays_guarded(tmp_path):
    import copy
    import pickle

    model, optimizer, scheduler = _build("compressed", "gradient", seed=0)
    _steps(model, optimizer, scheduler, 0, 4)
    x = torch.randn(5, 20)
    for restored in (pickle.loads(pickle.dumps(model)), pickle.loads(pickle.dumps(copy.deepcopy(model)))):
        assert torch.equal(restored(x), model(x))
    torch.save(model, tmp_path / "model.pt")
    restored = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(restored(x), model(x))
    state = model.state_dict()
    state["0.values"] = state["0.values"] + 1
    state["2.layout.block_row"] = state["2.layout.block_row"] + 100  # the last sparse layer is broken
    before = _model_state(restored)
    with pytest.raises(ValueError, match="'2.layout.' holds an invalid topology"):
        restored.load_state_dict(state)
    assert all(torch.equal(before[name], t) for name, t in restored.state_dict().items())  # layer 0 untouched


@pytest.mark.parametrize("mode", ["compressed", "masked"])
@pytest.mark.parametrize("fault", ["unexpected", "missing", "size"])
def test_a_refused_load_changes_nothing_even_where_torch_would_copy_first(mode, fault):
    """torch's load_state_dict copies the entries it can before it reports key or size mismatches: a guarded
    model (sparsified, masked, or under a scheduler) refuses another size first, and rs.load_state_dict the keys
    as well."""
    source, _, _ = _build(mode, "gradient", seed=0)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    if fault == "unexpected":
        state["extra.weight"] = torch.zeros(3)
    elif fault == "missing":
        del state["4.bias"]
    else:
        state["4.weight"] = torch.zeros(5, 31)
    model, _, _ = _build(mode, "gradient", seed=3)
    before = _model_state(model)
    load = model.load_state_dict if fault == "size" else lambda state: rs.load_state_dict(model, state)
    says = {"unexpected": "unexpected key.*extra.weight", "missing": "missing key.*4.bias",
            "size": "size mismatch for '4.weight'"}[fault]
    with pytest.raises(RuntimeError, match=r"\(nothing was loaded\): " + says):
        load(state)
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    if fault == "unexpected":
        rs.load_state_dict(model, state, strict=False)  # not strict: the rest loads
        assert torch.equal(model.state_dict()["0.bias"], state["0.bias"])


def test_save_checkpoint_keeps_the_last_good_file_when_the_process_is_killed_mid_write(tmp_path):
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "run.pt"
    rs.save_checkpoint({"step": 1, "weights": torch.arange(10.0)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1 and not list(tmp_path.glob(".*.tmp"))
    child = textwrap.dedent(f"""
        import os, signal, torch, rigl_sparse as rs
        def dying_save(obj, f, *args, **kwargs):
            f.write(b"PK" + b"x" * 100000)  # half a zip file on disk
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        rs.save_checkpoint({{"step": 2}}, {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    assert torch.load(path, weights_only=True)["step"] == 1  # the last good checkpoint, whole
    assert len(list(tmp_path.glob(".run.pt.*.tmp"))) == 1  # what the killed process left beside it
    rs.save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True)["step"] == 3


def test_save_checkpoint_removes_its_temporary_file_when_the_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    rs.save_checkpoint({"step": 1}, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        rs.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1 and sorted(tmp_path.iterdir()) == [path]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rs.save_checkpoint({}, tmp_path / "missing" / "run.pt")


def test_load_state_dict_is_all_or_nothing_where_only_a_part_of_the_model_is_sparse():
    def model(seed):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4)))
        rs.sparsify(net[2], density=0.5, distribution="uniform", first_dense=False, block_size=4)
        return net

    state = model(0).state_dict()
    state["2.1.layout.block_row"] = state["2.1.layout.block_row"] + 100  # a bad sparse layer after '0'
    target = model(1)
    before = _model_state(target)
    with pytest.raises(ValueError, match="'2.1.layout.' holds an invalid topology"):
        rs.load_state_dict(target, state)
    assert all(torch.equal(before[name], t) for name, t in target.state_dict().items())  # '0' untouched too
    good = model(0).state_dict()
    rs.load_state_dict(target, good)
    assert all(torch.equal(good[name], t) for name, t in target.state_dict().items())


@pytest.mark.parametrize("mode", ["compressed", "masked"])
def test_ctrl_c_during_the_moves_of_an_update_waits_until_every_layer_has_moved(mode, monkeypatch):
    import os
    import signal

    from rigl_sparse.rigl import targets

    reference = _build(mode, "gradient", seed=0)
    expected = _steps(*reference, 0, STEPS)
    model, optimizer, scheduler = _build(mode, "gradient", seed=0)
    _steps(model, optimizer, scheduler, 0, 3)
    kind = targets.CompressedTarget if mode == "compressed" else targets.MaskedTarget
    move = kind.move

    def interrupted_move(self, *args):
        if self.name == "0":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first layer moves
        return move(self, *args)

    monkeypatch.setattr(kind, "move", interrupted_move)
    # Python's own Ctrl-C handler, also where the suite runs in the background of a shell (which ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _steps(model, optimizer, scheduler, 3, 4)  # step 3 updates the topology
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert scheduler.step_count == 4 and scheduler.stats["updates"] == 1  # the whole update, counted
    assert set(scheduler.last_update) == {"0", "2"}
    checkpoint = _save(model, optimizer, scheduler)  # what a handler of the interrupt saves
    resumed = _build(mode, "gradient", seed=7)
    state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    for part, key in zip(resumed, ("model", "optimizer", "scheduler")):
        part.load_state_dict(state[key])
    losses = _steps(*resumed, 4, STEPS)  # the run goes on as if uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(losses, expected[4:]))
    for (name, a), b in zip(reference[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mode", ["compressed", "masked"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_a_later_layer_s_move_puts_back_the_layers_moved_before_it(mode, error, monkeypatch):
    from rigl_sparse.rigl import targets

    model, optimizer, scheduler = _build(mode, "gradient", seed=0)
    _steps(model, optimizer, scheduler, 0, 3)
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(103))
    y = torch.randint(5, (16,), generator=torch.Generator().manual_seed(103))
    nn.functional.cross_entropy(model(x), y).backward()  # step 3's backward: an update step
    before, stats = _model_state(model), dict(scheduler.stats)
    moments = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.state.items()}
    kind = targets.CompressedTarget if mode == "compressed" else targets.MaskedTarget
    move = kind.move

    def failing_move(self, *args):
        if self.name == "2":
            raise error("out of memory in the second layer's move")
        return move(self, *args)

    monkeypatch.setattr(kind, "move", failing_move)
    with pytest.raises(error, match="second layer's move"):
        scheduler.step()
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())  # layer "0" put back too
    assert scheduler.stats == stats and scheduler.step_count == 3
    for p, s in optimizer.state.items():
        assert all(torch.equal(moments[id(p)][k], v) for k, v in s.items() if torch.is_tensor(v))
    for layer in model.modules():
        if isinstance(layer, rs.SparseModule):
            layer.layout.validate(layer.values)  # the views rebuilt with the topology


def test_load_sparse_rebuilds_the_sparse_model_from_its_state_dict_alone(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")

    def dense_model(features=20):
        torch.manual_seed(5)
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, features),
                             nn.ReLU(), nn.Linear(features, 5))

    model = rs.sparsify(dense_model(), density=0.3, distribution="uniform", first_dense=False, block_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=6)
    for step in range(5):
        model(torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(step))).square().mean().backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad()
    safetensors.save_file(model.state_dict(), str(tmp_path / "sparse.safetensors"))
    state = safetensors.load_file(str(tmp_path / "sparse.safetensors"))
    fresh = rs.load_sparse(dense_model(), state)  # no density, seed or sparsify call: the topology is in the file
    assert [type(fresh[i]) for i in (0, 3, 5)] == [rs.SparseConv2d, rs.SparseLinear, rs.SparseLinear]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    other = dense_model(features=24)  # another shape: refused, and the model stays dense as it was
    before = _model_state(other)
    with pytest.raises((ValueError, RuntimeError)):
        rs.load_sparse(other, state)
    assert type(other[3]) is nn.Linear and all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_load_sparse_casts_values_keeps_an_encoder_off_the_fused_path_and_bare_layers_load_old_checkpoints():
    import warnings

    torch.manual_seed(0)

    def encoder():
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        return nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.MultiheadAttention stays dense
        sparse = rs.sparsify(encoder(), density=0.5, distribution="uniform", first_dense=False, block_size=8)
    state = {k: v.to(torch.bfloat16) if k.endswith("values") else v for k, v in sparse.state_dict().items()}
    fresh = rs.load_sparse(encoder().eval(), state)  # bf16 values into an fp32 model: cast, as torch casts
    x = torch.randn(2, 5, 32)
    with torch.no_grad():  # eval: torch's fused path would read linear1.weight
        assert fresh.layers[0].linear1.values.dtype == torch.float32 and fresh(x).shape == (2, 5, 32)
    layer = rs.SparseLinear(16, 8, density=0.5, block_size=4)
    old = {k: v for k, v in layer.state_dict().items() if k != "_extra_state"}  # from before the geometry
    rs.load_state_dict(layer, old)
