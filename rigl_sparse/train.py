"""``python -m rigl_sparse.train``: train a model on Fashion-MNIST, dense or sparse.

Methods: ``rigl``, ``set``, ``static``, ``snfs`` (momentum growth) and ``prune``
(gradual magnitude pruning, dense to sparse), and ``dense``.  Sparse layers are
compressed (``rs.sparsify``) or masked dense layers (``rs.apply_masks``, the
reference mode that serves block size 1, SNFS and pruning); ``--mode auto``
picks the compressed layers wherever they apply.  ``--multiplier M`` trains
RigL_{Mx}: M times the epochs, with ``t_end`` and the learning-rate schedule
stretched alike.

Prints test accuracy, per-layer densities, parameter counts and training FLOPs
(the RigL paper's formulas, below) against the dense model, and writes the same
as JSON with ``--out``, with wall time, peak memory and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import rigl_sparse as rs
from rigl_sparse import data
from rigl_sparse.models import MODELS
from rigl_sparse.nn import SparseModule

METHODS = {"rigl": "gradient", "set": "random", "snfs": "momentum", "static": "none", "prune": None, "dense": None}
MASKED_ONLY = ("snfs", "prune")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rigl_sparse.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--method", choices=sorted(METHODS), default="rigl")
    p.add_argument("--density", type=float, default=0.1, help="overall density of the sparse layers (default 0.1)")
    p.add_argument("--distribution", choices=("erk", "er", "uniform"), default="erk")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--first-dense", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the first layer dense and outside the density budget (default: only for uniform, "
                        "as in the paper)")
    p.add_argument("--mode", choices=("auto", "compressed", "masked"), default="auto",
                   help="compressed block-sparse layers, or dense layers under block masks (default auto: masked for "
                        "block size 1, snfs and prune, else compressed)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--multiplier", type=int, default=1,
                   help="RigL_{Mx}: train M times longer; t_end and the LR schedule scale with it (default 1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="Adam, or SGD with momentum 0.9 (the paper's optimizer)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (cosine-decayed to 0; default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--delta-t", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--t-end-fraction", type=float, default=0.75,
                   help="t_end as a fraction of all steps (the last topology update, or the end of pruning)")
    p.add_argument("--prune-start-fraction", type=float, default=0.1,
                   help="first pruning step as a fraction of all steps (method prune; default 0.1)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on the first N training images only (quick runs of large models); test on all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None, help="directory with the four Fashion-MNIST IDX files")
    p.add_argument("--out", default=None, help="write the run's record as JSON here")
    p.add_argument("--loss-log", default=None, metavar="CSV",
                   help="write every step's training loss, learning rate and whether the step changed the "
                        "topology (columns step, loss, lr, topology_update) as CSV here")
    p.add_argument("--pictures", default=None, metavar="DIR",
                   help="draw the sparse layers' topology into DIR as PNGs: the active blocks coloured by age, "
                        "a strip of snapshots over training and the blocks moved per update (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 < args.t_end_fraction <= 1.0:
        p.error(f"--t-end-fraction must be in (0, 1], got {args.t_end_fraction}")
    if args.epochs <= 0 or args.batch_size <= 0 or args.multiplier <= 0:
        p.error("--epochs, --batch-size and --multiplier must be positive")
    if not 0.0 <= args.prune_start_fraction < args.t_end_fraction:
        p.error(f"--prune-start-fraction must be in [0, --t-end-fraction), got {args.prune_start_fraction}")
    if args.mode == "compressed" and args.method in MASKED_ONLY:
        p.error(f"--method {args.method} needs dense weights or gradients: use --mode masked (or auto)")
    if args.mode == "auto":
        args.mode = "masked" if args.block_size == 1 or args.method in MASKED_ONLY else "compressed"
    return args


def prepare(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] standardised with Fashion-MNIST's mean and std."""
    return ((images.float() / 255.0 - 0.2860) / 0.3530).unsqueeze(1).to(device)


