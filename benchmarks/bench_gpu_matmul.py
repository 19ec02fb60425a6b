"""Block-sparse matmuls on the GPU: rigl_sparse's kernels against dense cuBLAS, torch's Triton BSR and stk.

For every size, block size and density (bf16), measured in one run with CUDA
events (``triton.testing.do_bench``, median).  Each of rigl_sparse's GPU
backends that is available (``triton``, ``cuda``) is timed under
``use_backend``; "ours" is the faster of them per op, the one the registry runs
once ``--record-choice`` has written the choices for this GPU model to
``rigl_sparse/measurements/``:

* ``fwd``  ``Y = X Wᵀ``         ours ``dsd`` | cuBLAS ``F.linear`` | torch BSR ``bsr_dense_mm`` | stk ``dds``
* ``dx``   ``dX = dY W``        ours ``dds`` | cuBLAS ``dY @ W``  | torch BSR (BSR of Wᵀ)        | stk ``dds``
* ``dw``   ``dW = dYᵀ X``       ours ``sdd`` (active blocks) | cuBLAS ``dYᵀ @ X`` | stk ``sdd``
* ``scores``                    ours ``block_scores`` (top-k of inactive blocks) | one dense GEMM ``dYᵀ @ X``
* ``step`` SparseLinear forward + backward (autograd) | ``nn.Linear`` forward + backward

Ratios are baseline time / our time (>1: we are faster).  stk supports only
128x128 blocks and dimensions divisible by 128.

    python benchmarks/bench_gpu_matmul.py [--sizes 4096 8192] [--out-dir DIR] [--record-choice]
    python benchmarks/bench_gpu_matmul.py --replot results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import op_checks  # noqa: E402
from common import RESULTS, environment, print_table, save, slug  # noqa: E402

import rigl_sparse as rs  # noqa: E402
from rigl_sparse.testing import random_block_sparse  # noqa: E402


def bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def try_bench(make, check=None):
    """Time ``make()``'s function; None and the reason when the library cannot run the case, or when
    ``check(result)`` (the function's first result) finds it wrong: a wrong result is never timed."""
    try:
        fn = make()
        result = fn()
        if check is not None and (verdict := check(result)) is not None:
            return None, f"wrong result: {verdict}"
        return bench(fn), None
    except Exception as err:  # noqa: BLE001 - a baseline that cannot run is recorded, not fatal
        return None, op_checks.error_line(err, 120)


def torch_bsr(layout, values, transpose: bool):
    dense = layout.to_dense(values)
    dense = dense.t() if transpose else dense
    return dense.contiguous().to_sparse_bsr((layout.block_size, layout.block_size))


def stk_matrix(layout, values):
    import stk

    return stk.ops.to_sparse(layout.to_dense(values).contiguous(), blocking=layout.block_size)


KERNEL_BACKENDS = ("triton", "cuda")
OPS = {"fwd": "dsd", "dx": "dds", "dw": "sdd", "scores": "block_scores"}  # benchmark column -> rigl_sparse op


def available_backends():
    return [name for name in KERNEL_BACKENDS if rs.backends.BACKENDS[name].unavailable_reason() is None]


def time_backend(backend, case, references, untimed=()):
    """Every op and a SparseLinear step forced onto ``backend``, each result checked before it is timed:
    {op: ms or None}, {op: error}.  The ops in ``untimed`` (benchmark columns) are not run at all."""
    layout = case.layout
    n, b = layout.shape[0], layout.block_size
    layer = rs.SparseLinear(n, n, bias=False, density=layout.nnzb / layout.n_blocks, block_size=b, device="cuda",
                            dtype=torch.bfloat16)
    xs = case.x.detach().clone().requires_grad_()

    def forced(fn):
        def call():
            with rs.use_backend(backend):
                return fn()
        return call

    def verdict(op):
        def check(result):
            got = op_checks.check(op, case, result, references.get(op))
            return None if got["ok"] else got["error"]
        return check

    def step():
        y = layer(xs)
        y.backward(case.dy)
        grads = (y.detach(), xs.grad, layer.values.grad)
        layer.values.grad = xs.grad = None
        return grads

    def check_step(grads):
        step_case = op_checks.Case(layer.layout, layer.values.detach(), case.x, case.dy, None, case.k)
        for op, got in zip(("dsd", "dds", "sdd"), grads):
            result = op_checks.check(op, step_case, got)
            if not result["ok"]:
                return f"step {op}: {result['error']}"
        return None

    makers = {column: (lambda op=op: forced(lambda: op_checks.run(op, case))) for column, op in OPS.items()}
    makers["step"] = lambda: forced(step)
    checks = {column: verdict(op) for column, op in OPS.items()} | {"step": check_step}
    times, errors = {}, {}
    for op, make in makers.items():
        if op in untimed:
            times[op], errors[op] = None, "not run: it did not pass the probe on this GPU"
            continue
        times[op], error = try_bench(make, checks[op])
        if error is not None:
            errors[op] = error
    return times, errors


def untimed_columns(backend, probed) -> set[str]:
    """The benchmark columns not to run on ``backend``: ops it did not pass in the probe (a kernel that
    faulted there could leave the device unusable for every later measurement); the step needs all three
    matmuls."""
    if probed is None:
        return set()
    passed = probed.get(backend, set())
    skip = {column for column, op in OPS.items() if op not in passed}
    return skip | ({"step"} if {"fwd", "dx", "dw"} & skip else set())


def run_case(n, b, density, x, dy, dense_w, dense_times, backends_to_time, k_frac=0.3, probed=None):
    layout, values = random_block_sparse((n, n), b, density, dtype=torch.bfloat16, device="cuda", seed=1)
    row = {"size": n, "block_size": b, "density": density, "nnzb": layout.nnzb}
    k = max(1, int(k_frac * layout.nnzb))
    case = op_checks.Case(layout, values, x, dy, None, k)
    references = {op: op_checks.dense_reference(op, case) for op in ("dsd", "dds", "sdd")}
    per_backend = {}
    for backend in backends_to_time:
        times, errors = time_backend(backend, case, references, untimed_columns(backend, probed))
        per_backend[backend] = times
        for op, t in times.items():
            row[f"{backend}_{op}_ms"] = t
        for op, error in errors.items():
            row[f"{backend}_{op}_error"] = error
    baseline_checks = _baseline_checks(case, references)
    del references
    ours = {}
    for op in ("fwd", "dx", "dw", "scores", "step"):
        measured = {name: t[op] for name, t in per_backend.items() if t[op] is not None}
        # No backend ran it right: recorded as None (the errors say why), the other columns still measured.
        row[f"ours_{op}_backend"] = min(measured, key=measured.get) if measured else None
        ours[op] = min(measured.values()) if measured else None
    if {"triton", "cuda"} <= per_backend.keys():
        for op in ("fwd", "dx", "dw", "scores", "step"):
            t_triton, t_cuda = per_backend["triton"][op], per_backend["cuda"][op]
            row[f"speedup_{op}_cuda_vs_triton"] = None if None in (t_triton, t_cuda) else t_triton / t_cuda
    for op, t in ours.items():
        row[f"ours_{op}_ms"] = t
        row[f"dense_{op}_ms"] = dense_times[op]
        row[f"speedup_{op}_vs_dense"] = None if t is None else dense_times[op] / t
    three = (ours["fwd"], ours["dx"], ours["dw"])
    row["ours_fwd_dx_dw_ms"] = None if None in three else sum(three)
    row["speedup_fwd_dx_dw_vs_dense"] = None if None in three else \
        (dense_times["fwd"] + dense_times["dx"] + dense_times["dw"]) / row["ours_fwd_dx_dw_ms"]
    row["scores_over_dense_gemm"] = None if ours["scores"] is None else ours["scores"] / dense_times["dw"]

    from torch.sparse._triton_ops import bsr_dense_mm

    w_bsr = torch_bsr(layout, values, transpose=False)
    wt_bsr = torch_bsr(layout, values, transpose=True)
    xt, dyt = x.t(), dy.t()
    row["bsr_fwd_ms"], row["bsr_fwd_error"] = try_bench(lambda: (lambda: bsr_dense_mm(w_bsr, xt)),
                                                        baseline_checks["fwd_t"])
    row["bsr_dx_ms"], row["bsr_dx_error"] = try_bench(lambda: (lambda: bsr_dense_mm(wt_bsr, dyt)),
                                                      baseline_checks["dx_t"])
    for op in ("fwd", "dx"):
        t = row[f"bsr_{op}_ms"]
        row[f"speedup_{op}_vs_bsr"] = None if t is None or ours[op] is None else t / ours[op]

    if b == 128 and n % 128 == 0:
        try:
            import stk

            w_stk = stk_matrix(layout, values)
            row["stk_fwd_ms"], row["stk_fwd_error"] = try_bench(lambda: (lambda: stk.ops.dds(x, w_stk.t())),
                                                                baseline_checks["fwd"])
            row["stk_dx_ms"], row["stk_dx_error"] = try_bench(lambda: (lambda: stk.ops.dds(dy, w_stk)),
                                                              baseline_checks["dx"])
            dw_check = baseline_checks["dw_dense"]
            row["stk_dw_ms"], row["stk_dw_error"] = try_bench(lambda: (lambda: stk.ops.sdd(dyt, x, w_stk)),
                                                              lambda m: dw_check(stk.ops.to_dense(m)))
        except ImportError as err:
            row["stk_fwd_error"] = f"stk not importable: {err}"
        except Exception as err:  # noqa: BLE001 - a baseline that cannot run is recorded, not fatal
            row["stk_fwd_error"] = f"stk failed: {op_checks.error_line(err, 120)}"
    for op in ("fwd", "dx", "dw"):
        t = row.get(f"stk_{op}_ms")
        row[f"speedup_{op}_vs_stk"] = None if t is None or ours[op] is None else t / ours[op]
    return row


def _baseline_checks(case, references):
    """Checks of the baselines' results by the same rule: dense [M, N] forward and input gradient (or their
    transposes, as torch's BSR returns them) and a dense weight gradient masked to the layout."""
    def rule(op, transform):
        def check(result):
            verdict = op_checks.check(op, case, transform(result), references[op])
            return None if verdict["ok"] else verdict["error"]
        return check

    return {"fwd": rule("dsd", lambda r: r), "fwd_t": rule("dsd", lambda r: r.t()),
            "dx": rule("dds", lambda r: r), "dx_t": rule("dds", lambda r: r.t()),
            "dw_dense": rule("sdd", lambda r: case.layout.gather(r))}


def dense_baseline(n, x, dy, w):
    linear = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=torch.bfloat16)
    xs = x.detach().clone().requires_grad_()
    return {
        "fwd": bench(lambda: F.linear(x, w)),
        "dx": bench(lambda: dy @ w),
        "dw": bench(lambda: dy.t() @ x),
        "scores": bench(lambda: dy.t() @ x),
        "step": bench(lambda: (linear(xs).backward(dy), setattr(linear.weight, "grad", None),
                               setattr(xs, "grad", None))),
    }


