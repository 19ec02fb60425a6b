"""End-to-end training-step time: dense vs compressed RigL vs masked-dense RigL (Adam).

    python benchmarks/bench_train_step.py                  # CPU
    python benchmarks/bench_train_step.py --device cuda    # GPU

The workloads of ``bench_memory.py`` (``workloads.py``: an MLP stack and a transformer).  For
each sparse configuration two times are measured: an ordinary step (zero_grad, forward,
backward, scheduler, Adam) and a topology-update step (the scheduler built with
``delta_t=1``, so every step updates); the step time reported is the amortised one at
``delta_t=100``: ``(99 * ordinary + update) / 100``.  Speed-ups are over the dense model's
step measured in the same run.  On CPU, each ratio is the median of three back-to-back
(dense, RigL, masked) rounds, to cancel drift in the machine's speed.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, add_isa_argument, apply_isa, cpu_results_dir, environment, make_timer, plot,  # noqa: E402
                    print_table, save, slug)
from workloads import MODELS, argument_parser, build  # noqa: E402

DENSITIES = (0.2, 0.1, 0.05, 0.02)
DELTA_T = 100


def timed_steps(model: str, method: str, density: float, args, timer) -> tuple[float, float | None]:
    """(ordinary step, update step) seconds; the update time is None for the dense model."""

    def timed(delta_t: int, updates: bool) -> float:
        work = build(model, method, density, block_size=args.block_size, size=args.size, device=args.device,
                     delta_t=delta_t)
        work.step()  # step 0 never updates: Adam's state is allocated before timing

        def run():
            if work.step() != updates:
                raise RuntimeError(f"a step {'did not update' if updates else 'updated'} the topology")

        return timer(run)

    step = timed(DELTA_T, updates=False)
    gc.collect()
    update = timed(1, updates=True) if method != "dense" else None  # delta_t=1: every step updates
    gc.collect()
    return step, update


def main(argv=None) -> None:
    parser = argument_parser(__doc__, DENSITIES)
    add_isa_argument(parser)
    args = parser.parse_args(argv)
    apply_isa(args)
    timer = make_timer(args.device)
    pairs = 1 if args.device.startswith("cuda") else 3
    rows = []
    for model in args.models.split(","):
        if model not in MODELS:
            sys.exit(f"unknown model {model!r}; choose from {MODELS}")
        for density in (float(d) for d in args.densities.split(",")):
            trials = {"rigl": [], "masked": []}
            for _ in range(pairs):
                dense, _ = timed_steps(model, "dense", 1.0, args, timer)
                for method, runs in trials.items():
                    step, update = timed_steps(model, method, density, args, timer)
                    runs.append((dense, step, update, ((DELTA_T - 1) * step + update) / DELTA_T))
            for method, runs in trials.items():
                dense, step, update, amortised = (median(t[i] for t in runs) for i in range(4))
                rows.append({
                    "model": model, "method": method, "density": density, "block_size": args.block_size,
                    "dense_ms": dense * 1e3, "step_ms": step * 1e3, "update_step_ms": update * 1e3,
                    "amortised_ms": amortised * 1e3,
                    "speedup_vs_dense": median(t[0] / t[3] for t in runs),
                    "update_vs_dense_step": median(t[2] / t[0] for t in runs),
                })
                r = rows[-1]
                print(f"{model:>11} {method:>6} d={density:<5g} dense {r['dense_ms']:8.1f} ms  step {r['step_ms']:8.1f}"
                      f"  update {r['update_step_ms']:8.1f}  amortised {r['amortised_ms']:8.1f}  "
                      f"{r['speedup_vs_dense']:.2f}x", flush=True)
    env = environment(args.device)
    env["size"] = args.size
    print_table(rows, ["model", "method", "density", "dense_ms", "step_ms", "update_step_ms", "amortised_ms",
                       "speedup_vs_dense", "update_vs_dense_step"])
    out_dir = args.out_dir or (RESULTS / slug(env["device"]) if args.device.startswith("cuda") else cpu_results_dir())
    name = "train_step_" + ("cuda" if args.device.startswith("cuda") else "cpu")
    name += "_small" if args.size != "full" else ""
    save(name, rows, env, out_dir)
    for model in sorted({r["model"] for r in rows}):
        plot(out_dir / f"{name}_{model}.png", [r for r in rows if r["model"] == model], x="density",
             y="speedup_vs_dense", series="method", title=f"training step vs dense: {model}, {env['device']}",
             ylabel="speed-up over dense (amortised, delta_t=100)")
    print(f"results in {out_dir}/{name}.*")


if __name__ == "__main__":
    main()
