"""``sparsify``: replace a model's dense linear and convolution layers by block-sparse ones, in place."""

from __future__ import annotations

import torch
from torch import nn

from rigl_sparse.layout import BlockSparseLayout, _check_positive_int
from rigl_sparse.nn import SparseConv2d, SparseLinear
from rigl_sparse.nn.conv import weight_matrix
from rigl_sparse.rigl.distributions import layer_densities


def sparsify(model: nn.Module, *, density: float, method: str = "erk", block_size: int = 32, dense=(),
             custom: dict[str, float] | None = None, erk_power_scale: float = 1.0, first_dense: bool | None = None,
             device=None, generator: torch.Generator | None = None) -> nn.Module:
    """Convert every ``nn.Linear`` to ``SparseLinear`` and every ``nn.Conv2d`` to ``SparseConv2d``.

    Per-layer densities come from ``layer_densities(shapes, density, method, dense,
    custom, erk_power_scale)`` over the weight shapes (``(out, in/groups, kh, kw)``
    for convolutions, so ERK sees the kernel dimensions as the official code
    does); layers that end at density 1 (named in ``dense``, or made dense by
    ER/ERK) stay dense.  ``first_dense`` keeps the model's first such layer dense
    and outside the budget; by default it does so for ``method="uniform"``, as
    in the paper.  Convolutions whose groups do not hold whole block rows
    (``block_size`` not dividing ``out/groups``, e.g. depthwise ones) or whose
    padding mode is not zeros stay dense ``nn.Conv2d`` (outside the budget).
    A sparse layer keeps the dense layer's initial values on its active blocks
    (the official code's dense init then random mask) and its bias.

    A model built on the ``meta`` device is materialised sparse on ``device``
    (default CPU): its sparse layers are initialised as ``SparseLinear`` and the
    rest of the model with ``reset_parameters()``, so no dense weight of a
    converted layer ever exists.  Returns ``model``.
    """
    _check_positive_int("block_size", block_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = {name: m for name, m in model.named_modules()
              if type(m) is nn.Linear or _convertible_conv(m, block_size)}
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv2d (zero padding; block_size dividing out/groups) layer "
                         "to sparsify")
    densities = densities_of(layers, density, method, dense, custom, erk_power_scale, first_dense)
    target = None if device is None else torch.device(device)

    for name, layer in layers.items():
        if densities[name] >= 1.0:
            continue
        _replace(model, name, _sparse_layer(layer, densities[name], block_size, target, generator))

    _materialise_meta(model, target or torch.device("cpu"))
    return model


def densities_of(layers: dict[str, nn.Module], density, method, dense, custom, erk_power_scale,
                 first_dense) -> dict[str, float]:
    """Per-layer densities of ``layers`` (name -> module with a ``weight``) as ``sparsify`` allocates them:
    ``layer_densities`` over the weight shapes, the first layer kept dense when ``first_dense`` (default: for
    ``method="uniform"``)."""
    if first_dense is None:
        first_dense = method == "uniform"
    dense = tuple(dense) + ((next(iter(layers)),) if first_dense else ())
    shapes = {name: tuple(m.weight.shape) for name, m in layers.items()}
    return layer_densities(shapes, density, method, dense=dense, custom=custom, erk_power_scale=erk_power_scale)


def _convertible_conv(module: nn.Module, block_size: int) -> bool:
    """A zero-padded nn.Conv2d whose groups (if any) hold whole block rows; depthwise ones do not."""
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and (module.groups == 1 or (module.out_channels // module.groups) % block_size == 0))


def _sparse_layer(layer: nn.Module, density: float, block_size: int, target, generator) -> nn.Module:
    """The sparse replacement of one nn.Linear / nn.Conv2d, on ``target`` (default: where it is, or CPU)."""
    weight = layer.weight
    on_meta = weight.is_meta
    layer_device = target or (torch.device("cpu") if on_meta else weight.device)
    has_bias = layer.bias is not None
    if on_meta:
        if isinstance(layer, nn.Linear):
            return SparseLinear(layer.in_features, layer.out_features, bias=has_bias, density=density,
                                block_size=block_size, device=layer_device, dtype=weight.dtype, generator=generator)
        return SparseConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, bias=has_bias, density=density, block_size=block_size,
                            device=layer_device, dtype=weight.dtype, generator=generator)
    matrix = weight.detach().to(layer_device)
    if isinstance(layer, nn.Conv2d):
        matrix = weight_matrix(matrix)
    layout = BlockSparseLayout.random(tuple(matrix.shape), block_size, density=density, generator=generator,
                                      device=layer_device)
    bias = layer.bias.detach().to(layer_device) if has_bias else None
    if isinstance(layer, nn.Linear):
        return SparseLinear._assemble(layout, layout.gather(matrix), bias)
    return SparseConv2d._assemble(layer, layout, layout.gather(matrix), bias)


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
