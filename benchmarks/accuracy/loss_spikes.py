"""The training loss around RigL's topology updates, from ``python -m rigl_sparse.train --loss-log`` files.

    python benchmarks/accuracy/loss_spikes.py LABEL=loss.csv [LABEL=loss.csv ...] --out-dir DIR

Writes ``loss_spikes.md`` (for each run and update: the largest loss of the 5 steps before it and of
the 8 steps after it) and ``loss_spikes.png`` (loss against step, updates marked).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

BEFORE, AFTER = 5, 8


def read(path: Path) -> tuple[list[float], list[int]]:
    """(loss per step, steps that updated the topology)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [float(r["loss"]) for r in rows], [int(r["step"]) for r in rows if r["topology_update"] == "1"]


def around(losses: list[float], step: int) -> tuple[float, float]:
    """Largest loss of the ``BEFORE`` steps before ``step`` and of the ``AFTER`` steps after it."""
    before = losses[max(0, step - BEFORE):step] or [float("nan")]
    after = losses[step + 1:step + 1 + AFTER] or [float("nan")]
    return max(before), max(after)


def table(runs: dict[str, tuple[list[float], list[int]]]) -> str:
    updates = sorted({u for _, steps in runs.values() for u in steps})
    lines = [f"Largest training loss of the {BEFORE} steps before each topology update → of the {AFTER} steps "
             "after it.", "", "| update at step | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for u in updates:
        cells = []
        for losses, steps in runs.values():
            cells.append("{:.2f} → {:.2f}".format(*around(losses, u)) if u in steps else "–")
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    lines += ["", "| run | loss over the last 50 steps |", "|---|---|"]
    for label, (losses, _) in runs.items():
        tail = losses[-50:]
        lines.append(f"| {label} | {sum(tail) / len(tail):.3f} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, tuple[list[float], list[int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for label, (losses, steps) in runs.items():
        line, = ax.plot(losses, lw=0.8, label=label)
        ax.plot(steps, [losses[s] for s in steps], "v", color=line.get_color(), ms=4)
    ax.set_yscale("log")
    ax.set_xlabel("training step (▼ topology update)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=CSV")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep or not label:
            p.error(f"expected LABEL=CSV, got {item!r}")
        runs[label] = read(Path(path))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "loss_spikes.md").write_text(table(runs))
    plot(runs, args.out_dir / "loss_spikes.png")
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
