"""``rs.RigLOptimizer``: the hand-written loop inside an optimizer's ``step()``, with ``GradScaler``, LR
schedulers and checkpoints."""

import copy
import math

import pytest
import torch
from torch import nn

import rigl_sparse as rs

STEPS, DELTA_T = 12, 3


def build(seed=0, t_end=8, lr=1e-2):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    rs.sparsify(model, density=0.5, block_size=8, first_dense=False, last_dense=True,
                generator=torch.Generator().manual_seed(seed))
    inner = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = rs.RigLScheduler(model, inner, delta_t=DELTA_T, t_end=t_end, alpha=0.5)
    return model, inner, scheduler


def batches(n=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 32, generator=g), torch.randn(8, 4, generator=g)) for _ in range(n)]


def topology(model):
    return [torch.stack([m.layout.block_row, m.layout.block_col]) for m in model.modules()
            if isinstance(m, rs.SparseModule)]


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def plain(data=None):
    model, inner, scheduler = build()
    for x, y in data or batches():
        nn.functional.mse_loss(model(x), y).backward()
        if scheduler.step():
            inner.step()
        inner.zero_grad()
    return model, scheduler


def assert_same(a, b):
    for ta, tb in zip(topology(a), topology(b)):
        assert torch.equal(ta, tb)
    for wa, wb in zip(weights(a), weights(b)):
        assert torch.equal(wa, wb)


def test_step_is_the_hand_written_loop():
    reference, ref_scheduler = plain()
    assert ref_scheduler.stats["updates"] > 0 and ref_scheduler.stats["blocks_moved"] > 0
    model, inner, scheduler = build()
    optimizer = rs.RigLOptimizer(inner, scheduler)
    assert optimizer.param_groups is inner.param_groups and optimizer.state is inner.state
    for x, y in batches():
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert scheduler.stats == ref_scheduler.stats
    assert_same(model, reference)


def test_a_failed_inner_step_is_not_counted_and_the_retry_gives_the_uninterrupted_run(monkeypatch):
    reference, ref_scheduler = plain()
    model, inner, scheduler = build()
    optimizer = rs.RigLOptimizer(inner, scheduler)
    step, failed = type(inner).step, []

    def failing_once(self, *args, **kwargs):
        if len(failed) == 0 and scheduler.step_count == 5:  # step 4 (ordinary) has been counted by the scheduler
            failed.append(True)
            raise RuntimeError("the inner optimizer failed")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(type(inner), "step", failing_once)
    for x, y in batches():
        nn.functional.mse_loss(model(x), y).backward()
        try:
            optimizer.step()
        except RuntimeError:
            assert scheduler.step_count == 4  # taken back
            optimizer.step()  # the user's retry, the same gradients
        optimizer.zero_grad()
    assert failed and scheduler.step_count == ref_scheduler.step_count
    assert scheduler.stats == ref_scheduler.stats
    assert_same(model, reference)
    with pytest.raises(RuntimeError, match="step 3 cannot be undone: it updated the topology"):
        _scheduler_after(4).undo_step()


def _scheduler_after(steps):
    model, inner, scheduler = build()
    for x, y in batches(steps):
        nn.functional.mse_loss(model(x), y).backward()
        if scheduler.step():
            inner.step()
        inner.zero_grad()
    return scheduler


def test_closure_and_lr_scheduler_act_on_the_inner_optimizer():
    model, inner, scheduler = build()
    optimizer = rs.RigLOptimizer(inner, scheduler)
    lr_schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x, y = batches(1)[0]

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and scheduler.step_count == 1
    lr_schedule.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.5e-2)


@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler_gives_the_unscaled_run_bitwise(unscale_first):
    """A power-of-two loss scale is exact in fp32: the scaled run takes the same decisions and weights."""
    reference, ref_scheduler = plain()
    model, inner, scheduler = build()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    optimizer = rs.RigLOptimizer(inner, scheduler, scaler=scaler if unscale_first else None)
    for x, y in batches():
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        if unscale_first:  # as trainers do before clipping
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert scheduler.stats == ref_scheduler.stats
    assert_same(model, reference)


def test_unscaled_gradients_without_the_scaler_are_refused_on_an_update_step():
    """Unscaled before ``scaler.step`` (clipping), an update step cannot know its grow scores' scale."""
    model, inner, scheduler = build()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    optimizer = rs.RigLOptimizer(inner, scheduler)
    for t, (x, y) in enumerate(batches(DELTA_T + 1)):
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        scaler.unscale_(optimizer)
        if t < DELTA_T:  # ordinary steps rank nothing
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    with pytest.raises(RuntimeError, match="scaler=scaler"):
        scaler.step(optimizer)
    assert not hasattr(optimizer, "grad_scale") and not hasattr(optimizer, "found_inf")  # no stale scale left
    assert scheduler.step_count == DELTA_T


