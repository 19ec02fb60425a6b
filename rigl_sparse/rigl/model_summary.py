"""``summary``: one table of a model's weight layers, sparse or dense and why."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from rigl_sparse.nn import SparseConv2d, SparseModule
from rigl_sparse.nn.kinds import kind_of
from rigl_sparse.rigl.masked import masked_layers
from rigl_sparse.rigl.sparsify import dense_reasons

@dataclass
class ModelSummary:
    """``rows``: one dict per weight layer (``name``, ``kind``, ``shape``, ``sparse``, ``density``, ``block_size``,
    ``parameters`` stored (bias included), ``active_weights`` and ``dense_weights`` (of the weight matrix),
    ``flops_per_row``: forward FLOPs per token or output position, ``why_dense``); ``str()`` is the table."""

    rows: list[dict]

    def __str__(self) -> str:
        header = ("layer", "kind", "shape", "sparse", "density", "block", "parameters", "FLOPs/row", "dense because")
        cells = [header] + [(r["name"] or "(model)", r["kind"], "x".join(map(str, r["shape"])),
                             "yes" if r["sparse"] else "no", f"{r['density']:.3f}",
                             str(r["block_size"] or "-"), f"{r['parameters']:,}",
                             "-" if r["flops_per_row"] is None else f"{r['flops_per_row']:,.0f}", r["why_dense"] or "")
                            for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        sparse = [r for r in self.rows if r["sparse"]]
        weights = sum(r["active_weights"] for r in sparse)
        dense = sum(r["dense_weights"] for r in sparse)
        total = f"{len(sparse)} of {len(self.rows)} weight layers sparse"
        if dense:
            total += f", {weights:,} of their {dense:,} weights active ({weights / dense:.1%})"
        return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:] + [total])


def summary(model: nn.Module) -> ModelSummary:
    """Every weight layer of ``model`` (linear, convolution, Hugging Face ``Conv1D``, ``nn.MultiheadAttention``'s
    packed projection): its kind and weight shape, whether it is sparse (compressed, or masked by
    ``apply_masks``) and if not why (as ``sparsify`` decided: the first layer under ``first_dense``, a layer
    ERK makes dense, ``nn.MultiheadAttention``'s packed projection, left out by ``include``/``exclude``...),
    its density, block size, stored parameters and forward FLOPs per row (a token, or a convolution's output
    position).  ``print(rs.summary(model))`` prints the table."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    reasons = dense_reasons(model)
    masked = {name: layer.block_mask for name, layer in masked_layers(model)}
    rows = []
    for name, m in model.named_modules():
        row = None
        if isinstance(m, SparseModule):
            shape = ((m.out_channels, m.in_channels // m.groups, *m.kernel_size) if isinstance(m, SparseConv2d)
                     else m.weight_shape())
            row = dict(kind=type(m).__name__, shape=shape, sparse=True, density=m.density(), block_size=m.block_size,
                       parameters=sum(p.numel() for p in m.parameters()), nnz=m.layout.nnz())
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            row = dict(kind="nn.MultiheadAttention in_proj", shape=tuple(m.in_proj_weight.shape), sparse=False,
                       density=1.0, block_size=None, nnz=m.in_proj_weight.numel(),
                       parameters=m.in_proj_weight.numel() + (0 if m.in_proj_bias is None else m.in_proj_bias.numel()))
        elif kind_of(m) is not None:
            weight = m.weight
            mask = masked.get(name)
            density = mask.density() if mask is not None else 1.0
            row = dict(kind=f"{type(m).__name__}" + (" (masked)" if mask is not None else ""),
                       shape=kind_of(m).shape(tuple(weight.shape)), sparse=mask is not None,
                       density=density, block_size=None if mask is None else mask.block_size,
                       parameters=sum(p.numel() for p in m.parameters(recurse=False)),
                       nnz=weight.numel() if mask is None else mask.nnz())
        if row is None:
            continue
        dense_weights = math.prod(row["shape"])
        row.update(name=name, active_weights=row.pop("nnz"), dense_weights=dense_weights)
        row.update(flops_per_row=2.0 * row["active_weights"],
                   why_dense="" if row["sparse"] else reasons.get(name, "not sparsified"))
        rows.append(row)
    return ModelSummary(rows)
