"""Native CPU kernels against torch dense (MKL) and torch's CPU BSR, measured side by side.

For each block size and density (fp32 by default), with the same thread count for all:

* ``fwd``    ``Y = X Wᵀ``   ours ``dsd`` | ``F.linear`` | BSR ``W_bsr @ Xᵀ``
* ``dx``     ``dX = dY W``  ours ``dds`` | ``dY @ W``   | BSR ``Wᵀ_bsr @ dYᵀ``
* ``dw``     ``dW = dYᵀX``  ours ``sdd`` (active blocks) | ``dYᵀ @ X``
* ``scores`` ours ``block_scores`` (top-k of inactive blocks) | one dense ``dYᵀ @ X``

Each ratio is the median of three back-to-back pairs (baseline, ours), so a drift
in the machine's speed during the run does not bias it.

and, once, the peak extra memory of ``block_scores`` (growth of the resident-set
high-water mark in a fresh process, reset through /proc/self/clear_refs) against
the size of the dense gradient.

    python benchmarks/bench_cpu.py [--threads 2] [--rows 1024] [--features 4096] [--isa avx2]

``--isa`` runs one instruction-set variant of our kernels and limits torch (MKL, oneDNN, ATen) to
the same set, so that an AVX-512 machine measures what an AVX2 one would; results go to
``benchmarks/results/cpu-<variant>/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from statistics import median
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_isa_argument, apply_isa, cpu_results_dir, environment, plot, print_table, save, time_cpu  # noqa: E402,E501

import rigl_sparse as rs  # noqa: E402
from rigl_sparse import backends, ops  # noqa: E402
from rigl_sparse.testing import random_block_sparse  # noqa: E402


_MEMORY_PROBE = """
import sys, torch, rigl_sparse as rs
from pathlib import Path
from rigl_sparse import ops
from rigl_sparse.testing import random_block_sparse
torch.set_num_threads({threads})
M, n, b = {rows}, {features}, {block}
layout, _ = random_block_sparse((n, n), b, 0.1, seed=1)
x, dy = torch.randn(M, n).to(torch.{dtype}), torch.randn(M, n).to(torch.{dtype})
with rs.use_backend("cpu"):
    ops.block_scores(dy, x, layout, 100)  # one-time allocations (MKL, code)
    def kib(field):
        return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark
    before = kib("VmRSS")
    ops.block_scores(dy, x, layout, 100)
    print((kib("VmHWM") - before) * 1024)
