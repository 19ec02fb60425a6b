"""Tables, findings and plots of the accuracy study from its per-run JSON records.

    python benchmarks/accuracy/report.py [--out-dir benchmarks/results/accuracy]

Writes ``table.md`` (mean ± std over seeds of the final test accuracy, and training
FLOPs relative to dense), ``findings.md`` (the paper's qualitative claims checked
against these numbers), ``summary.json`` and the plots ``accuracy_vs_density_<model>.png``,
``accuracy_vs_flops_<model>.png`` and ``accuracy_vs_block_size_<model>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "results" / "accuracy"
LABELS = {("dense", 1): "dense", ("static", 1): "static", ("set", 1): "SET", ("snfs", 1): "SNFS",
          ("rigl", 1): "RigL", ("rigl", 2): "RigL 2x", ("prune", 1): "pruning"}
ORDER = list(LABELS.values())
DENSITIES = (0.2, 0.1, 0.05, 0.02)
BLOCKS = (4, 16, 32)  # the block sizes compared with unstructured (block size 1)
DID_NOT_TRAIN = 20.0  # final accuracy (%) below which a run counts as not trained; chance is 10%


def load(runs_dir: Path) -> list[dict]:
    records = []
    for path in sorted(runs_dir.glob("*.json")):
        with open(path) as f:
            records.append(json.load(f))
    return records


def algorithm(config: dict) -> str:
    """The run's training algorithm: ``config["algorithm"]``, or ``config["method"]`` in records written before
    ``rigl_sparse.train`` renamed ``--method`` to ``--algorithm``."""
    return config["algorithm"] if "algorithm" in config else config["method"]


def group(records):
    """(model, label, distribution, density, block) -> list of records (dense runs under every density)."""
    groups = defaultdict(list)
    for r in records:
        c = r["config"]
        label = LABELS[(algorithm(c), c.get("multiplier", 1))]
        if algorithm(c) == "dense":
            groups[(c["model"], label, None, None, None)].append(r)
        else:
            groups[(c["model"], label, c["distribution"], c["density"], c["block_size"])].append(r)
    return groups


def stats(runs):
    acc = [100 * r["final_accuracy"] for r in runs]
    # a record's dense_training_flops is dense training over the same examples; RigL_Mx is compared with the
    # standard (1x) dense run, as in the paper
    flops = [r["training_flops"] / r["dense_training_flops"] * r["config"].get("multiplier", 1) for r in runs]
    trained = [a for a in acc if a >= DID_NOT_TRAIN] or acc  # the plots' points: seeds that did not train left out
    return {"mean": statistics.fmean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "n": len(acc),
            "trained_mean": statistics.fmean(trained),
            "trained_std": statistics.stdev(trained) if len(trained) > 1 else 0.0,
            "flops": statistics.fmean(flops), "wall_s": statistics.fmean(r["wall_time_s"] for r in runs),
            "did_not_train": sum(a < DID_NOT_TRAIN for a in acc)}


def cell(s):
    if s is None:
        return "–"
    return (f"{s['mean']:.2f} ± {s['std']:.2f}" + (f" (n={s['n']})" if s["n"] != 3 else "")
            + (" †" if s.get("did_not_train") else ""))


def summarise(records):
    groups = group(records)
    return {key: stats(runs) for key, runs in groups.items()}


def tables(summary, models) -> str:
    lines = ["# Accuracy study: Fashion-MNIST", "",
             "Final test accuracy (%), mean ± std over seeds (n=3 unless marked), and training FLOPs relative to "
             "dense training on the standard schedule (the RigL paper's formulas; RigL 2x trains twice as long). "
             "Produced by `python benchmarks/accuracy/run_study.py`; "
             "configuration of every run in `runs/*.json`. † marks a cell where a seed did not train (final "
             f"accuracy below {DID_NOT_TRAIN:.0f}%; chance is 10%): `findings.md` lists those runs.", ""]
    for model in models:
        lines += model_tables(summary, model)
    return "\n".join(lines)


def model_tables(summary, model, heading: str = "##") -> list[str]:
    """One model's tables: ERK and uniform unstructured, then ERK over block sizes, each under a ``heading``."""
    lines = []
    dense = summary.get((model, "dense", None, None, None))
    for distribution in ("erk", "uniform"):
        lines += [f"{heading} {model}, {distribution.upper() if distribution == 'erk' else distribution}, "
                  "unstructured (block size 1)", "",
                  "| method | " + " | ".join(f"d={d}" for d in DENSITIES) + " | FLOPs at d=0.1 |",
                  "|---" * (len(DENSITIES) + 2) + "|"]
        lines.append("| dense | " + " | ".join(cell(dense) for _ in DENSITIES) + " | 1.00x |")
        for label in ORDER[1:]:
            row = [summary.get((model, label, distribution, d, 1)) for d in DENSITIES]
            at = summary.get((model, label, distribution, 0.1, 1))
            flops = f"{at['flops']:.3f}x" if at else "–"
            lines.append(f"| {label} | " + " | ".join(cell(s) for s in row) + f" | {flops} |")
        lines.append("")
    lines += [f"{heading} {model}, ERK, block sizes", "",
              "| method | block | " + " | ".join(f"d={d}" for d in DENSITIES) + " |",
              "|---" * (len(DENSITIES) + 2) + "|"]
    for label in ("static", "SET", "RigL"):
        for block in (1, 4, 16, 32):
            row = [summary.get((model, label, "erk", d, block)) for d in DENSITIES]
            lines.append(f"| {label} | {block} | " + " | ".join(cell(s) for s in row) + " |")
    lines.append("")
    return lines


