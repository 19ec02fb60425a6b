"""Tiny cases of every CUDA kernel, for ``compute-sanitizer`` (memcheck, racecheck) to run.

Each kernel of the ``cuda`` backend (``dsd``, ``dds``, ``sdd``, ``block_scores``) is launched for every
block size on ragged shapes (partial tiles in every dimension), on a layout with empty block rows and
columns, and ``block_scores`` also with no blocks at all.  Every result is checked by the tolerance rule on
the CPU (so that no other GPU kernel than ours, torch's tensor creation and copies apart, runs under the
sanitizer), and a run under it also says whether the results were right.

    compute-sanitizer --tool memcheck python benchmarks/gpu_quick/sanitize_cases.py [--dtypes bfloat16]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from op_checks import OPS, Case, check, make_case, run  # noqa: E402

import rigl_sparse as rs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--backend", default="cuda", help="the backend whose kernels run (another one: to test this "
                                                     "program where there is no GPU)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    reason = rs.backends.BACKENDS[args.backend].unavailable_reason()
    if reason is not None:
        print(f"sanitize_cases: skipped: the {args.backend} backend is unavailable: {reason}")
        return 0
    device, backend = args.device, args.backend
    failures = 0
    for dtype in (getattr(torch, name) for name in args.dtypes):
        for b in args.blocks:
            cases = {"ragged": make_case(2 * b + 5, 3 * b - 7, 37, b, 0.4, dtype, "cpu", seed=b),
                     "sparse": make_case(3 * b, 4 * b, 130, b, 1 / 12, dtype, "cpu", seed=b + 1)}
            for label, case in cases.items():
                on_gpu = Case(copy.deepcopy(case.layout).to(device), case.values.to(device), case.x.to(device),
                              case.dy.to(device), case.bias.to(device), case.k)
                for op in OPS:
                    with rs.use_backend(backend):
                        result = run(op, on_gpu)
                    result = tuple(t.cpu() for t in result) if isinstance(result, tuple) else result.cpu()
                    verdict = check(op, case, result)
                    failures += not verdict["ok"]
                    name = str(dtype).removeprefix("torch.")
                    print(f"{'ok  ' if verdict['ok'] else 'FAIL'} {backend} {op:12s} {name:8s} b={b:<3d} {label}"
                          + ("" if verdict["ok"] else f": {verdict['error']}"), flush=True)
            empty_dy = torch.zeros(16, 0, dtype=dtype, device=device)
            x = torch.randn(16, 2 * b, device=device).to(dtype)
            none = torch.zeros(0, dtype=torch.int32, device=device)
            with rs.use_backend(backend):
                scores, index = torch.ops.rigl_sparse.block_scores(empty_dy, x, none, none, b, 3)
            ok = bool(torch.all(index == -1)) and bool(torch.all(scores == float("-inf")))
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {backend} block_scores {str(dtype)[6:]:8s} b={b:<3d} no blocks (N = 0)")
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_cases: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
