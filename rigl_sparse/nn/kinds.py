"""Layer kinds: how each kind of weight layer looks to sparse training, declared once.

A kind says which dense modules it covers, how their weight reads as the ``[out, K]`` matrix the blocks
tile (and back), the shape the sparsity distributions see, and how many rows one forward multiplies
(its FLOPs are ``2 * weights * rows``).  Masked mode (``rs.apply_masks``) and the FLOP count
(``rs.flops``) ask ``kind_of(module)`` and keep no list of layer types; the compressed layers name their
kind (``SparseModule.kind``).  A new kind is one class here, added to ``KINDS``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LayerKind:
    """A kind of weight layer.  ``name``: how errors and summaries call it."""

    name: str = ""

    def covers(self, module: nn.Module) -> bool:
        """Whether ``module`` is a dense layer of this kind (its exact type: a subclass may compute otherwise)."""
        raise NotImplementedError

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight (or a tensor of its shape) as the ``[out, K]`` matrix; default: ``[out, rest]``."""
        return weight.reshape(weight.shape[0], -1)

    def from_matrix(self, matrix: torch.Tensor, weight_shape: tuple[int, ...]) -> torch.Tensor:
        """``matrix()``'s inverse: an ``[out, K]`` matrix back in the weight's shape."""
        return matrix.reshape(weight_shape)

    def shape(self, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(out, in, *kernel)`` of a weight of ``weight_shape``: the shape the sparsity distributions see (ERK
        counts its dimensions); the matrix is ``(out, prod(the rest))``."""
        return tuple(weight_shape)

    def rows(self, inputs: tuple, output: torch.Tensor) -> int:
        """Rows one forward multiplies by the weight matrix; default: every position but the last dimension."""
        return math.prod(inputs[0].shape[:-1])

    def __deepcopy__(self, memo) -> LayerKind:
        return self  # stateless: a copied model shares its kinds

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(LayerKind):
    name = "nn.Linear"

    def covers(self, module):
        return type(module) is nn.Linear


class Conv2d(LayerKind):
    """``[out, in/groups, kh, kw]`` read tap-major: ``K = kh * kw * in/groups``, the layout ``SparseConv2d``
    stores; its rows are the output positions ``N * OH * OW``."""

    name = "nn.Conv2d"

    def covers(self, module):
        return type(module) is nn.Conv2d

    def matrix(self, weight):
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)

    def from_matrix(self, matrix, weight_shape):
        out, cin, kh, kw = weight_shape
        return matrix.reshape(out, kh, kw, cin).permute(0, 3, 1, 2)

    def rows(self, inputs, output):
        return output.numel() // output.shape[1]


class HuggingFaceConv1D(LayerKind):
    """Hugging Face ``Conv1D`` (GPT-2's linear layer: ``y = x @ weight + bias``, weight ``[in, out]``),
    recognised without importing ``transformers``."""

    name = "Conv1D"

    def covers(self, module):
        weight = getattr(module, "weight", None)
        return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, torch.Tensor)
                and weight.dim() == 2)

    def matrix(self, weight):
        return weight.t()

    def from_matrix(self, matrix, weight_shape):
        return matrix.t()

    def shape(self, weight_shape):
        return tuple(weight_shape)[::-1]


LINEAR, CONV2D, HF_CONV1D = Linear(), Conv2d(), HuggingFaceConv1D()
KINDS: tuple[LayerKind, ...] = (LINEAR, CONV2D, HF_CONV1D)


def matrix_shape(kind: LayerKind, weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(out, K)``: a weight of ``weight_shape`` as ``kind`` reads it as a matrix."""
    shape = kind.shape(weight_shape)
    return shape[0], math.prod(shape[1:])


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``: a compressed layer's own, a dense layer's from ``KINDS``, or None."""
    kind = getattr(type(module), "kind", None)
    if isinstance(kind, LayerKind):
        return kind
    return next((k for k in KINDS if k.covers(module)), None)
