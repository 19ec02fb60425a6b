"""Correctness probe of every GPU backend at full size, against an fp64 masked-dense reference.

For each backend, block size and case (square ``size``³, and a ragged ``size/2 + b/2`` in every dimension
that leaves partial tiles everywhere), on fresh random data: ``dsd``, ``dds``, ``sdd`` and
``block_scores`` are each called twice, their output memory poisoned with NaN before each call (so a
kernel that leaves an entry unwritten shows it); the two results must be the same bits, and the first
must meet the tolerance rule of ``rigl_sparse.testing`` (``block_scores``: by index, against the exact
score grid).  Writes ``probe-<backend>.json`` (``probe.json`` for several) after every check, and prints
one line per check.

    python benchmarks/gpu_quick/probe.py --out-dir DIR [--size 8192] [--blocks 32 64 128] [--backends ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from op_checks import OPS, bitwise_equal, check, dense_reference, error_line, make_case, run  # noqa: E402

import rigl_sparse as rs  # noqa: E402

GPU_BACKENDS = ("triton", "cuda")


def poison(result) -> None:
    """Overwrite a result that is about to be freed with NaN (-7 for indices), so that the next call, whose
    output torch's caching allocator places in that memory, starts from garbage instead of correct bits."""
    for t in result if isinstance(result, tuple) else (result,):
        t.fill_(float("nan") if t.is_floating_point() else -7)


def _clone(result):
    return tuple(t.clone() for t in result) if isinstance(result, tuple) else result.clone()


def probe_case(backends, case, label: str, rows: list, save) -> None:
    for op in OPS:
        for backend in backends:
            row = {"backend": backend, "op": op, "case": label, "block_size": case.layout.block_size,
                   "shape": [case.x.shape[0], *case.layout.shape],
                   "density": round(case.layout.nnzb / case.layout.n_blocks, 4),
                   "dtype": str(case.x.dtype).removeprefix("torch.")}
            start = time.perf_counter()
            try:
                reference = None if op == "block_scores" else dense_reference(op, case)
                with rs.use_backend(backend):
                    result = run(op, case)  # compiles and autotunes
                    poison(result)
                    del result
                    result = run(op, case)
                    first = _clone(result)
                    poison(result)
                    del result
                    second = run(op, case)
                if case.x.is_cuda:
                    torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001 - a failing backend is a result, recorded
                row.update(ok=False, error=error_line(err))
            else:
                row["seconds"] = round(time.perf_counter() - start, 3)
                row.update(check(op, case, first, reference))
                row["deterministic"] = bitwise_equal(first, second)
                if not row["deterministic"]:
                    row["ok"] = False
                    row["error"] = (row["error"] + "; " if row["error"] else "") + "two calls differ in their bits"
            rows.append(row)
            save()
            ratio = (f" err {row['max_error']:.3g} <= {row['bound']:.3g} (torch {row['torch_error']:.3g})"
                     if "max_error" in row else "")
            print(f"{'ok  ' if row['ok'] else 'FAIL'} {backend:7s} {op:12s} b={row['block_size']:<3d} {label:6s} "
                  f"{'x'.join(map(str, row['shape']))}{ratio}" + ("" if row["ok"] else f": {row['error']}"), flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", nargs="+", default=None,
                   help=f"backends to probe (default: every available one of {', '.join(GPU_BACKENDS)})")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", help="file name of the record (default: probe-<backend>.json for one backend, "
                                  "else probe.json)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("probe: skipped: no CUDA GPU is visible to torch")
        return 0
    backends = args.backends or [b for b in GPU_BACKENDS if rs.backends.BACKENDS[b].unavailable_reason() is None]
    for name in GPU_BACKENDS:
        if name not in backends and args.backends is None:
            print(f"probe: not probing {name}: {rs.backends.BACKENDS[name].unavailable_reason()}")
    dtype = getattr(torch, args.dtype)
    rows: list[dict] = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / (args.name or ("probe.json" if len(backends) != 1 else f"probe-{backends[0]}.json"))
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device

    def save():  # after every check, whole or not at all: a fault or a time-out later keeps what was found
        part = out.with_suffix(".part")
        part.write_text(json.dumps(
            {"backends": backends, "size": args.size, "density": args.density, "dtype": args.dtype,
             "device": device, "passed": passed(rows, backends), "rows": rows}, indent=1) + "\n")
        os.replace(part, out)

    save()
    for b in args.blocks:
        ragged = args.size // 2 + b // 2
        for label, (n, m) in (("square", (args.size, args.size)), ("ragged", (ragged, ragged))):
            try:
                case = make_case(n, n, m, b, args.density, dtype, args.device, seed=1000 * b + n)
            except Exception as err:  # noqa: BLE001 - e.g. a device left unusable by an earlier fault
                rows.extend({"backend": backend, "op": op, "case": label, "block_size": b, "ok": False,
                             "error": f"case not built: {error_line(err)}"} for backend in backends for op in OPS)
                save()
                continue
            probe_case(backends, case, label, rows, save)
            del case
            if args.device == "cuda":
                torch.cuda.empty_cache()
    failed = [r for r in rows if not r["ok"]]
    print(f"probe: {len(rows) - len(failed)} of {len(rows)} checks passed; written to {out}")
    return 1 if failed else 0


def passed(rows: list[dict], backends) -> dict[str, list[str]]:
    """The ops each backend passed in every case."""
    return {b: sorted({r["op"] for r in rows if r["backend"] == b and r["ok"]} -
                      {r["op"] for r in rows if r["backend"] == b and not r["ok"]}) for b in backends}


if __name__ == "__main__":
    sys.exit(main())
