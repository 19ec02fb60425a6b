"""Training-step time of SparseLinear on the reference backend against dense ``nn.Linear``.

The reference ops are the specification, written for clarity, not speed; this
benchmark records where they stand so the native backends have a baseline.

    python benchmarks/bench_reference.py [--device cpu] [--rows 1024] [--features 2048]
"""

from __future__ import annotations

import argparse

import torch

import rigl_sparse as rs
from common import environment, plot, print_table, save, time_cpu


def step_time(layer, x):
    def step():
        layer(x).sum().backward()
        for p in layer.parameters():
            p.grad = None
    return time_cpu(step)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64])
    args = p.parse_args(argv)
    if args.device != "cpu":
        raise SystemExit("this benchmark times with the CPU clock; use the GPU benchmarks for CUDA devices")
    torch.manual_seed(0)
    n = args.features
    x = torch.randn(args.rows, n)
    dense = torch.nn.Linear(n, n)
    t_dense = step_time(dense, x)
    rows = []
    for b in args.blocks:
        for d in args.densities:
            layer = rs.SparseLinear(n, n, density=d, block_size=b)
            with rs.use_backend("reference"):
                t = step_time(layer, x)
            rows.append({"block_size": b, "density": d, "rows": args.rows, "features": n, "dense_ms": t_dense * 1e3,
                         "sparse_ms": t * 1e3, "speedup": t_dense / t})
    env = environment(args.device)
    print(f"{env['device']}, torch {env['torch']}, {env['threads']} threads, fwd+bwd of a {n}x{n} layer, "
          f"{args.rows} rows")
    print_table(rows, ["block_size", "density", "dense_ms", "sparse_ms", "speedup"])
    out = save("reference_step", rows, env)
    plot(out / "reference_step.png", rows, x="density", y="speedup", series="block_size",
         title="reference SparseLinear step vs dense", ylabel="speedup over dense (x)")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
