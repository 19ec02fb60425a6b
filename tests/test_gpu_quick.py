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
    assert {"build", "info", "tests", "probe", "memcheck", "racecheck", "speed"} <= steps.keys()
    assert summary["dry_run"] and summary["planned_s"] <= summary["budget_s"] == 480
    assert steps["info"]["status"] == "passed"
    for name, step in steps.items():
        if name != "info":
            assert step["status"] == "skipped" and step["reason"], (name, step)
    if not torch.cuda.is_available():
        assert steps["probe"]["reason"] == "no CUDA GPU is visible to torch"
    assert all(step["limit_s"] >= step["estimate_s"] for step in steps.values())


def test_planned_benchmark_arguments_parse():
    import bench_gpu_matmul
    import run as gpu_quick

    speed = next(s for s in gpu_quick.plan(sys.executable, Path("/tmp")) if s.name == "speed")
    args = bench_gpu_matmul.parser().parse_args(speed.command[2:])
    assert args.sizes == [8192] and args.densities == [0.1, 0.5] and args.blocks == [32, 64, 128]
    assert args.record_choice


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
    data = json.loads((tmp_path / "probe.json").read_text())
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


def test_sanitizer_cases_say_why_they_skip_without_the_cuda_backend(capsys):
    import sanitize_cases

    from rigl_sparse import backends

    if backends.BACKENDS["cuda"].unavailable_reason() is None:
        pytest.skip("the cuda backend is available: the cases run under test_cuda instead")
    assert sanitize_cases.main([]) == 0
    assert "skipped: the cuda backend is unavailable" in capsys.readouterr().out


def test_readme_gpu_section_is_what_report_gpu_generates():
    import report_gpu

    text = (ROOT / "README.md").read_text()
    committed = report_gpu.BEGIN + text.split(report_gpu.BEGIN, 1)[1].split(report_gpu.END, 1)[0] + report_gpu.END
    assert committed == report_gpu.section(), "run `python benchmarks/report_gpu.py --write`"


def test_gpu_matrix_reads_a_gpu_quick_run(tmp_path):
    import report_gpu

    quick = tmp_path / "nvidia-test" / "gpu-quick"
    quick.mkdir(parents=True)
    (quick / "summary.json").write_text(json.dumps({"git_sha": "0123456789abcdef"}))
    rows = [{"backend": "triton", "op": "dsd", "ok": True}, {"backend": "cuda", "op": "dsd", "ok": True},
            {"backend": "cuda", "op": "sdd", "ok": False}]
    (quick / "probe.json").write_text(json.dumps({"device": "NVIDIA Test", "rows": rows}))
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
