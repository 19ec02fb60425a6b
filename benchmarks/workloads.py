"""The training workloads of ``bench_memory.py`` and ``bench_train_step.py``.

Two models, each trained with Adam in three ways:

* ``dense``: the plain ``torch.nn`` model;
* ``rigl``: compressed block-sparse RigL (built on ``meta`` and ``sparsify``-ed, so no dense weight
  of a sparse layer ever exists);
* ``masked``: masked-dense RigL, as other libraries do it: dense weights, gradients and optimizer
  state, and a block mask (``apply_masks``).

Models (``size="full"``; ``"small"`` shrinks every width for tests):

* ``mlp``: four ``Linear(4096, 4096)`` + ReLU layers on 256 rows, MSE loss to a random target;
* ``transformer``: ``TransformerLM`` with width 1024, 4 blocks, 16 heads, FFN 4096, vocabulary
  256, batch 4 x 256 tokens, next-token cross-entropy.  The attention (q/k/v/out) and FFN
  projections are sparse; embeddings, norms and the head stay dense.

Every sparse layer gets the same density (``uniform``, first layer not exempt), so a run's
sparse weights are exactly ``density`` of the dense ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.models import TransformerLM

MODELS = ("mlp", "transformer")
METHODS = ("dense", "rigl", "masked")
SIZES = {
    "full": {"mlp": dict(width=4096, layers=4, rows=256),
             "transformer": dict(width=1024, layers=4, heads=16, ffn=4096, vocab=256, batch=4, length=256)},
    "small": {"mlp": dict(width=128, layers=2, rows=16),
              "transformer": dict(width=64, layers=2, heads=2, ffn=128, vocab=32, batch=2, length=16)},
}


@dataclass
class Workload:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: rs.RigLScheduler | None
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_fn: object

    def step(self) -> bool:
        """One training step (zero_grad, forward, backward, RigL, Adam); True if it was a topology update."""
        self.optimizer.zero_grad(set_to_none=True)
        return self.finish(self.forward())

    def forward(self) -> torch.Tensor:
        out = self.model(self.inputs)
        return self.loss_fn(out.reshape(-1, out.shape[-1]), self.targets)

    def finish(self, loss: torch.Tensor) -> bool:
        """Backward, the scheduler and the optimizer; True if the step updated the topology."""
        loss.backward()
        updating = self.scheduler is not None and not self.scheduler.step()
        if not updating:
            self.optimizer.step()
        return updating


def build_model(name: str, size: str, device) -> nn.Module:
    spec = SIZES[size][name]
    if name == "mlp":
        layers = []
        for _ in range(spec["layers"]):
            layers += [nn.Linear(spec["width"], spec["width"], device=device), nn.ReLU()]
        return nn.Sequential(*layers)
    return TransformerLM(vocab=spec["vocab"], width=spec["width"], layers=spec["layers"], heads=spec["heads"],
                         ffn=spec["ffn"], max_length=spec["length"]).to(device)


def batch(name: str, size: str, device, generator: torch.Generator):
    spec = SIZES[size][name]
    if name == "mlp":
        inputs = torch.randn(spec["rows"], spec["width"], generator=generator).to(device)
        return inputs, torch.randn(spec["rows"], spec["width"], generator=generator).to(device), nn.MSELoss()
    tokens = torch.randint(spec["vocab"], (spec["batch"], spec["length"] + 1), generator=generator).to(device)
    return tokens[:, :-1], tokens[:, 1:].reshape(-1), nn.CrossEntropyLoss()


def build(name: str, method: str, density: float, *, block_size: int = 32, size: str = "full", device="cpu",
          delta_t: int = 100, t_end: int = 10**6, seed: int = 0) -> Workload:
    """The model, Adam, and (for ``rigl``/``masked``) a RigL scheduler, with a fixed random batch."""
    if name not in MODELS or method not in METHODS or size not in SIZES:
        raise ValueError(f"unknown workload {name!r}/{method!r}/{size!r}: models {MODELS}, methods {METHODS}, "
                         f"sizes {tuple(SIZES)}")
    if (method == "dense") != (density == 1.0):
        raise ValueError(f"method {method!r} with density {density}: dense runs at density 1 only, "
                         "sparse ones below it")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sparse_args = dict(density=density, distribution="uniform", first_dense=False,
                       dense=("head",) if name != "mlp" else ())
    if method == "rigl":
        with torch.device("meta"):
            model = build_model(name, size, "meta")
        rs.sparsify(model, block_size=block_size, device=device, generator=generator, **sparse_args)
    else:
        model = build_model(name, size, device)
        if method == "masked":
            rs.apply_masks(model, block_size=block_size, generator=generator, **sparse_args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = None
    if method != "dense":
        scheduler = rs.RigLScheduler(model, optimizer, delta_t=delta_t, t_end=t_end, alpha=0.3)
    inputs, targets, loss_fn = batch(name, size, device, generator)
    return Workload(model, optimizer, scheduler, inputs, targets, loss_fn)


def sparse_blocks(model: nn.Module, block_size: int) -> int:
    """Blocks in the grids of the model's sparse (compressed or masked) layers, active or not."""
    total = 0
    for module in model.modules():
        if isinstance(module, rs.SparseModule):
            total += module.layout.n_blocks
        elif isinstance(getattr(module, "block_mask", None), rs.BlockMask):
            total += module.block_mask.active.numel()
    return total


def argument_parser(description: str, densities: tuple[float, ...]) -> argparse.ArgumentParser:
    """The options both benchmarks take: device, models, densities, block size, size, output folder."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--densities", default=",".join(str(d) for d in densities))
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--size", default="full", choices=tuple(SIZES))
    parser.add_argument("--out-dir", type=Path, default=None)
    return parser
