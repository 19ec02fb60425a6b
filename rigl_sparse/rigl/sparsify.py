"""``sparsify``: replace a model's dense linear and convolution layers by block-sparse ones, in place."""

from __future__ import annotations

import fnmatch
import warnings
import weakref

import torch
from torch import nn

from rigl_sparse._checks import check_generator, check_positive_int
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.nn import SparseConv2d, SparseLinear, SparseModule, guard_state_loading
from rigl_sparse.nn.kinds import HF_CONV1D, kind_of
from rigl_sparse.rigl.distributions import accepts_method_alias, layer_densities


@accepts_method_alias
def sparsify(model: nn.Module, *, density: float, distribution: str = "erk", block_size: int = 32, dense=(),
             custom: dict[str, float] | None = None, erk_power_scale: float = 1.0, first_dense: bool | None = None,
             last_dense: bool = False, include=None, exclude=(), device=None,
             generator: torch.Generator | None = None, print_summary: bool = False) -> nn.Module:
    """Convert every ``nn.Linear`` (and Hugging Face ``Conv1D``, as in GPT-2) to ``SparseLinear``
    and every ``nn.Conv2d`` to ``SparseConv2d``.

    Which layers: ``include`` (default: all) and ``exclude`` take a pattern or a
    sequence of them, each a glob on the module's qualified name (``"h.*.mlp.*"``)
    or a module type (``nn.Conv2d``); a layer is converted if it matches
    ``include`` and not ``exclude``.  A name pattern that matches no module is an
    error (a typo would otherwise go unnoticed).  Layers left out stay as they
    are, outside the density budget; so do embeddings, norms and biases, which
    are never sparse.  A layer whose weight is shared with another module (tied
    embeddings) is refused: exclude it.

    Per-layer densities come from ``layer_densities(shapes, density, distribution,
    dense, custom, erk_power_scale)`` over the weight shapes (``(out, in/groups, kh, kw)``
    for convolutions, so ERK sees the kernel dimensions as the official code
    does); ``distribution`` is ``"uniform"``, ``"er"`` or ``"erk"`` (``method=``,
    its old name, still works with a ``FutureWarning``).  Layers that end at
    density 1 (named in ``dense``, or made dense by ER/ERK) stay dense.
    ``first_dense`` keeps the model's first such layer dense and outside the
    budget; by default it does so for ``distribution="uniform"``, as in the paper.
    Convolutions whose groups do not hold whole block rows (``block_size`` not
    dividing ``out/groups``, e.g. depthwise ones) or whose padding mode is not
    zeros stay dense ``nn.Conv2d`` (outside the budget).
    A sparse layer keeps the dense layer's initial values on its active blocks
    (the official code's dense init then random mask) and its bias.
    ``nn.MultiheadAttention`` stays dense (its packed ``in_proj_weight`` and
    ``out_proj`` are not ``nn.Linear``; a warning names it); an
    ``nn.TransformerEncoderLayer`` whose feed-forward layers become sparse is kept
    off torch's fused inference kernel, which needs their dense weights.

    A model built on the ``meta`` device is materialised sparse on ``device``
    (default CPU): its sparse layers are initialised as ``SparseLinear`` and the
    rest of the model with ``reset_parameters()``, so no dense weight of a
    converted layer ever exists.  ``print_summary=True`` prints ``rs.summary(model)``
    afterwards: every weight layer, sparse or dense and why.  Returns ``model``.
    """
    check_positive_int("block_size", block_size)
    check_generator(generator)
    dense = (dense,) if isinstance(dense, str) else tuple(dense)  # read twice below
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = select_layers(model, lambda m: type(m) is nn.Linear or HF_CONV1D.covers(m)
                           or _convertible_conv(m, block_size), include, exclude)
    if not layers:
        raise ValueError("model has no nn.Linear, Conv1D or nn.Conv2d (zero padding; block_size dividing "
                         "out/groups) layer to sparsify" + (" among those include/exclude select" if include or exclude
                                                             else ""))
    attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if attention:
        warnings.warn(f"nn.MultiheadAttention {attention} stays dense: its packed in_proj_weight and its out_proj "
                      "are not nn.Linear layers; build attention from nn.Linear projections (as "
                      "rigl_sparse.models.TransformerLM does) for sparse attention", UserWarning, stacklevel=3)
    densities = densities_of(layers, density, distribution, dense, custom, erk_power_scale, first_dense, last_dense)
    target = None if device is None else torch.device(device)
    reasons = _why_dense(model, layers, densities, block_size, dense, custom or {}, first_dense, last_dense,
                         distribution)

    # Every sparse layer is built before the model changes, and an error (or an interrupt) while they go in
    # puts the dense ones back: the model is converted whole or not at all.
    replacements = {name: _sparse_layer(layer, densities[name], block_size, target, generator)
                    for name, layer in layers.items() if densities[name] < 1.0}
    replaced = replace_modules(model, replacements)
    try:
        _materialise_meta(model, target or torch.device("cpu"))
    except BaseException:
        replace_modules(model, replaced)
        raise
    keep_transformers_off_fused_paths(model)
    guard_state_loading(model)  # load_state_dict checks every sparse layer before it copies anything
    setattr(model, DENSE_REASONS, reasons)  # on the model: copies and pickles keep them
    if print_summary:
        from rigl_sparse.rigl.model_summary import summary  # it reads what this function decided

        print(summary(model), flush=True)
    return model


