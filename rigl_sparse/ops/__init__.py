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


def _register_native_kernels() -> None:
    from rigl_sparse.ops import cpu_extension
    from rigl_sparse.ops.conv2d import backward_python_kernel as conv2d_backward_kernel
    from rigl_sparse.ops.conv2d import python_kernel as conv2d_kernel
    from rigl_sparse.ops.dds import python_kernel as dds_kernel
    from rigl_sparse.ops.dsd import backward_python_kernel as dsd_backward_kernel, python_kernel as dsd_kernel
    from rigl_sparse.ops.sdd import python_kernel as sdd_kernel

    cpu_extension.register_dispatch_kernels({"dsd": dsd_kernel, "dds": dds_kernel, "sdd": sdd_kernel,
                                             "dsd_backward": dsd_backward_kernel, "conv2d": conv2d_kernel,
                                             "conv2d_backward": conv2d_backward_kernel})


_register_native_kernels()

__all__ = ["dsd", "dds", "sdd", "block_scores", "update_topology", "conv2d", "grow_tap", "record_grow_scores",
           "scores_by_bands", "OP_NAMES"]
