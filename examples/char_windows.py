"""Shakespeare's plays as fixed windows of characters, for the trainer examples (``hf_trainer.py``,
``lightning_rigl.py``, ``accelerate_rigl.py``): the text of ``gpt2_shakespeare.plays_text``, bytes as tokens,
the last 10% held out for validation."""

from __future__ import annotations

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
