"""The iso-cost study's table, comparisons and plot from its per-run JSON records.

    python benchmarks/iso_cost/report.py [--out-dir benchmarks/results/iso_cost]

Writes ``table.md`` (the learning-rate sweep; per model the validation loss in nats per character, mean ±
std over seeds, at equal tokens and at equal wall-clock, time per step, peak memory, trainable parameters
and training FLOPs; each sparse model against the dense one, seed by seed), ``summary.json`` and
``loss_vs_time.png`` (validation loss against wall-clock, one colour per model, a line per seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "results" / "iso_cost"
METHODS = {"dense": "dense", "rigl": "RigL", "set": "SET", "static": "static"}


def load(out: Path) -> tuple[list[dict], list[dict]]:
    """(sweep records, study records), in name order."""
    records = [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]
    records = [r for r in records if "equal_tokens" in r]  # not summary.json or where_time_goes.json
    swept = [r for r in records if r["name"].startswith("sweep_")]
    return swept, [r for r in records if not r["name"].startswith("sweep_")]


def label(record: dict) -> str:
    if record["method"] == "dense":
        return f"dense w={record['config']['width']}"
    if record.get("widen", "model") == "ffn":
        return f"{METHODS[record['method']]} FFN {record['multiplier']}x b{record['block_size']}"
    return f"{METHODS[record['method']]} {record['multiplier']}w b{record['block_size']}"


def order(record: dict) -> tuple:
    return record["multiplier"], list(METHODS).index(record["method"]), record["block_size"], record["seed"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: list[dict]) -> dict[str, dict]:
    """Label -> the model's numbers over its seeds (dense first, then by width, block size and method)."""
    groups = defaultdict(list)
    for r in sorted(records, key=order):
        groups[label(r)].append(r)
    summary = {}
    for name, runs in groups.items():
        tokens, timed = [r["equal_tokens"] for r in runs], [r["equal_time"] for r in runs]
        summary[name] = {
            "seeds": sorted(r["seed"] for r in runs),
            "loss_equal_tokens": mean_std([t["final_val_loss"] for t in tokens]),
            "loss_equal_time": mean_std([t["final_val_loss"] for t in timed]),
            "by_seed_equal_time": {r["seed"]: r["equal_time"]["final_val_loss"] for r in runs},
            "by_seed_equal_tokens": {r["seed"]: r["equal_tokens"]["final_val_loss"] for r in runs},
            "steps_in_budget": mean_std([t["steps"] for t in timed]),
            "budget_seconds": mean_std([r["budget_seconds"] for r in runs]),
            "ms_per_step": mean_std([t["ms_per_step"] for t in tokens]),
            "peak_rss_mib": mean_std([r["peak_rss_mib"] for r in runs]),
            "trainable_parameters": runs[0]["equal_tokens"]["trainable_parameters"],
            "training_gflop_per_step": runs[0]["equal_tokens"]["training_flops_per_step"] / 1e9,
            "width": runs[0]["config"]["width"] * (1 if runs[0].get("widen") == "ffn" else runs[0]["multiplier"]),
        }
    return summary


def comparisons(summary: dict[str, dict]) -> list[dict]:
    """Each model against the dense one: the difference of their losses over the seeds both have
    (negative: the sparse model is better)."""
    dense = next(s for name, s in summary.items() if name.startswith("dense"))
    rows = []
    for name, s in summary.items():
        if name.startswith("dense"):
            continue
        row = {"model": name}
        for key in ("equal_tokens", "equal_time"):
            seeds = sorted(set(s[f"by_seed_{key}"]) & set(dense[f"by_seed_{key}"]))
            diffs = [s[f"by_seed_{key}"][seed] - dense[f"by_seed_{key}"][seed] for seed in seeds]
            row[key] = {"seeds": seeds, "difference": mean_std(diffs) if diffs else None,
                        "lower_in": sum(d < 0 for d in diffs)}
        row["time_per_step_vs_dense"] = s["ms_per_step"][0] / dense["ms_per_step"][0]
        row["memory_vs_dense"] = s["peak_rss_mib"][0] / dense["peak_rss_mib"][0]
        rows.append(row)
    return rows


