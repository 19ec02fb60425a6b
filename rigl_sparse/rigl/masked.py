"""Masked reference mode: ordinary dense ``nn.Linear``/``nn.Conv2d`` weights driven through block masks.

This is how other sparse-training libraries work (dense weights, dense masks,
dense compute) and it is here for comparison, not speed: block size 1 gives
unstructured RigL, and any block size gives the same topology decisions as the
compressed layers (``sparsify``) with the same code, so unstructured and block
RigL can be compared fairly.  It also serves the methods that need a dense
quantity every step — SNFS's dense gradient momentum and gradual magnitude
pruning, which starts dense.

``apply_masks`` attaches a ``BlockMask`` to every selected layer as
``layer.block_mask`` and zeroes the inactive weights.  The schedulers
(``RigLScheduler``, ``PruningScheduler``) then keep the invariant "inactive
weights are exactly zero": they zero the inactive gradient entries in
``step()``, and re-apply the masks after every ``optimizer.step()`` through an
optimizer step hook.  A block mask is defined over the layer's weight as the
``[out, K]`` matrix of the design: a convolution's ``[out, in/groups, kh, kw]``
weight is read tap-major (``K = kh*kw*in/groups``), as ``SparseConv2d`` stores it,
so a block covers ``b`` input channels of one kernel tap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rigl_sparse._checks import check_generator, check_positive_int
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.nn import SparseModule, guard_state_loading
from rigl_sparse.nn.kinds import CONV2D, KINDS, LINEAR, LayerKind, kind_of, matrix_shape
from rigl_sparse.rigl.distributions import accepts_method_alias
from rigl_sparse.rigl.sparsify import densities_of, select_layers

STARTS = ("random", "dense")


class BlockMask(nn.Module):
    """Which ``b x b`` blocks of a dense layer's weight matrix are active.

    Args:
        weight_shape: the layer's weight shape, ``(out, in)`` or ``(out, in/groups, kh, kw)``.
        kind: how the layer reads its weight as a matrix (``nn.kinds``; default: ``nn.Linear``'s for a 2-D
            weight, ``nn.Conv2d``'s for a 4-D one).
        block_size: ``b`` (1 = unstructured).
        active: ``[R, C]`` bool, ``R = ceil(out/b)``, ``C = ceil(K/b)``.
        target_density: the density the layer is meant to end at (its current one,
            except while gradual pruning runs).

    Buffers (in the state dict): ``active`` and ``target_density``.
    """

    def __init__(self, weight_shape: tuple[int, ...], block_size: int, active: torch.Tensor,
                 target_density: float, *, kind: LayerKind | None = None):
        super().__init__()
        check_positive_int("block_size", block_size)
        if kind is None and len(weight_shape) not in (2, 4):
            raise ValueError(f"weight_shape must be (out, in) or (out, in/groups, kh, kw), got {weight_shape} (or "
                             "pass the layer's kind=)")
        self.kind = kind or (LINEAR if len(weight_shape) == 2 else CONV2D)
        self.weight_shape = tuple(int(d) for d in weight_shape)
        self.block_size = block_size
        out, k = self.matrix_shape
        grid = (math.ceil(out / block_size), math.ceil(k / block_size))
        if active.dtype != torch.bool or tuple(active.shape) != grid:
            raise ValueError(f"active must be a bool tensor of shape {grid}, got {active.dtype} "
                             f"{tuple(active.shape)}")
        self.register_buffer("active", active.clone())
        self.register_buffer("target_density", torch.tensor(float(target_density), dtype=torch.float64))
        self._expanded: tuple[tuple, torch.Tensor] | None = None  # expand()'s element mask, and of which active

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(out, K)``: the weight as a matrix."""
        return matrix_shape(self.kind, self.weight_shape)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.active.shape)

    def matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor of the weight's shape as the ``[out, K]`` matrix (tap-major for convolutions)."""
        return self.kind.matrix(tensor)

    def block_norms(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[R * C]`` fp32 Frobenius norm of every block of a tensor of the weight's shape (row-major)."""
        return BlockSparseLayout.block_norms(self.matrix(tensor), self.block_size).flatten()

    def expand(self, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """``blocks`` (``[R, C]`` bool, default ``active``) as an element mask of the weight's shape (read only).

        The mask of ``active`` is kept until ``active`` changes (its version counter, which every in-place
        write bumps, or another tensor): masking the weight and its gradient every step builds it once."""
        if blocks is not None:
            return self._expand(blocks)
        key = (self.active._version, self.active.data_ptr(), self.active.device)
        if self._expanded is None or self._expanded[0] != key:
            self._expanded = (key, self._expand(self.active))
        return self._expanded[1]

    def _expand(self, blocks: torch.Tensor) -> torch.Tensor:
        b = self.block_size
        out, k = self.matrix_shape
        elements = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[:out, :k]
        return self.kind.from_matrix(elements, self.weight_shape)

    def nnz(self) -> int:
        """Active weight entries (edge blocks count only their real entries)."""
        return int(self.expand().sum())

    def density(self) -> float:
        return self.nnz() / math.prod(self.weight_shape)

    def extra_repr(self) -> str:
        R, C = self.grid
        return (f"block_size={self.block_size}, active={int(self.active.sum())}/{R * C}, "
                f"target_density={float(self.target_density):.4f}")


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer of ``model`` that carries a ``BlockMask``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "block_mask", None), BlockMask)]


