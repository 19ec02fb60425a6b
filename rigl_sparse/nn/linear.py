"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is block-sparse."""

from __future__ import annotations


import torch
from torch import nn

from rigl_sparse import ops
from rigl_sparse._checks import check_positive_int
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.nn.base import SparseModule
from rigl_sparse.nn.kinds import LINEAR


class SparseLinear(SparseModule):
    """``y = x @ W.T + bias`` with ``W[out_features, in_features]`` stored block-sparse.

    Args:
        in_features: as ``nn.Linear``.
        out_features: as ``nn.Linear``.
        bias: as ``nn.Linear``.
        density: fraction of the ``b x b`` blocks that are active, in (0, 1];
            exactly ``round(density * blocks)`` blocks (at least one).
        block_size: ``b``.  Dimensions it does not divide are padded.
        generator: draws the random topology and the initial values (torch's
            default generator if None).

    The active weights are initialised as ``nn.Linear`` initialises its weight
    (uniform in ``±1/sqrt(in_features)``, the dense fan-in), restricted to the
    active blocks.  ``values`` (``[nnzb, b, b]``) is the only trainable weight
    tensor; ``layout`` holds the topology as buffers, so ``state_dict()`` carries
    the exact sparse model.

    Input ``[*, in_features]`` of the parameters' dtype -> output ``[*, out_features]``.
    """

    kind = LINEAR  # its FLOPs and matrix view (nn.kinds)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, density: float,
                 block_size: int = 32, device=None, dtype=None, generator: torch.Generator | None = None):
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        self.in_features = in_features
        self.out_features = out_features
        self._create((out_features, in_features), block_size=block_size, density=density, bias=bias, device=device,
                     dtype=dtype, generator=generator)

    def geometry(self) -> dict[str, int]:
        return {"in_features": self.in_features, "out_features": self.out_features, "block_size": self.block_size}

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Uniform ``±1/sqrt(in_features)`` on active weights and bias, as ``nn.Linear``."""
        self._reset_uniform(self.in_features, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features in its last dimension, got shape "
                             f"{tuple(x.shape)}")
        x, values, bias = self._operands(x)
        layout = self._modules["layout"]  # not through nn.Module.__getattr__: see _operands
        flat = x.dim() == 2  # a reshape would add a view to autograd's graph even when it changes nothing
        x2 = x if flat else x.reshape(-1, self.in_features)
        y = ops.dsd(x2, values, layout, bias)
        if self.grow.armed:  # checked here: the unarmed forward pays one attribute read
            y = self.grow.tap(y, x2, layout)
        return y if flat else y.view(*x.shape[:-1], self.out_features)

    def _supports_exact_grow_scores(self) -> bool:
        return True

    def exact_grow_scores(self, inputs, reduce=None):
        if reduce is None:  # one block_scores over the concatenated micro-batches
            return ops.block_scores(torch.cat([d for d, _ in inputs]), torch.cat([x for _, x in inputs]),
                                    self.layout, self.grow.k)
        return super().exact_grow_scores(inputs, reduce)

    def gradient_band(self, inputs, r0: int, r1: int) -> torch.Tensor:
        b = self.layout.block_size
        n_rows, n_cols = self.layout.grid
        grad = torch.zeros((r1 - r0) * b, n_cols * b, dtype=torch.float32, device=self.layout.block_row.device)
        rows = slice(r0 * b, min(r1 * b, self.out_features))
        for dy, x in inputs:  # a rank with no micro-batch contributes zeros
            grad[: rows.stop - rows.start, : self.in_features].addmm_(dy[:, rows].float().T, x.float())
        return grad

    # -------------------------------------------------------------- conversion
    @classmethod
    def from_dense(cls, linear: nn.Linear, *, density: float, block_size: int = 32) -> SparseLinear:
        """Keep the ``density`` fraction of ``linear``'s blocks with the largest Frobenius norm."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        if weight.is_meta:
            raise ValueError("linear has meta weights; use rs.sparsify(model, ..., device=...) for meta models")
        layout, values = BlockSparseLayout.from_dense(weight.detach(), density=density, block_size=block_size)
        return cls.from_parts(layout, values, linear.bias)

    @classmethod
    def from_parts(cls, layout: BlockSparseLayout, values: torch.Tensor, bias: torch.Tensor | None) -> SparseLinear:
        """A layer with the given layout, values ``[nnzb, b, b]`` and bias (all copied)."""
        layer = cls.__new__(cls)
        SparseModule.__init__(layer)
        layer.out_features, layer.in_features = layout.shape
        layer.layout = layout.to(values.device)
        layer.values = nn.Parameter(values.detach().clone())
        layer.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        layer._zero_padding_()
        return layer

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense ``[out_features, in_features]`` tensor (detached)."""
        return self.layout.to_dense(self.values.detach())

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with the same function (dense weight, copied bias)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.to_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self._density_words()}, block_size={self.block_size}")

