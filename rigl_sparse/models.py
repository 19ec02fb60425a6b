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


MODELS = {"mlp": mlp}
