"""Where a training step of the iso-cost study's models spends its time, by part of the model.

    python benchmarks/iso_cost/where_time_goes.py [--models dense rigl_2w_b32 rigl_3w_b16 ...] [--steps 10]
    python benchmarks/iso_cost/where_time_goes.py --study second      # dense and the FFN-widened models

Builds each model as the study does (``run_study.build``), trains a few ordinary steps (no topology
update) on the study's batches under ``torch.profiler``, and charges every operator's own CPU time to the
part of the step it belongs to: the sparse projections (our operators and their backward), dense
matrix products (the dense model's projections and every model's head), attention, embeddings, layer norms,
the loss, the optimiser, and the rest (elementwise ops, copies, autograd bookkeeping).  The time of an
update step over an ordinary one is measured apart.  Prints a table and writes ``where_time_goes.json`` and
``where_time_goes.md`` under ``--out-dir``.  Time nothing else while it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import run_study  # noqa: E402
from report import where_time_goes_table  # noqa: E402
from common import environment  # noqa: E402

# The part of a step an operator belongs to, by the first pattern found in its name or its parents' names.
PARTS = (("sparse projections", ("rigl_sparse::", "_autogradbackward", "_autograd")),
         ("attention", ("scaled_dot_product", "scaleddotproduct", "flash_attention", "flashattention")),
         ("embeddings", ("embedding",)),
         ("layer norms", ("layer_norm", "layernorm")),
         ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsoftmax", "nllloss")),
         ("optimiser", ("optimizer.step", "_foreach", "adamw", "zero_grad")),
         ("dense matrix products", ("aten::addmm", "aten::mm", "aten::linear", "addmmbackward", "mmbackward",
                                    "aten::matmul", "aten::bmm")))


def part_of(event, cache: dict) -> str:
    """The part of the nearest event, itself or a parent, whose name matches one of ``PARTS``."""
    chain, e = [], event
    while e is not None and id(e) not in cache:
        chain.append(e)
        e = e.cpu_parent
    found = cache[id(e)] if e is not None else "rest"
    for e in reversed(chain):  # from the outermost: a part is set by the nearest matching ancestor
        name = e.name.lower()
        found = next((part for part, patterns in PARTS if any(p in name for p in patterns)), found)
        cache[id(e)] = found
    return found


def spec(name: str) -> dict:
    """The run of a model name of ``run_study.model_name``: ``dense``, ``rigl_3w_b16`` (the whole model 3x as
    wide) or ``rigl_ffn4x_b32`` (the FFNs 4x as wide)."""
    if name == "dense":
        return dict(method="dense", multiplier=1, block_size=0, seed=0)
    method, width, block = name.split("_")
    ffn = width.startswith("ffn")
    multiplier = int(width[3:].rstrip("x") if ffn else width.rstrip("w"))
    return dict(method=method, multiplier=multiplier, block_size=int(block.lstrip("b")), seed=0,
                widen="ffn" if ffn else "model")


def profile(name: str, cfg: dict, lr: float, data: torch.Tensor, steps: int) -> dict:
    run = spec(name)
    model, optimizer, scheduler = run_study.build(run, cfg, lr, horizon=10 ** 6)  # no update within these steps
    generator = torch.Generator().manual_seed(1234)

    def batch():
        start = torch.randint(len(data) - cfg["length"] - 1, (cfg["batch"],), generator=generator)
        return torch.stack([data[s:s + cfg["length"] + 1] for s in start.tolist()])

    def step(window):
        loss = nn.functional.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        loss.backward()
        if scheduler is None or scheduler.step():
            with torch.profiler.record_function("optimizer.step"):
                optimizer.step()
        with torch.profiler.record_function("zero_grad"):
            optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and scheduler step 1..3: ordinary steps)
        step(batch())
    windows = [batch() for _ in range(steps)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        for window in windows:
            step(window)
        wall = time.perf_counter() - began
    parts, cache = defaultdict(float), {}
    for event in prof.events():
        parts[part_of(event, cache)] += event.self_cpu_time_total / 1e3  # ms, summed over threads
    total = sum(parts.values())
    result = {"model": name, "profiled_ms_per_step": 1e3 * wall / steps,
              "parts_ms_per_step": {k: v / steps for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
              "parts_share": {k: v / total for k, v in parts.items()}}
    if scheduler is not None:  # an update step against an ordinary one, unprofiled: every second step updates
        model, optimizer, scheduler = run_study.build(run, dict(cfg, delta_t=2), lr, horizon=10 ** 6)
        times = {True: [], False: []}
        for _ in range(7):  # steps 0..6: 2, 4 and 6 update the topology
            updates = scheduler.is_update_step(scheduler.step_count)
            began = time.perf_counter()
            step(batch())
            times[updates].append(time.perf_counter() - began)
        result["ordinary_step_ms"] = 1e3 * min(times[False][1:])  # step 0 warms up
        result["update_step_ms"] = 1e3 * min(times[True])
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", choices=sorted(run_study.STUDIES), default="first",
                   help="whose models and sizes (default %(default)s)")
    p.add_argument("--models", nargs="+", default=None, help="default: dense and the study's sparse cells")
    p.add_argument("--steps", type=int, default=10, help="profiled steps per model (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="the learning rate (does not change the time)")
    p.add_argument("--quick", action="store_true", help="the study's tiny sizes")
    p.add_argument("--out-dir", type=Path, default=None, help="default: the study's results folder")
    args = p.parse_args(argv)
    full, quick, default_out = run_study.STUDIES[args.study]
    cfg = dict(quick if args.quick else full)
    models = args.models or ["dense"] + [run_study.model_name(dict(method="rigl", multiplier=m, block_size=b,
                                                                   widen=cfg["widen"])) for m, b in run_study.cells(cfg)]
    args.out_dir = args.out_dir or default_out
    train_plays, _ = run_study.plays()
    data = run_study.encode(train_plays)
    results = [profile(name, cfg, args.lr, data, args.steps) for name in models]
    lines = where_time_goes_table(results)
    print("\n".join(lines))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "where_time_goes.md").write_text("\n".join(lines) + "\n")
    (args.out_dir / "where_time_goes.json").write_text(json.dumps(
        {"environment": environment("cpu"), "config": cfg, "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