DENSE_REASONS = "rigl_sparse_dense_reasons"  # the model's attribute: {name of a layer sparsify left dense: why}


def dense_reasons(model: nn.Module) -> dict[str, str]:
    """Why ``sparsify`` left each of ``model``'s dense weight layers dense, by name (empty for a model it has
    not converted)."""
    return dict(getattr(model, DENSE_REASONS, None) or {})


def _why_dense(model, layers, densities, block_size, dense, custom, first_dense, last_dense,
               distribution) -> dict[str, str]:
    """Why each weight layer of ``model`` that ``sparsify`` leaves dense stays so, in words."""
    names = list(layers)
    first_dense = distribution == "uniform" if first_dense is None else first_dense
    reasons = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            reasons[name] = "nn.MultiheadAttention: a packed in_proj_weight, not nn.Linear"
            if m.out_proj is not None:
                reasons[f"{name}.out_proj" if name else "out_proj"] = "nn.MultiheadAttention's out_proj"
        elif name in layers and densities[name] >= 1.0:
            reasons[name] = ("the first layer (first_dense)" if first_dense and name == names[0] else
                             "the last layer (last_dense)" if last_dense and name == names[-1] else
                             "named in dense=" if name in dense else "custom= gives it density 1" if name in custom
                             else f"{distribution} gives it density 1")
        elif name not in layers and type(m) is nn.Conv2d and not _convertible_conv(m, block_size):
            reasons[name] = ("padding_mode is not 'zeros'" if m.padding_mode != "zeros" else
                             f"its groups hold {m.out_channels // m.groups} output channels, not whole blocks of "
                             f"{block_size}")
        elif name not in layers and name not in reasons and not isinstance(m, SparseModule) \
                and kind_of(m) is not None:
            reasons[name] = "left out by include/exclude"
    return reasons


def keep_transformers_off_fused_paths(model: nn.Module) -> None:
    """``nn.TransformerEncoderLayer``'s inference fast path (and ``nn.TransformerEncoder``'s nested-tensor
    one) hand ``linear1.weight``/``linear2.weight`` to a fused kernel, which a sparse layer does not have: an
    encoder layer with a sparse feed-forward network gets a forward pre-hook that does nothing (torch takes its
    ordinary path for a layer with hooks), and an encoder of such layers ``use_nested_tensor = False``."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _sparse_ffn(module) and module not in _OFF_FUSED:
            _OFF_FUSED[module] = module.register_forward_pre_hook(_ordinary_path)
        if isinstance(module, nn.TransformerEncoder) and any(_sparse_ffn(layer) for layer in module.layers) \
                and module not in _OFF_FUSED:
            _OFF_FUSED[module] = module.use_nested_tensor
            module.use_nested_tensor = False


# module -> what keeps it off the fused path: an encoder layer's hook handle, an encoder's own use_nested_tensor
_OFF_FUSED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def densify(model: nn.Module) -> nn.Module:
    """The inverse of ``sparsify``: every ``SparseLinear`` and ``SparseConv2d`` of ``model``, however nested (or
    ``model`` itself), back to an ``nn.Linear`` / ``nn.Conv2d`` with the same function (the dense weight, zero
    outside the active blocks; its bias), on the layer's device and dtype; transformer encoders go back to
    torch's fused inference path.  In place, all or nothing; returns the model (the new layer when ``model``
    itself is sparse).  A layer that was a Hugging Face ``Conv1D`` comes back as the equivalent ``nn.Linear``.
    Masked layers (``apply_masks``) are dense already and are left as they are."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, SparseModule):
        return _dense_layer(model)
    replace_modules(model, {name: _dense_layer(m) for name, m in model.named_modules() if isinstance(m, SparseModule)})
    for module in model.modules():
        if module in _OFF_FUSED and not (_sparse_ffn(module) if isinstance(module, nn.TransformerEncoderLayer)
                                         else any(_sparse_ffn(layer) for layer in module.layers)):
            kept = _OFF_FUSED.pop(module)
            if isinstance(module, nn.TransformerEncoderLayer):
                kept.remove()
            else:
                module.use_nested_tensor = kept
    return model


def _dense_layer(layer: SparseModule) -> nn.Module:
    if isinstance(layer, SparseLinear):
        return layer.to_linear()
    if isinstance(layer, SparseConv2d):
        return layer.to_conv()
    raise TypeError(f"{type(layer).__name__} has no dense counterpart to go back to")


def _sparse_ffn(layer: nn.Module) -> bool:
    return any(isinstance(getattr(layer, name, None), SparseModule) for name in ("linear1", "linear2"))


