"""Gradient accumulation and DDP (gloo, 2 CPU processes): the grow scores see every micro-batch and
every rank, and the ranks' topologies equal one process's on the whole batch."""

import datetime
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rigl_sparse as rs
from rigl_sparse.ops.block_scores.reference import block_scores as reference_scores

STEPS, DELTA_T, BATCH = 9, 2, 32


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5))
    return rs.sparsify(model, density=0.3, distribution="uniform", first_dense=False, dense=("4",), block_size=8,
                       generator=torch.Generator().manual_seed(seed))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(STEPS, BATCH, 24, generator=g), torch.randint(5, (STEPS, BATCH), generator=g)


def _train(model, micro_batches=1, rank_slice=slice(None), scheduler_on=None, **scheduler_args):
    """Trains ``model`` (the scheduler built on ``scheduler_on``, by default the model itself)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = rs.RigLScheduler(model if scheduler_on is None else scheduler_on, optimizer, delta_t=DELTA_T,
                                 t_end=STEPS, alpha=0.5, **scheduler_args)
    xs, ys = _data()
    for x, y in zip(xs[:, rank_slice], ys[:, rank_slice]):
        for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            (nn.functional.cross_entropy(model(xm), ym) / micro_batches).backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return scheduler


def _topology(model):
    return {name: m.layout.flat_index().sort().values for name, m in model.named_modules()
            if isinstance(m, rs.SparseModule)}


def test_exact_grow_scores_cover_every_micro_batch():
    whole, accumulated = _model(), _model()
    s1 = _train(whole)
    s2 = _train(accumulated, micro_batches=4, grow_scores="exact")
    assert s1.stats["blocks_moved"] == s2.stats["blocks_moved"] > 0
    assert all(torch.equal(a, b) for a, b in zip(_topology(whole).values(), _topology(accumulated).values()))
    for (name, a), b in zip(whole.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_exact_scores_are_block_scores_of_the_concatenated_batch_and_backward_scores_sum_the_passes():
    torch.manual_seed(0)
    layer = rs.SparseLinear(32, 16, density=0.25, block_size=4)
    xs = [torch.randn(6, 32) for _ in range(3)]
    dys = [torch.randn(6, 16) for _ in range(3)]
    k = 5
    expected = reference_scores(torch.cat(dys), torch.cat(xs), layer.layout.block_row, layer.layout.block_col, 4, k)

    layer.request_grow_scores(k, exact=True)
    for x, dy in zip(xs, dys):
        layer(x).backward(dy)
    scores, index = layer.take_grow_scores()
    torch.testing.assert_close(scores, expected[0])
    assert torch.equal(index, expected[1])

    layer.request_grow_scores(k)  # "backward": each pass's own top k, summed block by block
    for x, dy in zip(xs, dys):
        layer(x).backward(dy)
    scores, index = layer.take_grow_scores()
    per_pass = [reference_scores(dy, x, layer.layout.block_row, layer.layout.block_col, 4, k) for x, dy in zip(xs, dys)]
    for score, block in zip(scores, index):
        by_hand = sum(s[i == block].sum() for s, i in per_pass)
        torch.testing.assert_close(score, by_hand)
    exact = dict(zip(expected[1].tolist(), expected[0].tolist()))
    for score, block in zip(scores.tolist(), index.tolist()):  # the triangle inequality, where both know the block
        if block in exact and all(block in i.tolist() for _, i in per_pass):
            assert score >= exact[block] - 1e-5


def test_grow_scores_argument_errors():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="grow_scores must be one of"):
        rs.RigLScheduler(model, optimizer, t_end=10, grow_scores="sum")
    with pytest.raises(ValueError, match="process_group needs grow_scores='exact'"):
        rs.RigLScheduler(model, optimizer, t_end=10, grow_scores="backward", process_group=object())
    layer = rs.SparseLinear(8, 8, density=0.5, block_size=4)
    with pytest.raises(TypeError, match="exact must be a bool"):
        layer.request_grow_scores(2, exact=1)


def _train_scaled_with_one_overflow(model, rank, rank_slice):
    """Like ``_train`` through a ``GradScaler``; at step 3 only rank 1 finds an Inf in its gradient shard."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=DELTA_T, t_end=STEPS, alpha=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    xs, ys = _data()
    for i, (x, y) in enumerate(zip(xs[:, rank_slice], ys[:, rank_slice])):
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if i == 3 and rank == 1:
            grad = model[2].values.grad
            (grad.to_local() if hasattr(grad, "to_local") else grad).view(-1)[0] = float("inf")
        if scheduler.step(scaler):
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return scheduler


