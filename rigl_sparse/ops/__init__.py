"""The block-sparse ops.

Each is a ``rigl_sparse::`` operator of torch's dispatcher (``torch.ops.rigl_sparse.<name>``, whose schemas
take the topology as tensors) and, here, a Python function that takes the weight's ``BlockSparseLayout``.
One folder per op: ``reference.py`` (pure PyTorch, the specification) and the registration in
``__init__.py``; other backends register beside it.
"""

from rigl_sparse.ops.block_scores import block_scores
from rigl_sparse.ops.block_scores.reference import scores_by_bands
from rigl_sparse.ops.conv2d import conv2d
from rigl_sparse.ops.dds import dds
from rigl_sparse.ops.dsd import dsd
from rigl_sparse.ops.grow_tap import grow_tap, record_grow_scores
from rigl_sparse.ops.sdd import sdd
from rigl_sparse.ops.update_topology import update_topology

OP_NAMES = ("dsd", "dds", "sdd", "block_scores", "update_topology")

__all__ = ["dsd", "dds", "sdd", "block_scores", "update_topology", "conv2d", "grow_tap", "record_grow_scores",
           "scores_by_bands", "OP_NAMES"]
