import gzip
import json
import struct

import numpy as np
import pytest

from rigl_sparse import data, train


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_dataset(directory, n_train=512, n_test=256, compress=True):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for c in range(10):  # make the classes learnable: a bright stripe per class
            images[labels == c, 2 * c: 2 * c + 3, :] = 250
        _write_idx(directory / f"{split}-images-idx3-ubyte", images, compress)
        _write_idx(directory / f"{split}-labels-idx1-ubyte", labels, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    _fake_dataset(tmp_path, 20, 10, compress)
    loaded = data.load(tmp_path)
    assert loaded["train_images"].shape == (20, 28, 28) and loaded["test_labels"].shape == (10,)


def test_missing_data_message_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RIGL_SPARSE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="python -m rigl_sparse.data fetch"):
        data.find()
    with pytest.raises(FileNotFoundError, match="data_dir"):
        data.find(tmp_path)


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(path)


@pytest.mark.parametrize("method", ["rigl", "set", "static", "dense"])
def test_train_cli_end_to_end_on_synthetic_data(tmp_path, method, capsys):
    _fake_dataset(tmp_path)
    out = tmp_path / "run.json"
    code = train.main(["--data-dir", str(tmp_path), "--method", method, "--epochs", "2", "--batch-size", "32",
                       "--delta-t", "5", "--lr", "3e-3", "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["final_accuracy"] > 0.5  # the stripes are easy
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "training FLOPs" in printed
    if method == "dense":
        assert record["weight_density"] == 1.0
    else:
        assert record["weight_density"] == pytest.approx(0.1, abs=0.01)
        assert record["training_flops"] < 0.2 * record["dense_training_flops"]
        moved = record["scheduler_stats"]["blocks_moved"]
        assert (moved > 0) == (method != "static")


@pytest.mark.parametrize("method", ["rigl", "snfs", "prune", "set"])
def test_train_cli_masked_methods(tmp_path, method):
    _fake_dataset(tmp_path)
    out = tmp_path / "run.json"
    code = train.main(["--data-dir", str(tmp_path), "--method", method, "--block-size", "1", "--epochs", "2",
                       "--batch-size", "32", "--delta-t", "4", "--lr", "3e-3", "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["config"]["mode"] == "masked"
    assert all(layer.get("masked") for layer in record["layers"].values() if layer["density"] < 1)
    assert record["final_accuracy"] > 0.5
    assert record["weight_density"] == pytest.approx(0.1, abs=0.01)  # pruning reaches its target too
    assert record["peak_memory_bytes"] > 0
    ratio = record["training_flops"] / record["dense_training_flops"]
    if method == "prune":
        assert 0.2 < ratio < 1.0  # dense at first, then cheaper
        assert record["scheduler_stats"]["blocks_pruned"] > 0
    elif method == "snfs":
        assert ratio > 1 / 3  # a dense gradient every step
        assert record["scheduler_stats"]["blocks_moved"] > 0
    else:
        assert ratio < 0.2


def test_train_cli_multiplier_scales_steps_and_t_end(tmp_path):
    _fake_dataset(tmp_path)
    records = []
    for multiplier in (1, 2):
        out = tmp_path / f"run{multiplier}.json"
        assert train.main(["--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "32", "--delta-t", "2",
                           "--multiplier", str(multiplier), "--out", str(out), "--no-progress"]) == 0
        records.append(json.loads(out.read_text()))
    one, two = records
    assert two["total_steps"] == 2 * one["total_steps"]
    assert len(two["accuracy_per_epoch"]) == 2 * len(one["accuracy_per_epoch"])
    assert two["training_flops"] == pytest.approx(2 * one["training_flops"])
    assert two["scheduler_stats"]["updates"] > one["scheduler_stats"]["updates"]


@pytest.mark.parametrize("method, updates", [("rigl", [5, 10, 15, 20]), ("prune", [9, 14, 19, 24]),
                                             ("dense", [])])
def test_train_cli_loss_log_marks_the_topology_updates(tmp_path, method, updates):
    _fake_dataset(tmp_path)
    log = tmp_path / "loss.csv"
    assert train.main(["--data-dir", str(tmp_path), "--method", method, "--block-size", "1", "--epochs", "2",
                       "--batch-size", "32", "--delta-t", "5", "--lr", "3e-3", "--prune-start-fraction", "0.3",
                       "--loss-log", str(log), "--no-progress"]) == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "step,loss,lr,topology_update"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(32))  # 2 epochs of 512 / 32
    # t_end = 0.75 * 32 = 24; RigL every delta_t steps, pruning every delta_t steps from t_start = 0.3 * 32 = 9
    assert [int(r[0]) for r in rows if r[3] == "1"] == updates
    assert float(rows[0][1]) > float(rows[-1][1]) > 0  # it learns
    assert float(rows[0][2]) == pytest.approx(3e-3) and float(rows[-1][2]) < 1e-4  # cosine to zero


@pytest.mark.parametrize("first_dense", [True, False])
def test_train_cli_first_dense_option(tmp_path, first_dense):
    _fake_dataset(tmp_path)
    out = tmp_path / "run.json"
    flag = "--first-dense" if first_dense else "--no-first-dense"
    assert train.main(["--data-dir", str(tmp_path), "--epochs", "1", "--distribution", "uniform", flag,
                       "--out", str(out), "--no-progress"]) == 0
    layers = json.loads(out.read_text())["layers"]
    first = next(iter(layers.values()))
    assert first["density"] == (1.0 if first_dense else pytest.approx(0.1, abs=0.01))


def test_train_cli_rejects_compressed_snfs(tmp_path):
    with pytest.raises(SystemExit):
        train.parse_args(["--method", "snfs", "--mode", "compressed"])
    with pytest.raises(SystemExit):
        train.parse_args(["--multiplier", "0"])


def test_train_cli_reports_missing_data(tmp_path, capsys):
    assert train.main(["--data-dir", str(tmp_path), "--epochs", "1"]) == 2
    assert "Fashion-MNIST" in capsys.readouterr().err
