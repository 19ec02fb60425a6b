"""``python -m rigl_sparse.train``: train a model on Fashion-MNIST, dense or sparse (RigL, SET, static).

Prints test accuracy, per-layer densities, parameter counts and training FLOPs
against the dense model, and writes the same as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import rigl_sparse as rs
from rigl_sparse import data
from rigl_sparse.models import MODELS
from rigl_sparse.nn import SparseModule

METHODS = {"rigl": "gradient", "set": "random", "static": "none", "dense": None}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rigl_sparse.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--method", choices=sorted(METHODS), default="rigl")
    p.add_argument("--density", type=float, default=0.1, help="overall density of the sparse layers (default 0.1)")
    p.add_argument("--distribution", choices=("erk", "er", "uniform"), default="erk")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine-decayed to 0)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--delta-t", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--t-end-fraction", type=float, default=0.75, help="t_end as a fraction of all steps")
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on the first N training images only (quick runs of large models); test on all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None, help="directory with the four Fashion-MNIST IDX files")
    p.add_argument("--out", default=None, help="write the run's record as JSON here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 < args.t_end_fraction <= 1.0:
        p.error(f"--t-end-fraction must be in (0, 1], got {args.t_end_fraction}")
    if args.epochs <= 0 or args.batch_size <= 0:
        p.error("--epochs and --batch-size must be positive")
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
    if args.method != "dense":
        rs.sparsify(model, density=args.density, method=args.distribution, block_size=args.block_size,
                    generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scheduler = None
    if args.method != "dense":
        scheduler = rs.RigLScheduler(model, optimizer, delta_t=args.delta_t, alpha=args.alpha,
                                     t_end=max(1, int(args.t_end_fraction * total_steps)),
                                     grow=METHODS[args.method], seed=args.seed)

    history = []
    start = time.perf_counter()
    shuffle = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_x), generator=shuffle).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress,
                   leave=False, file=sys.stdout)
        for i in bar:
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            loss.backward()
            if scheduler is None or scheduler.step():
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr_schedule.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        accuracy = evaluate(model, test_x, test_y)
        history.append(accuracy)
        print(f"epoch {epoch + 1:3d}/{args.epochs}: test accuracy {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)")
    wall = time.perf_counter() - start

    report = rs.flops(model, (1,) + tuple(train_x.shape[1:]), delta_t=args.delta_t if scheduler else None)
    n_train = len(train_x)
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseModule):
            layers[name] = {"shape": list(module.weight_shape()), "density": module.density(),
                            "block_size": module.block_size, "nnz": module.layout.nnz()}
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[name] = {"shape": [module.weight.shape[0], math.prod(module.weight.shape[1:])], "density": 1.0,
                            "block_size": None, "nnz": module.weight.numel()}
    weights_total = sum(math.prod(v["shape"]) for v in layers.values())
    return {
        "config": vars(args),
        "accuracy_per_epoch": history,
        "final_accuracy": history[-1],
        "wall_time_s": wall,
        "layers": layers,
        "weight_density": sum(v["nnz"] for v in layers.values()) / weights_total,
        "parameters": sum(p.numel() for p in model.parameters()) - sum(
            module.values.numel() - module.layout.nnz() for module in model.modules() if isinstance(module, SparseModule)),
        "dense_parameters": dense_params,
        "training_flops": report.rigl_step * n_train * args.epochs,
        "dense_training_flops": report.dense_training_step * n_train * args.epochs,
        "scheduler_stats": scheduler.stats if scheduler else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "rigl_sparse": rs.__version__},
    }


def summary(record: dict) -> str:
    cfg = record["config"]
    lines = [f"\n{cfg['method']} on Fashion-MNIST ({cfg['model']}), {cfg['epochs']} epochs, "
             f"{record['wall_time_s']:.0f} s",
             f"test accuracy: {record['final_accuracy'] * 100:.2f}%", "layers:"]
    for name, layer in record["layers"].items():
        bs = f"block {layer['block_size']}" if layer["block_size"] else "dense"
        lines.append(f"  {name:6s} {str(tuple(layer['shape'])):12s} density {layer['density']:.4f}  ({bs})")
    lines.append(f"weight density: {record['weight_density']:.4f} (sparsity {1 - record['weight_density']:.2%})")
    lines.append(f"parameters: {record['parameters']:,} trainable non-padding vs {record['dense_parameters']:,} dense "
                 f"({record['parameters'] / record['dense_parameters']:.3f}x)")
    lines.append(f"training FLOPs: {record['training_flops']:.3e} vs {record['dense_training_flops']:.3e} dense "
                 f"({record['training_flops'] / record['dense_training_flops']:.3f}x)")
    if record["scheduler_stats"]:
        lines.append(f"topology: {record['scheduler_stats']}")
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
