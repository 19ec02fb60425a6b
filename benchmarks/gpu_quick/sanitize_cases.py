"""Tiny cases of every CUDA kernel, for ``compute-sanitizer`` (memcheck, racecheck) to run.

Each kernel of the ``cuda`` backend (``dsd``, ``dds``, ``sdd``, ``block_scores``) is launched for every
block size on ragged shapes (partial tiles in every dimension), on a layout with empty block rows and
columns, and ``block_scores`` also with no blocks at all; every result is checked by the tolerance rule,
so a run under the sanitizer also says whether the results were right.

    compute-sanitizer --tool memcheck python benchmarks/gpu_quick/sanitize_cases.py [--dtypes bfloat16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from op_checks import OPS, check, make_case, run  # noqa: E402

import rigl_sparse as rs  # noqa: E402
from rigl_sparse import ops  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    args = p.parse_args(argv)
    reason = rs.backends.BACKENDS["cuda"].unavailable_reason()
    if reason is not None:
        print(f"sanitize_cases: skipped: the cuda backend is unavailable: {reason}")
        return 0
    failures = 0
    for dtype in (getattr(torch, name) for name in args.dtypes):
        for b in args.blocks:
            cases = {"ragged": make_case(2 * b + 5, 3 * b - 7, 37, b, 0.4, dtype, "cuda", seed=b),
                     "sparse": make_case(3 * b, 4 * b, 130, b, 1 / 12, dtype, "cuda", seed=b + 1)}
            for label, case in cases.items():
                for op in OPS:
                    with rs.use_backend("cuda"):
                        result = run(op, case)
                    verdict = check(op, case, result)
                    failures += not verdict["ok"]
                    print(f"{'ok  ' if verdict['ok'] else 'FAIL'} cuda {op:12s} {str(dtype)[6:]:8s} b={b:<3d} {label}"
                          + ("" if verdict["ok"] else f": {verdict['error']}"), flush=True)
            empty_dy = torch.zeros(16, 0, dtype=dtype, device="cuda")
            x = torch.randn(16, 2 * b, device="cuda").to(dtype)
            none = torch.zeros(0, dtype=torch.int32, device="cuda")
            with rs.use_backend("cuda"):
                scores, index = ops.block_scores(empty_dy, x, none, none, b, 3)
            ok = bool(torch.all(index == -1)) and bool(torch.all(scores == float("-inf")))
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} cuda block_scores {str(dtype)[6:]:8s} b={b:<3d} no blocks (N = 0)")
    torch.cuda.synchronize()
    print(f"sanitize_cases: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
