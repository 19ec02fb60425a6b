import math

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.testing import assert_close_to_exact


def _twin(layer: rs.SparseLinear) -> nn.Linear:
    return layer.to_linear()


@pytest.mark.parametrize("in_f,out_f,b,density", [(64, 32, 16, 0.25), (50, 30, 8, 0.5), (13, 7, 4, 0.6),
                                                  (20, 20, 1, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sparse_linear_forward_and_grads_match_masked_nn_linear(in_f, out_f, b, density, dtype):
    layer = rs.SparseLinear(in_f, out_f, density=density, block_size=b, dtype=dtype)
    x = torch.randn(3, 5, in_f).to(dtype)
    g = torch.randn(3, 5, out_f).to(dtype)
    xs = x.clone().requires_grad_()
    y = layer(xs)
    assert y.shape == (3, 5, out_f) and y.dtype == dtype
    y.backward(g)
    # The masked nn.Linear twin in float64 is exact; in the layer's dtype it is torch's baseline.
    twins = []
    for twin in (_twin(layer).double(), _twin(layer)):
        xd = x.to(twin.weight.dtype).requires_grad_()
        yd = twin(xd)
        yd.backward(g.to(yd.dtype))
        # values.grad is the dense weight gradient restricted to the active blocks
        twins.append((yd.detach(), xd.grad, twin.bias.grad, layer.layout.gather(twin.weight.grad)))
    for name, got, exact, baseline in zip(("output", "input gradient", "bias gradient", "values gradient"),
                                          (y.detach(), xs.grad, layer.bias.grad, layer.values.grad), *twins):
        assert_close_to_exact(got, exact, baseline, name=name)


def test_init_matches_nn_linear_distribution_on_active_weights():
    layer = rs.SparseLinear(400, 256, density=0.5, block_size=16)
    bound = 1 / math.sqrt(400)
    v = layer.values.detach().flatten()
    assert v.abs().max() <= bound
    assert abs(v.mean()) < 0.05 * bound
    assert abs(v.std() - bound / math.sqrt(3)) < 0.02 * bound  # std of U(-a, a) is a/sqrt(3)
    assert layer.bias.abs().max() <= bound


def test_padding_is_zero_and_stays_zero_through_training():
    layer = rs.SparseLinear(13, 10, density=1.0, block_size=4)
    pad = layer.layout.padding_mask()
    assert pad is not None and torch.all(layer.values[~pad] == 0)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(5):
        layer(torch.randn(8, 13)).square().sum().backward()
        assert torch.all(layer.values.grad[~pad] == 0)
        opt.step()
        opt.zero_grad()
    assert torch.all(layer.values[~pad] == 0)
    layer.layout.validate(layer.values)


def test_from_dense_to_dense_round_trip_and_exactness_at_density_one():
    linear = nn.Linear(48, 32)
    sparse = rs.SparseLinear.from_dense(linear, density=1.0, block_size=16)
    torch.testing.assert_close(sparse.to_dense(), linear.weight.detach())
    x = torch.randn(4, 48)
    torch.testing.assert_close(sparse(x), linear(x))
    half = rs.SparseLinear.from_dense(linear, density=0.5, block_size=16)
    norms = rs.BlockSparseLayout.block_norms(linear.weight.detach(), 16).flatten()
    kept = set(half.layout.flat_index().tolist())
    assert min(norms[list(kept)]) >= max(norms[[i for i in range(norms.numel()) if i not in kept]])


def test_extra_repr_and_counts():
    layer = rs.SparseLinear(64, 32, density=0.25, block_size=16)
    text = repr(layer)
    assert "density=0.2500" in text and "block_size=16" in text
    assert layer.layout.nnzb == 2 and layer.values.shape == (2, 16, 16)


def test_state_dict_holds_values_and_topology_and_round_trips():
    a = rs.SparseLinear(64, 48, density=0.3, block_size=8, generator=torch.Generator().manual_seed(1))
    b = rs.SparseLinear(64, 48, density=0.3, block_size=8, generator=torch.Generator().manual_seed(2))
    sd = a.state_dict()
    assert {"values", "bias", "layout.block_row", "layout.block_col", "layout.row_ptr", "layout.row_slots",
            "layout.col_ptr", "layout.col_slots", "_extra_state"} == set(sd)
    assert sd["_extra_state"].tolist() == [64, 48, 8]  # the geometry: in_features, out_features, block_size
    b.load_state_dict(sd)
    x = torch.randn(5, 64)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.to_dense(), b.to_dense())


def test_bad_arguments_raise_with_names():
    with pytest.raises(ValueError, match="density"):
        rs.SparseLinear(8, 8, density=0.0, block_size=4)
    with pytest.raises(ValueError, match="in_features"):
        rs.SparseLinear(0, 8, density=0.5, block_size=4)
    with pytest.raises(TypeError, match="dtype"):
        rs.SparseLinear(8, 8, density=0.5, block_size=4, dtype=torch.int32)
    with pytest.raises(ValueError, match="meta"):
        rs.SparseLinear(8, 8, density=0.5, block_size=4, device="meta")
    layer = rs.SparseLinear(8, 8, density=0.5, block_size=4)
    with pytest.raises(ValueError, match="8 features"):
        layer(torch.randn(2, 9))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="nn.Linear"):
        rs.SparseLinear.from_dense(nn.Conv2d(3, 3, 1), density=0.5)


def test_grow_score_request_is_computed_in_backward_only_when_asked():
    layer = rs.SparseLinear(32, 32, density=0.25, block_size=8)
    x = torch.randn(6, 32)
    layer(x).sum().backward()
    assert layer.take_grow_scores() is None
    layer.request_grow_scores(3)
    with torch.no_grad():
        layer(x)
    assert layer.take_grow_scores() is None  # no backward, nothing recorded
    y = layer(x)
    y.backward(torch.ones_like(y))
    scores, index = layer.take_grow_scores()
    assert scores.shape == (3,) and index.shape == (3,)
    assert not set(index.tolist()) & set(layer.layout.flat_index().tolist())
    assert layer.take_grow_scores() is None  # taken


def test_eager_fast_path_equals_the_custom_op_path():
    torch.manual_seed(0)
    layer = rs.SparseLinear(40, 24, density=0.4, block_size=8)
    x = torch.randn(6, 40)
    g = torch.randn(6, 24)
    results = []
    for path in ("eager", "custom op"):
        xs = x.clone().requires_grad_()
        layer.zero_grad()
        if path == "eager":
            y = layer(xs)
        else:
            y = torch.ops.rigl_sparse.dsd(xs, layer.values, layer.bias, layer.layout.topology(), 24)
        y.backward(g)
        results.append((y.detach(), xs.grad, layer.values.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_forward_records_the_op_alone_for_two_dimensional_input_and_reads_reassigned_parameters():
    # A 2-D input goes to the op as it is: no reshape view in autograd's graph (a node more in every
    # forward and backward); an N-D input is flattened and its output viewed back.
    torch.manual_seed(0)
    layer = rs.SparseLinear(40, 24, density=0.4, block_size=8)
    x = torch.randn(6, 40, requires_grad=True)
    y = layer(x)
    inputs = [fn for fn, _ in y.grad_fn.next_functions if fn is not None]
    assert sum(type(fn).__name__ == "AccumulateGrad" and fn.variable is x for fn in inputs) == 1
    x3 = x.detach().view(2, 3, 40).requires_grad_()
    y3 = layer(x3)
    assert y3.shape == (2, 3, 24) and torch.equal(y3.detach().view(6, 24), y.detach())
    # The forward reads the parameters as registered now: a replaced bias, a removed one, values swapped
    # by torch.func.functional_call.
    layer.bias = nn.Parameter(torch.ones(24))
    assert torch.allclose(layer(x), x @ layer.to_dense().T + 1, atol=1e-5)
    layer.bias = None
    assert torch.allclose(layer(x), x @ layer.to_dense().T, atol=1e-5)
    values = torch.randn_like(layer.values) * layer.layout.padding_mask().float() \
        if layer.layout.padding_mask() is not None else torch.randn_like(layer.values)
    swapped = torch.func.functional_call(layer, {"values": values}, (x,))
    assert torch.allclose(swapped, x @ layer.layout.to_dense(values).T, atol=1e-5)


def test_double_backward_through_sparse_linear():
    layer = rs.SparseLinear(12, 8, density=0.5, block_size=4, dtype=torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,))
    assert torch.autograd.gradgradcheck(lambda x: layer(x).tanh(), (x,))


def test_sparse_linear_model_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(rs.SparseLinear(32, 48, density=0.3, block_size=8), nn.ReLU(),
                          rs.SparseLinear(48, 10, density=0.5, block_size=8))
    x = torch.randn(5, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_loss = model(x).square().sum()
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled_loss = compiled(x).square().sum()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_grow_recorders_of_copies_are_their_own_and_freed_ones_keep_nothing():
    import copy
    import gc

    from rigl_sparse.nn import grow

    layer = rs.SparseLinear(16, 8, density=0.5, block_size=4)
    twin = copy.deepcopy(layer)
    assert twin.grow.token != layer.grow.token and twin.grow.token in grow._KEPT
    token = twin.grow.token
    del twin
    gc.collect()
    assert token not in grow._KEPT  # dropped with its recorder, and no token is ever reused
    grow.keep_grow_inputs(torch.zeros(2, 8), torch.zeros(2, 16), token, torch.zeros((), dtype=torch.int64))
    assert token not in grow._KEPT


def test_forward_mode_and_torch_func_transforms_raise_instead_of_dropping_the_tangent():
    # The ops have reverse-mode derivatives only; the kernels themselves would drop a tangent (a zero
    # derivative, silently), so forward-mode AD and torch.func's transforms are refused by name.
    import copy

    from torch.autograd import forward_ad

    torch.manual_seed(0)
    layer = rs.SparseLinear(64, 32, density=0.5, block_size=16)
    frozen = copy.deepcopy(layer).requires_grad_(False)
    x, t = torch.randn(4, 64), torch.randn(4, 64)
    for module in (layer, frozen):
        with pytest.raises(NotImplementedError, match=r"rigl_sparse\.dsd.*no forward-mode derivative"):
            torch.func.jvp(module, (x,), (t,))
        with forward_ad.dual_level(), pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            module(forward_ad.make_dual(x, t))
        with forward_ad.dual_level():  # a dual level without tangents on the op's arguments is no obstacle
            assert torch.equal(module(x), layer(x))
    conv = rs.SparseConv2d(8, 16, 3, density=0.5, block_size=8)
    images = torch.randn(2, 8, 6, 6)
    with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        torch.func.jvp(conv, (images,), (torch.randn_like(images),))
    with pytest.raises(NotImplementedError, match=r"rigl_sparse\.dsd.*torch\.func's transforms"):
        torch.func.grad(lambda x: layer(x).sum())(x)
    with pytest.raises(NotImplementedError, match="torch.func's transforms"):
        torch.func.grad(lambda v: torch.func.functional_call(layer, {"values": v}, (x,)).sum())(layer.values.detach())
    for module in (layer, frozen):  # vmap: our refusal, not torch's missing batching rule
        with pytest.raises(NotImplementedError, match=r"rigl_sparse\.dsd.*does not support torch\.func\.vmap"):
            torch.func.vmap(module)(torch.randn(3, 4, 64))
    # Reverse mode over functional_call is the way.
    values = layer.values.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(torch.func.functional_call(layer, {"values": values}, (x,)).sum(), values)
    layer(x).sum().backward()
    assert torch.equal(grad, layer.values.grad)


def test_a_backward_pass_that_fails_records_no_grow_candidates_and_an_oom_names_the_layer(monkeypatch):
    from rigl_sparse.nn import grow

    torch.manual_seed(0)
    model = nn.Sequential(rs.SparseLinear(16, 32, density=0.5, block_size=4), nn.Tanh(),
                          rs.SparseLinear(32, 8, density=0.5, block_size=4))
    x = torch.randn(6, 16, requires_grad=True)

    def failing_hook(grad):
        raise RuntimeError("out of memory further down")

    def pass_(fail=False):
        for layer in (model[0], model[2]):
            layer.request_grow_scores(3)
        out = model(x)
        handle = x.register_hook(failing_hook) if fail else None  # autograd reaches x after both layers' taps
        try:
            out.square().sum().backward()
        finally:
            if handle is not None:
                handle.remove()

    pass_()
    clean = [layer.take_grow_scores() for layer in (model[0], model[2])]
    with pytest.raises(RuntimeError, match="out of memory further down"):
        pass_(fail=True)
    assert [layer.grow.take_candidates() for layer in (model[0], model[2])] == [None, None]  # nothing recorded
    pass_()  # the retry: one pass's candidates, as if the failed one had never run
    for layer, (scores, index) in zip((model[0], model[2]), clean):
        got = layer.take_grow_scores()
        assert layer.grow.passes_taken == 1 and torch.equal(got[1], index) and torch.equal(got[0], scores)

    def out_of_memory(*args):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(grow.ops, "block_scores", out_of_memory)
    with pytest.raises(MemoryError, match=r"grow scores of a \[8, 32\] sparse layer \(blocks of 4, top 3 .*6 rows\) "
                                          r"ran out of memory \(std::bad_alloc\); nothing was recorded"):
        pass_()


def test_summary_lists_every_weight_layer_sparse_or_dense_and_why():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    rs.sparsify(model, density=0.25, distribution="uniform", block_size=8, exclude=("4",))  # first_dense: layer 0
    rows = {r["name"]: r for r in rs.summary(model).rows}
    assert list(rows) == ["0", "2", "4"]
    assert rows["0"]["why_dense"] == "the first layer (first_dense)" and not rows["0"]["sparse"]
    assert rows["4"]["why_dense"] == "left out by include/exclude"
    layer = model[2]
    assert rows["2"]["sparse"] and rows["2"]["shape"] == (32, 64) and rows["2"]["block_size"] == 8
    assert rows["2"]["active_weights"] == layer.layout.nnz() and rows["2"]["flops_per_row"] == 2 * layer.layout.nnz()
    assert rows["2"]["parameters"] == layer.values.numel() + 32 and rows["0"]["flops_per_row"] == 2 * 64 * 64
    text = str(rs.summary(model))
    assert "SparseLinear" in text and "the first layer (first_dense)" in text
    assert f"1 of 3 weight layers sparse, {layer.layout.nnz():,} of their 2,048 weights active" in text
    conv = rs.sparsify(nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3, groups=16)), density=0.5,
                       distribution="uniform", first_dense=False, block_size=8)
    rows = {r["name"]: r for r in rs.summary(conv).rows}
    assert rows["0"]["shape"] == (16, 8, 3, 3) and rows["0"]["sparse"]
    assert rows["1"]["why_dense"] == "its groups hold 1 output channels, not whole blocks of 8"
    masked = rs.apply_masks(nn.Sequential(nn.Linear(16, 16)), density=0.5, distribution="uniform",
                            first_dense=False, block_size=4)
    (row,) = rs.summary(masked).rows
    assert row["sparse"] and row["kind"] == "Linear (masked)" and row["active_weights"] == 128


def test_sparsify_prints_the_summary_on_request_and_the_reasons_travel_with_the_model(capsys):
    import copy
    import pickle

    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    rs.sparsify(model, density=0.5, distribution="uniform", block_size=8, generator=torch.Generator().manual_seed(0))
    assert capsys.readouterr().out == ""
    rs.sparsify(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)), density=0.5, distribution="uniform",
                block_size=8, generator=torch.Generator().manual_seed(0), print_summary=True)
    assert capsys.readouterr().out == str(rs.summary(model)) + "\n"
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert rs.summary(copied).rows[0]["why_dense"] == "the first layer (first_dense)"
