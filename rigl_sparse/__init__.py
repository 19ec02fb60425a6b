"""rigl_sparse: RigL dynamic sparse training with truly block-sparse weights.

Public API (everything else is private)::

    rs.SparseLinear, rs.SparseConv2d, rs.SparseModule, rs.BlockSparseLayout
    rs.sparsify, rs.densify, rs.layer_densities, rs.drop_fraction, rs.RigLScheduler, rs.RigLOptimizer
    rs.DropCriterion, rs.GrowCriterion, rs.ActiveBlocks  (criteria of your own for RigLScheduler)
    rs.apply_masks, rs.BlockMask, rs.PruningScheduler   (masked reference mode)
    rs.TopologyHistory, rs.plot_topology                (pictures of the topology)
    rs.flops, rs.memory_report, rs.summary, rs.use_backend
    rs.save_checkpoint, rs.load_state_dict, rs.load_sparse  (atomic save, all-or-nothing loads)
    rs.densify, rs.export_bsr                           (back to dense; TorchScript with torch's BSR)

Importing the package compiles nothing and touches no GPU.
"""

from rigl_sparse.accounting import FlopReport, MemoryReport, flops, memory_report
from rigl_sparse.backends import use_backend
from rigl_sparse.checkpoint import load_sparse, load_state_dict, save_checkpoint
from rigl_sparse.export import export_bsr
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.nn import SparseConv2d, SparseLinear, SparseModule
from rigl_sparse.rigl import (ActiveBlocks, BlockMask, DropCriterion, GrowCriterion, ModelSummary, PruningScheduler,
                              RigLOptimizer, RigLScheduler, TopologyHistory, apply_masks, densify, drop_fraction,
                              layer_densities, plot_topology, sparsify, summary)

__version__ = "0.1.0"

__all__ = [
    "BlockSparseLayout", "SparseLinear", "SparseConv2d", "SparseModule", "sparsify", "densify", "layer_densities",
    "drop_fraction", "RigLScheduler", "RigLOptimizer", "PruningScheduler", "apply_masks", "BlockMask", "flops",
    "memory_report", "FlopReport", "MemoryReport", "use_backend", "TopologyHistory", "plot_topology",
    "save_checkpoint", "load_state_dict", "summary", "ModelSummary", "export_bsr", "load_sparse",
    "DropCriterion", "GrowCriterion", "ActiveBlocks",
    "__version__",
]
