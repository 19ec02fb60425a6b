"""The memory and training-step benchmarks and the larger-than-dense example, at small sizes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rigl_sparse as rs

ROOT = Path(__file__).resolve().parent.parent


def _load(directory, name):
    sys.path.insert(0, str(ROOT / directory))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / directory / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / directory))


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_workloads_hold_what_they_claim(model):
    workloads = _load("benchmarks", "workloads")
    dense = workloads.build(model, "dense", 1.0, size="small")
    rigl = workloads.build(model, "rigl", 0.25, size="small", block_size=16)
    masked = workloads.build(model, "masked", 0.25, size="small", block_size=16)
    projections = [m for m in dense.model.modules() if type(m) is nn.Linear and m.out_features != 32]  # not the head
    sparse = [m for m in rigl.model.modules() if isinstance(m, rs.SparseModule)]
    assert len(sparse) == len(projections) > 0
    assert not any(type(m) is nn.Linear and m.out_features != 32 for m in rigl.model.modules())
    assert sum(m.layout.nnz() for m in sparse) == pytest.approx(0.25 * sum(m.weight.numel() for m in projections),
                                                                rel=0.02)
    masks = [m.block_mask for _, m in rs.rigl.masked.masked_layers(masked.model)]
    assert len(masks) == len(projections) and all(m.density() == pytest.approx(0.25, abs=0.02) for m in masks)
    assert workloads.sparse_blocks(rigl.model, 16) == workloads.sparse_blocks(masked.model, 16) == sum(
        m.weight.numel() // 256 for m in projections)
    for work in (dense, rigl, masked):
        assert work.step() is False
        assert all(torch.isfinite(p).all() for p in work.model.parameters())
    with pytest.raises(ValueError, match="dense runs at density 1 only"):
        workloads.build(model, "rigl", 1.0, size="small")


def test_bench_memory_measures_and_tabulates_a_small_run():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the CPU meter needs Linux's /proc/self/clear_refs")
    bench = _load("benchmarks", "bench_memory")
    rows = [bench.measure("mlp", method, density, block_size=16, size="small", device="cpu")
            for method, density in (("dense", 1.0), ("rigl", 0.25), ("masked", 0.25))]
    dense, rigl, masked = rows
    for r in rows:
        assert r["state_mib"] == pytest.approx(r["parameters_mib"] + r["gradients_mib"] + r["optimizer_mib"]
                                               + r["topology_mib"])
        assert r["gradients_mib"] == pytest.approx(r["parameters_mib"])  # gradients of the last step kept
    # small mlp: two 128 x 128 layers with bias; Adam holds two moments (+ a step per tensor)
    assert dense["parameters_mib"] * 2**20 == 4 * 2 * (128 * 128 + 128)
    assert rigl["parameters_mib"] * 2**20 == 4 * 2 * (0.25 * 128 * 128 + 128)
    assert masked["parameters_mib"] == dense["parameters_mib"] and masked["topology_mib"] > 0
    assert rigl["update_extra_mib"] is not None and dense["update_extra_mib"] is None
    assert rigl["blocks"] == 2 * 64
    bench.add_ratios(rows)
    steps = 4 * 4  # Adam's fp32 step counter of each of the 4 tensors
    dense_bytes, rigl_bytes = 4 * 2 * (16384 + 128), 4 * 2 * (0.25 * 16384 + 128)
    # parameters + gradients + two moments, and the step counters
    assert rigl["param_grad_opt_vs_dense"] == pytest.approx((4 * rigl_bytes + steps) / (4 * dense_bytes + steps))
    table = bench.markdown(rows, {"device": "cpu", "torch": torch.__version__, "git_sha": "0" * 40})
    assert table.count("\n| mlp |") == 3


def test_bench_train_step_times_ordinary_and_update_steps():
    bench = _load("benchmarks", "bench_train_step")
    args = type("Args", (), {"block_size": 16, "size": "small", "device": "cpu"})()
    calls = []

    def timer(fn):  # runs the step twice (it raises if a step updates when it should not, or the reverse)
        fn()
        fn()
        calls.append(fn)
        return float(len(calls))  # the n-th timing reads n seconds

    assert bench.timed_steps("transformer", "dense", 1.0, args, timer) == (1.0, None)  # no update step to time
    assert bench.timed_steps("transformer", "rigl", 0.25, args, timer) == (2.0, 3.0)  # ordinary, then update
    assert len(calls) == 3


def test_larger_than_dense_example_trains_sparse_and_reports(tmp_path, capsys):
    from test_data_and_train import _fake_dataset

    _fake_dataset(tmp_path)
    example = _load("examples", "larger_than_dense")
    example.main(["--width", "256", "--layers", "1", "--density", "0.1", "--block-size", "16", "--steps", "12",
                  "--delta-t", "4", "--skip-dense-attempt", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "topology updates: 2" in out  # t = 4, 8 (t_end = 9)
    n_dense = example.dense_parameters(256, 1)
    assert n_dense == sum(p.numel() for p in example.build(256, 1, "meta").parameters())
    assert f"{n_dense / 1e9:.2f} B parameters" in out
    assert "dense attempt" not in out
    assert example.try_dense(64, 1, torch.device("cpu")).startswith("the dense training state was allocated")


def test_report_cpu_tables_come_from_the_committed_results(tmp_path):
    import json

    report_cpu = _load("benchmarks", "report_cpu")
    folder = tmp_path / "cpu-avx2"
    folder.mkdir()
    env = {"device": "Some CPU", "cpu_flags": ["avx2", "fma"], "instruction_set": "avx2", "torch": "2.13.0",
           "threads": 2, "git_sha": "0123456789", "torch_isa_limits": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
    row = {"block_size": 32, "density": 0.1, "rows": 1024, "features": 4096, "speedup_fwd_vs_bsr": 4.5,
           "speedup_dx_vs_bsr": 4.0, "scores_over_dense_matmul": 1.05}
    row.update({f"speedup_{op}_vs_dense": v for op, v in (("fwd", 8.25), ("dx", 9.0), ("dw", 7.5))})
    row.update({f"ours_{op}_ms": 10.0 for op in ("fwd", "dx", "dw")})
    bf16 = dict(row, baseline_dtype="float32", **{f"ours_{op}_ms": 12.0 for op in ("fwd", "dx", "dw")})
    (folder / "cpu_float32.json").write_text(json.dumps({"environment": env, "rows": [row]}))
    (folder / "cpu_bfloat16_vs_float32.json").write_text(json.dumps({"environment": env, "rows": [bf16]}))
    summary = report_cpu.summary(tmp_path)
    assert "| avx2 | 32 | 0.1 | 1 | 8.25× | 9.00× | 7.50× | 4.50× |" in summary
    assert "| avx2 | 32 | 0.1 | 8.25× | 9.00× | 7.50× | torch float32 | 1.20, 1.20, 1.20 |" in summary
    full = report_cpu.report(tmp_path)
    assert "our kernels: `avx2`" in full and "MKL_ENABLE_INSTRUCTIONS=AVX2" in full
    # a second sitting of another build: the fp32 cells give the range; bf16 / fp32 stays with its own build
    other = dict(env, git_sha="abcdef0123")
    faster = dict(row, speedup_fwd_vs_dense=9.5, **{f"ours_{op}_ms": 5.0 for op in ("fwd", "dx", "dw")})
    (folder / "cpu_float32_1.json").write_text(json.dumps({"environment": other, "rows": [faster]}))
    summary = report_cpu.summary(tmp_path)
    assert "| avx2 | 32 | 0.1 | 2 | 8.25–9.50× | 9.00× | 7.50× | 4.50× |" in summary
    assert "torch float32 | 1.20, 1.20, 1.20 |" in summary
    (folder / "cpu_float32.json").unlink()  # the bf16 record's build has no fp32 sitting left
    assert "torch float32 | - |" in report_cpu.summary(tmp_path)
    assert report_cpu.summary().count("\n") > 2  # the committed results of this repository tabulate


def test_layer_sizes_table_gives_the_range_over_the_sittings(tmp_path):
    import json

    report_cpu = _load("benchmarks", "report_cpu")
    folder = tmp_path / "cpu-avx2"
    folder.mkdir()
    for name, day, speeds in (("layer_sizes.json", "2026-12-06", (6.0, 1.5)),
                              ("layer_sizes_2.json", "2026-12-07", (7.25, 1.5))):
        env = {"device": "Some CPU", "instruction_set": "avx2", "torch": "2.13.0", "threads": 2, "git_sha": "0123456",
               "date": day + "T01:00:00Z"}
        rows = [{"kind": "linear", "shape": "square", "width": 1024, "rows": m, "block_size": 32, "density": 0.1,
                 "dtype": "float32", "mode": mode, "speedup": speed}
                for (m, mode), speed in zip(((2048, "train"), (1, "infer")), speeds)]
        (folder / name).write_text(json.dumps({"environment": env, "rows": rows}))
    table = report_cpu.layer_sizes_summary(tmp_path)
    assert "| avx2 | w × w | 2048 | training (fwd + dX + dW) | 32 | 6.00–7.25× |" in table
    assert "| avx2 | w × w | 1 | inference, no grad | 32 | 1.50× |" in table
    measured = report_cpu.measured_on(tmp_path, names=("layer_sizes*.json",)).splitlines()
    assert [line.split("`")[1] for line in measured] == ["benchmarks/results/cpu-avx2/layer_sizes.json",
                                                         "benchmarks/results/cpu-avx2/layer_sizes_2.json"]
    assert measured[0].endswith(", 2026-12-06") and measured[1].endswith(", 2026-12-07")


def test_training_step_table_gives_the_range_over_the_sittings(tmp_path):
    import json

    report_cpu = _load("benchmarks", "report_cpu")
    folder = tmp_path / "cpu-avx2"
    (folder / "train_step_earlier").mkdir(parents=True)
    env = {"device": "Some CPU", "instruction_set": "avx2", "torch": "2.13.0", "threads": 2, "git_sha": "0123456"}

    def record(path, dense_ms, rigl_ms, masked_speed):
        rows = [{"model": "transformer", "method": "rigl", "density": 0.1, "dense_ms": dense_ms,
                 "amortised_ms": rigl_ms, "speedup_vs_dense": dense_ms / rigl_ms, "update_step_ms": 3 * rigl_ms},
                {"model": "transformer", "method": "masked", "density": 0.1, "dense_ms": dense_ms,
                 "amortised_ms": dense_ms / masked_speed, "speedup_vs_dense": masked_speed,
                 "update_step_ms": dense_ms}]
        path.write_text(json.dumps({"environment": env, "rows": rows}))

    record(folder / "train_step_cpu.json", 2000.0, 400.0, 0.9)
    record(folder / "train_step_cpu_1.json", 3000.0, 500.0, 0.9)
    record(folder / "train_step_earlier" / "train_step_cpu.json", 2000.0, 1000.0, 0.5)  # not a sitting
    table = report_cpu.step_summary(tmp_path)
    assert ("| avx2 | transformer | 0.1 | 2 | 2000–3000 ms | 400–500 ms | 5.00–6.00× | 0.90× | 1200–1500 ms |"
            in table)
    assert table.count("| avx2 |") == 1


def test_every_committed_cpu_result_names_its_instruction_set():
    import json

    results = ROOT / "benchmarks" / "results"
    files = sorted(results.glob("cpu-*/**/*.json"))  # the tables' records and the ones in subfolders
    assert files, "no committed CPU results found"
    for path in files:
        data = json.loads(path.read_text())
        isa = path.relative_to(results).parts[0].removeprefix("cpu-")
        assert data["environment"]["instruction_set"] == isa, path
        if path.parent.parent == results or "rows" in data:  # a profile record has no rows
            assert all(row["instruction_set"] == isa for row in data["rows"]), path


def _tiny_plays(folder: Path) -> Path:
    folder.mkdir()
    for i in range(3):
        (folder / f"play{i}.md").write_text(" ".join(["thou art the king", "good night sweet prince"][i % 2]
                                                     for _ in range(300)))
    return folder


def test_iso_cost_study_runs_a_tiny_configuration_and_resumes(tmp_path, capsys):
    study = _load("benchmarks/iso_cost", "run_study")
    plays = _tiny_plays(tmp_path / "plays")
    train, validation = study.plays(plays)
    assert len(train) == 2 and len(validation) == 1  # split by play
    runs = [study.run_name(r) for r in study.configurations(study.QUICK)]
    assert runs[:2] == ["dense_s0", "rigl_2w_b16_s0"] and "static_2w_b16_s0" in runs
    out = tmp_path / "records"
    with pytest.raises(SystemExit, match="sweep has not run"):
        study.main(["--quick", "--out-dir", str(out), "--plays-dir", str(plays), "--only", "rigl_2w"])
    study.main(["--quick", "--out-dir", str(out), "--plays-dir", str(plays), "--only", "dense"])
    swept = {lr: json.loads((out / f"sweep_dense_lr{lr:g}.json").read_text()) for lr in study.QUICK["sweep_lrs"]}
    losses = {lr: r["equal_tokens"]["final_val_loss"] for lr, r in swept.items()}
    assert len(set(losses.values())) == len(losses)  # the rate matters
    record = json.loads((out / "dense_s0.json").read_text())
    assert record["lr"] == min(losses, key=losses.get) == study.tuned_lr(study.QUICK, out)
    assert record["equal_tokens"] == swept[record["lr"]]["equal_tokens"]  # the sweep's run at the tuned rate
    assert record["equal_time"] == record["equal_tokens"] and record["budget_seconds"] == record["equal_tokens"]["seconds"]
    assert record["equal_tokens"]["steps"] == study.QUICK["steps"] and record["peak_rss_mib"] > 0
    assert record["equal_tokens"]["trainable_parameters"] > 0 and record["equal_tokens"]["training_flops_per_step"] > 0
    curve = record["equal_tokens"]["curve"]
    assert curve[0][0] == 0 and curve[-1][0] == study.QUICK["steps"] and curve[-1][2] < curve[0][2]  # it learns
    study.main(["--quick", "--out-dir", str(out), "--plays-dir", str(plays), "--only", "rigl_2w_b16"])
    sparse = json.loads((out / "rigl_2w_b16_s0.json").read_text())
    assert sparse["lr"] == record["lr"] and sparse["budget_seconds"] == record["equal_tokens"]["seconds"]
    assert sparse["equal_time"]["seconds"] >= sparse["budget_seconds"] > sparse["equal_time"]["seconds"] - 1.0
    assert sparse["equal_tokens"]["steps"] == study.QUICK["steps"]
    capsys.readouterr()
    study.main(["--quick", "--out-dir", str(out), "--plays-dir", str(plays), "--only", "dense"])
    assert capsys.readouterr().out == ""  # the records exist: nothing runs again


def test_iso_cost_second_design_widens_the_ffns_and_times_the_models_apart(tmp_path):
    study = _load("benchmarks/iso_cost", "run_study")
    cfg, out = study.QUICK_SECOND, tmp_path / "records"
    run = dict(method="rigl", multiplier=2, block_size=16, seed=0, widen="ffn")
    model, _, scheduler = study.build(run, cfg, 1e-3, horizon=cfg["steps"])
    block = model.blocks[0]
    assert isinstance(block.ffn_in, rs.SparseLinear) and isinstance(block.ffn_out, rs.SparseLinear)
    assert (block.ffn_in.in_features, block.ffn_in.out_features) == (cfg["width"], 4 * cfg["width"] * 2)
    assert type(block.q) is nn.Linear and block.q.in_features == cfg["width"]  # attention stays dense
    assert block.ffn_in.density() == pytest.approx(0.5, abs=0.05)  # as many weights as dense's FFN
    updates = sum(scheduler.is_update_step(t) for t in range(cfg["steps"]))
    assert updates == study.update_steps(cfg["steps"], cfg["steps"], cfg["delta_t"]) == 3

    study.main(["--study", "second", "--quick", "--out-dir", str(out), "--plays-dir", str(_tiny_plays(tmp_path / "p"))])
    sitting = json.loads((out / "pace.json").read_text())["sittings"][0]
    assert set(sitting["models"]) == {"dense", "rigl_ffn2x_b16"} and sitting["environment"]["git_sha"]
    dense, sparse = (json.loads((out / f"{name}_s0.json").read_text()) for name in ("dense", "rigl_ffn2x_b16"))
    assert dense["lr"] == study.tuned_lr(cfg, out) and sparse["lr"] == study.tuned_lr(cfg, out, sparse)
    assert sparse["equal_tokens_from"] == f"sweep_rigl_ffn2x_b16_lr{sparse['lr']:g}.json"  # not trained twice
    pace = study.pace(out)
    assert sparse["pace_ms"] == {"dense": pace["dense"], "rigl_ffn2x_b16": pace["rigl_ffn2x_b16"]}
    budget = cfg["steps"] * pace["dense"]["ordinary_ms"] / 1e3
    assert dense["equal_time"]["seconds"] == pytest.approx(budget) == sparse["budget_seconds"]
    timed, times = sparse["equal_time"], pace["rigl_ffn2x_b16"]
    n = timed["steps"]
    assert timed["seconds"] <= budget < study.paced_seconds(times, n + 1, n + 1, cfg["delta_t"], updates=True)
    assert timed["curve"][-1][:2] == [n, pytest.approx(timed["seconds"])] and timed["measured_seconds"] > 0

    # Another clock (dense twice as slow): the equal-tokens training is taken over and re-clocked, and only the
    # equal-time training runs again, for twice the budget.
    other = tmp_path / "other_clock"
    other.mkdir()
    clock = json.loads((out / "pace.json").read_text())
    for entry in clock["sittings"]:
        dense_times = entry["models"]["dense"]
        dense_times.update(ordinary_ms=2 * dense_times["ordinary_ms"], update_ms=2 * dense_times["update_ms"])
    (other / "pace.json").write_text(json.dumps(clock))
    args = ["--study", "second", "--quick", "--out-dir", str(other), "--plays-dir", str(tmp_path / "p"),
            "--only", "rigl_ffn2x_b16", "--equal-tokens-from", str(out)]
    with pytest.raises(SystemExit, match="trained at lr"):
        study.run_one("rigl_ffn2x_b16_s0", run, cfg, 2 * sparse["lr"], other, None, None, out)
    study.main(args + ["--tuned-lr", repr(sparse["lr"])])
    retimed = json.loads((other / "rigl_ffn2x_b16_s0.json").read_text())
    assert retimed["equal_tokens_retimed_from"] == str(out / "rigl_ffn2x_b16_s0.json")
    assert [c[2] for c in retimed["equal_tokens"]["curve"]] == [c[2] for c in sparse["equal_tokens"]["curve"]]
    assert retimed["equal_tokens"]["seconds"] == pytest.approx(sparse["equal_tokens"]["seconds"])  # its own pace
    assert retimed["budget_seconds"] == pytest.approx(2 * budget)
    assert retimed["equal_time"]["steps"] > n
    assert retimed["peak_rss_mib"] >= sparse["equal_tokens"]["peak_rss_mib"]  # its equal-tokens training's peak too


def test_bench_layer_sizes_times_both_modes_and_writes_its_record(tmp_path, capsys):
    bench = _load("benchmarks", "bench_layer_sizes")
    bench.main(["--quick", "--out-dir", str(tmp_path), "--threads", "1"])
    record = json.loads((tmp_path / "layer_sizes.json").read_text())
    rows = record["rows"]
    assert record["environment"]["instruction_set"]
    linear = {(r["shape"], r["rows"], r["mode"]) for r in rows if r["kind"] == "linear"}
    assert linear == {(shape, m, mode) for shape in ("square", "ffn") for m in (1, 40) for mode in ("train", "infer")}
    assert {r["shape"] for r in rows if r["kind"] == "conv"} == {"64->64@28", "128->128@14", "256->256@7"}
    for r in rows:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"], rel=1.0)  # a median of ratios
    assert "results:" in capsys.readouterr().out


def test_iso_cost_where_time_goes_names_both_designs_and_jobs_need_the_paced_clock(tmp_path, capsys):
    study = _load("benchmarks/iso_cost", "run_study")
    where = _load("benchmarks/iso_cost", "where_time_goes")
    for run in (dict(method="rigl", multiplier=4, block_size=32, widen="ffn"),
                dict(method="static", multiplier=3, block_size=16, widen="model")):
        assert where.spec(study.model_name(run)) == {**run, "seed": 0}
    assert where.spec("dense")["method"] == "dense"
    # the sweep trains the first seed only: only that seed's run at the swept rate is the sweep's computation
    (tmp_path / "sweep_dense_lr0.002.json").write_text("{}")
    dense = dict(method="dense", multiplier=1, block_size=0, widen="ffn")
    assert study.swept_run(dict(dense, seed=0), 0.002, study.SECOND, tmp_path) == tmp_path / "sweep_dense_lr0.002.json"
    assert study.swept_run(dict(dense, seed=1), 0.002, study.SECOND, tmp_path) is None
    assert study.swept_run(dict(dense, seed=0), 0.004, study.SECOND, tmp_path) is None
    with pytest.raises(SystemExit):  # argparse's error: side by side, each run's own clock would be shared
        study.main(["--quick", "--jobs", "2", "--out-dir", str(tmp_path), "--plays-dir",
                    str(_tiny_plays(tmp_path / "plays"))])
    assert "only a paced clock allows" in capsys.readouterr().err