COLUMNS = ["size", "block_size", "density", "ours_fwd_backend", "speedup_fwd_vs_dense", "speedup_dx_vs_dense",
           "speedup_dw_vs_dense",
           "speedup_fwd_dx_dw_vs_dense", "speedup_step_vs_dense", "scores_over_dense_gemm", "speedup_fwd_vs_bsr",
           "speedup_fwd_vs_stk", "speedup_dw_vs_stk", "speedup_fwd_cuda_vs_triton", "speedup_dw_cuda_vs_triton",
           "speedup_scores_cuda_vs_triton"]


def probe_passes(paths) -> dict[str, set[str]] | None:
    """``{backend: ops it passed in every case}`` from ``probe.py`` records, or None without any."""
    passes: dict[str, set[str]] = {}
    for path in paths or ():
        if Path(path).exists():
            for backend, ops_passed in json.loads(Path(path).read_text())["passed"].items():
                # Several records of one backend (say one per block size): it must pass an op in each.
                passes[backend] = passes[backend] & set(ops_passed) if backend in passes else set(ops_passed)
    return passes or None


def record_choice(rows, env, out_dir: Path, density=0.1, probed: dict[str, set[str]] | None = None) -> Path:
    """Write the faster backend per op and block size (largest size, ``density``) for this GPU model.

    Only backends whose outputs passed the benchmark's check are timed; with ``probed`` (``probe_passes``)
    a backend is also left out for an op it did not pass in the full-size probe (or was not probed for).
    The record goes to ``rigl_sparse/measurements/`` (read by the registry) and beside the results.
    """
    size = max(r["size"] for r in rows)
    choices = {}
    for r in rows:
        if r["size"] != size or r["density"] != density:
            continue
        for column, op in OPS.items():
            ms = {name: r[f"{name}_{column}_ms"] for name in KERNEL_BACKENDS
                  if r.get(f"{name}_{column}_ms") is not None and (probed is None or op in probed.get(name, ()))}
            if ms:
                choices.setdefault(op, {})[str(r["block_size"])] = {"backend": min(ms, key=ms.get), "ms": ms}
    record = {"device": env["device"], "git_sha": env["git_sha"], "torch": env["torch"], "triton": env["triton"],
              "dtype": "bfloat16", "shape": [size, size, size], "density": density,
              rs.backends.CHECKED_FIELD: "every timed output met the tolerance rule of rigl_sparse.testing",
              "choices": choices}
    text = json.dumps(record, indent=1) + "\n"
    (out_dir / "backend_choice.json").write_text(text)
    path = rs.backends.MEASUREMENTS_DIR / f"{rs.backends.device_slug(env['device'])}.json"
    path.write_text(text)
    return path


