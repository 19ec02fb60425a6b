"""Peak memory of a full training step (Adam): dense vs compressed RigL vs masked-dense RigL.

    python benchmarks/bench_memory.py                  # CPU, MLP stack and transformer (a few minutes)
    python benchmarks/bench_memory.py --device cuda    # GPU

Each configuration runs in its own process (so nothing of one run's memory is left in the
next's).  The process first trains a small copy of the workload for a few steps (so that
libraries, thread pools and kernel code are loaded), takes a baseline, then builds the
workload and measures, relative to that baseline:

* ``measured_state``: memory held right after an optimizer step with gradients still
  allocated, i.e. parameters + gradients + optimizer state + topology;
* ``activations``: what the forward of an ordinary step keeps for the backward (memory after
  the forward minus before it, gradients released);
* ``peak_step``: the peak during that step (forward, backward, scheduler, Adam);
* ``peak_update``: the peak during a RigL topology-update step (the scheduler runs with
  ``delta_t=3`` so that the fourth step is one; memory does not depend on ``delta_t``).

``rs.memory_report`` splits the state into parameters, gradients, optimizer state and
topology; ``update_extra`` is ``peak_update - peak_step``, what the RigL update step adds to
the peak (negative where the update step, which skips the optimizer step, peaks lower).
On CUDA the meter is ``torch.cuda.memory_allocated``/``max_memory_allocated``; on CPU it is
the resident set (``VmRSS``/``VmHWM`` of ``/proc/self/status``, the peak reset through
``/proc/self/clear_refs``) with glibc's mmap threshold pinned at 64 KiB, so that freed
tensors go back to the system and the resident set follows the live tensors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, print_table, save, slug  # noqa: E402
from workloads import MODELS, argument_parser, build, sparse_blocks  # noqa: E402

import rigl_sparse as rs  # noqa: E402

DENSITIES = (1.0, 0.2, 0.1, 0.05, 0.02)
MiB = 2**20


class Meter:
    """Bytes in use and the peak since the last reset, on one device."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def current(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return self._status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")

    @staticmethod
    def _status(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def measure(model: str, method: str, density: float, *, block_size: int, size: str, device: str) -> dict:
    """One configuration, in this process (call it in a fresh one)."""
    meter = Meter(device)
    warm = build(model, method, density if method != "dense" else 1.0, block_size=min(block_size, 16),
                 size="small", device=device, delta_t=2)
    for _ in range(3):  # an update step included
        warm.step()
    del warm
    gc.collect()
    baseline = meter.current()

    work = build(model, method, density, block_size=block_size, size=size, device=device, delta_t=3)
    built = meter.current() - baseline
    for _ in range(2):
        assert not work.step()
    measured_state = meter.current() - baseline  # gradients of the last step still allocated
    report = rs.memory_report(work.model, work.optimizer)

    work.optimizer.zero_grad(set_to_none=True)
    before = meter.current()
    meter.reset_peak()
    loss = work.forward()
    activations = meter.current() - before  # what the forward keeps for the backward
    assert not work.finish(loss)
    del loss
    peak_step = meter.peak() - baseline
    meter.reset_peak()
    updated = work.step()
    peak_update = meter.peak() - baseline
    if method != "dense" and not updated:
        raise RuntimeError("the fourth step was not a topology update")
    stats = work.scheduler.stats if work.scheduler else None
    state = report.total
    return {
        "model": model, "method": method, "density": density, "block_size": block_size if method != "dense" else None,
        "parameters_mib": report.parameters / MiB, "gradients_mib": report.gradients / MiB,
        "optimizer_mib": report.optimizer_state / MiB, "topology_mib": report.topology / MiB,
        "state_mib": state / MiB, "built_mib": built / MiB, "measured_state_mib": measured_state / MiB,
        "peak_step_mib": peak_step / MiB, "activations_mib": activations / MiB,
        "peak_update_mib": peak_update / MiB if method != "dense" else None,
        "update_extra_mib": (peak_update - peak_step) / MiB if method != "dense" else None,
        "blocks": sparse_blocks(work.model, block_size) if method != "dense" else None,
        # what one dense gradient of the sparse layers would take, for scale
        "dense_gradient_mib": (sparse_blocks(work.model, block_size) * block_size**2
                               * next(work.model.parameters()).element_size() / MiB if method != "dense" else None),
        "blocks_moved": stats.get("blocks_moved") if isinstance(stats, dict) else None,
    }


def run_one(config: dict, device: str, size: str, block_size: int) -> dict:
    """``measure`` in a child process (fresh memory), returning its row."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    argv = [sys.executable, __file__, "--one", json.dumps(config), "--device", device, "--size", size,
            "--block-size", str(block_size)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> None:
    """Each row's state and peak as a fraction of the dense run of its model."""
    dense = {r["model"]: r for r in rows if r["method"] == "dense"}
    for r in rows:
        base = dense.get(r["model"])
        if base is None:
            continue
        part = r["parameters_mib"] + r["gradients_mib"] + r["optimizer_mib"]
        r["param_grad_opt_vs_dense"] = _ratio(part, base["parameters_mib"] + base["gradients_mib"]
                                              + base["optimizer_mib"])
        r["measured_state_vs_dense"] = _ratio(r["measured_state_mib"], base["measured_state_mib"])
        r["peak_step_vs_dense"] = _ratio(r["peak_step_mib"], base["peak_step_mib"])
        if r["update_extra_mib"] is not None and r["blocks"]:
            r["update_extra_bytes_per_block"] = r["update_extra_mib"] * MiB / r["blocks"]


def _ratio(a: float, b: float) -> float | None:
    """``a / b``, or None where the base measured nothing (a run too small for the meter)."""
    return a / b if b > 0 else None


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Peak training memory (Adam, fp32), {env['device']}, torch {env['torch']}, git {env['git_sha'][:7]}.",
             "MiB above a baseline taken after warm-up; `state` = parameters + gradients + optimizer state + "
             "topology (accounted by `rs.memory_report`); `measured` = measured right after an optimizer step; "
             "`activations` = measured growth over the forward; `update extra` = peak of a RigL update step "
             "minus the peak of an ordinary step.", "",
             "| model | method | density | params | grads | Adam | topology | state | measured | activations "
             "| peak step | peak vs dense | param+grad+Adam vs dense | update extra | blocks | dense gradient |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        extra = "" if r["update_extra_mib"] is None else f"{r['update_extra_mib']:.1f}"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['density']:g} | {r['parameters_mib']:.1f} | {r['gradients_mib']:.1f} "
            f"| {r['optimizer_mib']:.1f} | {r['topology_mib']:.2f} | {r['state_mib']:.1f} "
            f"| {r['measured_state_mib']:.1f} | {r['activations_mib']:.1f} | {r['peak_step_mib']:.1f} "
            f"| {_cell(r.get('peak_step_vs_dense'), '.3f')} | {_cell(r.get('param_grad_opt_vs_dense'), '.3f')} "
            f"| {extra} | {_cell(r['blocks'], 'd')} | {_cell(r['dense_gradient_mib'], '.1f')} |")
    return "\n".join(lines) + "\n"


