"""``make gpu-quick``: every GPU path verified in one run of at most 8 minutes on one GPU.

Each step runs in its own process with its own time limit, so that a hang or a device fault costs that
step, not the run; a step that needs what this machine lacks (a GPU, a CUDA build of torch, nvcc,
compute-sanitizer) says so and is skipped.  Steps, with the time each is planned to take on one H200
(16 cores) and the limit it runs under:

1. ``build``: the CUDA extension alone, for sm_90a, with every core (4 sources of 6 instantiations each
   in parallel; the longest, block_scores with CUB, takes about a minute).
2. ``info``: ``python -m rigl_sparse.info``.
3. ``tests``: the GPU tests, CUDA and Triton (``pytest -m "gpu or triton" -x``), ``CUDA_LAUNCH_BLOCKING=1``,
   each test's outcome in ``tests.xml``.
4. ``probe``: every GPU backend at M=N=K=8192 and ragged 4096+b/2, d=0.1, b=32/64/128, bf16, against an
   fp64 masked-dense reference (``probe.py``); Triton autotunes here (about 90 compiles).
5. ``memcheck`` and 6. ``racecheck``: ``compute-sanitizer`` on tiny cases of every CUDA kernel
   (``sanitize_cases.py``); where it answers "Device not supported" the step says so.
7. ``speed``: ``bench_gpu_matmul.py`` at 8192, d=0.1 and 0.5, b=32/64/128 against cuBLAS, torch's Triton
   BSR and stanford-stk (found in ``.whl/site`` when carried there: ``make gpu-wheels``), every output
   checked before it is timed, and the measured backend choice recorded.

Everything goes into one folder, packed as one archive in the output folder, and a short table is
printed last.  ``--dry-run`` (``GPU_QUICK_DRY=1 make gpu-quick``) runs the same plan on any machine:
the steps that need a GPU report that they were skipped and why.

    python benchmarks/gpu_quick/run.py [--out-dir DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUDGET_S = 480  # the whole run, the archive included
STK_SITE = ROOT / ".whl" / "site"


@dataclass
class Step:
    name: str
    command: list[str]
    estimate_s: int  # planned on one H200 from the sizes above
    limit_s: int
    needs: tuple[str, ...] = ()  # "cuda_torch", "gpu", "nvcc", "sanitizer", "extension"
    env: dict = field(default_factory=dict)
    sanitizer: bool = False


def plan(python: str, work: Path) -> list[Step]:
    sanitizer = ["compute-sanitizer", "--error-exitcode", "1", "--print-limit", "20"]
    cases = [python, str(HERE / "sanitize_cases.py")]
    return [
        Step("build", [python, "setup.py", "build_ext", "--inplace"], 75, 150, ("cuda_torch", "nvcc"),
             env={"RIGL_SPARSE_NO_NATIVE": "1", "RIGL_SPARSE_CUDA_ARCH": "90a", "MAX_JOBS": str(os.cpu_count() or 1)}),
        Step("info", [python, "-m", "rigl_sparse.info"], 5, 30),
        Step("tests", [python, "-m", "pytest", "-m", "gpu or triton", "-x", "-q", "-rs", "-p", "no:cacheprovider",
                       f"--junitxml={work / 'tests.xml'}", "tests"], 100, 150, ("gpu",),
             env={"CUDA_LAUNCH_BLOCKING": "1"}),
        Step("probe", [python, str(HERE / "probe.py"), "--out-dir", str(work)], 100, 150, ("gpu",)),
        Step("memcheck", sanitizer + ["--tool", "memcheck"] + cases, 30, 60, ("gpu", "sanitizer", "extension"),
             sanitizer=True),
        Step("racecheck", sanitizer + ["--tool", "racecheck"] + cases + ["--dtypes", "bfloat16", "--blocks", "32",
                                                                        "128"], 40, 60,
             ("gpu", "sanitizer", "extension"), sanitizer=True),
        Step("speed", [python, str(ROOT / "benchmarks" / "bench_gpu_matmul.py"), "--sizes", "8192", "--densities",
                       "0.1", "0.5", "--out-dir", str(work), "--record-choice"], 110, 150, ("gpu",)),
    ]


def missing(needs: tuple[str, ...], dry_run: bool) -> str | None:
    """Why this machine cannot run a step that needs ``needs``, or None."""
    import torch

    for need in needs:
        if need == "cuda_torch" and torch.version.cuda is None:
            return f"torch {torch.__version__} is built without CUDA"
        if need == "gpu" and not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch"
        if need == "nvcc" and shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
            return "nvcc is not on the PATH"
        if need == "sanitizer" and shutil.which("compute-sanitizer") is None:
            return "compute-sanitizer is not on the PATH"
        if need == "extension" and not dry_run:
            from rigl_sparse.ops import _cuda

            if (reason := _cuda.unavailable_reason()) is not None:
                return reason
    return "dry run" if dry_run and needs else None


def run_step(step: Step, work: Path, limit_s: float) -> dict:
    log = work / f"{step.name}.log"
    env = dict(os.environ, **step.env)
    if STK_SITE.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STK_SITE), env.get("PYTHONPATH")]))
    start = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ {' '.join(step.command)}\n")
        out.flush()
        proc = subprocess.Popen(step.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc, status = None, "timed out"
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    result = {"status": status, "rc": rc, "seconds": round(seconds, 1), "limit_s": round(limit_s)}
    if step.sanitizer and "Device not supported" in text:
        result.update(status="skipped", reason="compute-sanitizer answered 'Device not supported' on this machine")
    elif status == "timed out":
        result["reason"] = f"killed after its limit of {limit_s:.0f} s"
    elif status == "failed":
        result["reason"] = next((line for line in reversed(text.splitlines()) if line.strip()), "")[:300]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or ROOT / "build" / "gpu-quick"))
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_QUICK_DRY") == "1",
                   help="run the plan without a GPU: every step that needs one says so and is skipped")
    args = p.parse_args(argv)
    started = time.monotonic()
    work = ROOT / "build" / "gpu-quick-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    steps = plan(sys.executable, work)
    planned = sum(s.estimate_s for s in steps)
    print(f"gpu-quick: {len(steps)} steps planned at {planned} s of a {BUDGET_S} s budget"
          + (" (dry run)" if args.dry_run else ""), flush=True)
    results = {}
    for step in steps:
        left = BUDGET_S - 15 - (time.monotonic() - started)  # 15 s kept for the archive
        reason = missing(step.needs, args.dry_run)
        if reason is None and left < 10:
            reason = f"out of time: {left:.0f} s of the budget left"
        if reason is not None:
            results[step.name] = {"status": "skipped", "reason": reason, "limit_s": step.limit_s,
                                  "estimate_s": step.estimate_s}
        else:
            results[step.name] = run_step(step, work, min(step.limit_s, left)) | {"estimate_s": step.estimate_s}
        r = results[step.name]
        print(f"  {step.name:9s} {r['status']:9s} {r.get('seconds', 0):6.1f} s"
              + (f"  {r['reason']}" if r.get("reason") else ""), flush=True)
    summary = {"git_sha": _git_sha(), "dry_run": args.dry_run, "budget_s": BUDGET_S, "planned_s": planned,
               "seconds": round(time.monotonic() - started, 1), "steps": results,
               "commands": {s.name: " ".join(s.command) for s in steps}}
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = _table(work, results)
    (work / "summary.txt").write_text(table + "\n")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    archive = args.out_dir / "gpu_quick.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname="gpu-quick")
    print(f"\n{table}\narchive: {archive} ({time.monotonic() - started:.0f} s in all)")
    return 1 if any(r["status"] in ("failed", "timed out") for r in results.values()) else 0


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _table(work: Path, results: dict) -> str:
    """The short table printed last: each step, then the probe's failures and the speed ratios."""
    lines = [f"{'step':10s} {'status':10s} {'s':>6s}  note"]
    for name, r in results.items():
        lines.append(f"{name:10s} {r['status']:10s} {r.get('seconds', 0):6.1f}  {r.get('reason', '')[:90]}")
    probe = work / "probe.json"
    if probe.exists():
        data = json.loads(probe.read_text())
        bad = [r for r in data["rows"] if not r["ok"]]
        lines.append(f"probe: {len(data['rows']) - len(bad)}/{len(data['rows'])} checks passed; passed ops per "
                     f"backend: {data['passed']}")
        lines += [f"  FAIL {r['backend']} {r['op']} b={r['block_size']} {r['case']}: {r['error'][:100]}" for r in bad]
    speed = work / "gpu_matmul.json"
    if speed.exists():
        lines.append("speed at 8192 (cuBLAS time / ours; ours = the faster backend):")
        lines.append(f"  {'b':>4s} {'d':>5s} {'fwd':>6s} {'dX':>6s} {'dW':>6s} {'step':>6s} {'vsBSR':>6s}")
        for r in json.loads(speed.read_text())["rows"]:
            bsr = r.get("speedup_fwd_vs_bsr")
            lines.append(f"  {r['block_size']:4d} {r['density']:5.2f} {r['speedup_fwd_vs_dense']:6.2f} "
                         f"{r['speedup_dx_vs_dense']:6.2f} {r['speedup_dw_vs_dense']:6.2f} "
                         f"{r['speedup_step_vs_dense']:6.2f} {bsr if bsr is None else round(bsr, 2)!s:>6s}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
