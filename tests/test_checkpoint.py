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
