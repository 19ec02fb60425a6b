"""FLOP and memory accounting of sparse models (per the RigL paper's conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from rigl_sparse.nn import SparseModule
from rigl_sparse.nn.kinds import kind_of, matrix_shape
from rigl_sparse.rigl.masked import masked_layers


@dataclass
class FlopReport:
    """Multiply-adds counted as 2 FLOPs, for one step on a batch of the given shape.

    ``forward``/``dense_forward``: the sparse model and the same model with every
    sparse layer dense.  ``training_step`` is forward + backward (3x forward);
    ``rigl_step`` adds RigL's dense-gradient cost amortised over ``delta_t`` steps:
    ``(3 f_S delta_t + 2 f_S + f_D) / (delta_t + 1)``.
    """

    forward: float
    dense_forward: float
    delta_t: int | None
    layers: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sparse, dense) forward

    @property
    def training_step(self) -> float:
        return 3.0 * self.forward

    @property
    def dense_training_step(self) -> float:
        return 3.0 * self.dense_forward

    @property
    def rigl_step(self) -> float:
        if self.delta_t is None:
            return self.training_step
        f_s, f_d, dt = self.forward, self.dense_forward, self.delta_t
        return (3.0 * f_s * dt + 2.0 * f_s + f_d) / (dt + 1)


def flops(model: nn.Module, batch_shape: tuple[int, ...], *, delta_t: int | None = None,
          dtype: torch.dtype | None = None) -> FlopReport:
    """Count the weight-layer FLOPs of ``model`` on an input of ``batch_shape``.

    Sparse layers count ``2 * nnz * rows`` (only real, non-padding weights; for a
    masked dense layer, its active weights);
    ``nn.Linear`` (and Hugging Face ``Conv1D``) counts ``2 * out * in * rows`` and ``nn.Conv2d``
    ``2 * out * in/groups * kh * kw * rows``, where a convolution's rows are its
    output positions ``N * OH * OW``: each layer kind declares its rows and matrix
    (``nn/kinds.py``).  Products of two activations (attention scores, for instance)
    and elementwise work are not counted, as in the paper, since sparsity does not
    change them.  The forward is traced with fake
    tensors, so nothing is computed and no memory is used for activations.
    ``dtype`` is the input's (default: the model's floating dtype; pass
    ``torch.long`` for token ids).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(batch_shape, (tuple, list)) or not all(isinstance(d, int) and d > 0 for d in batch_shape):
        raise ValueError(f"batch_shape must be a tuple of positive ints, got {batch_shape!r}")
    if delta_t is not None and (not isinstance(delta_t, int) or delta_t <= 0):
        raise ValueError(f"delta_t must be None or an int > 0, got {delta_t!r}")
    counted: dict[str, tuple[float, float]] = {}
    nnz = {id(m): m.layout.nnz() for m in model.modules() if isinstance(m, SparseModule)}  # before fake mode
    nnz.update({id(m): m.block_mask.nnz() for _, m in masked_layers(model)})

    def hook_for(name, kind):
        def hook(module, inputs, output):
            rows = kind.rows(inputs, output)
            if isinstance(module, SparseModule):
                out, k = module.weight_shape()
            else:
                out, k = matrix_shape(kind, tuple(module.weight.shape))
            sparse = 2.0 * nnz.get(id(module), out * k) * rows
            dense = 2.0 * out * k * rows
            prev = counted.get(name, (0.0, 0.0))
            counted[name] = (prev[0] + sparse, prev[1] + dense)
        return hook

    kinds = {name: kind_of(m) for name, m in model.named_modules()}
    handles = [m.register_forward_hook(hook_for(name, kinds[name])) for name, m in model.named_modules()
               if kinds[name] is not None]
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            model(torch.empty(batch_shape, dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
    return FlopReport(forward=sum(s for s, _ in counted.values()), dense_forward=sum(d for _, d in counted.values()),
                      delta_t=delta_t, layers=counted)


@dataclass
class MemoryReport:
    """Bytes held by the model and optimizer, split by role."""

    parameters: int
    gradients: int
    optimizer_state: int
    topology: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.topology


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
    """Parameter, gradient, optimizer-state and topology bytes.

    Shared tensors count once; gradients count where allocated (``None`` after
    ``zero_grad()``); optimizer state counts every tensor in ``optimizer.state``
    (Adam: ``exp_avg``, ``exp_avg_sq`` and its ``step``).  Topology is what
    says which weights exist: the compressed layers' layout buffers and the
    masked layers' block masks.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    params = list(model.parameters())
    topology_buffers = [t for m in model.modules() if isinstance(m, SparseModule) for t in m.layout.buffers()]
    topology_buffers += [t for _, m in masked_layers(model) for t in m.block_mask.buffers()]
    topology = sum(t.numel() * t.element_size() for t in {id(t): t for t in topology_buffers}.values())
    state = 0
    if optimizer is not None:
        for per_param in optimizer.state.values():
            state += sum(v.numel() * v.element_size() for v in per_param.values() if torch.is_tensor(v))
    return MemoryReport(
        parameters=sum(p.numel() * p.element_size() for p in params),
        gradients=sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        optimizer_state=state,
        topology=topology,
    )
