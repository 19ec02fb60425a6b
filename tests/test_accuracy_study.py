"""The accuracy study's runner configuration and its report, on synthetic run records (no training)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy"


def _load(name):
    sys.path.insert(0, str(STUDY))
    try:
        spec = importlib.util.spec_from_file_location(name, STUDY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(STUDY))


def test_study_grid_covers_the_issue_and_every_run_parses():
    run_study = _load("run_study")
    from rigl_sparse import train

    runs = run_study.configurations(["mlp", "cnn"], ["methods", "blocks"])
    names = [name for name, _ in runs]
    assert len(names) == len(set(names))
    parsed = [train.parse_args(argv) for _, argv in runs]
    assert {a.algorithm for a in parsed} == {"dense", "static", "set", "snfs", "rigl", "prune"}
    assert {a.block_size for a in parsed} == {1, 4, 16, 32}
    assert {a.density for a in parsed if a.algorithm != "dense"} == {0.2, 0.1, 0.05, 0.02}
    assert {a.distribution for a in parsed} == {"erk", "uniform"}
    assert {a.seed for a in parsed} == {0, 1, 2}
    assert {a.multiplier for a in parsed} == {1, 2}
    assert all(a.mode == "masked" and a.optimizer == "sgd" for a in parsed)
    assert all(a.first_dense is False for a in parsed if a.model == "mlp")


def _record(model, method, accuracy, flops, distribution="erk", density=0.1, block_size=1, multiplier=1, seed=0):
    return {"config": {"model": model, "algorithm": method, "distribution": distribution, "density": density,
                       "block_size": block_size, "multiplier": multiplier, "seed": seed},
            "final_accuracy": accuracy, "training_flops": flops, "dense_training_flops": 1.0, "wall_time_s": 1.0}


def test_report_tables_and_findings(tmp_path):
    report = _load("report")
    runs = tmp_path / "runs"
    runs.mkdir()
    records = [_record("mlp", "dense", 0.90, 1.0, seed=s) for s in range(3)]
    for seed, noise in enumerate((0.0, 0.002, -0.002)):
        for method, accuracy, flops, multiplier in (("static", 0.86, 0.1, 1), ("set", 0.87, 0.1, 1),
                                                    ("rigl", 0.88, 0.12, 1), ("rigl", 0.885, 0.12, 2),
                                                    ("prune", 0.884, 0.5, 1)):
            records.append(_record("mlp", method, accuracy + noise, flops, multiplier=multiplier, seed=seed))
        records.append(_record("mlp", "rigl", 0.80 + noise, 0.12, distribution="uniform", density=0.05, seed=seed))
        records.append(_record("mlp", "rigl", 0.83 + noise, 0.12, density=0.05, seed=seed))
    for seed, accuracy in enumerate((0.85, 0.86, 0.10)):  # the third seed did not train
        records.append(dict(_record("mlp", "set", accuracy, 0.1, distribution="uniform", density=0.02, seed=seed),
                            name=f"mlp_set_uniform_d0.02_b1_s{seed}", accuracy_per_epoch=[0.3, accuracy]))
    for i, record in enumerate(records):
        (runs / f"r{i}.json").write_text(json.dumps(record))
    assert report.main(["--out-dir", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| RigL | – | 88.00 ± 0.20 | 83.00 ± 0.20 | – | 0.120x |" in table
    assert "| dense | 90.00 ± 0.00 |" in table
    assert "| SET | – | – | – | 60.33 ± 43.59 † | – |" in table
    findings = (tmp_path / "findings.md").read_text()
    assert "RigL ≥ SET at equal density: **agree**: holds in 1 of 1 comparisons, 0 more within one std, 0 against; " \
           "difference mean +1.00, median +1.00 points" in findings
    assert "Runs that did not train" in findings
    assert "  - mlp_set_uniform_d0.02_b1_s2: test accuracy per epoch 30.0, 10.0 %" in findings
    assert "_s0:" not in findings and "_s1:" not in findings
    assert "ERK ≥ uniform at high sparsity (density ≤ 0.05), RigL: **agree**" in findings
    assert "RigL 2x ≥ RigL): **agree**" in findings
    assert "within one std of pruning or above it in 1 of 2 cells" in findings
    assert "RigL 2x, erk, d=0.1: +0.10 points vs pruning, 0.48x its FLOPs" in findings  # 2x the examples
    summary = json.loads((tmp_path / "summary.json").read_text())
    rigl = next(s for s in summary if s["method"] == "RigL" and s["density"] == 0.1)
    assert rigl["mean"] == pytest.approx(88.0) and rigl["n"] == 3
    for name in ("accuracy_vs_density_mlp.png", "accuracy_vs_flops_mlp.png", "accuracy_vs_block_size_mlp.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("study", ["accuracy", "accuracy_adam"])
def test_committed_records_tabulate_the_same_under_either_name_of_the_algorithm(study):
    """Records written before ``--method`` became ``--algorithm`` keep ``config["method"]``; new ones have
    ``config["algorithm"]``.  Both give the same tables, and the study's committed tables are what its records say."""
    report = _load("report")
    results = STUDY.parent / "results" / study
    old = report.load(results / "runs")
    assert old and all("method" in r["config"] and "algorithm" not in r["config"] for r in old)
    new = [{**r, "config": {("algorithm" if k == "method" else k): v for k, v in r["config"].items()}} for r in old]
    models = [m for m in ("mlp", "cnn") if any(r["config"]["model"] == m for r in old)]
    tables = {name: report.tables(report.summarise(records), models) for name, records in (("old", old), ("new", new))}
    assert tables["old"] == tables["new"]
    assert report.findings(report.summarise(old), models, old) == report.findings(report.summarise(new), models, new)
    if study == "accuracy":  # accuracy_adam's tables were written by an older report.py (no † marks)
        assert tables["new"] == (results / "table.md").read_text()


def test_loss_spikes_table(tmp_path):
    spikes = _load("loss_spikes")
    losses = [2.0] * 20
    losses[12] = 9.0  # 2 steps after the update at step 10
    (tmp_path / "a.csv").write_text("step,loss,lr,topology_update\n" + "".join(
        f"{i},{loss},0.1,{int(i == 10)}\n" for i, loss in enumerate(losses)))
    assert spikes.main(["run a=" + str(tmp_path / "a.csv"), "--out-dir", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "loss_spikes.md").read_text()
    assert "| 10 | 2.00 → 9.00 |" in text
    assert "| run a | 2.350 |" in text  # mean of the last 50 (here all 20) steps: (19 * 2 + 9) / 20
    assert (tmp_path / "out" / "loss_spikes.png").stat().st_size > 0