def _worker(rank, world, init_file, out_dir, wrapper):
    """Trains ``_model()`` on this rank's share of every batch, wrapped in DDP or sharded with FSDP2
    (``"fsdp2_scaler"``: through a GradScaler, with one rank overflowing once; ``"ddp_inner"``: the scheduler
    built on the module inside the DDP wrapper; ``"ddp_corrupt"``: that, with one block moved on rank 1 only
    and DDP not broadcasting buffers, so that the ranks' topologies disagree)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # ranks that disagree fail, not hang
    try:
        model = _model()
        if wrapper in ("ddp", "ddp_inner"):
            trained = nn.parallel.DistributedDataParallel(model)
        elif wrapper == "ddp_corrupt":
            trained = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
            if rank == 1:
                layer = model[0]
                free = torch.ones(layer.layout.n_blocks, dtype=torch.bool)
                free[layer.layout.flat_index().long()] = False
                block = torch.nonzero(free)[:1].flatten()
                rs.ops.update_topology(layer.values.data, layer.layout, torch.tensor([0]),
                                       block // layer.layout.grid[1], block % layer.layout.grid[1])
        elif wrapper == "ddp_compiled":
            trained = torch.compile(nn.parallel.DistributedDataParallel(model), backend="aot_eager")
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for layer in model:
                if isinstance(layer, rs.SparseModule):
                    fully_shard(layer, mesh=mesh)
            trained = fully_shard(model, mesh=mesh)
        per_rank = BATCH // world
        rank_slice = slice(rank * per_rank, (rank + 1) * per_rank)
        if wrapper == "fsdp2_scaler":
            scheduler = _train_scaled_with_one_overflow(trained, rank, rank_slice)
        elif wrapper == "ddp_corrupt":
            with pytest.raises(RuntimeError) as error:
                _train(trained, rank_slice=rank_slice, scheduler_on=model)
            torch.save({"error": str(error.value)}, os.path.join(out_dir, f"rank{rank}.pt"))
            return
        else:
            scheduler = _train(trained, rank_slice=rank_slice, scheduler_on=model if wrapper == "ddp_inner" else None)
        assert scheduler.grow_scores == "exact" and scheduler.process_group is not None
        shards = {name: p.to_local().clone() if hasattr(p, "to_local") else p for name, p in model.named_parameters()}
        state = {name: t.full_tensor() if hasattr(t, "full_tensor") else t for name, t in model.state_dict().items()}
        torch.save({"topology": _topology(model), "state": state, "shards": shards, "stats": scheduler.stats},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _launch(wrapper, tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), wrapper), nprocs=2, join=True,
                       start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("wrapper", ["ddp", "ddp_compiled", "ddp_inner"])
def test_ddp_ranks_agree_with_one_process_on_the_whole_batch(tmp_path, wrapper):
    ranks = _launch(wrapper, tmp_path)
    assert ranks[0]["stats"]["blocks_moved"] > 0 and ranks[0]["stats"]["updates"] == 4
    for name in ranks[0]["topology"]:
        assert torch.equal(ranks[0]["topology"][name], ranks[1]["topology"][name])
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name  # bitwise, weights and topology buffers

    single = _model()
    stats = _train(single).stats
    assert stats == ranks[0]["stats"]
    for name, topology in _topology(single).items():
        assert torch.equal(topology, ranks[0]["topology"][name]), name
    for name, value in single.state_dict().items():
        torch.testing.assert_close(value, ranks[0]["state"][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_ranks_whose_topologies_disagree_are_stopped_at_the_first_update(tmp_path):
    ranks = _launch("ddp_corrupt", tmp_path)
    for rank in ranks:  # both ranks raise, naming the layer and the step
        assert f"after the topology update at step {DELTA_T}, layer '0' has a different topology" in rank["error"]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_fsdp2_shards_values_by_slot_and_agrees_with_one_process(tmp_path):
    ranks = _launch("fsdp2", tmp_path)
    single = _model()
    stats = _train(single).stats
    assert ranks[0]["stats"] == ranks[1]["stats"] == stats and stats["blocks_moved"] > 0
    for name, topology in _topology(single).items():
        assert torch.equal(topology, ranks[0]["topology"][name]) and torch.equal(topology, ranks[1]["topology"][name])
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    values = "0.values"
    nnzb = single[0].layout.nnzb
    assert ranks[0]["shards"][values].shape[0] + ranks[1]["shards"][values].shape[0] == nnzb  # split by slot


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_fsdp2_overflow_on_one_rank_is_skipped_on_every_rank(tmp_path):
    ranks = _launch("fsdp2_scaler", tmp_path)
    assert ranks[0]["stats"]["skipped_overflow"] == ranks[1]["stats"]["skipped_overflow"] == 1
    assert ranks[0]["stats"] == ranks[1]["stats"] and ranks[0]["stats"]["blocks_moved"] > 0
    for name in ranks[0]["topology"]:
        assert torch.equal(ranks[0]["topology"][name], ranks[1]["topology"][name]), name
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name


@pytest.mark.parametrize("groups, padding, kernel", [(1, 1, 3), (2, "same", 2), (1, 0, (3, 1))])
def test_exact_conv_grow_scores_are_the_accumulated_dense_gradient_block_norms(groups, padding, kernel):
    from rigl_sparse.nn.conv import weight_matrix

    torch.manual_seed(0)
    layer = rs.SparseConv2d(8, 16, kernel, padding=padding, groups=groups, stride=1, density=0.4, block_size=4)
    xs = [torch.randn(2, 8, 6, 5) for _ in range(3)]
    dys = [torch.randn_like(layer(x)) for x in xs]
    k = 6
    layer.request_grow_scores(k, exact=True)
    for x, dy in zip(xs, dys):
        layer(x).backward(dy)
    scores, index = layer.take_grow_scores()

    conv = layer.to_conv().requires_grad_()
    for x, dy in zip(xs, dys):
        conv(x).backward(dy)
    grad = weight_matrix(conv.weight.grad)  # [out, K], tap-major as the layout
    rows, cols = layer.layout.grid
    padded = torch.zeros(rows * 4, cols * 4)
    padded[:grad.shape[0], :grad.shape[1]] = grad
    norms = padded.view(rows, 4, cols, 4).pow(2).sum(dim=(1, 3)).sqrt().flatten()
    norms[layer.layout.flat_index()] = -float("inf")
    expected = torch.sort(norms, descending=True, stable=True)
    torch.testing.assert_close(scores, expected.values[:k], rtol=1e-4, atol=1e-5)
    assert torch.equal(index, expected.indices[:k])


def test_summed_pass_scores_are_said_once_and_exact_scores_need_no_warning():
    import warnings

    with pytest.warns(RuntimeWarning, match="sum of their per-pass gradient norms") as record:
        _train(_model(), micro_batches=2, grow_scores="backward")
    assert len([w for w in record if "per-pass" in str(w.message)]) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _train(_model(), micro_batches=2, grow_scores="exact")
        _train(_model(), micro_batches=1, grow_scores="backward")  # one pass: one measure
