"""The sparse layers as the schedulers see them: one adapter per layer kind, one update path for all.

A target exposes its active blocks and their magnitudes, the pool a grow criterion ranks (inactive
blocks and the just-dropped ones, with their gradient scores) and ``move(dropped, grown, optimizer)``.
``CompressedTarget`` adapts a ``SparseModule`` (compressed values, scores from the backward's grow
candidates), ``MaskedTarget`` a dense layer under a ``BlockMask`` (scores from its dense gradient).
Blocks are named by their row-major flat index; the scheduler reads ``flat = active()`` once per update and
passes it on, and ``dropped`` are positions into it.
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import nn

from rigl_sparse import ops
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.nn import SparseModule, guard_state_loading
from rigl_sparse.rigl.criteria import ActiveBlocks
from rigl_sparse.rigl.distributed import full, is_dtensor, zero_slots
from rigl_sparse.rigl.masked import masked_layers, set_active_blocks


# Said once (Python shows a warning once per place and text): with grow_scores="backward" the pool mixes
# two measures when several backward passes preceded the update.
SUMMED_PASSES = (
    "RigLScheduler: with grow_scores='backward' and several backward passes before an update step, inactive "
    "blocks are ranked by the sum of their per-pass gradient norms (an upper bound of the accumulated "
    "gradient's norm) and the blocks just dropped by their accumulated gradient's norm, which puts the dropped "
    "ones at a disadvantage; grow_scores='exact' ranks both by the accumulated gradient")


def uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped, else ``model``: schedulers name layers and find DDP on it."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded wherever a compiled module exists
    while eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        model = model._orig_mod
    return model


def check_optimizer_holds(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Raise unless every tensor of ``tensors`` (name -> parameter) is in ``optimizer``."""
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in tensors.items() if id(p) not in in_optimizer]
    if missing:
        raise ValueError(f"optimizer does not hold the weights of sparse layers {missing}; create the optimizer "
                         "from model.parameters() after sparsifying or masking")


