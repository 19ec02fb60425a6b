"""Shared by the benchmark programs: environment record, timing, tables, result files."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# What limits torch's own CPU libraries (MKL, oneDNN, ATen's kernels) to one instruction set, so that
# on a wider CPU the dense baseline runs as it would on a CPU that has only that set.
TORCH_ISA_LIMITS = {
    "baseline": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {},  # nothing to limit: torch picks AVX-512 where the CPU has it
}
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16",
             "amx_tile", "asimd", "sve")


def add_isa_argument(parser) -> None:
    parser.add_argument("--isa", choices=sorted(TORCH_ISA_LIMITS),
                        help="run our kernels' variant for this instruction set (RIGL_SPARSE_CPU_ISA) and limit "
                             "torch's dense and BSR baselines to the same set, as on a CPU that has no more; "
                             "default: the widest this CPU runs, torch unlimited")


def apply_isa(args) -> None:
    """With ``--isa``: restart this program with the environment that selects it (MKL and oneDNN read
    their limits when they load, so the variables must be there from the start)."""
    if args.isa is None or os.environ.get("RIGL_SPARSE_CPU_ISA") == args.isa:
        return
    env = dict(os.environ, RIGL_SPARSE_CPU_ISA=args.isa, **TORCH_ISA_LIMITS[args.isa])
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def cpu_isa() -> str | None:
    """The instruction-set variant our CPU kernels run, or None without the native backend."""
    from rigl_sparse.ops import cpu_extension as _cpu

    try:
        return _cpu.isa_status()["active"]
    except ImportError:
        return None


def cpu_results_dir() -> Path:
    """``results/cpu-<variant>/``: CPU results are filed by the instruction set our kernels ran."""
    return RESULTS / f"cpu-{cpu_isa() or 'reference'}"


def cpu_environment() -> dict:
    """The CPU's instruction sets, our kernels' variant and the limits torch's libraries ran under."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    env = {"cpu_flags": [f for f in CPU_FLAGS if f in flags], "machine": platform.machine(),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_isa_limits": {k: os.environ[k] for k in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                                                           "ATEN_CPU_CAPABILITY") if k in os.environ}}
    try:
        from rigl_sparse.ops import cpu_extension as _cpu

        status = _cpu.isa_status()
        env.update(instruction_set=status["active"], isa_variants_built=status["built"], isa_forced_by=status["forced_by"],
                   register_tiles=status["tiles"], openmp=status["openmp"])
    except ImportError as err:
        env["instruction_set"] = f"none (no native CPU kernels: {err})"
    return env


def environment(device: str) -> dict:
    """Device, versions, threads and git SHA, saved beside every result (on CPU: the instruction sets)."""
    sha = os.environ.get("GIT_SHA")  # set by callers that run outside a git checkout
    try:
        sha = sha or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    env = {"device": device_name(device), "python": platform.python_version(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "git_sha": sha,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.startswith("cuda"):
        env["cuda"] = torch.version.cuda
    else:
        env.update(cpu_environment())
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}  # glibc malloc's tunables
    if allocator:
        env["allocator_env"] = allocator
    return env


def time_cpu(fn, *, warmup: int = 2, min_time: float = 1.0) -> float:
    """Median wall time of ``fn()`` in seconds (CPU), by ``torch.utils.benchmark``'s blocked autorange."""
    from torch.utils import benchmark

    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median


def make_timer(device: str):
    """``timer(fn) -> seconds``: the median of ``fn()``'s run time on ``device`` (CUDA: triton's do_bench)."""
    if device.startswith("cuda"):
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") / 1e3
    return time_cpu


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def save(name: str, rows: list[dict], env: dict, out_dir: Path | None = None) -> Path:
    """Write ``<name>.csv`` and ``<name>.json`` (rows + environment) under results/<device>/.

    CPU results carry the instruction set our kernels ran (``instruction_set``) in every row as
    well, so a row copied out of its file still says what it measured.
    """
    if "instruction_set" in env:
        rows = [{"instruction_set": env["instruction_set"], **row} for row in rows]
    out_dir = out_dir or RESULTS / slug(env["device"])
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    part = out_dir / f"{name}.json.part"  # whole or not at all: a run stopped while writing keeps the last
    with open(part, "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)
    os.replace(part, out_dir / f"{name}.json")
    return out_dir


def plot(path: Path, rows: list[dict], *, x: str, y: str, series: str, title: str, ylabel: str) -> bool:
    """Line plot of ``y`` against ``x``, one line per value of ``series``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot drawn (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({r[series] for r in rows}):
        pts = sorted((r[x], r[y]) for r in rows if r[series] == key and r[y] is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{series}={key}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
