"""Reference models (plain ``torch.nn``, no torchvision; convert them with ``rs.sparsify``).

``MODELS`` maps the names ``python -m rigl_sparse.train --model`` takes to builders for
1-channel 28 x 28 images (Fashion-MNIST)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_features: int = 784, hidden: tuple[int, ...] = (300, 100), classes: int = 10) -> nn.Sequential:
    """LeNet-300-100-style MLP on flattened images: Linear+ReLU per hidden width, then a classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def cnn(channels: tuple[int, int] = (32, 64), hidden: int = 256, classes: int = 10) -> nn.Sequential:
    """A small CNN for 1 x 28 x 28 images: two 3x3 conv + ReLU + 2x2 max-pool stages, then an MLP head."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity or 1x1-conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18(in_channels: int = 3, classes: int = 10, width: int = 64) -> nn.Sequential:
    """CIFAR-style ResNet-18: a 3x3 stem (no max-pool), four stages of two basic blocks with widths
    ``width * (1, 2, 4, 8)`` and strides (1, 2, 2, 2), global average pooling, a linear classifier."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU()]
    channels = width
    for i, stride in enumerate((1, 2, 2, 2)):
        out = width * 2 ** i
        layers += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def _separable(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    """Depthwise 3x3 (+BN, ReLU) then pointwise 1x1 (+BN, ReLU)."""
    return [nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


def mobilenet(in_channels: int = 3, classes: int = 10, width: int = 32) -> nn.Sequential:
    """A MobileNet-v1-like net for small images: a 3x3 stem and depthwise-separable stages (the
    depthwise convolutions stay dense under ``sparsify``; the pointwise ones carry most weights)."""
    plan = [(1, 2, 1), (2, 4, 2), (4, 4, 1), (4, 8, 2), (8, 8, 1), (8, 16, 2), (16, 16, 1), (16, 32, 1)]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU()]
    for c_in, c_out, stride in plan:
        layers += _separable(width * c_in, width * c_out, stride)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 32, classes)]
    return nn.Sequential(*layers)


MODELS = {"mlp": mlp, "wide-mlp": lambda: mlp(hidden=(2048, 2048)), "cnn": cnn, "resnet18": lambda: resnet18(in_channels=1),
          "mobilenet": lambda: mobilenet(in_channels=1)}


class DecoderBlock(nn.Module):
    """Pre-norm transformer decoder block: causal multi-head self-attention with separate q/k/v/out
    projections, then a ReLU feed-forward network; all six projections are ``nn.Linear`` (sparsifiable)."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.norm2 = nn.LayerNorm(width)
        self.ffn_in = nn.Linear(width, ffn)
        self.ffn_out = nn.Linear(ffn, width)

    def forward(self, x):
        batch, length, width = x.shape
        h = self.norm1(x)

        def split(t):
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        attended = nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)),
                                                              is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.ffn_out(torch.relu(self.ffn_in(self.norm2(x))))


class TransformerLM(nn.Module):
    """A small GPT-style language model: token and learned position embeddings, ``layers`` decoder
    blocks, a final LayerNorm and a linear head (named ``head``) to ``vocab`` logits.  Takes token ids
    ``[batch, length]`` and returns logits ``[batch, length, vocab]``."""

    def __init__(self, vocab: int = 256, width: int = 256, layers: int = 4, heads: int = 4, ffn: int | None = None,
                 max_length: int = 256):
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(max_length, width)
        self.blocks = nn.Sequential(*(DecoderBlock(width, heads, ffn or 4 * width) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        if tokens.dim() != 2 or tokens.shape[1] > self.max_length:
            raise ValueError(f"tokens must be [batch, length <= {self.max_length}], got {tuple(tokens.shape)}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        return self.head(self.norm(self.blocks(x)))
