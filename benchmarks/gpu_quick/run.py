"""``make gpu-quick``: every GPU path verified in one run of at most 8 minutes on one GPU.

Each step runs in its own process with its own time limit, so that a hang or a device fault costs that
step, not the run; a step that needs what this machine lacks (a GPU, a CUDA build of torch, nvcc,
compute-sanitizer) says so and is skipped.  The package is used in place (this checkout first on
``PYTHONPATH``), not installed.  Steps, with the time each is planned to take on one H200 (16 cores; 420
s of planned work in a 480 s budget) and the limit it runs under (cut so that the later steps keep their
planned time):

1. ``build`` (75 s): the CUDA extension alone, for sm_90a, with every core (4 sources of 6 instantiations
   each in parallel; the longest, block_scores with CUB, about a minute), then a check that it imports.
2. ``info`` (5 s): ``python -m rigl_sparse.info``.
3. ``probe-cuda`` (45 s) and 4. ``probe-triton`` (60 s; Triton compiles and autotunes about 90 kernels,
   one process per block size at once): each GPU backend in its own processes at M=N=K=8192 and ragged
   4096+b/2, d=0.1, b=32/64/128, bf16, against an fp64 masked-dense reference (``probe.py``), recorded
   after every check.
5. ``tests`` (90 s): the GPU tests, CUDA first, then Triton (``pytest -m "gpu or triton" -x``, on 8
   workers where pytest-xdist is installed), ``CUDA_LAUNCH_BLOCKING=1``, each outcome in ``tests.xml``.
6. ``speed`` (90 s): ``bench_gpu_matmul.py`` at 8192, d=0.1 and 0.5, b=32/64/128 against cuBLAS, torch's
   Triton BSR and stanford-stk (found in ``.whl/site`` when carried there: ``make gpu-wheels``), every
   output checked before it is timed, the backend choice recorded only for what passed its probe.
7. ``memcheck`` (25 s) and 8. ``racecheck`` (30 s): ``compute-sanitizer`` on tiny cases of every CUDA
   kernel (``sanitize_cases.py``), torch's caching allocator off; where it answers "Device not supported"
   the step says so.

Everything goes into one folder, packed as one archive in the output folder, and a short table is
printed last.  ``--dry-run`` (``GPU_QUICK_DRY=1 make gpu-quick``) runs the same plan on any machine:
the steps that need a GPU report that they were skipped and why.  ``--steps NAME ...`` reruns only those
steps, keeping the other steps' results of the last run.

    python benchmarks/gpu_quick/run.py [--out-dir DIR] [--dry-run] [--steps probe-cuda speed]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import signal
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
# The files that hold GPU or Triton tests, CUDA first (pytest keeps the order given).
GPU_TEST_FILES = ("tests/test_cuda.py", "tests/test_triton.py", "tests/test_gpu.py", "tests/test_conv.py")


def _version(distribution: str) -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version(distribution).split(".")[:2] if p.isdigit())
    except PackageNotFoundError:
        return ()


@dataclass
class Step:
    name: str
    commands: list[list[str]]  # run in order while each succeeds
    estimate_s: int  # planned on one H200 from the sizes above
    limit_s: int
    needs: tuple[str, ...] = ()  # "cuda_torch", "gpu", "nvcc", "sanitizer", "extension"
    env: dict = field(default_factory=dict)
    sanitizer: bool = False
    parallel: bool = False  # the commands run at once (their logs one after the other)


def sanitizer_path() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found is None and os.environ.get("CUDA_HOME"):
        candidate = Path(os.environ["CUDA_HOME"]) / "bin" / "compute-sanitizer"
        found = str(candidate) if candidate.exists() else None
    return found


def plan(python: str, work: Path) -> list[Step]:
    sanitizer = [sanitizer_path() or "compute-sanitizer", "--error-exitcode", "1", "--print-limit", "20",
                 "--report-api-errors", "no"]
    cases = [python, str(HERE / "sanitize_cases.py")]
    # Every sanitized allocation its own: torch's caching allocator would hide small out-of-bounds accesses
    # inside its segments.
    uncached = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    versions = [python, "-c", "import setuptools, torch; print('setuptools', setuptools.__version__, 'torch', "
                              "torch.__version__, 'cuda', torch.version.cuda)"]
    verify = [python, "-c", "from rigl_sparse.ops import cuda_extension as c; r = c.unavailable_reason(); "
                            "print(r or 'rigl_sparse._C_cuda imports'); raise SystemExit(r is not None)"]
    probes = [str(work / "probe-cuda.json")] + [str(work / f"probe-triton-b{b}.json") for b in (32, 64, 128)]
    pytest = [python, "-m", "pytest", "-x", "-q", "-rs", "-p", "no:cacheprovider"]
    if importlib.util.find_spec("xdist") is not None:
        pytest += ["-n", "8"]  # Triton compiles in parallel processes
        if _version("pytest-xdist") >= (3, 2):
            pytest += ["--dist", "worksteal"]  # an idle worker takes over a queued slow test
    pytest += ["--durations=25"]
    return [
        Step("build", [versions, [python, "setup.py", "build_ext", "--inplace"], verify], 75, 150,
             ("cuda_torch", "nvcc"),
             env={"RIGL_SPARSE_NO_NATIVE": "1", "RIGL_SPARSE_CUDA_ARCH": "90a", "MAX_JOBS": str(os.cpu_count() or 1)}),
        Step("info", [[python, "-m", "rigl_sparse.info"]], 5, 30),
        # One process per backend: a fault of one (a device-side assertion leaves the CUDA context unusable)
        # costs only its own probe.
        Step("probe-cuda", [[python, str(HERE / "probe.py"), "--backends", "cuda", "--out-dir", str(work)]], 45, 90,
             ("gpu", "extension")),
        # One process per block size at once: Triton compiles each block size's kernels in parallel.
        Step("probe-triton", [[python, str(HERE / "probe.py"), "--backends", "triton", "--blocks", str(b), "--out-dir",
                               str(work), "--name", f"probe-triton-b{b}.json"] for b in (32, 64, 128)], 60, 120,
             ("gpu",), parallel=True),
        Step("tests", [pytest + ["-m", "gpu or triton", f"--junitxml={work / 'tests.xml'}", *GPU_TEST_FILES]], 90,
             120, ("gpu",), env={"CUDA_LAUNCH_BLOCKING": "1"}),
        Step("speed", [[python, str(ROOT / "benchmarks" / "bench_gpu_matmul.py"), "--sizes", "8192", "--densities",
                        "0.1", "0.5", "--out-dir", str(work), "--record-choice", "--probe", *probes]], 90, 120,
             ("gpu",)),
        Step("memcheck", [sanitizer + ["--tool", "memcheck"] + cases], 25, 45, ("gpu", "sanitizer", "extension"),
             env=uncached, sanitizer=True),
        Step("racecheck", [sanitizer + ["--tool", "racecheck"] + cases + ["--dtypes", "bfloat16", "--blocks", "32",
                                                                         "128"]], 30, 45,
             ("gpu", "sanitizer", "extension"), env=uncached, sanitizer=True),
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
        if need == "sanitizer" and sanitizer_path() is None:
            return "compute-sanitizer is neither on the PATH nor in $CUDA_HOME/bin"
        if need == "extension" and not dry_run and (reason := _cuda_unavailable()):
            return f"the cuda backend is unavailable: {reason}"
    return "dry run" if dry_run and needs else None


@functools.cache
def _cuda_unavailable() -> str:
    """Why the cuda backend cannot run, asked once of a process of its own (after the build step), or ''."""
    return subprocess.run([sys.executable, "-c", "from rigl_sparse.ops import cuda_extension as c; "
                           "print(c.unavailable_reason() or '')"], cwd=ROOT, env=step_env({}), capture_output=True,
                          text=True).stdout.strip()


def step_env(extra: dict) -> dict:
    """The environment of every step: this checkout first on the path (the package is used in place, not
    installed), stanford-stk where it was carried, output unbuffered so that a killed step keeps its log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(STK_SITE) if STK_SITE.is_dir() else None,
                                                      env.get("PYTHONPATH")]))
    return env


