"""Sparse convolution training step against dense convolution, on ResNet-18's 3x3 layer shapes.

For each layer shape of a CIFAR-style ResNet-18 (3x3, C -> C channels at the
stage's spatial size), block size and density, in one run on one device:

* ``fwd``   ``SparseConv2d`` forward | ``nn.Conv2d`` forward (torch's CPU conv, or cuDNN on a GPU)
* ``step``  forward + backward (input and weight gradients) of each, through autograd

Ratios are dense time / sparse time (>1: sparse is faster).  On the CPU each
ratio is the median of three back-to-back pairs (dense, sparse) with the same
thread count; on a GPU times are CUDA-event medians (``triton.testing.do_bench``).

    python benchmarks/bench_conv.py [--device cpu|cuda] [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, add_isa_argument, apply_isa, cpu_results_dir, environment, make_timer, plot,  # noqa: E402
                    print_table, save, slug)

import rigl_sparse as rs  # noqa: E402

# (channels, spatial size) of ResNet-18's 3x3 convolutions on 32 x 32 inputs.
LAYERS = [(64, 32), (128, 16), (256, 8), (512, 4)]


def forward(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def step(module, x, grad):
    xs = x.detach().clone().requires_grad_()

    def run():
        y = module(xs)
        y.backward(grad)
        xs.grad = None
        for p in module.parameters():
            p.grad = None
    return run


def paired(timer, dense_fn, sparse_fn, pairs: int) -> tuple[float, float, float]:
    """(dense s, sparse s, median of the per-pair ratios dense / sparse)."""
    results = [(timer(dense_fn), timer(sparse_fn)) for _ in range(pairs)]
    dense, sparse = median(r[0] for r in results), median(r[1] for r in results)
    return dense, sparse, median(r[0] / r[1] for r in results)


def run_case(channels, size, batch, b, density, device, dtype, timer, pairs):
    torch.manual_seed(0)
    sparse = rs.SparseConv2d(channels, channels, 3, padding=1, bias=False, density=density, block_size=b,
                             device=device, dtype=dtype)
    dense = nn.Conv2d(channels, channels, 3, padding=1, bias=False, device=device, dtype=dtype)
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    grad = torch.randn(batch, channels, size, size, device=device, dtype=dtype).to(
        memory_format=torch.channels_last)
    row = {"channels": channels, "size": size, "batch": batch, "block_size": b, "density": density,
           "nnzb": sparse.layout.nnzb}
    for name, make in (("fwd", lambda m: forward(m, x)), ("step", lambda m: step(m, x, grad))):
        d, s, ratio = paired(timer, make(dense), make(sparse), pairs)
        row[f"dense_{name}_ms"], row[f"sparse_{name}_ms"], row[f"speedup_{name}"] = d * 1e3, s * 1e3, ratio
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (dense and sparse alike)")
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32])
    p.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1, 0.05])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: float32 on the CPU, bfloat16 on a GPU")
    p.add_argument("--layers", nargs="+", default=[f"{c}@{s}" for c, s in LAYERS],
                   help="layer shapes as CHANNELS@SIZE (default: ResNet-18's)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="default: benchmarks/results/<gpu> or cpu-<instruction-set variant>")
    add_isa_argument(p)
    args = p.parse_args(argv)
    apply_isa(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    env = environment(args.device)
    env.update(ratio="dense_ms / sparse_ms", dtype=str(dtype).removeprefix("torch."),
               backend=rs.backends.select("dsd", args.device)[0])
    timer = make_timer(args.device)
    pairs = 3 if args.device == "cpu" else 1
    rows = []
    for channels, size in (tuple(int(v) for v in layer.split("@")) for layer in args.layers):
        for b in args.blocks:
            for density in args.densities:
                row = run_case(channels, size, args.batch, b, density, args.device, dtype, timer, pairs)
                rows.append(row)
                print(f"C={channels} {size}x{size} b={b} d={density}: fwd {row['speedup_fwd']:.2f}x  "
                      f"step {row['speedup_step']:.2f}x", flush=True)
    name = f"conv_{args.device}"
    out_dir = save(name, rows, env, args.out_dir or (RESULTS / slug(env["device"]) if args.device == "cuda"
                                                     else cpu_results_dir()))
    print(f"\n{env['device']}, torch {env['torch']}, {env['threads']} threads, git {env['git_sha'][:10]}")
    print_table(rows, ["channels", "size", "block_size", "density", "speedup_fwd", "speedup_step",
                       "dense_step_ms", "sparse_step_ms"])
    for b in args.blocks:
        plot(out_dir / f"{name}_b{b}.png", [dict(r, layer=f"{r['channels']}@{r['size']}") for r in rows
                                            if r["block_size"] == b],
             x="density", y="speedup_step", series="layer",
             title=f"3x3 conv training step, b={b}, {env['device'][:30]}", ylabel="speedup over dense (x)")
    print(f"results in {out_dir}")


if __name__ == "__main__":
    main()
