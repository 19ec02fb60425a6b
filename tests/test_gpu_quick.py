"""`make gpu-quick` on a machine without a GPU: its dry run, and its probe and checks on CPU backends."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu_quick"))


def test_dry_run_plans_every_step_within_the_budget_and_says_why_each_is_skipped(tmp_path):
    import run as gpu_quick
    import torch

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_quick" / "run.py"), "--dry-run",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    with tarfile.open(tmp_path / "gpu_quick.tar.gz") as tar:
        summary = json.load(tar.extractfile("gpu-quick/summary.json"))
        assert "gpu-quick/summary.txt" in tar.getnames()
    steps = summary["steps"]
    assert list(steps) == [s.name for s in gpu_quick.plan(sys.executable, tmp_path)]
    assert {"build", "info", "tests", "probe-cuda", "probe-triton", "memcheck", "racecheck", "speed"} <= steps.keys()
    assert summary["dry_run"] and summary["planned_s"] <= summary["budget_s"] == 480
    assert steps["info"]["status"] == "passed"
    for name, step in steps.items():
        if name != "info":
            assert step["status"] == "skipped" and step["reason"], (name, step)
    if not torch.cuda.is_available():
        assert steps["probe-triton"]["reason"] == "no CUDA GPU is visible to torch"
    assert all(step["limit_s"] >= step["estimate_s"] for step in steps.values())
    # A rerun of some steps keeps the others' results.
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_quick" / "run.py"), "--dry-run",
                          "--out-dir", str(tmp_path), "--steps", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    with tarfile.open(tmp_path / "gpu_quick.tar.gz") as tar:
        assert json.load(tar.extractfile("gpu-quick/summary.json"))["steps"].keys() == steps.keys()


def test_every_step_runs_this_checkout_in_place():
    import run as gpu_quick

    env = gpu_quick.step_env({"X": "1"})
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT) and env["PYTHONUNBUFFERED"] == "1" and env["X"] == "1"
    out = subprocess.run([sys.executable, "-c", "import rigl_sparse, sys; print(rigl_sparse.__file__)"],
                         cwd="/", env=env | {"PYTHONNOUSERSITE": "1"}, capture_output=True, text=True, check=True)
    assert out.stdout.startswith(str(ROOT))


def test_planned_benchmark_arguments_parse():
    import bench_gpu_matmul
    import run as gpu_quick

    speed = next(s for s in gpu_quick.plan(sys.executable, Path("/tmp")) if s.name == "speed")
    args = bench_gpu_matmul.parser().parse_args(speed.commands[0][2:])
    args_probe = args.probe
    assert args.sizes == [8192] and args.densities == [0.1, 0.5] and args.blocks == [32, 64, 128]
    assert args.record_choice and [p.name for p in args.probe] == ["probe-cuda.json", "probe-triton-b32.json",
                                                                   "probe-triton-b64.json", "probe-triton-b128.json"]
    import probe

    steps = {s.name: s for s in gpu_quick.plan(sys.executable, Path("/tmp"))}
    args = probe.parser().parse_args(steps["probe-cuda"].commands[0][2:])
    assert args.backends == ["cuda"] and args.size == 8192 and args.blocks == [32, 64, 128]
    parts = [probe.parser().parse_args(c[2:]) for c in steps["probe-triton"].commands]
    assert [a.blocks for a in parts] == [[32], [64], [128]] and all(a.backends == ["triton"] for a in parts)
    assert [a.name for a in parts] == [p.name for p in args_probe[1:]]


def test_probe_runs_on_cpu_backends_and_records_every_check(tmp_path):
    import probe

    assert probe.main(["--device", "cpu", "--backends", "cpu", "reference", "--size", "192", "--blocks", "32",
                       "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "probe.json").read_text())
    assert len(data["rows"]) == 2 * 4 * 2  # backends x ops x (square, ragged)
    assert all(r["ok"] and r["deterministic"] for r in data["rows"])
    assert data["passed"] == {"cpu": ["block_scores", "dds", "dsd", "sdd"],
                              "reference": ["block_scores", "dds", "dsd", "sdd"]}
    ragged = next(r for r in data["rows"] if r["case"] == "ragged")
    assert ragged["shape"] == [112, 112, 112]


def test_probe_fails_a_wrong_kernel(tmp_path, monkeypatch):
    import op_checks
    import probe

    real = op_checks.run

    def off_by_one_block(op, case):
        result = real(op, case)
        if op == "sdd":
            result = result.clone()
            result[0] += 1
        return result

    monkeypatch.setattr(probe, "run", off_by_one_block)
    assert probe.main(["--device", "cpu", "--backends", "cpu", "--size", "128", "--blocks", "32",
                       "--out-dir", str(tmp_path)]) == 1
    data = json.loads((tmp_path / "probe-cpu.json").read_text())
    assert {r["op"] for r in data["rows"] if not r["ok"]} == {"sdd"}
    assert data["passed"]["cpu"] == ["block_scores", "dds", "dsd"]


def test_benchmark_never_times_or_records_a_wrong_result(tmp_path, monkeypatch):
    import bench_gpu_matmul

    import rigl_sparse as rs

    timed = []
    monkeypatch.setattr(bench_gpu_matmul, "bench", lambda fn: timed.append(fn) or 1.0)
    ms, error = bench_gpu_matmul.try_bench(lambda: (lambda: 42), check=lambda result: "largest error 9")
    assert ms is None and error == "wrong result: largest error 9" and not timed
    assert bench_gpu_matmul.try_bench(lambda: (lambda: 42), check=lambda result: None) == (1.0, None)

    row = {"size": 8192, "block_size": 64, "density": 0.1, "triton_fwd_ms": 1.2, "cuda_fwd_ms": None,
           "cuda_fwd_error": "wrong result: ...", "triton_dx_ms": 1.0, "cuda_dx_ms": 0.8}
    monkeypatch.setattr(rs.backends, "MEASUREMENTS_DIR", tmp_path)
    env = {"device": "Test GPU", "git_sha": "abc", "torch": "x", "triton": "y"}
    bench_gpu_matmul.record_choice([row], env, tmp_path)
    choices = json.loads((tmp_path / "test-gpu.json").read_text())["choices"]
    assert choices["dsd"]["64"] == {"backend": "triton", "ms": {"triton": 1.2}}
    assert choices["dds"]["64"]["backend"] == "cuda"
    # A backend that did not pass an op in the full-size probe is neither run nor chosen for it.
    probe = tmp_path / "probe-cuda.json"
    probe.write_text(json.dumps({"passed": {"cuda": ["dsd", "sdd", "block_scores"]}}))
    probed = bench_gpu_matmul.probe_passes([probe, tmp_path / "absent.json"])
    assert probed == {"cuda": {"dsd", "sdd", "block_scores"}}
    bench_gpu_matmul.record_choice([row], env, tmp_path, probed=probed | {"triton": {"dsd", "dds"}})
    choices = json.loads((tmp_path / "test-gpu.json").read_text())["choices"]
    assert choices["dds"]["64"] == {"backend": "triton", "ms": {"triton": 1.0}}
    assert bench_gpu_matmul.untimed_columns("cuda", probed) == {"dx", "step"}
    assert bench_gpu_matmul.untimed_columns("triton", probed) == {"fwd", "dx", "dw", "scores", "step"}
    assert bench_gpu_matmul.untimed_columns("cuda", None) == set()


def test_sanitizer_cases_run_on_a_cpu_backend_and_say_why_they_skip_without_the_cuda_one(capsys):
    import sanitize_cases

    from rigl_sparse import backends

    if backends.BACKENDS["cpu"].unavailable_reason() is None:
        assert sanitize_cases.main(["--backend", "cpu", "--device", "cpu", "--dtypes", "bfloat16"]) == 0
        out = capsys.readouterr().out
        assert out.count("ok   cpu") == 3 * (2 * 4 + 1) and "0 failures" in out
    if backends.BACKENDS["cuda"].unavailable_reason() is None:
        pytest.skip("the cuda backend is available: the cases run under test_cuda instead")
    assert sanitize_cases.main([]) == 0
    assert "skipped: the cuda backend is unavailable" in capsys.readouterr().out


def test_the_docs_gpu_block_is_what_report_gpu_generates():
    import report_gpu
    import report_tables

    page = ROOT / "docs" / "performance.md"
    blocks = [b for b in report_tables.parse(page) if b.name == "gpu"]
    assert len(blocks) == 1, f"{page} should hold one `gpu` block"
    assert blocks[0].content == report_gpu.section(), "run `python benchmarks/report_tables.py --write`"


def test_gpu_matrix_reads_a_gpu_quick_run(tmp_path):
    import report_gpu

    quick = tmp_path / "nvidia-test" / "gpu-quick"
    quick.mkdir(parents=True)
    (quick / "summary.json").write_text(json.dumps({"git_sha": "0123456789abcdef"}))
    rows = [{"backend": "triton", "op": "dsd", "ok": True}, {"backend": "cuda", "op": "dsd", "ok": True},
            {"backend": "cuda", "op": "sdd", "ok": False}]
    (quick / "probe-triton.json").write_text(json.dumps({"device": "NVIDIA Test", "rows": rows[:1]}))
    (quick / "probe-cuda.json").write_text(json.dumps({"device": "NVIDIA Test", "rows": rows[1:]}))
    (quick / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_conv" name="test_triton_implicit_gemm[a]"/>'
        '<testcase classname="tests.test_gpu" name="test_compiled_autocast_rigl_on_cuda[x]"><failure/></testcase>'
        '</testsuite></testsuites>')
    cells = report_gpu.evidence(tmp_path / "nvidia-test")
    assert cells["Triton ops"] == "passed at `0123456` (probe)"
    assert cells["CUDA ops"] == "failed at `0123456` (probe)"
    assert cells["Triton conv"] == "passed at `0123456` (tests)"
    assert cells["compile + AMP"] == "failed at `0123456` (tests)"
    assert cells["memory"] == cells["larger-than-dense"] == "never run"
    assert "| NVIDIA Test | passed at" in "\n".join(report_gpu.matrix(tmp_path))


def test_a_step_reports_failure_time_out_and_parallel_parts(tmp_path):
    import run as gpu_quick

    py = sys.executable

    def step(commands, parallel=False):
        return gpu_quick.run_step(gpu_quick.Step("s", commands, 1, 5, parallel=parallel), tmp_path, 5)

    assert step([[py, "-c", "print('one')"], [py, "-c", "print('two')"]])["status"] == "passed"
    assert "two" in (tmp_path / "s.log").read_text()
    failed = step([[py, "-c", "raise SystemExit('broken here')"], [py, "-c", "print('never')"]])
    assert failed["status"] == "failed" and "broken here" in failed["reason"]
    assert "never" not in (tmp_path / "s.log").read_text()
    both = step([[py, "-c", "print('a')"], [py, "-c", "raise SystemExit(3)"]], parallel=True)
    assert both["status"] == "failed" and both["rc"] == 3
    log = (tmp_path / "s.log").read_text()
    assert "print('a')" in log and "SystemExit(3)" in log
    slow = gpu_quick.run_step(gpu_quick.Step("slow", [[py, "-c", "import time; time.sleep(30)"]], 1, 2), tmp_path, 2)
    assert slow["status"] == "timed out" and slow["seconds"] < 20
