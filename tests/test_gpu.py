"""The reference path on a CUDA device (run on a GPU machine with `pytest -m gpu`)."""

import pytest
import torch
from op_cases import check_backend, make_case
from torch import nn

import rigl_sparse as rs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,b,density", [((256, 512), 32, 0.1), ((300, 200), 16, 0.3), ((1024, 1024), 64, 0.05)])
def test_reference_ops_on_cuda_meet_the_tolerance_rule(dtype, shape, b, density):
    layout, values, x, dy, bias = make_case(*shape, b, density, 77, dtype, "cuda")
    check_backend("reference", layout, values, x, dy, bias, k=8)


def test_rigl_training_on_cuda_keeps_invariants():
    torch.manual_seed(0)
    model = rs.sparsify(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).cuda(), density=0.1,
                        block_size=32, distribution="uniform", first_dense=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = rs.RigLScheduler(model, opt, delta_t=5, t_end=40)
    x, y = torch.randn(64, 256, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    first = None
    for _ in range(50):
        loss = nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        loss.backward()
        if sched.step():
            opt.step()
        opt.zero_grad()
    assert loss.item() < first
    assert sched.stats["blocks_moved"] > 0
    for m in model.modules():
        if isinstance(m, rs.SparseLinear):
            assert m.values.is_cuda and m.layout.block_row.is_cuda
            m.layout.validate(m.values)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_autocast_rigl_on_cuda(dtype):
    """The single-GPU path of the scale-out features: torch.compile (inductor) + autocast + GradScaler + RigL,
    against the same training in eager mode."""

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
        rs.sparsify(model, density=0.25, block_size=32, distribution="uniform", first_dense=False, dense=("4",),
                    generator=torch.Generator().manual_seed(0))
        return model.cuda()

    def train(model, step_fn):
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        scheduler = rs.RigLScheduler(model, optimizer, delta_t=4, t_end=16, alpha=0.3)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 256, generator=g).cuda(), torch.randint(10, (64,), generator=g).cuda()  # memorised
        losses = []
        for _ in range(20):
            with torch.autocast("cuda", dtype=dtype):
                loss = nn.functional.cross_entropy(step_fn(x), y)
            scaler.scale(loss).backward()
            if scheduler.step(scaler):
                scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return scheduler, losses

    eager, compiled = build(), build()
    s1, l1 = train(eager, eager)
    s2, l2 = train(compiled, torch.compile(compiled, fullgraph=True))
    assert s2.stats["updates"] == s1.stats["updates"] == 4 and s2.stats["blocks_moved"] > 0
    assert all(torch.isfinite(p).all() for p in compiled.parameters())
    assert l2[-1] < l2[0] - 0.5 and abs(l2[-1] - l1[-1]) < 0.1  # same recipe, rounding apart