def plot_memory(path: Path, rows: list[dict]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no plot drawn (pip install matplotlib)")
        return False
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        dense = next(r for r in rows if r["model"] == model and r["method"] == "dense")
        for method in ("rigl", "masked"):
            pts = sorted((r["density"], r["peak_step_mib"]) for r in rows
                         if r["model"] == model and r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{method} peak step")
        pts = sorted((r["density"], r["state_mib"]) for r in rows if r["model"] == model and r["method"] == "rigl")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="x", ls=":", label="rigl state")
        ax.axhline(dense["peak_step_mib"], color="grey", ls="--", label="dense peak step")
        ax.set_xscale("log")
        ax.set_yscale("log")
        densities = sorted({r["density"] for r in rows if r["model"] == model and r["method"] != "dense"})
        ax.set_xticks(densities, [f"{d:g}" for d in densities])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # the log axis's own labels would overlap
        ax.set_xlabel("density")
        ax.set_ylabel("MiB")
        ax.set_title(f"training memory: {model}")
        ax.legend(fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    parser = argument_parser(__doc__, DENSITIES)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        config = json.loads(args.one)
        row = measure(config["model"], config["method"], config["density"], block_size=args.block_size,
                      size=args.size, device=args.device)
        print(json.dumps(row))
        return
    if not args.device.startswith("cuda") and not Path("/proc/self/clear_refs").exists():
        sys.exit("the CPU meter needs Linux's /proc/self/status and /proc/self/clear_refs")
    densities = [float(d) for d in args.densities.split(",")]
    configs = []
    for model in args.models.split(","):
        if model not in MODELS:
            sys.exit(f"unknown model {model!r}; choose from {MODELS}")
        if 1.0 in densities:
            configs.append({"model": model, "method": "dense", "density": 1.0})
        configs += [{"model": model, "method": method, "density": d}
                    for d in densities if d < 1.0 for method in ("rigl", "masked")]
    rows = []
    for config in configs:
        rows.append(run_one(config, args.device, args.size, args.block_size))
        r = rows[-1]
        print(f"{r['model']:>11} {r['method']:>6} d={r['density']:<5g} state {r['state_mib']:8.1f} MiB  measured "
              f"{r['measured_state_mib']:8.1f}  peak step {r['peak_step_mib']:8.1f}  update extra "
              f"{r['update_extra_mib'] if r['update_extra_mib'] is not None else float('nan'):7.2f}", flush=True)
    add_ratios(rows)
    env = environment(args.device)
    env["size"] = args.size
    print_table(rows, ["model", "method", "density", "state_mib", "measured_state_mib", "activations_mib",
                       "peak_step_mib", "peak_step_vs_dense", "param_grad_opt_vs_dense", "update_extra_mib"])
    out_dir = args.out_dir or RESULTS / slug(env["device"])
    name = "memory" if args.size == "full" else "memory_small"
    save(name, rows, env, out_dir)
    (out_dir / f"{name}.md").write_text(markdown(rows, env))
    plot_memory(out_dir / f"{name}.png", rows)
    print(f"results in {out_dir}/{name}.*")


if __name__ == "__main__":
    main()