@torch.no_grad()
def evaluate(model, images, labels, batch_size=1000) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    model.train()
    return correct / len(images)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    ds = data.load(args.data_dir)
    train_x, train_y = prepare(ds["train_images"], device), ds["train_labels"].to(device)
    if args.train_subset is not None:
        if args.train_subset <= 0:
            raise SystemExit(f"--train-subset must be positive, got {args.train_subset}")
        train_x, train_y = train_x[:args.train_subset], train_y[:args.train_subset]
    test_x, test_y = prepare(ds["test_images"], device), ds["test_labels"].to(device)

    model = MODELS[args.model]().to(device)
    dense_params = sum(p.numel() for p in model.parameters())
    sparse_options = dict(density=args.density, method=args.distribution, block_size=args.block_size,
                          first_dense=args.first_dense, generator=torch.Generator().manual_seed(args.seed))
    if args.method != "dense" and args.mode == "compressed":
        rs.sparsify(model, **sparse_options)
    elif args.method != "dense":
        rs.apply_masks(model, start="dense" if args.method == "prune" else "random", **sparse_options)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    epochs = args.epochs * args.multiplier
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps = epochs * steps_per_epoch
    t_end = max(1, int(args.t_end_fraction * total_steps))
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scheduler = None
    if args.method == "prune":
        scheduler = rs.PruningScheduler(model, optimizer, t_start=int(args.prune_start_fraction * total_steps),
                                        t_end=t_end, delta_t=args.delta_t)
    elif args.method != "dense":
        scheduler = rs.RigLScheduler(model, optimizer, delta_t=args.delta_t, alpha=args.alpha, t_end=t_end,
                                     grow=METHODS[args.method], seed=args.seed)

    history = []
    topology = rs.TopologyHistory(model) if args.pictures and scheduler is not None else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    shuffle = torch.Generator().manual_seed(args.seed)
    step_log = []  # (loss tensor, lr, topology update): read at the end, so logging adds no device sync
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=shuffle).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=args.no_progress,
                   leave=False, file=sys.stdout)
        for i in bar:
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            loss.backward()
            update = scheduler is not None and scheduler.is_update_step(scheduler.step_count)
            if scheduler is None or scheduler.step():
                optimizer.step()
            if topology is not None:  # only an update step changes the topology
                topology.observe(scheduler.step_count - 1, changed=update)
            if args.loss_log:
                step_log.append((loss.detach(), optimizer.param_groups[0]["lr"], update))
            optimizer.zero_grad(set_to_none=True)
            lr_schedule.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        accuracy = evaluate(model, test_x, test_y)
        history.append(accuracy)
        if not args.no_progress or epoch + 1 == epochs:
            print(f"epoch {epoch + 1:3d}/{epochs}: test accuracy {accuracy:.4f}  "
                  f"({time.perf_counter() - start:.0f} s)")
    wall = time.perf_counter() - start
    if args.loss_log:
        write_loss_log(args.loss_log, step_log)
    pictures = draw_pictures(topology, args.pictures) if topology is not None else []

    report = rs.flops(model, (1,) + tuple(train_x.shape[1:]), delta_t=args.delta_t if scheduler else None)
    per_example = training_flops_per_example(args.method, report, scheduler, total_steps)
    layers = layer_summary(model)
    weights_total = sum(math.prod(v["shape"]) for v in layers.values())
    n_examples = len(train_x) * epochs
    return {
        "config": vars(args),
        "accuracy_per_epoch": history,
        "final_accuracy": history[-1],
        "wall_time_s": wall,
        "peak_memory_bytes": peak_memory(device),
        "total_steps": total_steps,
        "layers": layers,
        "weight_density": sum(v["nnz"] for v in layers.values()) / weights_total,
        "parameters": dense_params - weights_total + sum(v["nnz"] for v in layers.values()),
        "dense_parameters": dense_params,
        "training_flops": per_example * n_examples,
        "dense_training_flops": report.dense_training_step * n_examples,
        "scheduler_stats": scheduler.stats if scheduler else None,
        "pictures": pictures,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "rigl_sparse": rs.__version__},
    }


