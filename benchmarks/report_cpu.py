"""Markdown tables of the CPU results, one per instruction-set variant, from the committed JSON.

    python benchmarks/report_cpu.py            # prints the tables of every benchmarks/results/cpu-*/
    python benchmarks/report_cpu.py --summary  # tables across the variants: matmuls, convolution, training step

For each ``cpu-<variant>/`` it reads ``cpu_float32.json`` and ``cpu_bfloat16.json`` (or
``cpu_bfloat16_vs_float32.json``, bf16 against torch's fp32; bench_cpu.py), ``conv_cpu.json``
(bench_conv.py) and ``train_step_cpu.json`` (bench_train_step.py) where present, and prints the speed-ups
over torch measured in the same runs, with the environment they were measured in; bf16 rows also give our
bf16 time over our fp32 time for the same op and case, where both records are of one build.  The summaries
give the range over a benchmark's sittings where a folder holds several (``<record>_1.json``, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OPS = ("fwd", "dx", "dw")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def env_line(env: dict) -> str:
    """The machine, our kernels' instruction set, torch and its limits, threads and git SHA of a record."""
    limits = env.get("torch_isa_limits") or {}
    torch_isa = ("limited by " + ", ".join(f"{k}={v}" for k, v in limits.items())) if limits else "not limited"
    return (f"{env['device']} ({' '.join(env.get('cpu_flags', []))}); our kernels: `{env.get('instruction_set')}`; "
            f"torch {env['torch']} {torch_isa}; {env['threads']} threads; git {env['git_sha'][:7]}")


