"""``RigLScheduler``: drop and grow blocks every ``delta_t`` steps (RigL, SET, SNFS, static).

Steps are counted from 0: the ``t``-th call of ``step()`` (after the ``t``-th
backward pass) is an update step when ``t > 0``, ``t % delta_t == 0`` and
``t <= t_end``.  On an update step each sparse layer with ``n`` active blocks:

1. drops the ``k = floor(drop_fraction(t) * n)`` active blocks of smallest
   Frobenius norm;
2. grows ``k`` blocks among those not kept (inactive, or just dropped): the
   largest dense-gradient norms (``grow="gradient"``, RigL), uniformly at
   random (``grow="random"``, SET), or the largest norms of an exponential
   moving average of the dense gradient (``grow="momentum"``, SNFS without
   redistribution, as in the official code; masked layers only);
3. writes the grown blocks into the freed slots with value 0 and zero
   optimizer state; a dropped block that is grown again keeps its slot, value
   and optimizer state.

``step()`` returns False on an update step: as in the official code, the
optimizer does not step then.  Ties (equal norms or scores) go to the lower
row-major block index.

The gradient criterion comes from the layers themselves: before the backward of
an update step the scheduler asks every layer for its top-``k`` inactive blocks
(``SparseModule.request_grow_scores``), which the layer computes in its backward
with the streaming ``block_scores`` op.  The scores of the active blocks are the
norms of ``values.grad``, so "top-k inactive ∪ dropped" holds every block that
can win, and no dense gradient is ever stored.

The scheduler drives compressed layers (``SparseModule``) and masked dense
layers (``apply_masks``) alike, with the same decisions for the same topology,
weights and gradients.  A masked layer's score is the block norm of its
``weight.grad``, which is the dense gradient because inactive weights are zero.
"""

from __future__ import annotations

import math
import warnings

import torch

from rigl_sparse import ops
from rigl_sparse.nn import SparseModule
from rigl_sparse.rigl.masked import (check_optimizer_holds, mask_gradients, masked_layers, register_mask_hook,
                                     set_active_blocks, uncompiled)
from rigl_sparse.rigl.schedule import check_alpha, check_delta_t, check_t_end, drop_fraction

GROW = ("gradient", "random", "momentum", "none")
GROW_SCORES = ("backward", "exact")
STATS = {"updates": 0, "blocks_moved": 0, "skipped_nonfinite": 0, "skipped_no_gradient": 0, "skipped_zero_gradient": 0,
         "skipped_overflow": 0}
DROP = ("magnitude",)


