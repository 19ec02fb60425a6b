"""Serving a trained sparse model on the CPU: rigl_sparse's kernels, torch's BSR export and the dense model.

The model is the demo's wide MLP (784 -> 2048 -> 2048 -> 10, RigL at density 0.1, ERK, blocks of 16), as
``make demo`` trains and saves it (``runs/demo_wide.pt``); without that file it is trained here first, with
the demo's recipe (about a minute on 2 cores; needs Fashion-MNIST: ``python -m rigl_sparse.data fetch``).
Three ways to serve it, each timed on the same inputs:

* ``rigl_sparse``: the sparse model itself, our kernels on the active blocks;
* ``torch BSR``: ``rs.export_bsr(model)``, a TorchScript model on torch's own BSR matmul, which runs where
  rigl_sparse is not installed;
* ``dense``: ``rs.densify(model)``, ``nn.Linear`` layers (MKL) with zeros outside the active blocks.

At batch 1 and 32, with 1 thread and with all of them: each time is the median over rounds in which the
three alternate (each round's time by ``torch.utils.benchmark``'s blocked autorange), the spread over
rounds beside it.  The file sizes of the exports and each one's test accuracy (all three must agree) go
into the same record.  Time nothing else meanwhile.

    python benchmarks/bench_deploy.py                          # runs/demo_wide.pt, or trains it first
    python benchmarks/bench_deploy.py --checkpoint PT --rounds 9

Results: ``deploy.json``/``.csv`` in ``benchmarks/results/cpu-<instruction set>/``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import rigl_sparse as rs
from rigl_sparse import data, train
from rigl_sparse.models import MODELS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_results_dir, environment, print_table, save, time_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ["--model", "wide-mlp", "--algorithm", "rigl", "--density", "0.1", "--distribution", "erk",
        "--block-size", "16", "--epochs", "4", "--no-progress"]  # make demo's second run
VARIANTS = ("rigl_sparse", "torch BSR", "dense")


def trained_model(checkpoint: Path) -> torch.nn.Module:
    """The demo's wide MLP with the trained sparse weights of ``checkpoint`` (trained into a temporary file
    first when it does not exist)."""
    if not checkpoint.exists():
        print(f"{checkpoint} not found: training the demo's wide MLP first", flush=True)
        checkpoint = Path(tempfile.mkdtemp()) / "demo_wide.pt"
        if train.main([*DEMO, "--save", str(checkpoint)]) != 0:
            raise SystemExit("training failed (is Fashion-MNIST there? python -m rigl_sparse.data fetch)")
    return rs.load_sparse(MODELS["wide-mlp"](), torch.load(checkpoint, weights_only=True)).eval()


def exports(model: torch.nn.Module, example: torch.Tensor, folder: Path) -> tuple[dict, dict]:
    """({variant: servable model}, {file: bytes}) of ``model``, its exports written into ``folder``."""
    dense = rs.densify(copy.deepcopy(model)).eval()
    bsr = rs.export_bsr(model)
    files = {"sparse state dict (torch.save)": folder / "sparse.pt",
             "torch BSR TorchScript (export_bsr)": folder / "bsr.pt",
             "dense state dict (torch.save)": folder / "dense.pt"}
    torch.save(model.state_dict(), files["sparse state dict (torch.save)"])
    torch.jit.save(bsr, files["torch BSR TorchScript (export_bsr)"])
    torch.save(dense.state_dict(), files["dense state dict (torch.save)"])
    try:
        from safetensors.torch import save_file

        files["sparse state dict (safetensors)"] = folder / "sparse.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, files["sparse state dict (safetensors)"])
    except ImportError:
        pass
    with torch.inference_mode():
        bsr(example)  # the first call of a scripted model compiles it
    return {"rigl_sparse": model, "torch BSR": bsr, "dense": dense}, {k: p.stat().st_size for k, p in files.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "demo_wide.pt",
                   help="the trained model's state dict (default: make demo's, %(default)s)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="rows per call (default 1 32)")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the alternated timings (default 7)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of calls per timing (default 0.3)")
    p.add_argument("--out-dir", type=Path, default=None, help="default: results/cpu-<instruction set>")
    args = p.parse_args(argv)

    model = trained_model(args.checkpoint)
    ds = data.load()
    images, labels = train.prepare(ds["test_images"], "cpu"), ds["test_labels"]
    with tempfile.TemporaryDirectory() as folder:
        served, sizes = exports(model, images[:1], Path(folder))
    with torch.inference_mode():
        reference = model(images[:256])
        differences = {name: float((m(images[:256]) - reference).abs().max()) for name, m in served.items()}
    accuracy = {name: train.evaluate(m, images, labels) for name, m in served.items()}

    threads = torch.get_num_threads()
    rows = []
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        for batch in args.batches:
            x = images[:batch]
            times = {name: [] for name in served}
            with torch.inference_mode():
                for _ in range(args.rounds):
                    for name, m in served.items():
                        times[name].append(time_cpu(lambda m=m: m(x), min_time=args.min_time))
            dense = statistics.median(times["dense"])
            for name in served:
                median = statistics.median(times[name])
                rows.append({"variant": name, "batch": batch, "threads": n_threads, "us": 1e6 * median,
                             "us_min": 1e6 * min(times[name]), "us_max": 1e6 * max(times[name]),
                             "speedup_vs_dense": dense / median, "rounds": args.rounds})
    torch.set_num_threads(threads)
    print_table(rows, ["variant", "batch", "threads", "us", "us_min", "us_max", "speedup_vs_dense"])
    env = environment("cpu")
    env.update(model="wide-mlp (784-2048-2048-10), RigL density 0.1 ERK, blocks of 16",
               checkpoint=str(args.checkpoint), file_bytes=sizes, test_accuracy=accuracy,
               max_abs_difference_from_rigl_sparse=differences,
               sparse_layers=[{"name": name, "shape": list(m.weight_shape()), "density": m.density()}
                              for name, m in model.named_modules() if isinstance(m, rs.SparseModule)])
    out = save("deploy", rows, env, args.out_dir or cpu_results_dir())
    print("files: " + ", ".join(f"{k} {v / 2 ** 20:.2f} MiB" for k, v in sizes.items()))
    print("test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    if len(set(accuracy.values())) != 1:
        print("the three do not classify the test set alike: an export computes something else", file=sys.stderr)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