def matmul_table(fp32: dict, bf16: dict | None) -> list[str]:
    lines = ["| block | density | fwd | dX | dW | fwd vs BSR | dX vs BSR | block_scores / dense matmul |",
             "|---|---|---|---|---|---|---|---|"]
    for r in fp32["rows"]:
        lines.append(f"| {r['block_size']} | {r['density']} | " + " | ".join(
            f"{r[f'speedup_{op}_vs_dense']:.2f}×" for op in OPS) + f" | {r['speedup_fwd_vs_bsr']:.2f}× | "
            f"{r['speedup_dx_vs_bsr']:.2f}× | {r['scores_over_dense_matmul']:.2f} |")
    if bf16:
        ours = _by_case(fp32) if same_build(fp32, bf16) else {}
        base = bf16["rows"][0].get("baseline_dtype", "bfloat16")
        lines += ["", f"bf16 (baseline: torch's {base} dense and BSR; torch's CPU BSR has no bf16 matmul; last "
                  "columns: our bf16 time / our fp32 time, where both records are of one build):",
                  "", "| block | density | fwd | dX | dW | fwd vs BSR | bf16/fp32 fwd | dX | dW |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in bf16["rows"]:
            f = ours.get((r["block_size"], r["density"]))
            rel = " | ".join(f"{r[f'ours_{op}_ms'] / f[f'ours_{op}_ms']:.2f}" if f else "-" for op in OPS)
            bsr = f"{r['speedup_fwd_vs_bsr']:.2f}×" if "speedup_fwd_vs_bsr" in r else "n/a"
            lines.append(f"| {r['block_size']} | {r['density']} | " + " | ".join(
                f"{r[f'speedup_{op}_vs_dense']:.2f}×" for op in OPS) + f" | {bsr} | {rel} |")
    return lines


def conv_table(conv: dict) -> list[str]:
    lines = ["| layer | block | density | fwd | step |", "|---|---|---|---|---|"]
    for r in conv["rows"]:
        lines.append(f"| {r['channels']}→{r['channels']} @ {r['size']}×{r['size']} | {r['block_size']} | "
                     f"{r['density']} | {r['speedup_fwd']:.2f}× | {r['speedup_step']:.2f}× |")
    return lines


def step_table(step: dict) -> list[str]:
    lines = ["| model | method | density | dense ms | step ms | update step ms | speed-up (amortised) |",
             "|---|---|---|---|---|---|---|"]
    for r in step["rows"]:
        lines.append(f"| {r['model']} | {r['method']} | {r['density']} | {r['dense_ms']:.0f} | {r['step_ms']:.0f} | "
                     f"{r['update_step_ms']:.0f} | {r['speedup_vs_dense']:.2f}× |")
    return lines


def _by_case(record: dict | None) -> dict[tuple, dict]:
    return {(r["block_size"], r["density"]): r for r in (record["rows"] if record else [])}


def same_build(a: dict | None, b: dict | None) -> bool:
    """Whether two records were measured at one git SHA (our bf16 time over our fp32 time means something
    only then)."""
    return bool(a and b) and a["environment"]["git_sha"] == b["environment"]["git_sha"]


def summary(results: Path = RESULTS, cases=((16, 0.1), (32, 0.1), (64, 0.1), (32, 0.5))) -> str:
    """Two tables across the variants, fp32 then bf16, of the speed-ups at a few (block, density) cases.  An
    fp32 cell gives the range over the sittings in the variant's folder (``cpu_float32*.json``); the bf16
    record is one sitting, and its time over our fp32 time comes from the fp32 sitting of the same build."""
    fp32_lines = ["| variant | block | density | sittings | fwd | dX | dW | fwd vs torch BSR |",
                  "|---|---|---|---|---|---|---|---|"]
    bf16_lines = ["| variant | block | density | bf16 fwd | bf16 dX | bf16 dW | against | "
                  "bf16 / fp32 time (fwd, dX, dW) |", "|---|---|---|---|---|---|---|---|"]
    for folder in sorted(results.glob("cpu-*")):
        fp32 = sittings(folder, "cpu_float32")
        bf16 = _load(folder / "cpu_bfloat16.json") or _load(folder / "cpu_bfloat16_vs_float32.json")
        paired = _by_case(next((f for f in fp32 if same_build(f, bf16)), None))
        bf_case = _by_case(bf16)
        for case in cases:
            head = f"| {folder.name.removeprefix('cpu-')} | {case[0]} | {case[1]} | "
            rows = [r for r in (_by_case(f).get(case) for f in fp32) if r]
            if rows:
                cells = [str(len(rows))] + [speed_range([r[f"speedup_{op}_vs_dense"] for r in rows]) for op in OPS]
                cells.append(speed_range([r["speedup_fwd_vs_bsr"] for r in rows]))
                fp32_lines.append(head + " | ".join(cells) + " |")
            q, f = bf_case.get(case), paired.get(case)
            if q:
                cells = [f"{q[f'speedup_{op}_vs_dense']:.2f}×" for op in OPS] + [
                    f"torch {q.get('baseline_dtype', 'bfloat16')}",
                    ", ".join(f"{q[f'ours_{op}_ms'] / f[f'ours_{op}_ms']:.2f}" for op in OPS) if f else "-"]
                bf16_lines.append(head + " | ".join(cells) + " |")
    return "\n".join(["fp32, against torch's fp32 matmul:", "", *fp32_lines, "",
                      "bf16, against torch's matmul in the dtype named:", "", *bf16_lines])


def conv_summary(results: Path = RESULTS, block: int = 32, density: float = 0.1) -> str:
    """The convolution at one (block, density) across the variants."""
    lines = ["| variant | layer | fwd | step |", "|---|---|---|---|"]
    for folder in sorted(results.glob("cpu-*")):
        conv = _load(folder / "conv_cpu.json")
        for r in (conv["rows"] if conv else []):
            if r["block_size"] == block and r["density"] == density:
                lines.append(f"| {folder.name.removeprefix('cpu-')} | {r['channels']}→{r['channels']} @ "
                             f"{r['size']}×{r['size']} | {r['speedup_fwd']:.2f}× | {r['speedup_step']:.2f}× |")
    return "\n".join(lines)


def sittings(folder: Path, stem: str) -> list[dict]:
    """The records of one benchmark in a variant's folder, one per sitting: ``<stem>.json``, ``<stem>_1.json``..."""
    return [_load(path) for path in sorted(folder.glob(f"{stem}*.json"))]


def value_range(values: list[float], spec: str = ".2f", unit: str = "×") -> str:
    """``a<unit>``, or ``lo–hi<unit>`` over the sittings that measured one case."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def speed_range(speeds: list[float]) -> str:
    return value_range(speeds)


def step_values(records: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """bench_train_step.py's rows over ``records`` (the sittings): by (model, method, density), each field's
    values, one per sitting that measured the case."""
    values: dict[tuple, dict[str, list[float]]] = {}
    for r in (r for data in records for r in data["rows"]):
        fields = values.setdefault((r["model"], r["method"], r["density"]), {})
        for field in ("dense_ms", "amortised_ms", "speedup_vs_dense", "update_step_ms"):
            fields.setdefault(field, []).append(r[field])
    return values


def step_summary(results: Path = RESULTS) -> str:
    """The training step across the variants (compressed and masked RigL against dense): the range over the
    sittings recorded in a variant's folder (``train_step_cpu*.json``)."""
    lines = ["| variant | workload | density | sittings | dense step | RigL step (amortised) | RigL vs dense "
             "| masked RigL vs dense | RigL update step |", "|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(results.glob("cpu-*")):
        records = sittings(folder, "train_step_cpu")
        values = step_values(records)
        for (model, method, density), v in values.items():
            if method != "rigl":
                continue
            masked = values.get((model, "masked", density))
            cells = [str(len(v["dense_ms"]))] + [value_range(v[field], ".0f", " ms")
                                                  for field in ("dense_ms", "amortised_ms")]
            cells += [speed_range(v["speedup_vs_dense"]), speed_range(masked["speedup_vs_dense"]) if masked else "-",
                      value_range(v["update_step_ms"], ".0f", " ms")]
            lines.append(f"| {folder.name.removeprefix('cpu-')} | {model} | {density} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_size_sittings(folder: Path) -> list[dict]:
    """The bench_layer_sizes.py records of a variant's folder, one per sitting (``layer_sizes*.json``)."""
    return sittings(folder, "layer_sizes")


def layer_size_speeds(sittings: list[dict], density: float = 0.1) -> dict[tuple, list[float]]:
    """The speed-ups of the fp32 linear layers at ``density`` by (shape, mode, rows, block, width), one per
    sitting that measured the case."""
    speeds: dict[tuple, list[float]] = {}
    for r in (r for data in sittings for r in data["rows"]):
        if r["kind"] == "linear" and r["dtype"] == "float32" and r["density"] == density:
            key = (r["shape"], r["mode"], r["rows"], r["block_size"], r["width"])
            speeds.setdefault(key, []).append(r["speedup"])
    return speeds


def layer_sizes_summary(results: Path = RESULTS, density: float = 0.1) -> str:
    """bench_layer_sizes.py across the variants: the speed-up over torch's dense layers of one training step
    at the most rows measured and of no-grad inference of one row, fp32 at ``density``, by width; the range
    over the sittings recorded in a variant's folder (``layer_sizes*.json``)."""
    lines = []
    for folder in sorted(results.glob("cpu-*")):
        speeds = layer_size_speeds(layer_size_sittings(folder), density)
        if not speeds:
            continue
        widths = sorted({key[4] for key in speeds})
        if not lines:
            lines = ["| variant | layer | rows | step | block | " + " | ".join(f"w={w}" for w in widths) + " |",
                     "|---|---|---|---|---|" + "---|" * len(widths)]
        cases = sorted({key[:4] for key in speeds}, key=lambda c: (c[1] != "train", c[0] != "square", -c[2], c[3]))
        shown_rows = {"train": max((c[2] for c in cases if c[1] == "train"), default=0), "infer": 1}
        for shape, mode, m, block in cases:
            if m != shown_rows[mode]:
                continue
            layer = "w × w" if shape == "square" else "w → 4w → w"
            step = "training (fwd + dX + dW)" if mode == "train" else "inference, no grad"
            cells = (speeds.get((shape, mode, m, block, w)) for w in widths)
            lines.append(f"| {folder.name.removeprefix('cpu-')} | {layer} | {m} | {step} | {block} | "
                         + " | ".join(speed_range(c) if c else "-" for c in cells) + " |")
    return "\n".join(lines) if lines else "(no layer_sizes.json recorded)"


def measured_on(results: Path = RESULTS, names: tuple[str, ...] = ("cpu_float32.json",)) -> str:
    """One line per record of ``names`` (file names or glob patterns) in each ``cpu-<variant>/``: the
    environment it was measured in and the day."""
    lines = []
    for folder in sorted(results.glob("cpu-*")):
        for path in (path for name in names for path in sorted(folder.glob(name))):
            env = _load(path)["environment"]
            day = f", {env['date'][:10]}" if env.get("date") else ""
            lines.append(f"- `benchmarks/results/{folder.name}/{path.name}`: {env_line(env)}{day}")
    return "\n".join(lines)


def report(results: Path = RESULTS) -> str:
    out = []
    for folder in sorted(results.glob("cpu-*")):
        fp32 = _load(folder / "cpu_float32.json")
        bf16 = _load(folder / "cpu_bfloat16.json") or _load(folder / "cpu_bfloat16_vs_float32.json")
        conv, step = _load(folder / "conv_cpu.json"), _load(folder / "train_step_cpu.json")
        if not any((fp32, conv, step)):
            continue
        out += [f"## {folder.name}", ""]
        if fp32:
            out += [f"Matmuls, M = {fp32['rows'][0]['rows']}, N = K = {fp32['rows'][0]['features']}: "
                    + env_line(fp32["environment"]), ""] + matmul_table(fp32, bf16) + [""]
        if conv:
            out += ["3×3 convolution, batch 64: " + env_line(conv["environment"]), ""] + conv_table(conv) + [""]
        if step:
            out += ["Training step (Adam; amortised over ΔT = 100): " + env_line(step["environment"]), ""] \
                + step_table(step) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--summary"]:
        sys.stdout.write("\n\n".join((summary(), conv_summary(), step_summary())) + "\n")
    else:
        sys.stdout.write(report() + "\n")
