"""Checkpoints that survive the machine and the user: an atomic save, an all-or-nothing load."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from rigl_sparse.nn import guard_state_loading


def save_checkpoint(obj, path) -> Path:
    """``torch.save(obj, path)`` that never leaves ``path`` half-written: ``obj`` goes to a temporary file in
    the same folder, which is flushed to disk and then renamed over ``path`` (one atomic step).  If the
    process dies or the save fails, ``path`` still holds the previous checkpoint (a stray
    ``.<name>.<pid>.tmp`` may remain after a kill).  Returns ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of the checkpoint {str(path)!r} does not exist")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself on disk
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    finally:
        os.close(folder)
    return path


def load_state_dict(model: nn.Module, state_dict: dict, *, strict: bool = True, assign: bool = False):
    """``model.load_state_dict(state_dict, strict=strict, assign=assign)``, all or nothing: every entry is checked
    (the keys under ``strict``, the shapes, each sparse layer's geometry, topology and padding) before any is
    copied, so a refused checkpoint leaves ``model`` as it was, also where only a part of ``model`` is sparse.
    (A model that ``rs.sparsify``, ``rs.apply_masks`` or a scheduler was given checks all but the keys so in
    its own ``load_state_dict``: torch reports missing and unexpected keys after it copied the rest.)  Returns
    what ``load_state_dict`` returns."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if strict:
        own = model.state_dict()
        # a sparse layer's geometry may be missing: checkpoints from before it was saved load without it
        missing = [key for key in own if key not in state_dict and key.rpartition(".")[2] != "_extra_state"]
        unexpected = [key for key in state_dict if key not in own]
        if missing or unexpected:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__} (nothing was loaded): "
                               + "; ".join(f"{what} key(s): {', '.join(repr(k) for k in keys)}"
                                           for what, keys in (("missing", missing), ("unexpected", unexpected))
                                           if keys))
    guard_state_loading(model)
    return model.load_state_dict(state_dict, strict=strict, assign=assign)


def load_sparse(model: nn.Module, state_dict: dict, *, strict: bool = True) -> nn.Module:
    """Load the state dict of a sparse model (a sparsified model's ``state_dict()``: values, topology and
    geometry, as saved by ``rs.save_checkpoint`` or safetensors) into ``model`` built dense: each layer that
    the state dict holds sparse becomes the ``SparseLinear`` / ``SparseConv2d`` of that topology, then every
    entry loads as ``rs.load_state_dict`` loads it.  All or nothing: a refused checkpoint leaves ``model``
    dense and as it was.  No density or seed is needed: the topology comes from the checkpoint.  Values of
    another floating dtype are cast to the model's, as torch casts.  Returns ``model`` (the new sparse layer
    when ``model`` itself is one layer)."""
    from rigl_sparse.layout import BlockSparseLayout
    from rigl_sparse.nn import SparseConv2d, SparseLinear, SparseModule
    from rigl_sparse.nn.kinds import HF_CONV1D, kind_of, matrix_shape
    from rigl_sparse.rigl.sparsify import keep_transformers_off_fused_paths, replace_modules

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    suffix = "layout.block_row"
    names = [key[: -len(suffix)].rstrip(".") for key in state_dict if key.endswith(suffix)]
    state_dict, replacements = dict(state_dict), {}
    for name in names:
        prefix = name + "." if name else ""
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the state dict holds a sparse layer {name!r} that the model does not have") from None
        if isinstance(layer, SparseModule):
            continue  # sparse already: load_state_dict checks it
        values, rows, cols = (state_dict.get(prefix + key)
                              for key in ("values", "layout.block_row", "layout.block_col"))
        if not all(isinstance(t, torch.Tensor) for t in (values, rows, cols)) or values.dim() != 3:
            raise ValueError(f"the state dict's sparse layer {name!r} has no [nnzb, b, b] 'values' beside its "
                             "topology")
        weight = layer.weight
        if values.is_floating_point() and values.dtype != weight.dtype:
            values = state_dict[prefix + "values"] = values.to(weight.dtype)  # as torch casts into a dense weight
        if type(layer) in (nn.Linear, nn.Conv2d) or HF_CONV1D.covers(layer):  # the kinds a compressed layer takes
            shape = matrix_shape(kind_of(layer), tuple(weight.shape))
        else:
            raise ValueError(f"the state dict holds {name!r} sparse, but it is a {type(layer).__name__} in the model")
        layout = BlockSparseLayout(shape, values.shape[-1], rows.to(weight.device), cols.to(weight.device))
        placeholder = torch.zeros(values.shape, dtype=weight.dtype, device=weight.device)
        bias = None if layer.bias is None else torch.zeros_like(layer.bias)
        replacements[name] = (SparseConv2d.from_parts(layer, layout, placeholder, bias) if isinstance(layer, nn.Conv2d)
                              else SparseLinear.from_parts(layout, placeholder, bias))
    if "" in replacements:
        new = replacements.pop("")
        load_state_dict(new, state_dict, strict=strict)
        return new
    replaced = replace_modules(model, replacements)
    try:
        load_state_dict(model, state_dict, strict=strict)
        keep_transformers_off_fused_paths(model)  # as sparsify does: an encoder with sparse FFNs needs it
    except BaseException:
        replace_modules(model, replaced)
        raise
    return model
