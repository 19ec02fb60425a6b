"""Export for inference outside rigl_sparse: a TorchScript model whose sparse layers are torch's own BSR."""

from __future__ import annotations

import copy
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from rigl_sparse.nn import SparseConv2d, SparseLinear, SparseModule


class BsrLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as torch's block-sparse BSR tensor (its compressed rows, block columns
    and blocks as plain buffers, so that TorchScript can save them), padded to whole blocks."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, blocks: torch.Tensor, bias: Optional[torch.Tensor],
                 in_features: int, out_features: int):
        super().__init__()
        self.register_buffer("crow", crow)
        self.register_buffer("col", col)
        self.register_buffer("blocks", blocks)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = in_features, out_features
        b = blocks.shape[1]
        self.padded_in, self.padded_out = -(-in_features // b) * b, (crow.numel() - 1) * b  # whole blocks

    @classmethod
    def from_sparse(cls, layer: SparseLinear) -> BsrLinear:
        layout = layer.layout
        _, block_col, row_ptr, row_slots, _, _ = layout.topology()
        order = row_slots.long()
        return cls(row_ptr.long().clone(), block_col.long()[order].clone(), layer.values.detach()[order].clone(),
                   None if layer.bias is None else layer.bias.detach().clone(), layer.in_features, layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.sparse_bsr_tensor(self.crow, self.col, self.blocks, [self.padded_out, self.padded_in])
        rows = x.reshape(-1, self.in_features)
        if self.padded_in != self.in_features:
            rows = F.pad(rows, [0, self.padded_in - self.in_features])
        y = torch.mm(weight, rows.t()).t()[:, : self.out_features]
        bias = self.bias
        if bias is not None:
            y = y + bias
        shape: List[int] = list(x.shape[:-1])
        shape.append(self.out_features)
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks.shape[0]}"


def export_bsr(model: nn.Module, example_inputs=None) -> torch.jit.ScriptModule:
    """A TorchScript copy of ``model`` for inference where rigl_sparse is not installed: every ``SparseLinear``
    becomes a ``BsrLinear`` (torch's BSR matmul on the active blocks only), every ``SparseConv2d`` the dense
    ``nn.Conv2d`` of the same function (torch has no BSR convolution); ``model`` itself is left as it is.
    Scripted (``torch.jit.script``), or traced on ``example_inputs`` (a tensor or a tuple of them) for models
    that do not script (``nn.TransformerEncoderLayer``'s fused-path check reads ``linear1.weight``: trace it).
    Save it with ``.save(path)``; ``torch.jit.load(path)`` runs it with torch alone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    exported = copy.deepcopy(model).eval()
    for name, layer in list(exported.named_modules()):
        if isinstance(layer, SparseModule):
            if isinstance(layer, SparseLinear):
                new = BsrLinear.from_sparse(layer)
            elif isinstance(layer, SparseConv2d):
                new = layer.to_conv()
            else:
                raise TypeError(f"{type(layer).__name__} {name!r} has no export")
            if not name:
                exported = new
                break
            parent, _, attr = name.rpartition(".")
            setattr(exported.get_submodule(parent) if parent else exported, attr, new)
    with torch.no_grad():
        if example_inputs is None:
            return torch.jit.script(exported)
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        return torch.jit.trace(exported, inputs)
