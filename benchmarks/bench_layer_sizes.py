"""Sparse layers against dense ones at the sizes people train and serve, through the modules.

For each layer shape, block size, density, dtype and number of rows M, with the same threads for both:

* ``train``  ``y = layer(x); y.backward(dy)`` (forward, dX and dW through autograd; x requires grad)
* ``infer``  ``layer(x)`` under ``torch.no_grad()``

``rs.SparseLinear`` against ``nn.Linear`` (``SparseConv2d`` against ``nn.Conv2d`` for a few convolutions),
built with the same shapes in the same process.  Shapes: square ``w x w`` layers and FFN pairs
``w -> 4w -> w`` (the two layers in a row).  Each speed-up is the median of three back-to-back pairs
(dense, then sparse), so a drift in the machine's speed during the run does not bias it; each time is the
fastest of the calls in 0.2 s (the pace the machine can keep, with preemption by other work filtered out).

    python benchmarks/bench_layer_sizes.py                 # the full grid (hours on two cores)
    python benchmarks/bench_layer_sizes.py --acceptance    # fp32, density 0.1, M = 1 and 2048 (minutes)
    python benchmarks/bench_layer_sizes.py --quick         # a tiny grid, to check the program runs
    python benchmarks/bench_layer_sizes.py --isa avx2      # our avx2 kernels, torch held to AVX2

Results: ``layer_sizes.json``/``.csv`` and ``layer_sizes.png`` (speed-up against width, one line per block
size, training and inference side by side) in ``benchmarks/results/cpu-<instruction set>/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_isa_argument, apply_isa, cpu_results_dir, environment, print_table, save  # noqa: E402

import rigl_sparse as rs  # noqa: E402
from rigl_sparse import backends  # noqa: E402

WIDTHS = [256, 512, 768, 1024, 2048, 4096]
ROWS = [1, 4, 16, 256, 2048]
CONVS = [(64, 64, 28), (128, 128, 14), (256, 256, 7)]  # (in, out, image side): 3x3, padding 1


def fastest(fn, seconds: float) -> float:
    """The fastest of the calls of ``fn`` in ``seconds`` (after one warm-up call), in seconds."""
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def linear_pair(shape: str, width: int, *, block: int, density: float, dtype):
    """(dense, sparse) modules of one shape: ``square`` (w -> w) or ``ffn`` (w -> 4w -> w)."""
    dims = [width, width] if shape == "square" else [width, 4 * width, width]
    dense = nn.Sequential(*(nn.Linear(a, b, dtype=dtype) for a, b in zip(dims, dims[1:])))
    sparse = nn.Sequential(*(rs.SparseLinear(a, b, density=density, block_size=block, dtype=dtype)
                             for a, b in zip(dims, dims[1:])))
    return dense, sparse, dims[0], dims[-1]


def conv_pair(channels_in: int, channels_out: int, *, block: int, density: float, dtype):
    dense = nn.Conv2d(channels_in, channels_out, 3, padding=1, dtype=dtype)
    sparse = rs.SparseConv2d(channels_in, channels_out, 3, padding=1, density=density, block_size=block, dtype=dtype)
    return dense, sparse


def step_fns(dense, sparse, x, dy, mode: str):
    """Callables running one training step (or inference) of each module."""
    if mode == "infer":
        def run(module):
            def call():
                with torch.no_grad():
                    module(x)
            return call
    else:
        xg = x.clone().requires_grad_()

        def run(module):
            def call():
                xg.grad = None
                module.zero_grad(set_to_none=True)
                module(xg).backward(dy)
            return call
    return run(dense), run(sparse)


def measure(dense_fn, sparse_fn, seconds: float) -> dict:
    trials = [(fastest(dense_fn, seconds), fastest(sparse_fn, seconds)) for _ in range(3)]
    return {"dense_ms": median(t[0] for t in trials) * 1e3, "sparse_ms": median(t[1] for t in trials) * 1e3,
            "speedup": median(t[0] / t[1] for t in trials)}


def grid(args):
    """Every (kind, shape, width, rows, block, density, dtype, mode) the arguments ask for."""
    for dtype in args.dtypes:
        for density in args.densities:
            for block in args.blocks:
                for shape in args.shapes:
                    for width in args.widths:
                        for rows in args.rows:
                            for mode in args.modes:
                                yield "linear", shape, width, rows, block, density, dtype, mode
                if args.convs:
                    for channels_in, channels_out, side in CONVS:
                        for mode in args.modes:
                            yield "conv", f"{channels_in}->{channels_out}@{side}", channels_in, args.conv_batch, block, \
                                density, dtype, mode


def run_case(kind, shape, width, rows, block, density, dtype_name, mode, seconds) -> dict:
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    if kind == "linear":
        dense, sparse, n_in, n_out = linear_pair(shape, width, block=block, density=density, dtype=dtype)
        x, dy = torch.randn(rows, n_in, dtype=dtype), torch.randn(rows, n_out, dtype=dtype)
    else:
        channels_in, channels_out, side = (int(v) for v in shape.replace("->", " ").replace("@", " ").split())
        dense, sparse = conv_pair(channels_in, channels_out, block=block, density=density, dtype=dtype)
        x = torch.randn(rows, channels_in, side, side, dtype=dtype)
        dy = torch.randn(rows, channels_out, side, side, dtype=dtype)
    result = measure(*step_fns(dense, sparse, x, dy, mode), seconds)
    return {"kind": kind, "shape": shape, "width": width, "rows": rows, "block_size": block, "density": density,
            "dtype": dtype_name, "mode": mode, **result}


def draw(path: Path, rows: list[dict]) -> bool:
    """Speed-up against width for square fp32 layers at density 0.1: training at the most rows measured,
    inference at one row; one line per block size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot drawn (pip install matplotlib)")
        return False
    picked = [r for r in rows if r["kind"] == "linear" and r["shape"] == "square" and r["dtype"] == "float32"
              and r["density"] == 0.1]
    if not picked:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, ("train", "infer")):
        chosen = [r for r in picked if r["mode"] == mode]
        if not chosen:
            continue
        m = max(r["rows"] for r in chosen) if mode == "train" else min(r["rows"] for r in chosen)
        for block in sorted({r["block_size"] for r in chosen}):
            pts = sorted((r["width"], r["speedup"]) for r in chosen if r["block_size"] == block and r["rows"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"block {block}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width w (square w x w layer)")
        ax.set_title(f"{'training step' if mode == 'train' else 'inference, no grad'}, M = {m} rows")
        ax.legend()
    axes[0].set_ylabel("speed-up over nn.Linear (x)")
    fig.suptitle("SparseLinear at density 0.1 against nn.Linear, fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    p.add_argument("--shapes", nargs="+", choices=["square", "ffn"], default=["square", "ffn"])
    p.add_argument("--rows", type=int, nargs="+", default=ROWS)
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.25])
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    p.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    p.add_argument("--no-convs", dest="convs", action="store_false", help="skip the convolutions")
    p.add_argument("--conv-batch", type=int, default=32, help="images per convolution call")
    p.add_argument("--seconds", type=float, default=0.2, help="time each side this long per trial")
    p.add_argument("--acceptance", action="store_true",
                   help="fp32, density 0.1, blocks 16 and 32, M = 1 and 2048, widths 512-4096, no convolutions")
    p.add_argument("--quick", action="store_true", help="a tiny grid (seconds), to check the program")
    p.add_argument("--name", default="layer_sizes", help="file name of the results")
    p.add_argument("--out-dir", type=Path, help="default: benchmarks/results/cpu-<instruction-set variant>")
    add_isa_argument(p)
    args = p.parse_args(argv)
    if args.acceptance:
        args.widths, args.rows, args.blocks, args.densities = [512, 768, 1024, 2048, 4096], [1, 2048], [16, 32], [0.1]
        args.dtypes, args.convs = ["float32"], False
    if args.quick:
        args.widths, args.rows, args.blocks, args.densities = [64], [1, 40], [16], [0.25]
        args.dtypes, args.seconds, args.conv_batch = ["float32"], 0.01, 1
    apply_isa(args)
    reason = backends.BACKENDS["cpu"].unavailable_reason()
    if reason:
        raise SystemExit(f"the cpu backend is unavailable: {reason}")
    torch.set_num_threads(args.threads)
    rows = []
    for case in grid(args):
        rows.append(run_case(*case, args.seconds))
        r = rows[-1]
        print(f"{r['kind']:6s} {r['shape']:14s} w={r['width']:<5d} M={r['rows']:<5d} b={r['block_size']:<3d} "
              f"d={r['density']:<5g} {r['dtype']:8s} {r['mode']:5s}  dense {r['dense_ms']:9.3f} ms  "
              f"sparse {r['sparse_ms']:9.3f} ms  {r['speedup']:6.2f}x", flush=True)
    env = environment("cpu")
    out_dir = save(args.name, rows, env, args.out_dir or cpu_results_dir())
    print_table(rows, ["kind", "shape", "width", "rows", "block_size", "density", "dtype", "mode", "dense_ms",
                       "sparse_ms", "speedup"])
    if draw(out_dir / f"{args.name}.png", rows):
        print(f"plot: {out_dir / (args.name + '.png')}")
    print(f"results: {out_dir / (args.name + '.json')}")


if __name__ == "__main__":
    main()