@accepts_method_alias
def apply_masks(model: nn.Module, *, density: float, distribution: str = "erk", block_size: int = 1, dense=(),
                custom: dict[str, float] | None = None, erk_power_scale: float = 1.0,
                first_dense: bool | None = None, last_dense: bool = False, include=None, exclude=(),
                start: str = "random", generator: torch.Generator | None = None) -> nn.Module:
    """Put every ``nn.Linear``, ``nn.Conv2d`` and Hugging Face ``Conv1D`` (every layer kind of ``nn.kinds``) of
    ``model`` under a block mask, in place.

    Per-layer densities come from ``layer_densities`` exactly as in ``sparsify``
    (same ``distribution``, ``dense``, ``custom``, ``erk_power_scale``, ``first_dense``,
    ``last_dense``, ``include``, ``exclude`` rules, and ``method=`` as the deprecated old name
    of ``distribution``); layers that end at density 1 get no mask.  ``start="random"`` draws
    each layer's active blocks uniformly at random (the same draws, in the same
    order, as ``sparsify`` with the same ``generator``, so both modes start from
    one topology) and zeroes the other weights; ``start="dense"`` starts with
    every block active and records the density as the target of gradual pruning
    (``PruningScheduler``).  Returns ``model``.
    """
    check_positive_int("block_size", block_size)
    check_generator(generator)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    layers = select_layers(model, lambda m: not isinstance(m, SparseModule) and kind_of(m) is not None, include,
                           exclude)
    if not layers:
        raise ValueError(f"model has no {', '.join(k.name for k in KINDS)} layer to mask"
                         + (" among those include/exclude select" if include or exclude else ""))
    already = [name for name, m in layers.items() if isinstance(getattr(m, "block_mask", None), BlockMask)]
    if already:
        raise ValueError(f"layers {already} already carry a block mask")
    if any(m.weight.is_meta for m in layers.values()):
        raise ValueError("masked mode keeps dense weights and needs them materialised; the model is on 'meta' "
                         "(use rs.sparsify for models too large to exist densely)")
    densities = densities_of(layers, density, distribution, dense, custom, erk_power_scale, first_dense, last_dense)
    for name, layer in layers.items():
        if densities[name] >= 1.0:
            continue
        shape, kind = tuple(layer.weight.shape), kind_of(layer)
        out, k = matrix_shape(kind, shape)
        if start == "random":
            layout = BlockSparseLayout.random((out, k), block_size, density=densities[name], generator=generator)
            active = layout.active_mask().cpu()
        else:
            active = torch.ones((math.ceil(out / block_size), math.ceil(k / block_size)), dtype=torch.bool)
        mask = BlockMask(shape, block_size, active, densities[name], kind=kind).to(layer.weight.device)
        layer.block_mask = mask
        with torch.no_grad():
            layer.weight.mul_(mask.expand())
    guard_state_loading(model)  # load_state_dict checks the whole checkpoint before it copies anything
    return model


# ------------------------------------------------------------------ helpers the schedulers share
def mask_gradients(layers) -> None:
    """Zero the gradient entries of inactive weights (so no optimizer moves them)."""
    for _, layer in layers:
        if layer.weight.grad is not None:
            layer.weight.grad.mul_(layer.block_mask.expand())


def reapply_masks(layers) -> None:
    """Zero the inactive weights (after an optimizer step)."""
    with torch.no_grad():
        for _, layer in layers:
            layer.weight.mul_(layer.block_mask.expand())


def register_mask_hook(optimizer: torch.optim.Optimizer, layers):
    """Re-apply the masks after every ``optimizer.step()``; returns the hook's handle."""
    return optimizer.register_step_post_hook(lambda *_: reapply_masks(layers))


def set_active_blocks(layer: nn.Module, optimizer: torch.optim.Optimizer, active: torch.Tensor) -> int:
    """Make ``active`` (``[R * C]`` bool) the layer's active blocks.

    Blocks that change state (grown or dropped) get zero weight, zero gradient and
    zero optimizer state; a block that stays active keeps everything.  Returns
    the number of blocks that became active.
    """
    mask = layer.block_mask
    old = mask.active.flatten()
    changed = mask.expand((old ^ active).view(mask.grid))
    weight = layer.weight
    weight.masked_fill_(changed, 0)
    if weight.grad is not None:
        weight.grad.masked_fill_(changed, 0)
    for state in optimizer.state.get(weight, {}).values():
        if torch.is_tensor(state) and state.shape == weight.shape:
            state.masked_fill_(changed, 0)
    grown = int((active & ~old).sum())
    mask.active.copy_(active.view(mask.grid))
    return grown
