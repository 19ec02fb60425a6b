"""RigL: sparsity distributions, the drop schedule, the drop and grow criteria, the schedulers, ``sparsify``
(and its ``summary``) and the masked mode."""

from rigl_sparse.rigl.criteria import ActiveBlocks, DropCriterion, GrowCriterion
from rigl_sparse.rigl.distributions import layer_densities
from rigl_sparse.rigl.history import TopologyHistory, plot_topology
from rigl_sparse.rigl.masked import BlockMask, apply_masks
from rigl_sparse.rigl.optimizer import RigLOptimizer
from rigl_sparse.rigl.pruning import PruningScheduler
from rigl_sparse.rigl.schedule import drop_fraction
from rigl_sparse.rigl.scheduler import RigLScheduler
from rigl_sparse.rigl.sparsify import densify, sparsify
from rigl_sparse.rigl.model_summary import ModelSummary, summary

__all__ = [
    "layer_densities", "drop_fraction", "RigLScheduler", "RigLOptimizer", "PruningScheduler", "sparsify",
    "densify", "apply_masks", "BlockMask", "TopologyHistory", "plot_topology", "summary", "ModelSummary",
    "DropCriterion", "GrowCriterion", "ActiveBlocks",
]
