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
        missing = [key for key in own if key not in state_dict and not key.endswith("._extra_state")]
        unexpected = [key for key in state_dict if key not in own]
        if missing or unexpected:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__} (nothing was loaded): "
                               + "; ".join(f"{what} key(s): {', '.join(repr(k) for k in keys)}"
                                           for what, keys in (("missing", missing), ("unexpected", unexpected))
                                           if keys))
    guard_state_loading(model)
    return model.load_state_dict(state_dict, strict=strict, assign=assign)