def _compare(summary, a, b):
    """Differences mean(a) - mean(b) over the keys both have, with the larger of the two stds."""
    out = []
    for key, sa in summary.items():
        sb = summary.get(b(key)) if a(key) else None
        if sb is not None:
            out.append((key, sa["mean"] - sb["mean"], max(sa["std"], sb["std"])))
    return out


def _verdict(diffs) -> str:
    if not diffs:
        return "no data yet"
    agree = sum(d >= 0 for _, d, _ in diffs)
    within = sum(d < 0 and -d <= s for _, d, s in diffs)
    against = len(diffs) - agree - within
    mean = statistics.fmean(d for _, d, _ in diffs)
    median = statistics.median(d for _, d, _ in diffs)
    word = "agree" if against == 0 and agree >= within else ("partly agree" if agree > against else "disagree")
    return (f"**{word}**: holds in {agree} of {len(diffs)} comparisons, {within} more within one std, "
            f"{against} against; difference mean {mean:+.2f}, median {median:+.2f} points")


def did_not_train(records, model) -> list[str]:
    """One line per run of ``model`` that did not train: its name and accuracy after every epoch."""
    lines = []
    for r in sorted(records, key=lambda r: r.get("name", "")):
        if r["config"]["model"] == model and 100 * r["final_accuracy"] < DID_NOT_TRAIN:
            per_epoch = ", ".join(f"{100 * a:.1f}" for a in r.get("accuracy_per_epoch", [r["final_accuracy"]]))
            lines.append(f"  - {r.get('name', '?')}: test accuracy per epoch {per_epoch} %")
    return lines


