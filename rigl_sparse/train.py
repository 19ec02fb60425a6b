"""``python -m rigl_sparse.train``: train a model on Fashion-MNIST, dense or sparse.

Two words, two meanings: ``--algorithm`` is how the sparse topology is trained
(``rigl``, ``set``, ``static``, ``snfs`` -- momentum growth -- and ``prune``,
gradual magnitude pruning from dense to sparse, or ``dense``); ``--distribution``
is how the density is shared out over the layers (``uniform``, ``er``, ``erk``).
``--method`` is the old spelling of ``--algorithm``.  Sparse layers are compressed
(``rs.sparsify``) or masked dense layers (``rs.apply_masks``, the reference mode
that serves block size 1, SNFS and pruning); ``--mode auto`` picks the compressed
layers wherever they apply.  ``--multiplier M`` trains the paper's RigL Mx: M times the
epochs, with ``t_end`` and the learning-rate schedule stretched alike.

Prints test accuracy, per-layer densities, parameter counts and training FLOPs
(the RigL paper's formulas, below) against the dense model, and writes the same
as JSON with ``--out``, with wall time, peak memory and versions.
``--compare-dense`` then trains the dense model with the same recipe in the same
process and reports both wall-clocks and accuracies (``dense_baseline`` and
``wall_time_vs_dense`` in the record).
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

from rigl_sparse.train_args import ALGORITHMS, DEFAULT_DENSITY, build_parser, parse_args  # noqa: F401 (its API)


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
    """Train as ``args`` say and return the run's record; with ``args.compare_dense``, then the dense model with
    the same recipe, its numbers under ``dense_baseline`` and the ratio of the two wall-clocks under
    ``wall_time_vs_dense``."""
    device = torch.device(args.device)
    ds = data.load(args.data_dir)
    train_x, train_y = prepare(ds["train_images"], device), ds["train_labels"].to(device)
    if args.train_subset is not None:
        if args.train_subset <= 0:
            raise SystemExit(f"--train-subset must be positive, got {args.train_subset}")
        train_x, train_y = train_x[:args.train_subset], train_y[:args.train_subset]
    test_x, test_y = prepare(ds["test_images"], device), ds["test_labels"].to(device)
    record = train_model(args, (train_x, train_y), (test_x, test_y))
    if args.compare_dense:
        print("the dense model, same recipe (--compare-dense):")
        dense_args = argparse.Namespace(**{**vars(args), "algorithm": "dense", "loss_log": None, "pictures": None,
                                           "save": None})
        dense = train_model(dense_args, (train_x, train_y), (test_x, test_y), label="dense ")
        record["dense_baseline"] = {key: dense[key] for key in ("final_accuracy", "accuracy_per_epoch", "wall_time_s",
                                                                "parameters", "training_flops")}
        record["wall_time_vs_dense"] = record["wall_time_s"] / dense["wall_time_s"]
    return record


def train_model(args: argparse.Namespace, train_set, test_set, label: str = "") -> dict:
    """One training run of ``args.algorithm`` on ``train_set`` (images ``[N, 1, 28, 28]`` float32, labels ``[N]``
    int64), evaluated on ``test_set`` after every epoch; ``label`` prefixes the progress lines."""
    train_x, train_y = train_set
    torch.manual_seed(args.seed)
    device = train_x.device
    model = MODELS[args.model]().to(device)
    dense_params = sum(p.numel() for p in model.parameters())
    sparse_options = dict(density=args.density, distribution=args.distribution, block_size=args.block_size,
                          first_dense=args.first_dense, generator=torch.Generator().manual_seed(args.seed))
    if args.algorithm != "dense" and args.mode == "compressed":
        rs.sparsify(model, **sparse_options)
    elif args.algorithm != "dense":
        rs.apply_masks(model, start="dense" if args.algorithm == "prune" else "random", **sparse_options)
    if args.algorithm != "dense" and not args.no_progress:
        print(f"{label}{rs.summary(model)}", flush=True)
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
    if args.algorithm == "prune":
        scheduler = rs.PruningScheduler(model, optimizer, t_start=int(args.prune_start_fraction * total_steps),
                                        t_end=t_end, delta_t=args.delta_t)
    elif args.algorithm != "dense":
        scheduler = rs.RigLScheduler(model, optimizer, delta_t=args.delta_t, alpha=args.alpha, t_end=t_end,
                                     grow=ALGORITHMS[args.algorithm], seed=args.seed)

    history = []
    topology = rs.TopologyHistory(model) if args.pictures and scheduler is not None else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    shuffle = torch.Generator().manual_seed(args.seed)
    step_log = []  # (loss tensor, lr, topology update): read at the end, so logging adds no device sync
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=shuffle).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"{label}epoch {epoch + 1}/{epochs}", disable=args.no_progress,
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
        accuracy = evaluate(model, *test_set)
        history.append(accuracy)
        if not args.no_progress or epoch + 1 == epochs:
            print(f"{label}epoch {epoch + 1:3d}/{epochs}: test accuracy {accuracy:.4f}  "
                  f"({time.perf_counter() - start:.0f} s)")
    wall = time.perf_counter() - start
    if args.loss_log:
        write_loss_log(args.loss_log, step_log)
    pictures = draw_pictures(topology, args.pictures) if topology is not None else []
    if args.save:
        rs.save_checkpoint(model.state_dict(), args.save)
        print(f"{label}model saved to {args.save}")

    report = rs.flops(model, (1,) + tuple(train_x.shape[1:]), delta_t=args.delta_t if scheduler else None)
    per_example = training_flops_per_example(args.algorithm, report, scheduler, total_steps)
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


def training_flops_per_example(algorithm: str, report: rs.FlopReport, scheduler, total_steps: int) -> float:
    """Training FLOPs per example and step, by the RigL paper's formulas (f_S / f_D: sparse / dense forward).

    dense ``3 f_D``; static and SET ``3 f_S``; RigL ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)``; SNFS
    ``2 f_S + f_D`` (a dense gradient every step); pruning ``3 f(t)`` averaged over the steps, with
    ``f(t)`` the forward at the scheduled densities of step ``t`` (dense before pruning starts).  The
    multiplier of RigL Mx enters through the number of examples seen.
    """
    if algorithm == "dense":
        return report.dense_training_step
    if algorithm in ("static", "set"):
        return report.training_step
    if algorithm == "rigl":
        return report.rigl_step  # report counted with delta_t
    if algorithm == "snfs":
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


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def summary(record: dict) -> str:
    cfg = record["config"]
    mult = f" x{cfg['multiplier']}" if cfg.get("multiplier", 1) != 1 else ""
    lines = [f"\n{cfg['algorithm']}{mult} on Fashion-MNIST: {cfg['model']}, {layer_kind(cfg)}, "
             f"{cfg['optimizer']} lr {cfg['lr']:g}, {plural(cfg['epochs'] * cfg.get('multiplier', 1), 'epoch')}, "
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
        lines.append("topology: " + ", ".join(f"{key.replace('_', ' ')} {value:,}"
                                              for key, value in record["scheduler_stats"].items()))
    if record.get("pictures"):
        lines.append(f"pictures of the topology: {', '.join(record['pictures'])}")
    dense = record.get("dense_baseline")
    if dense:
        ratio = record["wall_time_vs_dense"]
        pace = f"{1 / ratio:.2f}x faster" if ratio <= 1 else f"{ratio:.2f}x slower"
        lines.append(f"training wall-clock: sparse {record['wall_time_s']:.1f} s, dense {dense['wall_time_s']:.1f} s "
                     f"(sparse {pace})")
        lines.append(f"test accuracy: sparse {record['final_accuracy'] * 100:.2f}%, "
                     f"dense {dense['final_accuracy'] * 100:.2f}%")
    return "\n".join(lines)


def layer_kind(cfg: dict) -> str:
    """What the weight layers of a run were, in words: dense, compressed block-sparse or masked dense."""
    if cfg["algorithm"] == "dense":
        return "dense layers"
    b = cfg["block_size"]
    budget = f"density {cfg['density']:g} by {cfg['distribution']}"
    if cfg["mode"] == "masked":
        return f"dense layers under {b}x{b} block masks ({budget})"
    return f"compressed block-sparse layers ({b}x{b} blocks, {budget})"


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
