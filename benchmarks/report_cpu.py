"""Markdown tables of the CPU results, one per instruction-set variant, from the committed JSON.

    python benchmarks/report_cpu.py            # prints the tables of every benchmarks/results/cpu-*/

For each ``cpu-<variant>/`` it reads ``cpu_float32.json`` and ``cpu_bfloat16.json``
(bench_cpu.py), ``conv_cpu.json`` (bench_conv.py) and ``train_step_cpu.json``
(bench_train_step.py) where present, and prints the speed-ups over torch measured in the same
runs, with the environment they were measured in; bf16 rows also give our bf16 time over our fp32
time for the same op and case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OPS = ("fwd", "dx", "dw")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _env_line(env: dict) -> str:
    limits = env.get("torch_isa_limits") or {}
    torch_isa = ", ".join(f"{k}={v}" for k, v in limits.items()) or "unlimited"
    return (f"{env['device']} ({' '.join(env.get('cpu_flags', []))}); our kernels: `{env.get('isa_variant')}`; "
            f"torch {env['torch']} limited by {torch_isa}; {env['threads']} threads; git {env['git_sha'][:7]}")


def matmul_table(fp32: dict, bf16: dict | None) -> list[str]:
    lines = ["| block | density | fwd | dX | dW | fwd vs BSR | dX vs BSR | block_scores / dense matmul |",
             "|---|---|---|---|---|---|---|---|"]
    for r in fp32["rows"]:
        lines.append(f"| {r['block_size']} | {r['density']} | " + " | ".join(
            f"{r[f'speedup_{op}_vs_dense']:.2f}×" for op in OPS) + f" | {r['speedup_fwd_vs_bsr']:.2f}× | "
            f"{r['speedup_dx_vs_bsr']:.2f}× | {r['scores_over_dense_matmul']:.2f} |")
    if bf16:
        ours = {(r["block_size"], r["density"]): r for r in fp32["rows"]}
        lines += ["", "bf16 (torch's bf16 dense as the baseline; torch's CPU BSR has no bf16 matmul; last columns: our bf16 "
                  "time / our fp32 time):",
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


def report(results: Path = RESULTS) -> str:
    out = []
    for folder in sorted(results.glob("cpu-*")):
        fp32, bf16 = _load(folder / "cpu_float32.json"), _load(folder / "cpu_bfloat16.json")
        conv, step = _load(folder / "conv_cpu.json"), _load(folder / "train_step_cpu.json")
        if not any((fp32, conv, step)):
            continue
        out += [f"## {folder.name}", ""]
        if fp32:
            out += [f"Matmuls, M = {fp32['rows'][0]['rows']}, N = K = {fp32['rows'][0]['features']}: "
                    + _env_line(fp32["environment"]), ""] + matmul_table(fp32, bf16) + [""]
        if conv:
            out += ["3×3 convolution, batch 64: " + _env_line(conv["environment"]), ""] + conv_table(conv) + [""]
        if step:
            out += ["Training step (Adam; amortised over ΔT = 100): " + _env_line(step["environment"]), ""] \
                + step_table(step) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(report() + "\n")