def _run_command(command: list[str], log, env: dict, limit_s: float) -> tuple[int | None, str]:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=max(1.0, limit_s)), "passed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # pytest writes its junit file and summary on an interrupt
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None, "timed out"


def _run_parallel(commands: list[list[str]], work: Path, name: str, env: dict, limit_s: float):
    """The commands at once, each with its own log; (rc, status) of the worst."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i_command):
        i, command = i_command
        with (work / f"{name}.{i}.log").open("w") as log:
            return _run_command(command, log, env, limit_s)

    with ThreadPoolExecutor(len(commands)) as pool:
        outcomes = list(pool.map(one, enumerate(commands)))
    with (work / f"{name}.log").open("w") as log:
        for i in range(len(commands)):
            part = work / f"{name}.{i}.log"
            log.write(part.read_text(errors="replace"))
            part.unlink()
    timed_out = [o for o in outcomes if o[0] is None]
    failed = [o for o in outcomes if o[0] not in (0, None)]
    return (None, "timed out") if timed_out else (failed[0][0], "failed") if failed else (0, "passed")


def run_step(step: Step, work: Path, limit_s: float) -> dict:
    log_path = work / f"{step.name}.log"
    env = step_env(step.env)
    start = time.monotonic()
    rc, status = 0, "passed"
    if step.parallel:
        rc, status = _run_parallel(step.commands, work, step.name, env, limit_s)
    else:
        with log_path.open("w") as log:
            for command in step.commands:
                rc, status = _run_command(command, log, env, limit_s - (time.monotonic() - start))
                if rc != 0:
                    status = "timed out" if rc is None else "failed"
                    break
    seconds = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    result = {"status": status, "rc": rc, "seconds": round(seconds, 1), "limit_s": round(limit_s)}
    if step.sanitizer and "Device not supported" in text:
        result.update(status="skipped", reason="compute-sanitizer answered 'Device not supported' on this machine")
    elif status == "timed out":
        result["reason"] = f"stopped after its limit of {limit_s:.0f} s"
    elif status == "failed":
        result["reason"] = next((line for line in reversed(text.splitlines()) if line.strip()), "")[:300]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or ROOT / "build" / "gpu-quick"))
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_QUICK_DRY") == "1",
                   help="run the plan without a GPU: every step that needs one says so and is skipped")
    p.add_argument("--steps", nargs="+", default=None,
                   help="run only these steps (a rerun of what failed; the others are reported as not asked for)")
    args = p.parse_args(argv)
    started = time.monotonic()
    work = ROOT / "build" / "gpu-quick-work"
    steps = plan(sys.executable, work)
    unknown = set(args.steps or ()) - {s.name for s in steps}
    if unknown:
        p.error(f"--steps: no step named {', '.join(sorted(unknown))}; the steps are {[s.name for s in steps]}")
    if args.steps is None:
        shutil.rmtree(work, ignore_errors=True)  # a rerun of some steps keeps the others' results
    work.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in steps if args.steps is None or s.name in args.steps]
    planned = sum(s.estimate_s for s in chosen)
    print(f"gpu-quick: {len(chosen)} steps planned at {planned} s of a {BUDGET_S} s budget"
          + (" (dry run)" if args.dry_run else ""), flush=True)
    previous = work / "summary.json"
    results = json.loads(previous.read_text())["steps"] if args.steps and previous.exists() else {}
    for i, step in enumerate(chosen):
        # 15 s kept for the archive, and the later steps' planned time kept for them.
        left = BUDGET_S - 15 - (time.monotonic() - started)
        reserve = sum(s.estimate_s for s in chosen[i + 1:])
        reason = missing(step.needs, args.dry_run)
        limit = min(step.limit_s, max(step.estimate_s, left - reserve), left)
        if reason is None and limit < 10:
            reason = f"out of time: {left:.0f} s of the budget left"
        if reason is not None:
            results[step.name] = {"status": "skipped", "reason": reason, "limit_s": step.limit_s,
                                  "estimate_s": step.estimate_s}
        else:
            results[step.name] = run_step(step, work, limit) | {"estimate_s": step.estimate_s}
        r = results[step.name]
        print(f"  {step.name:9s} {r['status']:9s} {r.get('seconds', 0):6.1f} s"
              + (f"  {r['reason']}" if r.get("reason") else ""), flush=True)
    summary = {"git_sha": _git_sha(), "dry_run": args.dry_run, "budget_s": BUDGET_S, "planned_s": planned,
               "seconds": round(time.monotonic() - started, 1), "steps": results,
               "commands": {s.name: [" ".join(c) for c in s.commands] for s in steps}}
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
    """This checkout's commit: ``GIT_SHA`` where the copy has no git metadata (set it when copying), else git's."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _table(work: Path, results: dict) -> str:
    """The short table printed last: each step, then the probes' failures and the speed ratios."""
    lines = [f"{'step':13s} {'status':10s} {'s':>6s}  note"]
    for name, r in results.items():
        lines.append(f"{name:13s} {r['status']:10s} {r.get('seconds', 0):6.1f}  {r.get('reason', '')[:90]}")
    for probe in sorted(work.glob("probe*.json")):
        data = _read_json(probe)
        if data is None:
            lines.append(f"{probe.name}: unreadable (cut off by a time-out?)")
            continue
        bad = [r for r in data["rows"] if not r["ok"]]
        lines.append(f"{probe.stem}: {len(data['rows']) - len(bad)}/{len(data['rows'])} checks passed; ops passed "
                     f"in every case: {data['passed']}")
        lines += [f"  FAIL {r['backend']} {r['op']} b={r['block_size']} {r['case']}: {r['error'][:100]}" for r in bad]
    speed = work / "gpu_matmul.json"
    if speed.exists() and _read_json(speed) is not None:
        lines.append("speed at 8192, baseline time / ours (ours: the faster backend that passed its check):")
        columns = [("fwd", "speedup_fwd_vs_dense"), ("dX", "speedup_dx_vs_dense"), ("dW", "speedup_dw_vs_dense"),
                   ("step", "speedup_step_vs_dense"), ("vsBSR", "speedup_fwd_vs_bsr"),
                   ("vsSTK", "speedup_fwd_vs_stk"), ("dWvsSTK", "speedup_dw_vs_stk"),
                   ("cu/tr", "speedup_fwd_cuda_vs_triton")]
        lines.append(f"  {'b':>4s} {'d':>5s} " + " ".join(f"{name:>7s}" for name, _ in columns) + "  fwd by")
        for r in _read_json(speed)["rows"]:
            cells = " ".join(f"{'–' if r.get(key) is None else round(r[key], 2)!s:>7s}" for _, key in columns)
            lines.append(f"  {r['block_size']:4d} {r['density']:5.2f} {cells}  {r.get('ours_fwd_backend', '–')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
