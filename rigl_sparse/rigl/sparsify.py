"""``sparsify``: replace a model's dense linear layers by block-sparse ones, in place."""

from __future__ import annotations

import torch
from torch import nn

from rigl_sparse.layout import BlockSparseLayout, _check_positive_int
from rigl_sparse.nn import SparseLinear
from rigl_sparse.rigl.distributions import layer_densities


def sparsify(model: nn.Module, *, density: float, method: str = "erk", block_size: int = 32, dense=(),
             custom: dict[str, float] | None = None, erk_power_scale: float = 1.0, device=None,
             generator: torch.Generator | None = None) -> nn.Module:
    """Convert every ``nn.Linear`` of ``model`` to ``SparseLinear`` with a random topology.

    Per-layer densities come from ``layer_densities(shapes, density, method, dense,
    custom, erk_power_scale)``; layers that end at density 1 (named in ``dense``,
    or made dense by ER/ERK) stay ``nn.Linear``.  A sparse layer keeps the dense
    layer's initial values on its active blocks (the official code's dense init
    then random mask) and its bias.

    A model built on the ``meta`` device is materialised sparse on ``device``
    (default CPU): its sparse layers are initialised as ``SparseLinear`` and the
    rest of the model with ``reset_parameters()``, so no dense weight of a
    converted layer ever exists.  Returns ``model``.
    """
    _check_positive_int("block_size", block_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    if not linears:
        raise ValueError("model has no nn.Linear layer to sparsify")
    shapes = {name: (m.out_features, m.in_features) for name, m in linears.items()}
    densities = layer_densities(shapes, density, method, dense=dense, custom=custom, erk_power_scale=erk_power_scale)
    target = None if device is None else torch.device(device)

    for name, linear in linears.items():
        if densities[name] >= 1.0:
            continue
        on_meta = linear.weight.is_meta
        layer_device = target or (torch.device("cpu") if on_meta else linear.weight.device)
        if on_meta:
            sparse = SparseLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  density=densities[name], block_size=block_size, device=layer_device,
                                  dtype=linear.weight.dtype, generator=generator)
        else:
            layout = BlockSparseLayout.random(tuple(linear.weight.shape), block_size, density=densities[name],
                                              generator=generator, device=layer_device)
            weight = linear.weight.detach().to(layer_device)
            bias = None if linear.bias is None else linear.bias.detach().to(layer_device)
            sparse = SparseLinear._assemble(layout, layout.gather(weight), bias)
        _replace(model, name, sparse)

    _materialise_meta(model, target or torch.device("cpu"))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _materialise_meta(model: nn.Module, device: torch.device) -> None:
    """Give the modules still on ``meta`` real storage and their own initialisation."""
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device=device, recurse=False)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
