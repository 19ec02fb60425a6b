"""Block-sparse ``nn.Module``s."""

from rigl_sparse.nn.base import SparseModule, guard_state_loading
from rigl_sparse.nn.conv import SparseConv2d
from rigl_sparse.nn.linear import SparseLinear

__all__ = ["SparseModule", "SparseLinear", "SparseConv2d", "guard_state_loading"]
