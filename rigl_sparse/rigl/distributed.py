"""What the schedulers need of ``torch.distributed``: the data-parallel group, sharded (DTensor) tensors,
and the averaging of grow-score gradient bands.  Nothing else in the package communicates."""

from __future__ import annotations

import logging
import sys

import torch

from rigl_sparse.nn import SparseModule


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (which exists only once that module is loaded)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (sharded) DTensor; a plain tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (sharded) DTensor, all ranks calling together; a plain tensor as it is."""
    return t.full_tensor() if is_dtensor(t) else t


def zero_slots(t: torch.Tensor, slots: torch.Tensor) -> None:
    """``t[slots] = 0`` for a ``[nnzb, ...]`` tensor, or for the local shard of one sharded along dim 0."""
    if not is_dtensor(t):
        t[slots] = 0
        return
    from torch.distributed.tensor import Replicate, Shard

    (placement,) = t.placements
    part = t.to_local()
    if isinstance(placement, Replicate):
        part[slots] = 0
        return
    if not (isinstance(placement, Shard) and placement.dim == 0):
        raise NotImplementedError(f"values sharded as {placement}: only Shard(0) (FSDP2's default) is supported")
    rank, world = t.device_mesh.get_local_rank(), t.device_mesh.size()
    chunk = -(-t.shape[0] // world)  # torch.chunk's split, as FSDP2 shards
    start = rank * chunk
    mine = slots[(slots >= start) & (slots < start + part.shape[0])]
    part[mine - start] = 0


def data_parallel_group(model: torch.nn.Module):
    """The process group whose ranks hold the data batches: a ``DistributedDataParallel`` model's, or that of
    the 1-D device mesh the sparse layers' values are sharded over (FSDP2); else None."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.process_group
    meshes = {m.values.device_mesh for m in model.modules() if isinstance(m, SparseModule) and is_dtensor(m.values)}
    if len(meshes) > 1:
        raise ValueError("the sparse layers' values are sharded over different device meshes; pass the "
                         "process_group whose ranks hold the data batches")
    if not meshes:
        return None
    mesh = meshes.pop()
    if mesh.ndim != 1:
        raise ValueError(f"values sharded over a {mesh.ndim}-D device mesh: pass the data-parallel process_group")
    return mesh.get_group()


def scheduling_group(model: torch.nn.Module):
    """The process group a scheduler scores grow candidates over when it is given none: the data-parallel
    group of the model (``data_parallel_group``); failing that, when ``torch.distributed`` runs more than one
    rank, the default group (said once in a log line): the scheduler may be built on the module inside a
    ``DistributedDataParallel`` wrapper, and ranks that scored their own share of the batch would take
    different decisions.  Ranks that train models of their own pass a ``process_group`` of one rank."""
    group = data_parallel_group(model)
    dist = torch.distributed
    if group is not None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return group
    logging.getLogger("rigl_sparse").warning(
        "RigLScheduler: torch.distributed runs %d ranks and the model is neither DistributedDataParallel nor "
        "sharded: grow scores are averaged over the default process group (exact scores), as DDP averages "
        "gradients; pass process_group= to choose another", dist.get_world_size())
    return dist.group.WORLD


def check_same_topology(targets, process_group, step: int) -> None:
    """Raise ``RuntimeError`` naming the first layer whose topology differs between the ranks of
    ``process_group`` after the update at ``step`` (every rank calls this together): one all-reduce of a
    checksum per layer of its blocks in slot order."""
    sums = []
    for target in targets:
        flat = target.active().long()
        slots = torch.arange(flat.numel(), device=flat.device)
        mixed = (flat * 1_000_003 + slots * 7_919 + 1) % 2_147_483_647  # sums stay far below 2**63
        sums.append(torch.stack([mixed.sum(), flat.new_tensor(flat.numel())]))
    local_sums = torch.stack(sums)
    both = torch.cat([local_sums, -local_sums])  # max of both halves: the ranks' maximum and minimum
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX, group=process_group)
    highest, lowest = both[:len(targets)], -both[len(targets):]
    for target, high, low in zip(targets, highest, lowest):
        if not torch.equal(high, low):
            raise RuntimeError(
                f"RigLScheduler: after the topology update at step {step}, layer {target.name!r} has a different "
                "topology on some ranks of the process group (block checksums differ). Every rank must build the "
                "same model from the same seed, load the same checkpoint, and call step() on every step.")


def average_over(grad: torch.Tensor, process_group) -> torch.Tensor:
    """``grad`` averaged in place over the ranks of ``process_group`` (as DDP averages gradients)."""
    torch.distributed.all_reduce(grad, group=process_group)
    return grad.div_(torch.distributed.get_world_size(process_group))


def take_grow_scores(layer: SparseModule, process_group):
    """The layer's grow candidates; with a process group (exact mode), those of the gradient averaged over
    its ranks, one band of block rows at a time (every rank of the group calls this together)."""
    if process_group is None:
        return layer.take_grow_scores()
    return layer.exact_grow_scores(layer.grow.take_inputs(), lambda band: average_over(band, process_group))


def gradients_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is finite, on every rank: each rank checks its own shards, and one flag per
    device mesh of sharded (FSDP2) gradients is all-reduced, never the gradients."""
    if not grads:
        return True
    bad = torch.stack([~torch.isfinite(local(g)).all() for g in grads]).any()
    meshes = {id(g.device_mesh): g.device_mesh for g in grads if is_dtensor(g)}
    if meshes:
        import torch.distributed as dist

        flag = bad.to(torch.int32)
        for mesh in meshes.values():
            for group in mesh.get_all_groups():  # every dimension of the mesh, so all its ranks agree
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        bad = flag.bool()
    return not bool(bad)