def _ordinary_path(module: nn.Module, args) -> None:
    """A forward pre-hook that changes nothing: its presence keeps torch off the fused encoder kernel."""
    return None


def densities_of(layers: dict[str, nn.Module], density, distribution, dense, custom, erk_power_scale,
                 first_dense, last_dense=False) -> dict[str, float]:
    """Per-layer densities of ``layers`` (name -> module with a ``weight``) as ``sparsify`` allocates them:
    ``layer_densities`` over the weight shapes, the first layer kept dense when ``first_dense`` (default: for
    ``distribution="uniform"``) and the last when ``last_dense``."""
    if first_dense is None:
        first_dense = distribution == "uniform"
    if not isinstance(last_dense, bool):
        raise TypeError(f"last_dense must be a bool, got {type(last_dense).__name__}")
    names = list(layers)
    dense = tuple(dense) + ((names[0],) if first_dense else ()) + ((names[-1],) if last_dense else ())
    shapes = {name: kind_of(m).shape(tuple(m.weight.shape)) for name, m in layers.items()}
    return layer_densities(shapes, density, distribution, dense=dense, custom=custom,
                           erk_power_scale=erk_power_scale)


def select_layers(model: nn.Module, candidate, include, exclude) -> dict[str, nn.Module]:
    """``name -> module`` of the modules for which ``candidate(module)`` holds, filtered by
    ``include``/``exclude`` (see ``sparsify``), in ``named_modules`` order; tied weights refused."""
    include = None if include is None else _patterns("include", include)
    exclude = _patterns("exclude", exclude)
    names = [name for name, _ in model.named_modules()]
    for pattern in (include or ()) + exclude:
        if isinstance(pattern, str) and not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ValueError(f"include/exclude pattern {pattern!r} matches no module of the model")
    chosen = {name: m for name, m in model.named_modules()
              if candidate(m) and (include is None or _matches(name, m, include)) and not _matches(name, m, exclude)}
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for pname, param in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(param), []).append(f"{name}.{pname}" if name else pname)
    for name, m in chosen.items():
        shared = [o for o in owners.get(id(m.weight), []) if not o.startswith(f"{name}.")]
        if shared:
            raise ValueError(f"layer {name!r} shares its weight with {shared} (tied weights) and cannot become "
                             f"sparse alone; leave it out with exclude=({name!r},)")
    return chosen


def _patterns(argument: str, value) -> tuple:
    items = (value,) if isinstance(value, (str, type)) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{argument} must be a glob string, a module type or a sequence of them, got "
                        f"{type(value).__name__}") from None
    bad = [p for p in items if not (isinstance(p, str) or (isinstance(p, type) and issubclass(p, nn.Module)))]
    if bad:
        raise TypeError(f"{argument} patterns must be glob strings or nn.Module subclasses, got {bad!r}")
    return items


def _matches(name: str, module: nn.Module, patterns: tuple) -> bool:
    return any(fnmatch.fnmatchcase(name, p) if isinstance(p, str) else isinstance(module, p) for p in patterns)


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
    if HF_CONV1D.covers(layer):
        in_features, out_features = weight.shape
        if on_meta:
            return SparseLinear(in_features, out_features, bias=has_bias, density=density, block_size=block_size,
                                device=layer_device, dtype=weight.dtype, generator=generator)
        matrix = weight.detach().to(layer_device).T
        layout = BlockSparseLayout.random(tuple(matrix.shape), block_size, density=density, generator=generator,
                                          device=layer_device)
        bias = layer.bias.detach().to(layer_device) if has_bias else None
        return SparseLinear.from_parts(layout, layout.gather(matrix), bias)
    if on_meta:
        if isinstance(layer, nn.Linear):
            return SparseLinear(layer.in_features, layer.out_features, bias=has_bias, density=density,
                                block_size=block_size, device=layer_device, dtype=weight.dtype, generator=generator)
        return SparseConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, bias=has_bias, density=density, block_size=block_size,
                            device=layer_device, dtype=weight.dtype, generator=generator)
    matrix = kind_of(layer).matrix(weight.detach().to(layer_device))
    layout = BlockSparseLayout.random(tuple(matrix.shape), block_size, density=density, generator=generator,
                                      device=layer_device)
    bias = layer.bias.detach().to(layer_device) if has_bias else None
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_parts(layout, layout.gather(matrix), bias)
    return SparseConv2d.from_parts(layer, layout, layout.gather(matrix), bias)


def replace_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Puts each module of ``replacements`` (qualified name -> module) into ``model``, all or none: an error or
    an interrupt part-way puts back the ones already in.  Returns name -> the module that was there (which
    ``replace_modules`` puts back in turn)."""
    replaced = {}
    try:
        for name, new in replacements.items():
            replaced[name] = _replace(model, name, new)
    except BaseException:
        for name, old in replaced.items():
            _replace(model, name, old)
        raise
    return replaced


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Puts ``new`` at ``name``; returns the module that was there."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def _materialise_meta(model: nn.Module, device: torch.device) -> None:
    """Give the modules still on ``meta`` real storage and their own initialisation."""
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device=device, recurse=False)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
