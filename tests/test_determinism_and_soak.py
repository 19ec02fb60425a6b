"""Determinism (seeded topologies and SET growth across runs and processes, deterministic algorithms) and a
long run (10,000 steps, an update every 10) whose memory does not grow."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rigl_sparse as rs

TOPOLOGY_SCRIPT = """
import torch, rigl_sparse as rs
from torch import nn
model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
rs.sparsify(model, density=0.2, block_size=8, distribution="erk", generator=torch.Generator().manual_seed(5))
print([m.layout.flat_index().tolist() for m in model.modules() if isinstance(m, rs.SparseModule)])
"""


def _set_run(seed, steps=12):
    torch.manual_seed(seed)
    model = rs.sparsify(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)), density=0.3, block_size=4,
                        distribution="uniform", first_dense=False, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=3, t_end=steps, grow="random", seed=seed)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 32, generator=g), torch.randint(8, (8,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad()
    return [m.layout.flat_index().sort().values for m in model.modules() if isinstance(m, rs.SparseModule)]


def test_seeded_topology_is_the_same_in_another_process():
    runs = [subprocess.run([sys.executable, "-c", TOPOLOGY_SCRIPT], capture_output=True, text=True, check=True)
            .stdout for _ in range(2)]
    exec_globals = {}
    exec(TOPOLOGY_SCRIPT.replace("print(", "result = ("), exec_globals)
    assert runs[0] == runs[1] == f"{exec_globals['result']}\n"


def test_set_growth_is_reproducible_and_depends_on_the_seed():
    first, second, other = _set_run(0), _set_run(0), _set_run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_deterministic_algorithms_mode_trains():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_rigl_losses() for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def _rigl_losses(steps=9):
    torch.manual_seed(0)
    model = rs.sparsify(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)), density=0.3, block_size=4,
                        distribution="uniform", first_dense=False, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=3, t_end=steps)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(8, 32, generator=g), torch.randint(8, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    assert scheduler.stats["updates"] == 2  # t = 3, 6
    return losses


def _resident_bytes() -> int:
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def _soak(width, steps=10_000, delta_t=10):
    torch.manual_seed(0)
    model = rs.sparsify(nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width)),
                        density=0.25, block_size=4, distribution="uniform", first_dense=False,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=delta_t, t_end=steps, alpha=0.3)
    x, target = torch.randn(16, width), torch.randn(16, width)
    resident = {}
    for t in range(steps):
        nn.functional.mse_loss(model(x), target).backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if t + 1 in (steps // 10, steps):
            resident[t + 1] = _resident_bytes()
    for m in model.modules():
        if isinstance(m, rs.SparseModule):
            m.layout.validate(m.values)
    assert scheduler.stats["updates"] == steps // delta_t - 1 and scheduler.stats["blocks_moved"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return resident


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_soak_small():
    resident = _soak(width=32)
    growth = resident[10_000] - resident[1_000]
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 9,000 steps"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_soak_large():
    resident = _soak(width=512)
    growth = resident[10_000] - resident[1_000]
    assert growth < 32 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 9,000 steps"