def draw_pictures(topology: rs.TopologyHistory, directory: str) -> list[str]:
    """``topology.png`` (active blocks by age), ``topology_strip.png`` and ``blocks_moved.png`` in ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in (("topology.png", topology.plot), ("topology_strip.png", topology.plot_strip),
                       ("blocks_moved.png", topology.plot_moves)):
        draw(out / name)
        paths.append(str(out / name))
    return paths


def write_loss_log(path: str, step_log) -> None:
    """CSV of ``(loss, lr, topology update)`` per training step."""
    losses = torch.stack([loss for loss, _, _ in step_log]).float().cpu().tolist() if step_log else []
    with open(path, "w") as f:
        f.write("step,loss,lr,topology_update\n")
        for step, (loss, (_, lr, moved)) in enumerate(zip(losses, step_log)):
            f.write(f"{step},{loss:.6g},{lr:.6g},{int(moved)}\n")


def training_flops_per_example(method: str, report: rs.FlopReport, scheduler, total_steps: int) -> float:
    """Training FLOPs per example and step, by the RigL paper's formulas (f_S / f_D: sparse / dense forward).

    dense ``3 f_D``; static and SET ``3 f_S``; RigL ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)``; SNFS
    ``2 f_S + f_D`` (a dense gradient every step); pruning ``3 f(t)`` averaged over the steps, with
    ``f(t)`` the forward at the scheduled densities of step ``t`` (dense before pruning starts).  The
    multiplier of RigL_{Mx} enters through the number of examples seen.
    """
    if method == "dense":
        return report.dense_training_step
    if method in ("static", "set"):
        return report.training_step
    if method == "rigl":
        return report.rigl_step  # report counted with delta_t
    if method == "snfs":
        return 2.0 * report.forward + report.dense_forward
    targets = {name: float(layer.block_mask.target_density) for name, layer in scheduler.masked}
    fixed = sum(dense for name, (_, dense) in report.layers.items() if name not in targets)
    total = 0.0
    for t in range(total_steps):
        total += fixed + sum(report.layers[name][1] * scheduler.density_at(t, target)
                             for name, target in targets.items())
    return 3.0 * total / total_steps


def layer_summary(model: torch.nn.Module) -> dict:
    """Shape (as a matrix), density, block size and active weights of every weight layer."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseModule):
            layers[name] = {"shape": list(module.weight_shape()), "density": module.density(),
                            "block_size": module.block_size, "nnz": module.layout.nnz()}
        elif isinstance(getattr(module, "block_mask", None), rs.BlockMask):
            mask = module.block_mask
            layers[name] = {"shape": list(mask.matrix_shape), "density": mask.density(),
                            "block_size": mask.block_size, "nnz": mask.nnz(), "masked": True}
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[name] = {"shape": [module.weight.shape[0], math.prod(module.weight.shape[1:])], "density": 1.0,
                            "block_size": None, "nnz": module.weight.numel()}
    return layers


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocated on a CUDA device, else the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def summary(record: dict) -> str:
    cfg = record["config"]
    mult = f" x{cfg['multiplier']}" if cfg.get("multiplier", 1) != 1 else ""
    lines = [f"\n{cfg['method']}{mult} on Fashion-MNIST ({cfg['model']}, {cfg.get('mode', 'compressed')} layers), "
             f"{cfg['epochs'] * cfg.get('multiplier', 1)} epochs, "
             f"{record['wall_time_s']:.0f} s",
             f"test accuracy: {record['final_accuracy'] * 100:.2f}%", "layers:"]
    for name, layer in record["layers"].items():
        bs = f"block {layer['block_size']}" if layer["block_size"] else "dense"
        bs += ", masked" if layer.get("masked") else ""
        lines.append(f"  {name:6s} {str(tuple(layer['shape'])):12s} density {layer['density']:.4f}  ({bs})")
    lines.append(f"weight density: {record['weight_density']:.4f} (sparsity {1 - record['weight_density']:.2%})")
    lines.append(f"parameters: {record['parameters']:,} active vs {record['dense_parameters']:,} dense "
                 f"({record['parameters'] / record['dense_parameters']:.3f}x)")
    lines.append(f"training FLOPs: {record['training_flops']:.3e} vs {record['dense_training_flops']:.3e} dense "
                 f"({record['training_flops'] / record['dense_training_flops']:.3f}x)")
    if record["scheduler_stats"]:
        lines.append(f"topology: {record['scheduler_stats']}")
    if record.get("pictures"):
        lines.append(f"pictures of the topology: {', '.join(record['pictures'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        record = run(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(record))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"record written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