def _pm(value: tuple[float, float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def sweep_table(sweep: list[dict]) -> list[str]:
    """The learning-rate sweeps: each swept model's loss at equal tokens per rate (a model column where more
    than one model was swept)."""
    swept = sorted(sweep, key=lambda r: (order(r), r["lr"]))
    if len({label(r) for r in swept}) == 1:
        lines = ["| lr | validation loss (nats/char) |", "|---|---|"]
        return lines + [f"| {r['lr']:g} | {r['equal_tokens']['final_val_loss']:.3f} |" for r in swept]
    lines = ["| model | lr | validation loss (nats/char) |", "|---|---|---|"]
    return lines + [f"| {label(r)} | {r['lr']:g} | {r['equal_tokens']['final_val_loss']:.3f} |" for r in swept]


def pace_table(pace: dict) -> list[str]:
    """The step times measured apart (``pace.json``): per model, its ordinary and update step in each sitting
    (ms) and its ordinary step against dense's of the same sitting."""
    sittings = pace["sittings"]
    lines = ["| model | " + " | ".join(f"sitting {i + 1}: step, update (ms) | vs dense" for i in range(len(sittings)))
             + " |", "|---" * (1 + 2 * len(sittings)) + "|"]
    for name in sittings[0]["models"]:
        cells = []
        for sitting in sittings:
            t, dense = sitting["models"][name], sitting["models"]["dense"]
            update = f"{t['update_ms']:.0f}" if name != "dense" else "n/a"
            cells += [f"{t['ordinary_ms']:.0f}, {update}", f"{t['ordinary_ms'] / dense['ordinary_ms']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def equal_memory(summary: dict[str, dict]) -> str:
    """Which sparse models' peak resident memory fits the dense model's."""
    dense_name, dense = next((n, s) for n, s in summary.items() if n.startswith("dense"))
    fits = [n for n, s in summary.items() if n != dense_name and s["peak_rss_mib"][0] <= dense["peak_rss_mib"][0]]
    if fits:
        return f"Equal memory: {', '.join(fits)} peak at or below {dense_name}'s {dense['peak_rss_mib'][0]:.0f} MiB."
    least = min((s["peak_rss_mib"][0], n) for n, s in summary.items() if n != dense_name)
    return (f"Equal memory: no sparse model fits {dense_name}'s peak of {dense['peak_rss_mib'][0]:.0f} MiB; the "
            f"smallest, {least[1]}, peaks at {least[0]:.0f} MiB ({least[0] / dense['peak_rss_mib'][0]:.2f}x).")


def models_table(summary: dict[str, dict]) -> list[str]:
    """Per model, over its seeds: losses at equal tokens and equal time, steps, time, memory, size and FLOPs."""
    lines = ["| model | seeds | val loss, equal tokens | val loss, equal time | steps in the time | ms/step | "
             "peak memory (MiB) | trainable parameters | training GFLOP/step |", "|---" * 9 + "|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {len(s['seeds'])} | {_pm(s['loss_equal_tokens'])} | {_pm(s['loss_equal_time'])} | "
                     f"{s['steps_in_budget'][0]:.0f} | {s['ms_per_step'][0]:.0f} | {s['peak_rss_mib'][0]:.0f} | "
                     f"{s['trainable_parameters'] / 1e6:.2f} M | {s['training_gflop_per_step']:.1f} |")
    return lines


def against_dense_table(rows: list[dict]) -> list[str]:
    """Each sparse model against dense, seed by seed (``comparisons``)."""
    lines = ["| model | equal tokens | lower in | equal time | lower in | time per step / dense | memory / dense |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for key in ("equal_tokens", "equal_time"):
            c = row[key]
            cells += [_pm(c["difference"]) if c["difference"] else "n/a", f"{c['lower_in']} of {len(c['seeds'])}"]
        lines.append(f"| {row['model']} | {' | '.join(cells)} | {row['time_per_step_vs_dense']:.2f} | "
                     f"{row['memory_vs_dense']:.2f} |")
    return lines


def measured_on(summary: dict[str, dict], records: list[dict]) -> str:
    """The machine, versions and git SHAs of the records, and what equal time means; empty without them."""
    if not any("environment" in r for r in records):
        return ""
    shas = sorted({r["environment"]["git_sha"][:10] for r in records if "environment" in r})
    config = records[0]["config"]
    if config.get("equal_time") == "paced":
        timing = (f"Equal time: each model trains for the wall-clock of the dense model's {config['steps']} steps "
                  f"({summary[next(iter(summary))]['budget_seconds'][0]:.0f} s), every model's time from its step "
                  "times measured apart (pace.json: the models alternated in rounds, the median over the sittings).")
    else:
        timing = (f"Equal time: each model trains for the wall-clock the dense model of its seed took over "
                  f"{config['steps']} steps (mean {summary[next(iter(summary))]['budget_seconds'][0]:.0f} s).")
    machines: dict[str, int] = {}
    for r in records:
        if "environment" in r:
            e = r["environment"]
            key = (f"{e['device']} ({e['instruction_set']} kernels; CPU flags {' '.join(e['cpu_flags'])}), "
                   f"{e['threads']} threads, torch {e['torch']}")
            machines[key] = machines.get(key, 0) + 1
    where = "; ".join(f"{key} ({n} runs)" if len(machines) > 1 else key for key, n in machines.items())
    return f"Measured on {where}, git {', '.join(shas)}. {timing}"


def markdown(sweep: list[dict], summary: dict[str, dict], rows: list[dict], records: list[dict],
             pace: dict | None = None) -> str:
    lines = []
    if sweep:
        lines += ["Learning-rate sweep (seed 0, equal tokens; the lowest of a family is used by its runs):", "",
                  *sweep_table(sweep), ""]
    lines += models_table(summary)
    lines += ["", "Against the dense model, seed by seed (loss difference, mean ± std; negative: lower than dense):",
              "", *against_dense_table(rows)]
    lines += ["", equal_memory(summary)]
    if pace:
        lines += ["", "Step times measured apart (pace.json):", "", *pace_table(pace)]
    measured = measured_on(summary, records)
    if measured:
        lines += ["", measured]
    return "\n".join(lines) + "\n"


def where_time_goes_table(results: list[dict]) -> list[str]:
    """``where_time_goes.py``'s results: per model the profiled step and its parts (ms), and what an update
    step costs over an ordinary one."""
    parts = list(dict.fromkeys(k for r in results for k in r["parts_ms_per_step"]))
    short = {"dense matrix products": "dense products", "sparse projections": "sparse products"}
    lines = ["| model | step (ms) | " + " | ".join(short.get(p, p) for p in parts) + " | update / ordinary step |",
             "|---" * (len(parts) + 3) + "|"]
    for r in results:
        ratio = f"{r['update_step_ms'] / r['ordinary_step_ms']:.2f}" if "update_step_ms" in r else "n/a"
        lines.append(f"| {r['model']} | {r['profiled_ms_per_step']:.0f} | "
                     + " | ".join(f"{r['parts_ms_per_step'].get(k, 0.0):.0f}" for k in parts) + f" | {ratio} |")
    return lines


def plot(records: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, (timed, tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {}
    for r in sorted(records, key=order):
        name = label(r)
        first = name not in colours
        colours.setdefault(name, f"C{len(colours) % 10}")
        for axis, key, x in ((timed, "equal_time", 1), (tokens, "equal_tokens", 0)):
            curve = r[key]["curve"][1:]  # from the first evaluation: the untrained loss is off the scale
            axis.plot([p[x] for p in curve], [p[2] for p in curve], color=colours[name], alpha=0.8,
                      label=name if first else None, linestyle="--" if r["method"] == "dense" else "-")
    timed.set(xlabel="training wall-clock (s)", ylabel="validation loss (nats/char)", title="equal wall-clock")
    tokens.set(xlabel="step", ylabel="validation loss (nats/char)", title="equal tokens")
    timed.legend(fontsize=10)
    for axis in (timed, tokens):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="the study's records (default %(default)s)")
    args = p.parse_args(argv)
    sweep, records = load(args.out_dir)
    if not any(r["method"] == "dense" for r in records):
        raise SystemExit(f"no dense record under {args.out_dir}: run benchmarks/iso_cost/run_study.py first")
    summary = summarise(records)
    rows = comparisons(summary)
    pace_path = args.out_dir / "pace.json"
    table = markdown(sweep, summary, rows, records, json.loads(pace_path.read_text()) if pace_path.exists() else None)
    (args.out_dir / "table.md").write_text(table)
    (args.out_dir / "summary.json").write_text(json.dumps({"models": summary, "against_dense": rows}, indent=1))
    plot(records, args.out_dir / "loss_vs_time.png")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