def test_an_overflowed_update_step_is_skipped_and_its_grow_scores_dropped():
    """Inf in the gradients of an update step: no optimizer step, the step is not counted, and the retried step
    (with clean gradients) takes the decisions of the run that never overflowed."""
    data = batches()
    reference, ref_scheduler = plain(data)
    model, inner, scheduler = build()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    optimizer = rs.RigLOptimizer(inner, scheduler)
    for t, (x, y) in enumerate(data):
        if t == DELTA_T:  # an update step: overflow once, with grow scores recorded from a poisoned pass
            before = weights(model)
            scaler.scale(nn.functional.mse_loss(model(x * math.inf), y)).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            assert scheduler.step_count == DELTA_T and scheduler.stats["skipped_overflow"] == 1
            assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert dict(scheduler.stats, skipped_overflow=0) == ref_scheduler.stats
    assert_same(model, reference)  # the halved scale is a power of two too: unscaling stays exact


def test_state_dict_carries_the_scheduler_and_resumes_bitwise():
    data = batches()
    reference, _ = plain(data)
    model, inner, scheduler = build()
    optimizer = rs.RigLOptimizer(inner, scheduler)
    for x, y in data[:5]:
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    assert saved["optimizer"]["rigl_scheduler"]["step_count"] == 5 and "param_groups" in saved["optimizer"]
    model2, inner2, scheduler2 = build(seed=3)  # another initial topology: the checkpoint replaces it
    optimizer2 = rs.RigLOptimizer(inner2, scheduler2)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    assert scheduler2.step_count == 5
    for x, y in data[5:]:
        nn.functional.mse_loss(model2(x), y).backward()
        optimizer2.step()
        optimizer2.zero_grad()
    assert_same(model2, reference)


def test_bad_state_dicts_and_arguments_are_refused_and_change_nothing():
    model, inner, scheduler = build()
    optimizer = rs.RigLOptimizer(inner, scheduler)
    with pytest.raises(ValueError, match="rigl_scheduler"):
        optimizer.load_state_dict(inner.state_dict())
    state = optimizer.state_dict()
    state["param_groups"] = state["param_groups"] * 2  # the inner optimizer refuses it ...
    state["rigl_scheduler"] = dict(state["rigl_scheduler"], step_count=7)
    with pytest.raises(ValueError):
        optimizer.load_state_dict(state)
    assert scheduler.step_count == 0  # ... and the scheduler's part, loaded first, is rolled back
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        rs.RigLOptimizer(optimizer, scheduler)
    with pytest.raises(TypeError, match="RigLScheduler"):
        rs.RigLOptimizer(inner, object())
    with pytest.raises(ValueError, match="another optimizer"):
        rs.RigLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scheduler)
    with pytest.raises(TypeError, match="GradScaler"):
        rs.RigLOptimizer(inner, scheduler, scaler=object())


def test_t_end_none_must_be_set_before_stepping():
    model, inner, scheduler = build(t_end=None)
    optimizer = rs.RigLOptimizer(inner, scheduler)
    x, y = batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="t_end is not set"):
        optimizer.step()
    from rigl_sparse.integrations import attach

    assert attach(optimizer, total_steps=100) is optimizer and scheduler.t_end == 75
    optimizer.step()
    assert scheduler.step_count == 1
    with pytest.raises(ValueError, match="loss_scale"):
        scheduler.step(loss_scale=0.0)


def test_a_failed_inner_step_after_a_pruning_step_raises_the_user_s_error(monkeypatch):
    torch.manual_seed(0)
    model = rs.apply_masks(nn.Sequential(nn.Linear(16, 16)), density=0.5, distribution="uniform", first_dense=False,
                           block_size=4, start="dense")
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.PruningScheduler(model, inner, t_start=0, t_end=4, delta_t=2)
    optimizer = rs.RigLOptimizer(inner, scheduler)

    def failing(*args, **kwargs):
        raise RuntimeError("the inner optimizer failed")

    monkeypatch.setattr(type(inner), "step", failing)
    for t in range(3):
        model(torch.randn(4, 16)).sum().backward()
        with pytest.raises(RuntimeError, match="the inner optimizer failed"):  # not the undo's own complaint
            optimizer.step()
        optimizer.zero_grad()
    assert scheduler.stats["pruning_steps"] >= 1  # a pruning step stays counted