def smallest(norms: torch.Tensor, flat: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` smallest ``norms``; ties to the lower block index ``flat``."""
    order = torch.argsort(flat)
    return order[torch.sort(norms[order], stable=True).indices[:k]]


def not_kept(n_blocks: int, flat: torch.Tensor, dropped_flat: torch.Tensor) -> torch.Tensor:
    """``[m]`` ascending: the blocks a layer may grow, its inactive blocks and the just dropped."""
    pool = torch.ones(n_blocks, dtype=torch.bool, device=flat.device)
    pool[flat] = False  # now True where inactive
    pool[dropped_flat] = True  # dropped blocks may come back
    return torch.nonzero(pool).flatten()


def accumulate_average(masked, averages: dict[str, torch.Tensor], momentum: float) -> None:
    """SNFS: each masked layer's exponential moving average of its dense gradient, in ``averages``."""
    for name, layer in masked:
        grad = layer.weight.grad
        if grad is None:
            continue
        average = averages.get(name)
        if average is None:
            average = averages[name] = torch.zeros_like(grad, dtype=torch.float32)
        average.mul_(momentum).add_(grad.float(), alpha=1.0 - momentum)


class CompressedTarget:
    """A ``SparseModule``: its active blocks are its slots, in slot order."""

    def __init__(self, name: str, layer: SparseModule):
        self.name, self.layer = name, layer
        self._whole = None

    @property
    def parameter(self) -> torch.Tensor:
        return self.layer.values

    @property
    def n_blocks(self) -> int:
        return self.layer.layout.n_blocks

    def active(self) -> torch.Tensor:
        return self.layer.layout.flat_index()

    def _gathered(self) -> torch.Tensor:
        """The values whole (FSDP2: gathered once per update, for the drop scores and the move)."""
        if self._whole is None:
            self._whole = full(self.layer.values.detach())
        return self._whole

    def magnitudes(self, flat) -> torch.Tensor:
        return self._gathered().float().flatten(1).norm(dim=1)

    def release(self) -> None:
        self._whole = None

    def active_blocks(self, flat) -> ActiveBlocks:
        self.release()  # the values gathered afresh for this update (an aborted one may have left a copy)

        def grads():
            grad = self.layer.values.grad
            return None if grad is None else full(grad)
        return ActiveBlocks(flat, lambda: self.magnitudes(flat), self._gathered, grads)

    def gradient_pool(self, flat, dropped, candidates, score_scale: float):
        """(scores, blocks) of the grow candidates and the dropped slots' own gradient norms, or None
        without a gradient."""
        grad = self.layer.values.grad
        if candidates is None or grad is None:
            return None
        if self.layer.grow.passes_taken > 1:
            warnings.warn(SUMMED_PASSES, RuntimeWarning, stacklevel=5)
        scores, index = candidates
        valid = index >= 0
        return (torch.cat([scores[valid] * score_scale, full(grad)[dropped].float().flatten(1).norm(dim=1)]),
                torch.cat([index[valid], flat[dropped]]))

    @staticmethod
    def _moving(flat, dropped, grown):
        """(the slots that change block, sorted; the blocks they take, sorted)."""
        dropped_flat = flat[dropped]
        slots = dropped[~torch.isin(dropped_flat, grown)].sort().values
        return slots, grown[~torch.isin(grown, dropped_flat)].sort().values

    def undo_of_move(self, flat, dropped, grown, optimizer):
        """What ``move`` with these arguments changes, kept aside: returns a function that puts it back (or None
        for values sharded by FSDP2, whose move cannot be taken back here)."""
        layout, values = self.layer.layout, self.layer.values
        if is_dtensor(values):
            return None
        slots, _ = self._moving(flat, dropped, grown)
        rows, cols = layout.block_row.clone(), layout.block_col.clone()
        kept = [(t, t[slots].clone()) for t in [values.data, values.grad, *slot_states(self.name, values, optimizer)]
                if t is not None]

        def undo():
            with torch.no_grad():
                layout.block_row.copy_(rows)
                layout.block_col.copy_(cols)
                layout.rebuild_views()
                for tensor, rows_of_slots in kept:
                    tensor[slots] = rows_of_slots
        return undo

    def move(self, flat, dropped, grown, optimizer) -> int:
        """Grown blocks into the freed slots (value, gradient and optimizer state zero); a regrown block
        keeps its slot.  Returns the number of slots moved."""
        layout, values = self.layer.layout, self.layer.values
        slots, new_flat = self._moving(flat, dropped, grown)
        n_cols = layout.grid[1]
        whole = self._gathered()
        # under FSDP2 the op moves the topology on the gathered copy, and each rank zeroes its own shard
        ops.update_topology(whole if is_dtensor(values) else values, layout, slots, new_flat // n_cols,
                            new_flat % n_cols)
        if is_dtensor(values):
            zero_slots(values.data, slots)
        if values.grad is not None:
            zero_slots(values.grad, slots)
        for state in slot_states(self.name, values, optimizer):
            zero_slots(state, slots)
        return slots.numel()

    def check_optimizer_state(self, optimizer) -> None:
        slot_states(self.name, self.layer.values, optimizer)


class MaskedTarget:
    """A dense layer under a ``BlockMask``: its active blocks in ascending order."""

    def __init__(self, name: str, layer: nn.Module):
        self.name, self.layer = name, layer

    @property
    def parameter(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def n_blocks(self) -> int:
        return self.layer.block_mask.active.numel()

    def active(self) -> torch.Tensor:
        return torch.nonzero(self.layer.block_mask.active.flatten()).flatten()

    def magnitudes(self, flat) -> torch.Tensor:
        return self.layer.block_mask.block_norms(self.layer.weight.detach())[flat]

    def release(self) -> None:
        pass

    def active_blocks(self, flat) -> ActiveBlocks:
        mask, weight = self.layer.block_mask, self.layer.weight

        def blocks(tensor):
            return None if tensor is None else BlockSparseLayout.blocks_of(mask.matrix(tensor), mask.block_size)[flat]
        return ActiveBlocks(flat, lambda: self.magnitudes(flat), lambda: blocks(weight.detach()),
                            lambda: blocks(weight.grad))

    def gradient_pool(self, flat, dropped, source, score_scale: float = 1.0):
        """(scores, blocks) of every inactive and dropped block by the block norms of ``source`` (the dense
        gradient, or its moving average), or None without one."""
        if source is None:
            return None
        index = not_kept(self.n_blocks, flat, flat[dropped])
        return self.layer.block_mask.block_norms(source)[index], index

    def check_optimizer_state(self, optimizer) -> None:
        weight = self.layer.weight
        for key, state in optimizer.state.get(weight, {}).items():
            if torch.is_tensor(state) and state.dim() > 0 and state.shape != weight.shape:
                raise NotImplementedError(
                    f"masked layer {self.name!r}: the optimizer's state {key!r} of shape {tuple(state.shape)} is "
                    f"shared by the blocks of the {tuple(weight.shape)} weight (factored, as Adafactor's), so a "
                    "grown block's state cannot be zeroed alone; use compressed layers (rs.sparsify), whose "
                    "factored state is per block")

    def _new_active(self, flat, dropped, grown):
        new_active = self.layer.block_mask.active.flatten().clone()
        new_active[flat[dropped]] = False
        new_active[grown] = True
        return new_active

    def undo_of_move(self, flat, dropped, grown, optimizer):
        """What ``move`` changes (the mask, and the weight, gradient and optimizer state of the blocks that change),
        kept aside: returns a function that puts it back."""
        mask, weight = self.layer.block_mask, self.layer.weight
        active = mask.active.clone()
        changed = mask.expand((active.flatten() ^ self._new_active(flat, dropped, grown)).view(mask.grid))
        tensors = [weight.data, weight.grad, *(state for state in optimizer.state.get(weight, {}).values()
                                               if torch.is_tensor(state) and state.shape == weight.shape)]
        kept = [(t, t[changed].clone()) for t in tensors if t is not None]

        def undo():
            with torch.no_grad():
                mask.active.copy_(active)
                for tensor, entries in kept:
                    tensor[changed] = entries
        return undo

    def move(self, flat, dropped, grown, optimizer) -> int:
        return set_active_blocks(self.layer, optimizer, self._new_active(flat, dropped, grown))


def slot_states(name: str, values: torch.Tensor, optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors of a compressed layer's ``values`` that hold one entry per slot (leading
    dimension ``nnzb``, whatever the others: Adam's moments, Adafactor's factored ``[nnzb, b, 1]`` and
    ``[nnzb, 1, b]``); scalars (step counts) are left alone, and any other shape is refused: its grown blocks'
    state could not be zeroed."""
    states = []
    for key, state in optimizer.state.get(values, {}).items():
        if not torch.is_tensor(state) or state.dim() == 0:
            continue
        if state.shape[0] != values.shape[0]:
            raise NotImplementedError(f"sparse layer {name!r}: the optimizer's state {key!r} of shape "
                                      f"{tuple(state.shape)} has no entry per block slot ({values.shape[0]}), so a "
                                      "grown block's state cannot be zeroed")
        states.append(state)
    return states


def find_targets(model: nn.Module) -> list:
    """Every sparse layer of ``model``: compressed ones first, then masked ones, each in module order.  The
    model's ``load_state_dict`` then checks every sparse layer's entries before it copies any
    (``guard_state_loading``)."""
    guard_state_loading(model)
    return ([CompressedTarget(name, m) for name, m in model.named_modules() if isinstance(m, SparseModule)]
            + [MaskedTarget(name, m) for name, m in masked_layers(model)])
