"""Stop a RigL run, save it with ``rs.save_checkpoint``, resume it in fresh objects: the resumed run equals the
uninterrupted one bitwise.

    python examples/resume_checkpoint.py                  # about 8 s on 2 CPU cores
    python examples/resume_checkpoint.py --stop-at 20     # stop right before a topology update (step 20 is one)

A small sparse MLP (``rs.sparsify``, ERK) learns a synthetic classification task with SGD (momentum 0.9),
a cosine learning rate and RigL (``rs.RigLOptimizer``).  The run is made twice: once for ``--steps`` steps
without a stop, and once stopped after ``--stop-at`` steps, saved, and continued by new model, optimizer and
LR-scheduler objects built from another seed (another initialisation and topology, all overwritten by the
checkpoint).  A checkpoint is three standard state dicts:

- ``model.state_dict()``: the sparse layers' values and their topology (the layout's buffers);
- ``optimizer.state_dict()``: the inner optimizer's (momentum buffers) with RigL's own state (step count,
  counters, the random generator of the growth) under ``"rigl_scheduler"``;
- ``lr_schedule.state_dict()``: where the cosine is.

The data must resume too: here step ``t`` draws its batch from a generator seeded with ``t``, so any run
gets the same batch at the same step (with a ``DataLoader``, save its sampler's generator or skip the
batches already seen).  The example checks that every step's loss, every tensor of the final model and
RigL's counters are identical, and exits with an error otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import rigl_sparse as rs

FEATURES, CLASSES = 32, 10


def build(args, seed: int):
    """(model, optimizer, lr_schedule): a sparse MLP, SGD wrapped by ``rs.RigLOptimizer``, and a cosine."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                          nn.Linear(args.width, CLASSES))
    rs.sparsify(model, density=args.density, block_size=args.block_size, exclude="4",
                generator=torch.Generator().manual_seed(seed), print_summary=True)
    inner = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = rs.RigLScheduler(model, inner, delta_t=args.delta_t, t_end=int(0.75 * args.steps), seed=seed)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(inner, T_max=args.steps)
    return model, rs.RigLOptimizer(inner, scheduler), lr_schedule


def batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s batch, whoever trains it: ``x [size, FEATURES] float32``, ``y [size] int64``, the
    label a fixed random linear function of ``x``."""
    x = torch.randn(size, FEATURES, generator=torch.Generator().manual_seed(1000 + step))
    teacher = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(0))
    return x, (x @ teacher).argmax(1)


def train(model, optimizer, lr_schedule, start: int, stop: int, batch_size: int) -> list[torch.Tensor]:
    """Steps ``start .. stop - 1``; each step's loss."""
    losses = []
    for step in range(start, stop):
        x, y = batch(step, batch_size)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()  # RigL first: on a topology-update step the SGD step is skipped
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        losses.append(loss.detach())
    return losses


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="steps of the whole run")
    p.add_argument("--stop-at", type=int, default=57, help="steps before the checkpoint is saved")
    p.add_argument("--width", type=int, default=128, help="hidden width of the MLP")
    p.add_argument("--density", type=float, default=0.2, help="of the two sparse layers (ERK)")
    p.add_argument("--block-size", type=int, default=8, help="side of the square blocks")
    p.add_argument("--delta-t", type=int, default=10, help="steps between topology updates")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, cosine-decayed to 0")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/resume_checkpoint/checkpoint.pt"),
                   help="where the checkpoint is written")
    p.add_argument("--seed", type=int, default=0, help="of the runs (the resumed objects are built from seed + 1)")
    args = p.parse_args(argv)
    if not 0 < args.stop_at < args.steps:
        p.error(f"--stop-at must be between 0 and --steps ({args.steps}), got {args.stop_at}")

    model, optimizer, lr_schedule = build(args, args.seed)
    expected = train(model, optimizer, lr_schedule, 0, args.steps, args.batch_size)
    uninterrupted, stats = model.state_dict(), dict(optimizer.scheduler.stats)
    print(f"uninterrupted: {args.steps} steps, loss {expected[0]:.4f} -> {expected[-1]:.4f}; RigL: "
          f"{stats['updates']} updates, {stats['blocks_moved']} blocks moved")

    model, optimizer, lr_schedule = build(args, args.seed)
    losses = train(model, optimizer, lr_schedule, 0, args.stop_at, args.batch_size)
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rs.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),  # atomic: a kill
                        "lr_schedule": lr_schedule.state_dict()}, args.checkpoint)   # keeps the last good file
    print(f"stopped after {args.stop_at} steps (RigL step count {optimizer.scheduler.step_count}, "
          f"{optimizer.scheduler.stats['updates']} updates so far); checkpoint: {args.checkpoint}")
    del model, optimizer, lr_schedule

    model, optimizer, lr_schedule = build(args, args.seed + 1)  # another initialisation and topology
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    losses += train(model, optimizer, lr_schedule, args.stop_at, args.steps, args.batch_size)

    same_losses = all(torch.equal(a, b) for a, b in zip(losses, expected))
    resumed = model.state_dict()
    differing = [name for name, tensor in uninterrupted.items() if not torch.equal(tensor, resumed[name])]
    same_stats = optimizer.scheduler.stats == stats
    print(f"resumed: loss {losses[args.stop_at]:.4f} -> {losses[-1]:.4f}; every step's loss identical: "
          f"{same_losses}; model tensors identical: {len(uninterrupted) - len(differing)} of {len(uninterrupted)}; "
          f"RigL counters identical: {same_stats}")
    if not (same_losses and not differing and same_stats):
        raise SystemExit(f"the resumed run differs from the uninterrupted one (tensors: {differing})")
    print("the resumed run equals the uninterrupted one bitwise")
    return {"losses": [float(v) for v in losses], "expected": [float(v) for v in expected], "stats": stats,
            "identical": True}


if __name__ == "__main__":
    main()
