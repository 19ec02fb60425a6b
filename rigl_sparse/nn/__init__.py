"""Block-sparse ``nn.Module``s."""

from rigl_sparse.nn.base import SparseModule
from rigl_sparse.nn.linear import SparseLinear

__all__ = ["SparseModule", "SparseLinear"]
