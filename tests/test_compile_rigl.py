"""RigL under torch.compile: fullgraph forward and backward, the same decisions as eager, and one graph
per variant (with and without grow scores) however many topology updates happen."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import rigl_sparse as rs
from rigl_sparse.nn.conv import weight_matrix
from rigl_sparse.nn.grow import kept_pairs


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8))
    return rs.sparsify(model, density=0.4, block_size=8, distribution="uniform", first_dense=False, dense=("4",),
                       generator=torch.Generator().manual_seed(0))


def _train(model, step_fn, steps=16, micro_batches=1, **scheduler_args):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=14, alpha=0.5, **scheduler_args)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=g), torch.randint(8, (16,), generator=g)
        for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            (nn.functional.cross_entropy(step_fn(xm), ym) / micro_batches).backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad()
    return scheduler


def test_compiled_rigl_matches_eager_without_recompiling():
    eager, compiled = _model(), _model()
    torch._dynamo.reset()
    counters.clear()
    s1 = _train(eager, eager)
    s2 = _train(compiled, torch.compile(compiled, fullgraph=True, backend="aot_eager"))
    assert s1.stats == s2.stats and s2.stats["updates"] == 7 and s2.stats["blocks_moved"] > 20
    for a, b in zip(eager.modules(), compiled.modules()):
        if isinstance(a, rs.SparseModule):
            assert torch.equal(a.layout.flat_index().sort().values, b.layout.flat_index().sort().values)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert counters["stats"]["unique_graphs"] == 2  # with and without the grow tap, across 7 updates


def test_grow_tap_op_is_the_identity_and_records_block_scores():
    torch.manual_seed(0)
    layer = rs.SparseLinear(32, 16, density=0.25, block_size=4)
    layout = layer.layout
    x, dy = torch.randn(6, 32), torch.randn(6, 16)
    y = torch.randn(6, 16, requires_grad=True)
    scores = torch.full((layout.nnzb,), -float("inf"))
    index = torch.full((layout.nnzb,), -1, dtype=torch.int64)
    passes = torch.zeros((), dtype=torch.int64)
    out = rs.ops.grow_tap(y, x, layout.block_row, layout.block_col, 4, scores, index, passes)
    assert torch.equal(out, y)
    out.backward(dy)
    assert torch.equal(y.grad, dy) and int(passes) == 1
    expected = rs.ops.block_scores(dy, x, layout, layout.nnzb)
    torch.testing.assert_close(scores, expected[0])
    assert torch.equal(index, expected[1])
    torch.library.opcheck(torch.ops.rigl_sparse.grow_tap.default,
                          (y, x, layout.block_row, layout.block_col, 4, scores.clone(), index.clone(),
                           passes.clone()), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("groups", [1, 2])
def test_compiled_sparse_cnn_matches_eager(groups):
    def cnn():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=groups), nn.ReLU(),
                              nn.Conv2d(16, 16, 3, padding=1, groups=groups), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
        return rs.sparsify(model, density=0.5, block_size=4, distribution="uniform", first_dense=False, dense=("6",),
                           generator=torch.Generator().manual_seed(0))

    def run(model, step_fn):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=6, alpha=0.5)
        g = torch.Generator().manual_seed(1)
        for _ in range(7):
            x, y = torch.randn(4, 8, 6, 6, generator=g), torch.randint(8, (4,), generator=g)
            nn.functional.cross_entropy(step_fn(x), y).backward()
            if scheduler.step():
                optimizer.step()
            optimizer.zero_grad()
        return scheduler

    eager, compiled = cnn(), cnn()
    s1 = run(eager, eager)
    s2 = run(compiled, torch.compile(compiled, fullgraph=True, backend="aot_eager"))
    assert s1.stats == s2.stats and s2.stats["blocks_moved"] > 0
    for a, b in zip(eager.modules(), compiled.modules()):
        if isinstance(a, rs.SparseModule):
            assert torch.equal(a.layout.flat_index().sort().values, b.layout.flat_index().sort().values)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_grow_tap_sums_several_passes_block_by_block():
    torch.manual_seed(0)
    layer = rs.SparseLinear(32, 16, density=0.25, block_size=4)
    layout = layer.layout
    n = layout.nnzb
    scores, index = torch.full((n,), -float("inf")), torch.full((n,), -1, dtype=torch.int64)
    passes = torch.zeros((), dtype=torch.int64)
    per_pass = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        x, dy = torch.randn(6, 32, generator=g), torch.randn(6, 16, generator=g)
        y = torch.randn(6, 16, requires_grad=True)
        rs.ops.grow_tap(y, x, layout.block_row, layout.block_col, 4, scores, index, passes).backward(dy)
        per_pass.append(rs.ops.block_scores(dy, x, layout, n))
    assert int(passes) == 2
    by_block = {}
    for s, i in per_pass:
        for score, block in zip(s.tolist(), i.tolist()):
            if block >= 0:
                by_block[block] = by_block.get(block, 0.0) + score
    expected = sorted(by_block.items(), key=lambda item: (-item[1], item[0]))[:n]
    assert index.tolist() == [block for block, _ in expected]
    torch.testing.assert_close(scores, torch.tensor([score for _, score in expected]))


def test_compiled_exact_grow_scores_equal_eager_over_micro_batches():
    """grow_scores="exact" (what DDP and FSDP2 use) in a compiled graph: the kept dY and X of 4
    micro-batches give the same decisions and weights as eager training on whole batches."""
    eager, compiled = _model(), _model()
    s1 = _train(eager, eager)
    s2 = _train(compiled, torch.compile(compiled, fullgraph=True, backend="aot_eager"), micro_batches=4,
                grow_scores="exact")
    assert s1.stats == s2.stats and s2.stats["blocks_moved"] > 10
    for a, b in zip(eager.modules(), compiled.modules()):
        if isinstance(a, rs.SparseModule):
            assert torch.equal(a.layout.flat_index().sort().values, b.layout.flat_index().sort().values)
    assert kept_pairs() == 0  # nothing left behind
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("groups", [1, 2])
def test_compiled_exact_conv_grow_scores_are_the_accumulated_gradient(groups):
    torch.manual_seed(0)
    layer = rs.SparseConv2d(8, 16, 3, padding=1, groups=groups, density=0.4, block_size=4)
    dense = layer.to_conv()
    k = layer.layout.n_blocks - layer.layout.nnzb
    layer.request_grow_scores(k, exact=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    xs = torch.randn(3, 2, 8, 6, 6)
    for x in xs:
        compiled(x).square().sum().backward()
        dense(x).square().sum().backward()
    scores, index = layer.take_grow_scores()
    grad, b = weight_matrix(dense.weight.grad), 4
    norms = grad.view(grad.shape[0] // b, b, -1, b).transpose(1, 2).flatten(2).norm(dim=2).flatten()
    inactive = torch.nonzero(~layer.layout.active_mask().flatten()).flatten()
    order = torch.sort(norms[inactive], descending=True, stable=True).indices[:k]
    assert torch.equal(index, inactive[order])
    torch.testing.assert_close(scores, norms[inactive][order], rtol=1e-4, atol=1e-5)


def test_conv_op_passes_opcheck():
    layer = rs.SparseConv2d(8, 8, 3, padding=1, density=0.5, block_size=4)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    from rigl_sparse.ops.conv2d import geometry_list

    args = (x, layer.values, layer.bias, layer.layout.topology(), 8, geometry_list(layer._geometry), None, None,
            None, 0)
    torch.library.opcheck(torch.ops.rigl_sparse.conv2d.default, args)