class RigLScheduler:
    """Dynamic sparse training driver.

    Args:
        model: module whose ``SparseModule`` layers are trained sparse.
        optimizer: the ``torch.optim`` optimizer that holds every sparse layer's ``values``.
        delta_t: steps between topology updates (> 0).
        t_end: last step at which the topology may change (> 0; the paper uses 3/4 of training).
        alpha: initial drop fraction, annealed to 0 at ``t_end`` by a cosine.
        grow: ``"gradient"`` (RigL), ``"random"`` (SET), ``"momentum"`` (SNFS; needs a dense
            gradient every step, so masked layers only) or ``"none"`` (static topology).
        drop: ``"magnitude"``.
        seed: seeds the generator of random growth.
        momentum: decay of the gradient moving average of ``grow="momentum"`` (0.9 as in the official code).
        grow_scores: how compressed layers score the inactive blocks of an update step.
            ``"backward"``: each backward pass computes its top-``k`` candidates with the streaming
            ``block_scores`` (extra memory O(k + blocks)); with gradient accumulation the passes'
            scores are summed block by block, an upper bound of the accumulated gradient's norm.
            ``"exact"``: the backward passes of an update step keep each sparse layer's ``dY`` and
            ``X`` (activation-sized) and ``step()`` scores the accumulated gradient exactly.
            Default: ``"exact"`` under DDP or with a ``process_group``, else ``"backward"``.
        process_group: ranks whose gradients are averaged (data parallelism): update steps score
            the rank-averaged gradient, one band of block rows at a time (``all_reduce``), so all
            ranks make the same decisions.  Default: the process group of a
            ``DistributedDataParallel`` model, else None.  Every rank must call ``step()``.

    Masked layers need neither: their ``weight.grad`` already is the accumulated (and, under
    DDP, averaged) dense gradient.

    Use::

        loss.backward()
        if sched.step():
            optimizer.step()
        optimizer.zero_grad()
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, delta_t: int = 100, t_end: int,
                 alpha: float = 0.3, grow: str = "gradient", drop: str = "magnitude", seed: int = 0,
                 momentum: float = 0.9, grow_scores: str | None = None, process_group=None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        check_delta_t(delta_t)
        check_t_end(t_end)
        check_alpha(alpha)
        if grow not in GROW:
            raise ValueError(f"grow must be one of {GROW}, got {grow!r}")
        if drop not in DROP:
            raise ValueError(f"drop must be one of {DROP}, got {drop!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        model = uncompiled(model)  # a torch.compile'd model: its module, for names and the DDP check
        if process_group is None and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            process_group = model.process_group
        if process_group is None:  # FSDP2: values are DTensors sharded over a mesh
            meshes = {m.values.device_mesh for m in model.modules() if isinstance(m, SparseModule)
                      and _is_dtensor(m.values)}
            if len(meshes) > 1:
                raise ValueError("the sparse layers' values are sharded over different device meshes; pass the "
                                 "process_group whose ranks hold the data batches")
            if meshes:
                mesh = meshes.pop()
                if mesh.ndim != 1:
                    raise ValueError(f"values sharded over a {mesh.ndim}-D device mesh: pass the data-parallel "
                                     "process_group")
                process_group = mesh.get_group()
        if grow_scores is None:
            grow_scores = "exact" if process_group is not None else "backward"
        if grow_scores not in GROW_SCORES:
            raise ValueError(f"grow_scores must be one of {GROW_SCORES}, got {grow_scores!r}")
        if process_group is not None and grow_scores != "exact":
            raise ValueError("a process_group needs grow_scores='exact' (the ranks' gradients are averaged before "
                             "scoring)")
        self.grow_scores = grow_scores
        self.process_group = process_group
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseModule)]
        self.masked = masked_layers(model)
        if not self.layers and not self.masked:
            raise ValueError("model has no sparse layer: build it with rs.SparseLinear, convert it with "
                             "rs.sparsify, or mask it with rs.apply_masks")
        sharded = [name for name, m in self.masked if _is_dtensor(m.weight)]
        if sharded:
            raise NotImplementedError(f"masked layers {sharded} have sharded (DTensor) weights; masked mode is a "
                                      "single-device reference: shard compressed layers (rs.sparsify) instead")
        if grow == "momentum" and self.layers:
            raise ValueError("grow='momentum' (SNFS) needs the dense gradient of every layer at every step, which "
                             "compressed layers never form; use masked layers (rs.apply_masks) for SNFS")
        check_optimizer_holds(optimizer, {**{name: m.values for name, m in self.layers},
                                          **{name: m.weight for name, m in self.masked}})
        self.optimizer = optimizer
        self.delta_t = delta_t
        self.t_end = t_end
        self.alpha = float(alpha)
        self.grow = grow
        self.drop = drop
        self.step_count = 0
        self.momentum = float(momentum)
        self.gradient_average: dict[str, torch.Tensor] = {}  # grow="momentum": layer name -> dense moving average
        self.generator = torch.Generator().manual_seed(seed)
        self._mask_hook = register_mask_hook(optimizer, self.masked) if self.masked else None
        self.stats = dict(STATS)
        self._score_scale = 1.0
        self._arm()

    # ---------------------------------------------------------------- schedule
    def is_update_step(self, t: int) -> bool:
        """Whether step ``t`` (0-based) changes the topology."""
        return self.grow != "none" and 0 < t <= self.t_end and t % self.delta_t == 0

    def drop_count(self, t: int, n_active: int) -> int:
        """``k`` for a layer with ``n_active`` blocks at step ``t``."""
        if not self.is_update_step(t):
            return 0
        return math.floor(drop_fraction(t, alpha=self.alpha, t_end=self.t_end) * n_active)

    def _arm(self) -> None:
        """Ask the layers for grow scores in the coming backward when it belongs to an update step."""
        for _, layer in self.layers:
            k = self.drop_count(self.step_count, layer.layout.nnzb) if self.grow == "gradient" else 0
            layer.request_grow_scores(k if k > 0 else None, exact=self.grow_scores == "exact")

    # ---------------------------------------------------------------- stepping
    def step(self, scaler: torch.amp.GradScaler | None = None) -> bool:
        """Advance one training step; returns False when the topology changed (skip ``optimizer.step()``).

        With a ``torch.amp.GradScaler``, call it after ``scaler.scale(loss).backward()`` and before
        ``scaler.step(optimizer)``: it unscales the gradients (``scaler.unscale_``; do not call that
        yourself before it) and, if they hold Inf/NaN, returns True without counting the step or
        using its grow scores (``scaler.step`` then skips the optimizer and ``scaler.update()``
        lowers the scale), so the step is retried at the same ``t``; ``stats["skipped_overflow"]``
        counts them::

            scaler.scale(loss).backward()
            if sched.step(scaler):
                scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        """
        self._score_scale = 1.0
        if scaler is not None:
            if not isinstance(scaler, torch.amp.GradScaler):
                raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
            if scaler.is_enabled():
                scaler.unscale_(self.optimizer)
                if not self._gradients_finite():
                    self.stats["skipped_overflow"] += 1
                    self._arm()  # drops whatever the backward recorded for the grow scores
                    return True
                self._score_scale = 1.0 / scaler.get_scale()  # grow scores come from the scaled dY
        t = self.step_count
        updated = self.is_update_step(t)
        with torch.no_grad():
            if self.grow == "momentum":
                self._accumulate_gradient_average()
            if updated:
                for name, layer in self.layers:
                    self._update_layer(name, layer, t)
                for name, layer in self.masked:
                    self._update_masked_layer(name, layer, t)
                self.stats["updates"] += 1
            mask_gradients(self.masked)
        self.step_count = t + 1
        self._arm()
        return not updated

    def _gradients_finite(self) -> bool:
        """Whether every gradient is finite, on every rank: each rank checks its own shards, and one
        flag per device mesh of sharded (FSDP2) gradients is all-reduced, never the gradients."""
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return True
        bad = torch.stack([~torch.isfinite(_local(g)).all() for g in grads]).any()
        meshes = {id(g.device_mesh): g.device_mesh for g in grads if _is_dtensor(g)}
        if meshes:
            import torch.distributed as dist
            flag = bad.to(torch.int32)
            for mesh in meshes.values():
                for group in mesh.get_all_groups():  # every dimension of the mesh, so all its ranks agree
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            bad = flag.bool()
        return not bool(bad)

    def _update_layer(self, name: str, layer: SparseModule, t: int) -> None:
        layout = layer.layout
        k = self.drop_count(t, layout.nnzb)
        if k == 0:
            layer.take_grow_scores()
            return
        candidates = layer.take_grow_scores(self.process_group) if self.grow == "gradient" else None
        values = layer.values
        whole = _full(values.detach())  # FSDP2: gathered once for the norms and the topology move
        flat = layout.flat_index()
        dropped = _smallest(whole.float().flatten(1).norm(dim=1), flat, k)  # slots
        if self.grow == "gradient":
            grown = self._grow_by_gradient(name, layer, candidates, dropped, flat, k)
        else:
            grown = self._random_pick(layout.n_blocks, flat, flat[dropped], k)
        if grown is None:
            return
        dropped_flat = flat[dropped]
        slots = dropped[~torch.isin(dropped_flat, grown)].sort().values
        new_flat = grown[~torch.isin(grown, dropped_flat)].sort().values
        n_cols = layout.grid[1]
        # under FSDP2 the op moves the topology on the gathered copy, and each rank zeroes its own shard
        ops.update_topology(whole if _is_dtensor(values) else values, *layout.topology(), slots,
                            new_flat // n_cols, new_flat % n_cols)
        if _is_dtensor(values):
            _zero_slots(values.data, slots)
        if values.grad is not None:
            _zero_slots(values.grad, slots)
        for state in self.optimizer.state.get(values, {}).values():
            if torch.is_tensor(state) and state.shape == values.shape:
                _zero_slots(state, slots)
        self.stats["blocks_moved"] += slots.numel()

    def _grow_by_gradient(self, name, layer, candidates, dropped, flat, k):
        grad = layer.values.grad
        if candidates is None or grad is None:
            warnings.warn(f"RigL update at step {self.step_count} skipped for layer {name!r}: no gradient was "
                          "recorded for it (call loss.backward() through the layer before scheduler.step())",
                          RuntimeWarning, stacklevel=3)
            self.stats["skipped_no_gradient"] += 1
            return None
        scores, index = candidates
        valid = index >= 0
        grad = _full(grad)
        pool_scores = torch.cat([scores[valid] * self._score_scale, grad[dropped].float().flatten(1).norm(dim=1)])
        pool_index = torch.cat([index[valid], flat[dropped]])
        return self._best(name, pool_scores, pool_index, k)

    def _best(self, name, pool_scores, pool_index, k):
        """The ``k`` pool blocks of largest score, ties to the lower index; None (and a warning) on NaN/Inf
        or when every score is zero (a layer without gradient keeps its topology)."""
        if not bool(torch.isfinite(pool_scores).all()):
            warnings.warn(f"RigL update at step {self.step_count} skipped for layer {name!r}: grow scores hold "
                          "NaN or Inf", RuntimeWarning, stacklevel=4)
            self.stats["skipped_nonfinite"] += 1
            return None
        if pool_scores.numel() and not bool((pool_scores != 0).any()):
            warnings.warn(f"RigL update at step {self.step_count} skipped for layer {name!r}: its gradient is zero "
                          "(nothing to rank the blocks by), so the topology is kept", RuntimeWarning, stacklevel=4)
            self.stats["skipped_zero_gradient"] += 1
            return None
        order = torch.argsort(pool_index)
        pool_scores, pool_index = pool_scores[order], pool_index[order]
        return pool_index[torch.sort(pool_scores, descending=True, stable=True).indices[:k]]

    def _random_pick(self, n_blocks, flat, dropped_flat, k):
        """``k`` blocks drawn uniformly among the inactive and the just-dropped ones."""
        kept = torch.ones(n_blocks, dtype=torch.bool, device=flat.device)
        kept[flat] = False  # now True where inactive
        kept[dropped_flat] = True  # dropped blocks may come back
        pool = torch.nonzero(kept).flatten()
        pick = torch.randperm(pool.numel(), generator=self.generator)[:k].to(pool.device)
        return pool[pick]

    # ---------------------------------------------------------------- masked layers
    def _accumulate_gradient_average(self) -> None:
        for name, layer in self.masked:
            grad = layer.weight.grad
            if grad is None:
                continue
            average = self.gradient_average.get(name)
            if average is None:
                average = self.gradient_average[name] = torch.zeros_like(grad, dtype=torch.float32)
            average.mul_(self.momentum).add_(grad.float(), alpha=1.0 - self.momentum)

    def _update_masked_layer(self, name: str, layer: torch.nn.Module, t: int) -> None:
        mask = layer.block_mask
        active = mask.active.flatten()
        flat = torch.nonzero(active).flatten()  # sorted block indices of the active blocks
        k = self.drop_count(t, flat.numel())
        if k == 0:
            return
        dropped = _smallest(mask.block_norms(layer.weight.detach())[flat], flat, k)
        if self.grow == "random":
            grown = self._random_pick(active.numel(), flat, flat[dropped], k)
        else:
            source = layer.weight.grad if self.grow == "gradient" else self.gradient_average.get(name)
            if source is None:
                warnings.warn(f"RigL update at step {self.step_count} skipped for layer {name!r}: no gradient was "
                              "recorded for it (call loss.backward() through the layer before scheduler.step())",
                              RuntimeWarning, stacklevel=3)
                self.stats["skipped_no_gradient"] += 1
                return
            pool = ~active
            pool[flat[dropped]] = True
            pool_index = torch.nonzero(pool).flatten()
            grown = self._best(name, mask.block_norms(source)[pool_index], pool_index, k)
            if grown is None:
                return
        new_active = active.clone()
        new_active[flat[dropped]] = False
        new_active[grown] = True
        self.stats["blocks_moved"] += set_active_blocks(layer, self.optimizer, new_active)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count, "delta_t": self.delta_t, "t_end": self.t_end, "alpha": self.alpha,
            "grow": self.grow, "drop": self.drop, "generator": self.generator.get_state(), "stats": dict(self.stats),
            "momentum": self.momentum,
            "gradient_average": {name: t.clone() for name, t in self.gradient_average.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        expected = {"step_count", "delta_t", "t_end", "alpha", "grow", "drop", "generator", "stats"}
        optional = {"momentum", "gradient_average"}
        if not isinstance(state, dict) or not expected <= set(state) <= expected | optional:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a RigLScheduler.state_dict() with keys {sorted(expected | optional)}, "
                             f"got {got}")
        step_count = state["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise ValueError(f"state['step_count'] must be an int >= 0, got {step_count!r}")
        check_t_end(state["t_end"])
        check_alpha(state["alpha"])
        if state["grow"] not in GROW or state["drop"] not in DROP:
            raise ValueError(f"state has grow={state['grow']!r}, drop={state['drop']!r}; allowed {GROW}, {DROP}")
        self.step_count = step_count
        self.delta_t, self.t_end, self.alpha = state["delta_t"], state["t_end"], state["alpha"]
        self.grow, self.drop = state["grow"], state["drop"]
        self.generator.set_state(state["generator"])
        self.stats = {**STATS, **state["stats"]}  # counters added since the checkpoint start at 0
        self.momentum = float(state.get("momentum", self.momentum))
        names = {name for name, _ in self.masked}
        average = state.get("gradient_average", {})
        unknown = sorted(set(average) - names)
        if unknown:
            raise ValueError(f"state['gradient_average'] names layers {unknown} that are not masked layers of this "
                             f"model ({sorted(names)})")
        weights = dict(self.masked)
        self.gradient_average = {name: t.to(weights[name].weight.device).clone() for name, t in average.items()}
        self._arm()

    def __repr__(self) -> str:
        return (f"RigLScheduler(layers={len(self.layers) + len(self.masked)}, step={self.step_count}, "
                f"delta_t={self.delta_t}, "
                f"t_end={self.t_end}, alpha={self.alpha}, grow={self.grow!r}, drop={self.drop!r})")


def _smallest(norms: torch.Tensor, flat: torch.Tensor, k: int) -> torch.Tensor:
    """Slots of the ``k`` smallest ``norms``; ties to the lower block index ``flat``."""
    order = torch.argsort(flat)
    return order[torch.sort(norms[order], stable=True).indices[:k]]


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "device_mesh")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (sharded) DTensor; a plain tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (sharded) DTensor, all ranks calling together; a plain tensor as it is."""
    return t.full_tensor() if _is_dtensor(t) else t


def _zero_slots(t: torch.Tensor, slots: torch.Tensor) -> None:
    """``t[slots] = 0`` for a ``[nnzb, ...]`` tensor, or for the local shard of one sharded along dim 0."""
    if not _is_dtensor(t):
        t[slots] = 0
        return
    from torch.distributed.tensor import Replicate, Shard

    (placement,) = t.placements
    local = t.to_local()
    if isinstance(placement, Replicate):
        local[slots] = 0
        return
    if not (isinstance(placement, Shard) and placement.dim == 0):
        raise NotImplementedError(f"values sharded as {placement}: only Shard(0) (FSDP2's default) is supported")
    rank, world = t.device_mesh.get_local_rank(), t.device_mesh.size()
    chunk = -(-t.shape[0] // world)  # torch.chunk's split, as FSDP2 shards
    start = rank * chunk
    mine = slots[(slots >= start) & (slots < start + local.shape[0])]
    local[mine - start] = 0
