"""The accuracy study: RigL vs SET vs static vs SNFS vs gradual pruning vs dense on Fashion-MNIST.

Runs every configuration of the study through ``rigl_sparse.train`` (masked mode, so
unstructured and block-sparse runs share one code path), one JSON record per run in
``--out-dir``, skipping runs whose record already exists (so an interrupted study resumes),
then writes the tables, findings and plots with ``report.py``.

    python benchmarks/accuracy/run_study.py            # the whole study (hours on 2 CPU cores)
    python benchmarks/accuracy/run_study.py --models mlp --part methods   # a part of it

Parts (per model, 3 seeds each):
  methods  dense, static, SET, SNFS, RigL, RigL_2x, pruning at densities 0.2/0.1/0.05/0.02,
           uniform and ERK, unstructured (block size 1);
  blocks   static, SET and RigL at block sizes 4, 16, 32, densities 0.2/0.1/0.05/0.02, ERK
           (block size 1 comes from the methods part).
All runs: SGD with momentum 0.9 as in the paper, learning rate 0.1 cosine-decayed to 0 (chosen
from {0.05, 0.1} on dense, SET and RigL, MLP, seed 0), batch 128, delta_t 100, alpha 0.3,
t_end at 3/4 of training, pruning from 1/10 to 3/4 of training; uniform keeps the first layer
dense on the CNN (as the paper does; it holds 288 weights) but not on the MLP, whose first layer
holds 88% of the weights, so that every distribution has the same weight budget; 10 epochs for the MLP, 3 for
the CNN (RigL_2x doubles them).  Runs are ordered so that a partial study is useful: the MLP before the CNN, density 0.1
first, seed 0 of everything before seed 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "results" / "accuracy"
DENSITIES = (0.1, 0.05, 0.2, 0.02)
SEEDS = (0, 1, 2)
EPOCHS = {"mlp": 10, "cnn": 3}
OPTIMIZER = ("sgd", 0.1)  # SGD, momentum 0.9, as in the paper; learning rate cosine-decayed to 0
METHODS = (("dense", 1), ("static", 1), ("set", 1), ("snfs", 1), ("rigl", 1), ("rigl", 2), ("prune", 1))
BLOCK_METHODS = ("static", "set", "rigl")
BLOCK_SIZES = (4, 16, 32)


def run_name(model, method, multiplier, distribution, density, block_size, seed) -> str:
    label = method + (f"{multiplier}x" if multiplier != 1 else "")
    if method == "dense":
        return f"{model}_dense_s{seed}"
    return f"{model}_{label}_{distribution}_d{density}_b{block_size}_s{seed}"


def configurations(models, parts):
    """(name, argv) of every run, in the order they are run."""
    runs = []
    for model in models:
        for seed in SEEDS:
            for density in DENSITIES:
                if "methods" in parts:
                    for distribution in ("erk", "uniform"):
                        for method, multiplier in METHODS:
                            if method == "dense" and (density != DENSITIES[0] or distribution != "erk"):
                                continue
                            runs.append((model, method, multiplier, distribution, density, 1, seed))
                if "blocks" in parts:
                    for block_size in BLOCK_SIZES:
                        for method in BLOCK_METHODS:
                            runs.append((model, method, 1, "erk", density, block_size, seed))
    out = []
    for model, method, multiplier, distribution, density, block_size, seed in runs:
        name = run_name(model, method, multiplier, distribution, density, block_size, seed)
        argv = ["--model", model, "--algorithm", method, "--density", str(density), "--distribution", distribution,
                "--block-size", str(block_size), "--mode", "masked", "--epochs", str(EPOCHS[model]),
                "--multiplier", str(multiplier), "--optimizer", OPTIMIZER[0], "--lr", str(OPTIMIZER[1]),
                "--seed", str(seed), "--no-progress"]
        if model == "mlp":  # its first layer holds 88% of the weights: keeping it dense would void the budget
            argv.append("--no-first-dense")
        out.append((name, argv))
    return out


def _run_one(name: str, argv: list[str], out_dir: str, threads: int) -> tuple[str, float, float]:
    import torch

    torch.set_num_threads(threads)
    from rigl_sparse import train

    args = train.parse_args(argv)
    record = train.run(args)
    record["name"] = name
    record["threads"] = threads
    path = Path(out_dir) / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return name, record["final_accuracy"], record["wall_time_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(EPOCHS), default=["mlp", "cnn"])
    p.add_argument("--part", nargs="+", choices=("methods", "blocks"), default=["methods", "blocks"])
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--limit", type=int, default=None, help="run at most this many missing configurations")
    p.add_argument("--list", action="store_true", help="print the configurations and exit")
    args = p.parse_args(argv)
    runs_dir = args.out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = [(n, a) for n, a in configurations(args.models, args.part) if not (runs_dir / f"{n}.json").exists()]
    if args.list:
        for name, run_argv in todo:
            print(name, " ".join(run_argv))
        return 0
    if args.limit is not None:
        todo = todo[:args.limit]
    print(f"{len(todo)} runs to do, {args.workers} at a time, records in {runs_dir}", flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    start = time.perf_counter()
    failed = 0
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(_run_one, name, run_argv, str(runs_dir), threads): name for name, run_argv in todo}
        for i, future in enumerate(as_completed(futures), 1):
            try:
                name, accuracy, wall = future.result()
                print(f"[{i}/{len(todo)} {time.perf_counter() - start:6.0f} s] {name}: {accuracy:.4f} "
                      f"({wall:.0f} s)", flush=True)
            except Exception as err:  # report and go on: one broken run must not stop the study
                failed += 1
                print(f"[{i}/{len(todo)}] {futures[future]} FAILED: {err!r}", flush=True)
    from report import main as report_main

    report_main(["--out-dir", str(args.out_dir)])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