def plot_results(rows, out_dir: Path, name: str = "gpu_matmul") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot drawn")
        return
    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for b in sorted({r["block_size"] for r in rows}):
            pts = sorted((r["density"], r["speedup_fwd_dx_dw_vs_dense"]) for r in rows
                         if r["size"] == n and r["block_size"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"b={b}: fwd+dX+dW")
            pts = sorted((r["density"], r["speedup_fwd_vs_dense"]) for r in rows
                         if r["size"] == n and r["block_size"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="x", ls=":", label=f"b={b}: fwd")
        dens = sorted({r["density"] for r in rows})
        ax.plot(dens, [1 / d for d in dens], color="grey", ls="--", lw=0.8, label="1/density")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_ylabel("speedup over dense cuBLAS (x)")
        ax.set_title(f"M=N=K={n}, bf16")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05, 0.02])
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default="gpu_matmul", help="stem of the result files")
    p.add_argument("--replot", type=Path, default=None, help="redraw the plot from a saved JSON")
    p.add_argument("--backends", nargs="+", choices=KERNEL_BACKENDS, default=None,
                   help="rigl_sparse backends to time (default: every available one)")
    p.add_argument("--probe", nargs="+", type=Path, default=None,
                   help="probe.py records: with --record-choice, a backend is chosen for an op only if it passed "
                        "that op there (records that do not exist are ignored)")
    p.add_argument("--record-choice", action="store_true",
                   help="write the faster backend per op and block size to rigl_sparse/measurements/ (only "
                        "backends whose results passed the check are timed, so only they can be chosen)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.replot:
        plot_results(json.loads(args.replot.read_text())["rows"], args.replot.parent, args.replot.stem)
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_matmul needs a CUDA GPU")
    torch.manual_seed(0)
    env = environment("cuda")
    env["ratio"] = "baseline_ms / ours_ms"
    env["outputs_checked"] = "every timed output met the tolerance rule of rigl_sparse.testing (fp64 reference)"
    backends_to_time = args.backends or available_backends()
    env["backends_timed"] = backends_to_time
    probed = probe_passes(args.probe)
    if probed is not None:
        env["probe_passed"] = {name: sorted(ops_passed) for name, ops_passed in probed.items()}
    for name in KERNEL_BACKENDS:
        if name not in backends_to_time:
            print(f"not timing {name}: {rs.backends.BACKENDS[name].unavailable_reason() or 'not asked for'}")
    rows = []
    for n in args.sizes:
        x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        dense_times = dense_baseline(n, x, dy, w)
        print(f"dense cuBLAS at {n}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in dense_times.items()), flush=True)
        for b in args.blocks:
            for d in args.densities:
                row = run_case(n, b, d, x, dy, w, dense_times, backends_to_time, probed=probed)
                rows.append(row)
                save(args.name, rows, env, args.out_dir or RESULTS / slug(env["device"]))  # keep what is measured
                print(f"  b={b} d={d}: " + "  ".join(
                    f"{label} {'–' if row[key] is None else f'{row[key]:.2f}'}" for label, key in (
                        ("fwd", "speedup_fwd_vs_dense"), ("fwd+dX+dW", "speedup_fwd_dx_dw_vs_dense"),
                        ("step", "speedup_step_vs_dense"), ("scores/GEMM", "scores_over_dense_gemm"))), flush=True)
                errors = {k: v for k, v in row.items() if k.endswith("_error") and v}
                if errors:
                    print(f"    errors: {errors}", flush=True)
        del x, dy, w
        torch.cuda.empty_cache()
        save(args.name, rows, env, args.out_dir or RESULTS / slug(env["device"]))  # keep what is measured
    print(f"\n{env['device']}, torch {env['torch']}, triton {env['triton']}, git {env['git_sha'][:10]}")
    print_table(rows, COLUMNS)
    out_dir = save(args.name, rows, env, args.out_dir or RESULTS / slug(env["device"]))
    plot_results(rows, out_dir, args.name)
    print(f"results in {out_dir}")
    if args.record_choice:
        path = record_choice(rows, env, out_dir, probed=probed)
        print(f"backend choices for {env['device']} written to {path}")


if __name__ == "__main__":
    main()