def findings(summary, models, records=()) -> str:
    lines = ["# The paper's findings against this study", "",
             "Each claim is checked on every (model, distribution, density) cell of the unstructured runs where "
             "both sides have results. 'Within one std' means that the claim fails on the means, but by less "
             "than the larger seed standard deviation.", ""]

    def key_of(label):
        return lambda k: k[1] == label and k[4] == 1

    for model in models:
        lines += [f"## {model}", ""]
        s = {k: v for k, v in summary.items() if k[0] == model}
        for better, worse in (("RigL", "SET"), ("SET", "static"), ("RigL", "static")):
            diffs = _compare(s, key_of(better), lambda k, w=worse: (k[0], w, k[2], k[3], k[4]))
            lines.append(f"- {better} ≥ {worse} at equal density: {_verdict(diffs)}")
        for label in ("RigL", "static"):
            diffs = _compare(s, lambda k, lab=label: k[1] == lab and k[2] == "erk" and k[4] == 1 and k[3] <= 0.05,
                             lambda k: (k[0], k[1], "uniform", k[3], k[4]))
            lines.append(f"- ERK ≥ uniform at high sparsity (density ≤ 0.05), {label}: {_verdict(diffs)}")
        diffs = _compare(s, key_of("RigL 2x"), lambda k: (k[0], "RigL", k[2], k[3], k[4]))
        lines.append(f"- longer training helps (RigL 2x ≥ RigL): {_verdict(diffs)}")
        for better, worse in (("RigL", "SET"), ("RigL", "static")):
            diffs = _compare(s, lambda k, b=better: k[1] == b and k[4] not in (None, 1),
                             lambda k, w=worse: (k[0], w, k[2], k[3], k[4]))
            lines.append(f"- (block sizes 4–32) {better} ≥ {worse} at equal density and block size: {_verdict(diffs)}")
        pairs = []
        for k, v in s.items():
            if k[1] in ("RigL", "RigL 2x") and k[4] == 1 and (k[0], "pruning", k[2], k[3], 1) in s:
                p = s[(k[0], "pruning", k[2], k[3], 1)]
                pairs.append((k, v["mean"] - p["mean"], v["flops"] / p["flops"], max(v["std"], p["std"])))
        if pairs:
            reached = [(k, d, f) for k, d, f, sd in pairs if d >= -sd]
            lines.append(f"- RigL reaches pruning's accuracy at a fraction of its training FLOPs: RigL (1x or 2x) is "
                         f"within one std of pruning or above it in {len(reached)} of {len(pairs)} cells, at "
                         f"{min(f for _, _, f, _ in pairs):.2f}–{max(f for _, _, f, _ in pairs):.2f}x pruning's FLOPs")
            for k, d, f, sd in sorted(pairs, key=lambda p: (p[0][2], -p[0][3], p[0][1])):
                lines.append(f"  - {k[1]}, {k[2]}, d={k[3]}: {d:+.2f} points vs pruning, {f:.2f}x its FLOPs")
        lines += ["", "Accuracy cost of blocks against unstructured (RigL, ERK; points, mean over seeds):", "",
                  "| block | " + " | ".join(f"d={d}" for d in DENSITIES) + " |", "|---" * (len(DENSITIES) + 1) + "|"]
        for block in BLOCKS:
            lines.append(f"| {block} | " + " | ".join(block_cost(s, model, block)) + " |")
        failed = did_not_train(records, model)
        if failed:
            lines += ["", f"Runs that did not train (final accuracy below {DID_NOT_TRAIN:.0f}%; their cells are "
                      "marked † in `table.md` and enter the means and verdicts above as they are):"] + failed
        dense = s.get((model, "dense", None, None, None))
        rigl = s.get((model, "RigL", "erk", 0.1, 1))
        if dense and rigl:
            lines += ["", f"Unstructured RigL at density 0.1 (ERK): {rigl['mean']:.2f} ± {rigl['std']:.2f} "
                      "against dense "
                      f"{dense['mean']:.2f} ± {dense['std']:.2f}, {dense['mean'] - rigl['mean']:.2f} points below."]
        lines.append("")
    return "\n".join(lines)


def block_cost(summary, model, block) -> list[str]:
    """Per density, RigL's (ERK) mean accuracy at ``block`` minus its unstructured one, in points."""
    row = []
    for d in DENSITIES:
        a, b = summary.get((model, "RigL", "erk", d, block)), summary.get((model, "RigL", "erk", d, 1))
        row.append(f"{a['mean'] - b['mean']:+.2f}" if a and b else "–")
    return row


def block_cost_table(summary, models) -> str:
    """What blocks cost RigL (ERK) against unstructured, every model in one table."""
    lines = ["| model | block | " + " | ".join(f"d={d}" for d in DENSITIES) + " |", "|---" * (len(DENSITIES) + 2) + "|"]
    for model in models:
        for block in BLOCKS:
            lines.append(f"| {model} | {block} | " + " | ".join(block_cost(summary, model, block)) + " |")
    return "\n".join(lines)


