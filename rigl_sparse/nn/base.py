"""``SparseModule``: what every block-sparse layer shares (values, layout, grow scores)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rigl_sparse import ops
from rigl_sparse.layout import BlockSparseLayout, _check_density, _check_positive_int

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SparseModule(nn.Module):
    """Base of the block-sparse layers.

    Subclasses own ``values`` (``nn.Parameter[nnzb, b, b]``) and ``layout``
    (``BlockSparseLayout``) and describe their weight as a ``[out, K]`` matrix.

    Grow scores: after ``request_grow_scores(k)``, the next backward pass through
    the layer also computes the ``k`` best inactive blocks by gradient norm
    (``rigl_sparse::block_scores``) from the ``dY`` and ``X`` it already has, and
    ``take_grow_scores()`` hands them over.  This is how RigL's scheduler gets the
    dense-gradient criterion without a dense gradient.
    """

    values: nn.Parameter
    layout: BlockSparseLayout

    def __init__(self) -> None:
        super().__init__()
        self._grow_request: int | None = None
        self._grow_scores: tuple[torch.Tensor, torch.Tensor] | None = None

    # -------------------------------------------------------------- grow scores
    def request_grow_scores(self, k: int | None) -> None:
        """Compute the top-``k`` inactive block scores in the next backward (None cancels)."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"k must be a non-negative int or None, got {k!r}")
        self._grow_request = k
        self._grow_scores = None

    def take_grow_scores(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scores [k] float32, index [k] int64)`` from the last backward, or None; clears them."""
        scores, self._grow_scores = self._grow_scores, None
        return scores

    def _tap_grow_scores(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Identity on ``y`` whose backward records the grow scores from ``dY`` and ``x``."""
        if self._grow_request is None or not torch.is_grad_enabled() or not y.requires_grad:
            return y
        return _GrowScoreTap.apply(y, x, self)

    # -------------------------------------------------------------- construction
    def _create(self, shape: tuple[int, int], *, block_size: int, density: float, bias: bool, device, dtype,
                generator: torch.Generator | None) -> None:
        """Check ``dtype``/``device``, draw a random ``layout`` of the ``[out, K]`` weight, allocate
        ``values`` and ``bias``, and initialise them with ``reset_parameters``."""
        _check_positive_int("block_size", block_size)
        _check_density(density)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be one of float16, bfloat16, float32, float64, got {dtype}")
        device = torch.empty(0, device=device).device  # honours torch.device(...) context managers
        if device.type == "meta":
            raise ValueError(
                f"{type(self).__name__} needs a real device for its topology, got device='meta'; build the dense "
                "model on meta and convert it with rs.sparsify(model, density=..., device=...)"
            )
        self.layout = BlockSparseLayout.random(shape, block_size, density=density, generator=generator, device=device)
        self.values = nn.Parameter(torch.empty(self.layout.nnzb, block_size, block_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(shape[0], device=device, dtype=dtype)) if bias else None
        self.reset_parameters(generator=generator)

    def _reset_uniform(self, fan_in: int, generator: torch.Generator | None) -> None:
        """Active weights and bias uniform in ``±1/sqrt(fan_in)`` (torch's default layer init)."""
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            _uniform_(self.values, bound, generator)
            self._zero_padding_()
            if self.bias is not None:
                _uniform_(self.bias, bound, generator)

    # -------------------------------------------------------------- helpers
    @property
    def block_size(self) -> int:
        return self.layout.block_size

    def density(self) -> float:
        """Fraction of the real weight entries that are active."""
        return self.layout.density()

    def weight_shape(self) -> tuple[int, int]:
        """``(out, K)``: the shape of the weight as a matrix."""
        return self.layout.shape

    def _zero_padding_(self) -> None:
        pad = self.layout.padding_mask()
        if pad is not None:
            with torch.no_grad():
                self.values.masked_fill_(~pad, 0)


class _GrowScoreTap(torch.autograd.Function):
    """Passes ``dY`` through unchanged and computes the layer's grow candidates from it."""

    @staticmethod
    def forward(ctx, y, x, module):
        ctx.save_for_backward(x)
        ctx.module = module
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        module = ctx.module
        k = module._grow_request
        if k is not None:
            layout = module.layout
            with torch.no_grad():
                module._grow_scores = ops.block_scores(
                    grad_y.detach().to(x.dtype), x.detach(), layout.block_row, layout.block_col, layout.block_size, k
                )
        return grad_y, None, None


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator | None) -> None:
    """``t.uniform_(-bound, bound)`` drawing from ``generator`` even when it lives on another device."""
    if generator is None or generator.device == t.device:
        t.uniform_(-bound, bound, generator=generator)
    else:
        t.copy_(torch.empty(t.shape, dtype=t.dtype, device=generator.device).uniform_(-bound, bound,
                                                                                     generator=generator))
