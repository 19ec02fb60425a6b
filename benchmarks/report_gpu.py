"""The GPU tables of the documentation, generated from the committed results: what has executed on which GPU
at which git SHA, and every row of the speed tables.

    python benchmarks/report_gpu.py                              # prints them
    python benchmarks/report_tables.py --write --only gpu        # rewrites the ``gpu`` block of docs/performance.md

``section()`` is that block's content; ``report_tables.py`` writes it (this module imports nothing of it).

A GPU's folder is ``benchmarks/results/<gpu>/``.  Evidence, newest first:

* ``gpu-quick/`` (the unpacked archive of ``make gpu-quick``): ``probe-*.json`` for the Triton and CUDA ops
  (checked against fp64), ``tests.xml`` for the Triton convolution and compile + AMP tests;
* ``gpu_matmul*.json`` (``bench_gpu_matmul.py``): the backends it timed; results before the benchmark
  checked its outputs count as "ran, unchecked";
* ``memory_cuda.json`` (``bench_memory.py --device cuda``) and ``larger_than_dense_cuda.log``.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PATHS = ("Triton ops", "Triton conv", "CUDA ops", "compile + AMP", "memory", "larger-than-dense")


def gpu_folders(results: Path = RESULTS) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.is_dir() and (
        any(p.glob("gpu_matmul*.json")) or (p / "gpu-quick" / "summary.json").exists()))


def _sha(sha: str | None) -> str:
    return f"`{sha[:7]}`" if sha else "`?`"


def _tests(xml_path: Path) -> dict[str, str]:
    """``{file::name: outcome}`` of a junit file (passed, failed, skipped)."""
    outcomes = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        outcomes[name] = outcome
    return outcomes


def _verdict(outcomes: list[str]) -> str | None:
    ran = [o for o in outcomes if o != "skipped"]
    if not ran:
        return None
    return "failed" if "failed" in ran else "passed"


def evidence(folder: Path) -> dict[str, str]:
    """Each GPU path's cell for this GPU: passed / failed / ran unchecked at a SHA, or never run."""
    cells: dict[str, str] = {}
    quick = folder / "gpu-quick"
    if (quick / "summary.json").exists():
        sha = _sha(json.loads((quick / "summary.json").read_text())["git_sha"])
        probes = sorted(quick.glob("probe*.json"))
        if probes:
            rows = [r for probe in probes for r in json.loads(probe.read_text())["rows"]]
            for backend, path in (("triton", "Triton ops"), ("cuda", "CUDA ops")):
                verdict = _verdict(["passed" if r["ok"] else "failed" for r in rows if r["backend"] == backend])
                if verdict:
                    cells[path] = f"{verdict} at {sha} (probe)"
        if (quick / "tests.xml").exists():
            tests = _tests(quick / "tests.xml")
            for path, match in (("Triton conv", lambda n: "test_conv" in n and "triton" in n),
                                ("compile + AMP", lambda n: "compiled_autocast" in n)):
                verdict = _verdict([o for n, o in tests.items() if match(n)])
                if verdict and path not in cells:
                    cells[path] = f"{verdict} at {sha} (tests)"
    runs = [json.loads(p.read_text()) | {"file": p.name} for p in folder.glob("gpu_matmul*.json")]
    for data in sorted(runs, key=lambda d: d["environment"].get("date", ""), reverse=True):
        env, rows = data["environment"], data["rows"]
        checked = "checked" if env.get("outputs_checked") else "unchecked"
        for backend, cell in (("triton", "Triton ops"), ("cuda", "CUDA ops")):
            if cell not in cells and any(r.get(f"{backend}_fwd_ms") or (backend == "triton" and
                                                                        r.get("ours_fwd_ms") and
                                                                        "triton_fwd_ms" not in r) for r in rows):
                cells[cell] = f"ran at {_sha(env['git_sha'])} ({data['file']}, {checked})"
    memory = folder / "memory_cuda.json"
    if memory.exists() and "memory" not in cells:
        cells["memory"] = f"ran at {_sha(json.loads(memory.read_text())['environment']['git_sha'])}"
    ltd = folder / "larger_than_dense_cuda.log"
    if ltd.exists() and "larger-than-dense" not in cells:
        cells["larger-than-dense"] = "ran (log)"
    return {path: cells.get(path, "never run") for path in PATHS}


def gpu_name(folder: Path) -> str:
    for path in sorted(folder.glob("gpu_matmul*.json")):
        return json.loads(path.read_text())["environment"]["device"]
    for probe in sorted((folder / "gpu-quick").glob("probe*.json")):
        return json.loads(probe.read_text())["device"]
    return folder.name


def matrix(results: Path = RESULTS) -> list[str]:
    lines = ["| GPU | " + " | ".join(PATHS) + " |", "|---|" + "---|" * len(PATHS)]
    for folder in gpu_folders(results):
        cells = evidence(folder)
        lines.append(f"| {gpu_name(folder)} | " + " | ".join(cells[p] for p in PATHS) + " |")
    return lines


def _n(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def speed_table(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    env, rows = data["environment"], data["rows"]
    lines = [f"`{path.relative_to(ROOT)}`: {env['device']}, torch {env['torch']}, triton {env['triton']}, git "
             f"{_sha(env['git_sha'])}; ratio = baseline time / our time (below 1: we are slower).", "",
             "| size | block | density | fwd | dX | dW | fwd+dX+dW | step | scores / GEMM | fwd vs BSR "
             "| fwd vs stk | dW vs stk |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    slower = 0
    for r in sorted(rows, key=lambda r: (r["size"], r["block_size"], -r["density"])):
        slower += (r["speedup_fwd_dx_dw_vs_dense"] or 0) < 1
        lines.append(f"| {r['size']} | {r['block_size']} | {r['density']} | {_x(r['speedup_fwd_vs_dense'])} | "
                     f"{_x(r['speedup_dx_vs_dense'])} | {_x(r['speedup_dw_vs_dense'])} | "
                     f"{_x(r['speedup_fwd_dx_dw_vs_dense'])} | {_x(r.get('speedup_step_vs_dense'))} | "
                     f"{_n(r['scores_over_dense_gemm'])} | {_x(r.get('speedup_fwd_vs_bsr'))} | "
                     f"{_x(r.get('speedup_fwd_vs_stk'))} | {_x(r.get('speedup_dw_vs_stk'))} |")
    lines += ["", f"{slower} of {len(rows)} rows are slower than cuBLAS in fwd+dX+dW."]
    return lines


def section(results: Path = RESULTS) -> str:
    """The matrix of what has run where, then every speed table (the ``gpu`` block of docs/performance.md)."""
    lines = ["What has executed on which GPU, at which git SHA (from the committed results in "
             "`benchmarks/results/<gpu>/`; `make gpu-quick` checks every GPU path at once):", ""]
    lines += matrix(results)
    for folder in gpu_folders(results):
        for path in sorted(folder.glob("gpu_matmul*.json")) + sorted((folder / "gpu-quick").glob("gpu_matmul*.json")):
            lines += ["", *speed_table(path)]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:]:
        sys.exit("report_gpu.py takes no arguments; `python benchmarks/report_tables.py --write --only gpu` "
                 "rewrites the gpu block of docs/performance.md")
    print(section())
