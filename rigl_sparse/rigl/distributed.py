"""What the schedulers need of ``torch.distributed``: the data-parallel group, sharded (DTensor) tensors,
and the averaging of grow-score gradient bands.  Nothing else in the package communicates."""

from __future__ import annotations

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
