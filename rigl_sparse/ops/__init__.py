"""The block-sparse ops, each a ``torch.library`` custom op under ``rigl_sparse::``.

One folder per op: ``reference.py`` (pure PyTorch, the specification) and the
registration in ``__init__.py``; other backends register beside it.
"""

from rigl_sparse.ops.block_scores import block_scores
from rigl_sparse.ops.block_scores.reference import scores_by_bands
from rigl_sparse.ops.dds import dds
from rigl_sparse.ops.dsd import dsd
from rigl_sparse.ops.grow_tap import grow_tap, record_grow_scores
from rigl_sparse.ops.linear import linear
from rigl_sparse.ops.sdd import sdd
from rigl_sparse.ops.update_topology import update_topology

OP_NAMES = ("dsd", "dds", "sdd", "block_scores", "update_topology")

__all__ = ["dsd", "dds", "sdd", "block_scores", "update_topology", "linear", "grow_tap", "record_grow_scores",
           "scores_by_bands", "OP_NAMES"]