"""


def block_scores_peak_extra(args, block: int) -> int | None:
    """Resident-set growth at the peak of a second block_scores call in a fresh process (Linux only).

    The first call pays one-time allocations that later calls reuse (MKL's buffers, code pages); the
    second shows what each call adds: the band of the gradient, the score grid and the top-k.
    """
    import subprocess

    code = _MEMORY_PROBE.format(threads=args.threads, rows=args.rows, features=args.features, block=block,
                                dtype=args.dtype)
    # Large allocations straight from mmap and back on free, so each call's buffers show in the RSS.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError, OSError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--features", type=int, default=4096)
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--baseline-dtype", choices=["same", "float32"], default="same",
                   help="dtype of torch's dense and BSR baselines: 'same' as --dtype, or float32 (torch's bf16 "
                        "matmul is very slow on CPUs without AVX512_BF16, where a user would train in fp32)")
    p.add_argument("--out-dir", type=Path, help="default: benchmarks/results/cpu-<instruction-set variant>")
    add_isa_argument(p)
    args = p.parse_args(argv)
    apply_isa(args)
    reason = backends.BACKENDS["cpu"].unavailable_reason()
    if reason:
        raise SystemExit(f"the cpu backend is unavailable: {reason}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    M, n = args.rows, args.features
    x, dy, w = (torch.randn(M, n).to(dtype), torch.randn(M, n).to(dtype), torch.randn(n, n).to(dtype))
    base_dtype = dtype if args.baseline_dtype == "same" else torch.float32
    xb, dyb, wb = x.to(base_dtype), dy.to(base_dtype), w.to(base_dtype)
    xt, dyt = xb.t().contiguous(), dyb.t().contiguous()
    dense_fns = {"fwd": lambda: F.linear(xb, wb), "dx": lambda: dyb @ wb, "dw": lambda: dyb.t() @ xb}
    dense_fns["scores"] = dense_fns["dw"]
    rows = []
    for b in args.blocks:
        for d in args.densities:
            layout, values = random_block_sparse((n, n), b, d, dtype=dtype, seed=1)
            k = max(1, int(0.3 * layout.nnzb))
            w_sparse = layout.to_dense(values).to(base_dtype)
            w_bsr = w_sparse.to_sparse_bsr((b, b))
            wt_bsr = w_sparse.t().contiguous().to_sparse_bsr((b, b))
            ours_fns = {"fwd": lambda: ops.dsd(x, values, layout), "dx": lambda: ops.dds(dy, values, layout),
                        "dw": lambda: ops.sdd(dy, x, layout), "scores": lambda: ops.block_scores(dy, x, layout, k)}
            bsr_fns = {"fwd": lambda: w_bsr @ xt, "dx": lambda: wt_bsr @ dyt}
            try:
                bsr_fns["fwd"]()
            except NotImplementedError:  # torch's CPU BSR matmul has no bf16 kernel
                bsr_fns = {}
            row = {"block_size": b, "density": d, "rows": M, "features": n, "dtype": args.dtype,
                   "baseline_dtype": str(base_dtype).removeprefix("torch."),
                   "threads": args.threads, "nnzb": layout.nnzb}
            with rs.use_backend("cpu"):
                for op in ("fwd", "dx", "dw", "scores"):
                    # Baseline and ours back to back, three times; medians (the machine's speed drifts).
                    trials = [(time_cpu(dense_fns[op], min_time=0.3), time_cpu(ours_fns[op], min_time=0.3),
                               time_cpu(bsr_fns[op], min_time=0.3) if op in bsr_fns else None) for _ in range(3)]
                    row[f"dense_{op}_ms"] = median(t[0] for t in trials) * 1e3
                    row[f"ours_{op}_ms"] = median(t[1] for t in trials) * 1e3
                    ratio = median(t[0] / t[1] for t in trials)
                    if op == "scores":
                        row["scores_over_dense_matmul"] = 1.0 / ratio
                    else:
                        row[f"speedup_{op}_vs_dense"] = ratio
                    if op in bsr_fns:
                        row[f"bsr_{op}_ms"] = median(t[2] for t in trials) * 1e3
                        row[f"speedup_{op}_vs_bsr"] = median(t[2] / t[1] for t in trials)
            rows.append(row)
            bsr = f"{row['speedup_fwd_vs_bsr']:.2f}x" if "speedup_fwd_vs_bsr" in row else f"n/a ({args.dtype})"
            print(f"  b={b} d={d}: fwd {row['speedup_fwd_vs_dense']:.2f}x dense, {bsr} bsr; "
                  f"dx {row['speedup_dx_vs_dense']:.2f}x; dw {row['speedup_dw_vs_dense']:.2f}x; "
                  f"scores/matmul {row['scores_over_dense_matmul']:.2f}", flush=True)
    b = 32 if 32 in args.blocks else args.blocks[0]
    extra = block_scores_peak_extra(args, b)
    dense_grad = n * n * 4
    n_blocks = (n // b) ** 2
    memory = {"block_size": b, "density": 0.1, "blocks": n_blocks, "peak_extra_bytes": extra,
              "dense_gradient_bytes": dense_grad, "band_bytes_per_thread": 2 << 20}
    env = environment("cpu")
    env["block_scores_memory"] = memory
    print(f"\n{env['device']} ({' '.join(env['cpu_flags'])}), our kernels: {env['instruction_set']}, torch limited to "
          f"{env['torch_isa_limits'] or 'nothing'}; torch {env['torch']}, {args.threads} threads, git {env['git_sha'][:10]}, "
          f"{args.dtype}, M={M}, N=K={n}")
    print_table(rows, ["block_size", "density", "speedup_fwd_vs_dense", "speedup_dx_vs_dense", "speedup_dw_vs_dense",
                       "speedup_fwd_vs_bsr", "speedup_dx_vs_bsr", "scores_over_dense_matmul"])
    print(f"block_scores peak extra memory (b={b}, {n_blocks} blocks, fresh process): "
          f"{'n/a' if extra is None else f'{extra / 2**20:.1f} MiB'} vs {dense_grad / 2**20:.0f} MiB for one dense "
          "fp32 gradient")
    name = f"cpu_{args.dtype}" + ("" if base_dtype == dtype else f"_vs_{str(base_dtype).removeprefix('torch.')}")
    out = save(name, rows, env, args.out_dir or cpu_results_dir())
    plot(out / f"{name}.png", rows, x="density", y="speedup_fwd_vs_dense", series="block_size",
         title=f"CPU forward vs dense ({args.threads} threads, {args.dtype})", ylabel="speedup over torch dense (x)")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
