"""Per-call time of ``SparseLinear`` forward + backward, for one or several checkouts in one run.

Layers: a small ``SparseLinear`` (64 -> 32 features, b=4, density 0.25, 16 rows), where the time is the
Python and dispatch overhead of the ops; 1024 x 1024 and 4096 x 4096 ones (b=32, density 0.1, 256 rows),
where it is mostly the kernels; and a small ``SparseConv2d`` (16 -> 32 channels, 3x3, b=8, density 0.25, 4 images of
8x8), whose op the same overhead reaches.  Each checkout is timed in its own process (its package first on ``PYTHONPATH``, built in
place); the checkouts alternate over ``--rounds`` rounds, in reversed order every other round, and each
reports the median of its rounds, so that a drift in the machine's speed falls on all of them alike.

    python benchmarks/bench_overhead.py                                  # this checkout
    python benchmarks/bench_overhead.py --trees before=/tmp/before after=.   # compare two checkouts
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {"small": dict(in_f=64, out_f=32, b=4, density=0.25, rows=16),
         "1024": dict(in_f=1024, out_f=1024, b=32, density=0.1, rows=256),
         "4096": dict(in_f=4096, out_f=4096, b=32, density=0.1, rows=256),
         "conv-small": dict(in_f=16, out_f=32, b=8, density=0.25, rows=4, conv=True)}

CHILD = """
import json, sys, torch
import rigl_sparse as rs
from torch.utils import benchmark
cases = json.loads(sys.argv[1])
out = {}
for name, c in cases.items():
    torch.manual_seed(0)
    if c.get("conv"):  # 3x3, padding 1, on [rows, in, 8, 8]
        layer = rs.SparseConv2d(c["in_f"], c["out_f"], 3, padding=1, density=c["density"], block_size=c["b"])
        x = torch.randn(c["rows"], c["in_f"], 8, 8, requires_grad=True)
        g = torch.randn(c["rows"], c["out_f"], 8, 8)
    else:
        layer = rs.SparseLinear(c["in_f"], c["out_f"], density=c["density"], block_size=c["b"])
        x = torch.randn(c["rows"], c["in_f"], requires_grad=True)
        g = torch.randn(c["rows"], c["out_f"])
    def step():
        layer(x).backward(g)
        layer.values.grad = layer.bias.grad = x.grad = None
    for _ in range(3):
        step()
    t = benchmark.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    out[name] = t.blocked_autorange(min_run_time=float(sys.argv[2])).median
print(json.dumps({"times": out, "package": rs.__file__}))
"""


def time_tree(tree: Path, cases: dict, min_time: float) -> dict:
    """One process with ``tree``'s package: seconds per call of each case, and the package it imported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(min_time)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def git_sha(tree: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", nargs="+", default=["this=."], help="label=path of each checkout to time")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per case and round")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    trees = {}
    for item in args.trees:
        label, _, path = item.partition("=")
        if not path:
            p.error(f"--trees takes label=path, got {item!r}")
        trees[label] = Path(path).resolve()
    from common import cpu_results_dir, environment, print_table, save

    times = {label: {name: [] for name in CASES} for label in trees}
    packages = {}
    for round_ in range(args.rounds):
        order = list(trees.items())
        for label, tree in (order if round_ % 2 == 0 else order[::-1]):  # ABBA: no checkout always goes first
            result = time_tree(tree, CASES, args.min_time)
            packages[label] = result["package"]
            for name, seconds in result["times"].items():
                times[label][name].append(seconds)
    first = next(iter(trees))
    rows = []
    for label, tree in trees.items():
        for name, case in CASES.items():
            t = median(times[label][name])
            rows.append({"tree": label, "git_sha": git_sha(tree), "package": packages[label], "case": name, **case,
                         "us_per_call": t * 1e6, f"time_over_{first}": t / median(times[first][name]),
                         "rounds_us": [round(s * 1e6, 2) for s in times[label][name]]})
    env = environment("cpu")
    env["method"] = (f"median of {args.rounds} rounds, checkouts alternating (ABBA), each torch.utils.benchmark "
                     "blocked_autorange")
    print_table(rows, ["tree", "git_sha", "case", "us_per_call", f"time_over_{first}"])
    out_dir = save("overhead", rows, env, args.out_dir or cpu_results_dir())
    print(f"results in {out_dir}")


if __name__ == "__main__":
    main()
