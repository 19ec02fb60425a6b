import gzip
import importlib.util
import json
import re
import struct

import numpy as np
import pytest
import torch
from torch import nn

import rigl_sparse as rs
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
    path.write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + b"\x00\x00")  # cut inside the header
    with pytest.raises(ValueError, match="truncated: its header of 3 dimensions ends early"):
        data.read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="shorter than its header"):
        data.read_idx(path)


@pytest.mark.parametrize("fault, message", [
    ("label 200", "does not hold Fashion-MNIST labels: expected one dimension of classes 0-9, got shape \\(20,\\) "
                  "and a label 200"),
    ("images 27 wide", "does not hold 28 x 28 images"),
    ("fewer labels", "the train files disagree: 20 images, 19 labels"),
])
def test_files_that_are_not_fashion_mnist_are_refused(tmp_path, fault, message):
    _fake_dataset(tmp_path, 20, 10, compress=False)
    labels = np.arange(20) % 10
    if fault == "label 200":
        labels[3] = 200
        _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, False)
    elif fault == "fewer labels":
        _write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:19], False)
    else:
        _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 28, 27)), False)
    with pytest.raises(ValueError, match=message):
        data.load(tmp_path)


# 32 steps on 512 synthetic images at density 0.1: enough for Adam to learn the stripes, not for the default SGD
ADAM = ("--optimizer", "adam", "--lr", "3e-3")


