"""Small reference models (plain ``torch.nn``; convert them with ``rs.sparsify``)."""

from __future__ import annotations

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


MODELS = {"mlp": mlp, "cnn": cnn}
