"""What an update did (``last_update``), written to TensorBoard and read back, and the topology pictures."""

import pytest
import torch
from torch import nn

import rigl_sparse as rs

STEPS, DELTA_T = 12, 3


def train(writer=None, history=None, steps=STEPS):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    rs.sparsify(model, density=0.5, block_size=8, first_dense=False, last_dense=True,
                generator=torch.Generator().manual_seed(0))
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = rs.RigLScheduler(model, inner, delta_t=DELTA_T, t_end=30, alpha=0.5)
    history = rs.TopologyHistory(model) if history is True else history
    optimizer = rs.RigLOptimizer(inner, scheduler, writer=writer, history=history)
    g = torch.Generator().manual_seed(1)
    records = {}
    for _ in range(steps):
        x, y = torch.randn(8, 32, generator=g), torch.randn(8, 4, generator=g)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        for name, record in scheduler.last_update.items():
            records[(name, record["step"])] = record
    return model, scheduler, history, records


def test_last_update_says_what_each_update_did():
    model, scheduler, _, records = train()
    steps = sorted({step for _, step in records})
    assert steps == [3, 6, 9]
    for (name, step), r in records.items():
        layer = model.get_submodule(name)
        assert r["dropped"] == r["grown"] == scheduler.drop_count(step, layer.layout.nnzb) > 0
        assert 0 <= r["regrown"] <= r["grown"] and r["regrown_fraction"] == r["regrown"] / r["grown"]
        assert r["moved"] == r["grown"] - r["regrown"]  # a regrown block keeps its slot
        assert r["density"] == layer.layout.nnzb / layer.layout.n_blocks
        assert 0 <= r["grow_score_min"] <= r["grow_score_mean"] <= r["grow_score_max"]
    assert sum(r["moved"] for r in records.values()) == scheduler.stats["blocks_moved"]


def test_tensorboard_scalars_read_back_from_the_event_file(tmp_path):
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = tensorboard.SummaryWriter(log_dir=str(tmp_path))
    _, _, _, records = train(writer=writer)
    writer.close()
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"rigl/0/grown", "rigl/2/regrown_fraction", "rigl/0/density", "rigl/2/grow_score_mean"} <= tags
    for name in ("0", "2"):
        written = {e.step: e.value for e in events.Scalars(f"rigl/{name}/grown")}
        assert written == {step: float(r["grown"]) for (n, step), r in records.items() if n == name}


def test_pictures_render_and_ages_count_from_the_update_a_block_grew_in(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    model, scheduler, history, records = train(history=True)
    ages = history.ages()
    layer = model.get_submodule("0")
    grid = layer.layout.grid
    assert ages["0"].shape == grid and int((ages["0"] >= 0).sum()) == layer.layout.nnzb
    grown_at = {step for (name, step), r in records.items() if name == "0" and r["moved"]}
    born = (STEPS - 1) - ages["0"][ages["0"] >= 0]  # observed after the last step, t = STEPS - 1
    assert set(born.unique().tolist()) <= grown_at | {0} and len(set(born.tolist())) > 1
    assert [s for s, _ in history.moves] == sorted({s for (_, s), r in records.items() if r["moved"]})
    assert len(history.snapshots) == 1 + len(history.moves)
    for draw, name in ((history.plot, "ages.png"), (history.plot_strip, "strip.png"), (history.plot_moves, "moves.png"),
                       (lambda p: rs.plot_topology(model, p), "topology.png")):
        draw(tmp_path / name)
        pixels = image.imread(tmp_path / name)
        assert pixels.shape[0] > 50 and pixels.shape[1] > 50 and pixels.std() > 0.01, name


def test_bad_writer_and_history_are_refused():
    model = nn.Sequential(nn.Linear(16, 16))
    rs.sparsify(model, density=0.5, block_size=4, first_dense=False)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, inner, t_end=10)
    with pytest.raises(TypeError, match="add_scalar"):
        rs.RigLOptimizer(inner, scheduler, writer=object())
    with pytest.raises(TypeError, match="TopologyHistory"):
        rs.RigLOptimizer(inner, scheduler, history=object())
    with pytest.raises(ValueError, match="no sparse layer"):
        rs.TopologyHistory(nn.Linear(3, 3))
