"""Shared by the benchmark programs: environment record, timing, tables, result files."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
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


def environment(device: str) -> dict:
    """Device, versions, threads and git SHA, saved beside every result."""
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
    return env


def time_cpu(fn, *, warmup: int = 2, min_time: float = 1.0, max_reps: int = 50) -> float:
    """Median wall time of ``fn()`` in seconds (CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


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
    """Write ``<name>.csv`` and ``<name>.json`` (rows + environment) under results/<device>/."""
    out_dir = out_dir or RESULTS / slug(env["device"])
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(out_dir / f"{name}.json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)
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