@pytest.mark.parametrize("algorithm", ["rigl", "set", "static", "dense"])
def test_train_cli_end_to_end_on_synthetic_data(tmp_path, algorithm, capsys):
    _fake_dataset(tmp_path)
    out = tmp_path / "run.json"
    code = train.main(["--data-dir", str(tmp_path), "--algorithm", algorithm, "--epochs", "2", "--batch-size", "32",
                       "--delta-t", "5", *ADAM, "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["final_accuracy"] > 0.5  # the stripes are easy
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "training FLOPs" in printed
    if algorithm == "dense":
        assert record["weight_density"] == 1.0
    else:
        assert record["weight_density"] == pytest.approx(0.1, abs=0.01)
        assert record["training_flops"] < 0.2 * record["dense_training_flops"]
        moved = record["scheduler_stats"]["blocks_moved"]
        assert (moved > 0) == (algorithm != "static")


@pytest.mark.parametrize("algorithm", ["rigl", "snfs", "prune", "set"])
def test_train_cli_masked_algorithms(tmp_path, algorithm):
    _fake_dataset(tmp_path)
    out = tmp_path / "run.json"
    code = train.main(["--data-dir", str(tmp_path), "--algorithm", algorithm, "--block-size", "1", "--epochs", "2",
                       "--batch-size", "32", "--delta-t", "4", *ADAM, "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["config"]["mode"] == "masked"
    assert all(layer.get("masked") for layer in record["layers"].values() if layer["density"] < 1)
    assert record["final_accuracy"] > 0.5
    assert record["weight_density"] == pytest.approx(0.1, abs=0.01)  # pruning reaches its target too
    assert record["peak_memory_bytes"] > 0
    ratio = record["training_flops"] / record["dense_training_flops"]
    if algorithm == "prune":
        assert 0.2 < ratio < 1.0  # dense at first, then cheaper
        assert record["scheduler_stats"]["blocks_pruned"] > 0
    elif algorithm == "snfs":
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


@pytest.mark.parametrize("algorithm, updates", [("rigl", [5, 10, 15, 20]), ("prune", [9, 14, 19, 24]),
                                                ("dense", [])])
def test_train_cli_loss_log_marks_the_topology_updates(tmp_path, algorithm, updates):
    _fake_dataset(tmp_path)
    log = tmp_path / "loss.csv"
    assert train.main(["--data-dir", str(tmp_path), "--algorithm", algorithm, "--block-size", "1", "--epochs", "2",
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
        train.parse_args(["--algorithm", "snfs", "--mode", "compressed"])
    with pytest.raises(SystemExit):
        train.parse_args(["--multiplier", "0"])
    with pytest.raises(SystemExit):
        train.parse_args(["--algorithm", "dense", "--compare-dense"])  # nothing to compare


def test_train_cli_every_option_explains_itself_and_its_default():
    parser = train.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        if action.dest not in ("help", "algorithm") or "--algorithm" in action.option_strings:
            assert "default" in formatter._get_help_string(action), f"{action.option_strings} shows no default"
    groups = [g.title for g in parser._action_groups]
    assert {"model", "sparsity", "RigL schedule", "optimisation", "data", "output"} <= set(groups)
    text = parser.format_help()
    assert "(default: rigl)" in text and "old spelling of --algorithm" in text and "%(prog)" not in text


def test_train_cli_method_is_the_old_spelling_of_algorithm(capsys):
    assert vars(train.parse_args(["--method", "set"])) == vars(train.parse_args(["--algorithm", "set"]))
    assert "--method is the old spelling of --algorithm" in capsys.readouterr().err
    train.parse_args(["--algorithm", "set"])
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        train.parse_args(["--method", "magic"])


def test_train_cli_learning_rate_default_follows_the_optimizer():
    assert train.parse_args([]).optimizer == "sgd" and train.parse_args([]).lr == 0.1
    assert train.parse_args(["--optimizer", "adam"]).lr == 1e-3
    assert train.parse_args(["--optimizer", "adam", "--lr", "3e-3"]).lr == 3e-3


def test_train_cli_compare_dense_trains_both_and_reports_both_wall_clocks(tmp_path, capsys):
    _fake_dataset(tmp_path)
    out = tmp_path / "run.json"
    assert train.main(["--data-dir", str(tmp_path), "--train-subset", "128", "--epochs", "1", "--batch-size", "32",
                       "--delta-t", "2", "--compare-dense", "--out", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    dense = record["dense_baseline"]
    assert record["config"]["algorithm"] == "rigl" and record["weight_density"] < 0.2
    assert dense["parameters"] == record["dense_parameters"] > record["parameters"]
    assert dense["training_flops"] == record["dense_training_flops"] > record["training_flops"]
    assert record["wall_time_vs_dense"] == pytest.approx(record["wall_time_s"] / dense["wall_time_s"])
    printed = capsys.readouterr().out
    ratio = record["wall_time_vs_dense"]
    pace = f"{1 / ratio:.2f}x faster" if ratio <= 1 else f"{ratio:.2f}x slower"
    assert f"training wall-clock: sparse {record['wall_time_s']:.1f} s, dense {dense['wall_time_s']:.1f} s " \
           f"(sparse {pace})" in printed
    assert f"dense {dense['final_accuracy'] * 100:.2f}%" in printed



def test_train_cli_saves_the_trained_sparse_model_which_loads_back_sparse(tmp_path, capsys):
    from rigl_sparse.models import MODELS

    _fake_dataset(tmp_path)
    saved = tmp_path / "model.pt"
    assert train.main(["--data-dir", str(tmp_path), "--train-subset", "64", "--epochs", "1", "--batch-size", "32",
                       "--compare-dense", "--save", str(saved), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("model saved to") == 1  # the sparse model, not the dense baseline
    state = torch.load(saved, weights_only=True)
    model = rs.load_sparse(MODELS["mlp"](), state)
    sparse = [key for key in state if key.endswith("layout.block_row")]
    assert len(sparse) == sum(isinstance(m, rs.SparseLinear) for m in model.modules()) >= 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("argv, header", [
    (["--algorithm", "dense"], "dense on Fashion-MNIST: mlp, dense layers, sgd lr 0.1"),
    (["--algorithm", "rigl"], "rigl on Fashion-MNIST: mlp, compressed block-sparse layers (4x4 blocks, density 0.1 "
                              "by erk)"),
    (["--algorithm", "set", "--block-size", "1"], "set on Fashion-MNIST: mlp, dense layers under 1x1 block masks"),
    (["--model", "wide-mlp", "--block-size", "16"], "rigl on Fashion-MNIST: wide-mlp, compressed block-sparse layers "
                                                    "(16x16 blocks, density 0.1 by erk)"),
])
def test_train_cli_header_says_what_the_layers_are(tmp_path, capsys, argv, header):
    _fake_dataset(tmp_path, 64, 32)
    assert train.main(["--data-dir", str(tmp_path), "--epochs", "1", "--no-progress", *argv]) == 0
    printed = capsys.readouterr().out
    assert header in printed
    if "wide-mlp" in argv:
        assert "(2048, 784)" in printed and "(2048, 2048)" in printed and "(10, 2048)" in printed
    if argv[1] == "dense":
        assert "compressed" not in printed and "block-sparse" not in printed


def test_train_cli_reports_missing_data(tmp_path, capsys):
    assert train.main(["--data-dir", str(tmp_path), "--epochs", "1"]) == 2
    assert "Fashion-MNIST" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "argument --lr: must be a positive finite number, got nan"),
    (["--lr", "-1"], "argument --lr: must be a positive finite number, got -1"),
    (["--density", "1.5"], r"argument --density: must be in \(0, 1\], got 1.5"),
    (["--block-size", "0"], "argument --block-size: must be a positive integer, got 0"),
    (["--delta-t", "0"], "argument --delta-t: must be a positive integer, got 0"),
    (["--alpha", "2"], r"argument --alpha: must be in \[0, 1\], got 2"),
    (["--epochs", "abc"], "argument --epochs: 'abc' is not an integer"),
    (["--weight-decay", "inf"], "argument --weight-decay: must be a finite number >= 0, got inf"),
    (["--train-subset", "0"], "argument --train-subset: must be a positive integer, got 0"),
    (["--out", "/nonexistent/run.json"], "argument --out: cannot write '/nonexistent/run.json': the folder "
                                         "'/nonexistent' does not exist"),
    (["--loss-log", "/nonexistent/loss.csv"], "argument --loss-log: cannot write"),
    (["--t-end-fraction", "0"], r"argument --t-end-fraction: must be in \(0, 1\], got 0"),
    (["--device", "tpu:9"], "argument --device: 'tpu:9' is not a torch device"),
])
def test_train_cli_refuses_a_bad_value_at_parse_time_naming_the_flag(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        train.main(argv + ["--data-dir", str(tmp_path / "no-data-here")])  # refused before any data loads
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]) and "Traceback" not in "\n".join(err)


def test_train_cli_refuses_cuda_without_it_and_pictures_without_matplotlib(capsys, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            train.parse_args(["--device", "cuda"])
        assert "argument --device: 'cuda': this torch has no usable CUDA device" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit):
        train.parse_args(["--pictures", "pics"])
    assert "argument --pictures: drawing the pictures needs matplotlib" in capsys.readouterr().err


def test_schedule_arguments_take_numpy_numbers():
    model = rs.sparsify(nn.Sequential(nn.Linear(16, 16)), density=np.float32(0.5), distribution="uniform",
                        first_dense=False, block_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=10, alpha=np.float32(0.3))
    assert scheduler.alpha == pytest.approx(0.3)


def test_train_cli_says_a_density_does_nothing_for_the_dense_algorithm_and_counts_in_words(capsys):
    train.parse_args(["--algorithm", "dense", "--density", "0.3"])
    assert "--density 0.3 has no effect: --algorithm dense trains every weight" in capsys.readouterr().err
    assert train.parse_args(["--algorithm", "dense"]).density == train.DEFAULT_DENSITY  # unused, but defined
    assert capsys.readouterr().err == ""
    assert train.plural(1, "epoch") == "1 epoch" and train.plural(1200, "update") == "1,200 updates"