def plots(summary, models, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model in models:
        s = {k: v for k, v in summary.items() if k[0] == model}
        if not s:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))  # each its own scale: ERK's curves lie close together
        for ax, distribution in zip(axes, ("erk", "uniform")):
            for label in ORDER[1:]:
                pts = [(d, s[(model, label, distribution, d, 1)]) for d in DENSITIES
                       if (model, label, distribution, d, 1) in s]
                if pts:
                    _errorbar(ax, pts, marker="o", capsize=3, label=label)
            dense = s.get((model, "dense", None, None, None))
            if dense:
                ax.axhline(dense["mean"], color="k", linestyle="--", label="dense")
            ax.set_xscale("log")
            ax.set_xticks(DENSITIES, [str(d) for d in DENSITIES])
            ax.minorticks_off()  # the log axis's own ticks would print over the densities
            ax.set_xlabel("density")
            ax.set_title(f"{model}, {distribution}, unstructured")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].legend(fontsize=9)
        _footnote(fig, s)
        written.append(_save(fig, out_dir / f"accuracy_vs_density_{model}.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        for label in ORDER:
            pts = [v for k, v in s.items() if k[1] == label and k[4] in (1, None) and k[2] in ("erk", None)]
            if pts:
                ax.scatter([v["flops"] for v in pts], [v["mean"] for v in pts], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs / dense training FLOPs")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, ERK, unstructured, all densities")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / f"accuracy_vs_flops_{model}.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        for label in ("RigL", "static"):
            for d in DENSITIES:
                pts = [(b, s[(model, label, "erk", d, b)]) for b in (1, 4, 16, 32) if (model, label, "erk", d, b) in s]
                if len(pts) > 1:
                    _errorbar(ax, pts, marker="o" if label == "RigL" else "s", capsize=3,
                              linestyle="-" if label == "RigL" else ":", label=f"{label} d={d}")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 16, 32], ["1", "4", "16", "32"])
        ax.minorticks_off()
        ax.set_xlabel("block size")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, ERK")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
        _footnote(fig, s)
        written.append(_save(fig, out_dir / f"accuracy_vs_block_size_{model}.png"))
    return written


def _errorbar(ax, pts, **style) -> None:
    """Mean and standard deviation over the seeds that trained, at ``(x, stats)`` points; a point that left a
    seed out is marked with a dagger."""
    xs, ys = [x for x, _ in pts], [v["trained_mean"] for _, v in pts]
    ax.errorbar(xs, ys, yerr=[v["trained_std"] for _, v in pts], **style)
    for x, y, (_, v) in zip(xs, ys, pts):
        if v["did_not_train"]:
            ax.annotate("\u2020", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=11)


def _footnote(fig, summary) -> None:
    """Says what a dagger means, on a figure whose model has a seed that did not train."""
    if any(v.get("did_not_train") for v in summary.values()):
        fig.text(0.01, 0.005, f"\u2020 seeds below {DID_NOT_TRAIN:g}% (did not train) are left out of the point, "
                 "unless none trained",
                 fontsize=9)


def _save(fig, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0.03, 1, 1))  # room for a footnote
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    records = load(args.out_dir / "runs")
    if not records:
        print(f"no run records in {args.out_dir / 'runs'}", file=sys.stderr)
        return 1
    models = [m for m in ("mlp", "cnn") if any(r["config"]["model"] == m for r in records)]
    summary = summarise(records)
    (args.out_dir / "table.md").write_text(tables(summary, models))
    (args.out_dir / "findings.md").write_text(findings(summary, models, records))
    (args.out_dir / "summary.json").write_text(json.dumps(
        [{"model": k[0], "method": k[1], "distribution": k[2], "density": k[3], "block_size": k[4], **v}
         for k, v in sorted(summary.items(), key=lambda kv: str(kv[0]))], indent=1))
    written = plots(summary, models, args.out_dir)
    print(f"{len(records)} runs -> {args.out_dir}/table.md, findings.md, summary.json, "
          + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
