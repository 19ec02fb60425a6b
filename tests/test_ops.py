"""Every op against a dense masked computation, over shapes, block sizes, densities and dtypes."""

import contextlib
import itertools
import math

import pytest
import torch

import rigl_sparse as rs
from rigl_sparse import ops
from rigl_sparse.ops.block_scores import reference as block_scores_reference
from rigl_sparse.testing import assert_matches_dense, assert_top_k_matches, masked_dense_op, random_block_sparse

SHAPES = [(16, 32), (30, 50), (64, 48), (7, 13)]  # (out, K), incl. ragged and non-square
BLOCKS = [1, 4, 16, 32]
DENSITIES = [0.1, 0.5, 1.0]
ROWS = [1, 9, 33]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

GRID = [(shape, b, d) for shape, b, d in itertools.product(SHAPES, BLOCKS, DENSITIES)
        if not (b == 1 and max(shape) > 32)]  # keep b=1 cases small

# Each matmul op is checked on the reference (the specification) and on whatever the registry picks
# for CPU tensors (the native kernels where they take the arguments, else the reference).
BACKENDS = ["reference", "selected"]
pytestmark = pytest.mark.filterwarnings("ignore:rigl_sparse.*does not support these arguments:RuntimeWarning")


def _on(backend):
    return rs.use_backend("reference") if backend == "reference" else contextlib.nullcontext()


def _inputs(shape, b, density, M, dtype, seed=0):
    layout, values = random_block_sparse(shape, b, density, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(M, shape[1], generator=g).to(dtype)
    dy = torch.randn(M, shape[0], generator=g).to(dtype)
    bias = torch.randn(shape[0], generator=g).to(dtype)
    return layout, values, x, dy, bias


@pytest.mark.parametrize("shape,b,density", GRID)
@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dsd_matches_masked_dense(shape, b, density, M, backend):
    for dtype in DTYPES:
        layout, values, x, _, bias = _inputs(shape, b, density, M, dtype)
        with _on(backend):
            y = ops.dsd(x, values, layout, bias)
            y_nobias = ops.dsd(x, values, layout)
        assert y.dtype == dtype and y.shape == (M, shape[0])
        linear = masked_dense_op("dsd", layout)
        assert_matches_dense(y, linear, x, values, bias, name=f"dsd {dtype}")
        assert_matches_dense(y_nobias, linear, x, values, name=f"dsd {dtype} without bias")


@pytest.mark.parametrize("shape,b,density", GRID)
@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dds_matches_masked_dense(shape, b, density, M, backend):
    for dtype in DTYPES:
        layout, values, _, dy, _ = _inputs(shape, b, density, M, dtype)
        with _on(backend):
            dx = ops.dds(dy, values, layout)
        assert dx.dtype == dtype and dx.shape == (M, shape[1])
        assert_matches_dense(dx, masked_dense_op("dds", layout), dy, values, name=f"dds {dtype}")


@pytest.mark.parametrize("shape,b,density", GRID)
@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sdd_matches_masked_dense(shape, b, density, M, backend):
    for dtype in DTYPES:
        layout, values, x, dy, _ = _inputs(shape, b, density, M, dtype)
        with _on(backend):
            dv = ops.sdd(dy, x, layout)
        assert dv.dtype == dtype and dv.shape == values.shape
        assert_matches_dense(dv, masked_dense_op("sdd", layout), dy, x, name=f"sdd {dtype}")
        pad = layout.padding_mask()
        if pad is not None:
            assert torch.all(dv[~pad] == 0)


def _dense_top_k(dy, x, layout, k):
    """Brute force: block norms of the dense gradient, inactive only, ties to the lower index."""
    from rigl_sparse.layout import BlockSparseLayout

    scores = BlockSparseLayout.block_norms(dy.double().T @ x.double(), layout.block_size).flatten()
    scores[layout.flat_index()] = -math.inf
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))[:k]
    order = [i for i in order if scores[i] != -math.inf]
    return scores[order], torch.tensor(order, dtype=torch.int64)


@pytest.mark.parametrize("shape,b,density", [g for g in GRID if g[2] < 1.0])
@pytest.mark.parametrize("k", [1, 5, 1000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_block_scores_top_k_of_inactive_blocks(shape, b, density, k, backend):
    for dtype in DTYPES:
        layout, values, x, dy, _ = _inputs(shape, b, density, 17, dtype)
        with _on(backend):
            scores, index = ops.block_scores(dy, x, layout, k)
        assert_top_k_matches(scores, index, dy, x, layout.block_row, layout.block_col, b, k)
        if dtype == torch.float32:  # fp32 ties resolve as in fp64 at these sizes: the very same blocks
            exp_index = _dense_top_k(dy, x, layout, k)[1]
            assert exp_index.numel() == min(k, layout.n_blocks - layout.nnzb)
            assert torch.equal(index[: exp_index.numel()], exp_index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_scores_with_no_blocks_returns_the_empty_tail(backend):
    none = torch.zeros(0, dtype=torch.int32)
    for dy, x in ((torch.zeros(9, 0), torch.randn(9, 32)), (torch.randn(9, 32), torch.zeros(9, 0))):
        with _on(backend):
            scores, index = torch.ops.rigl_sparse.block_scores(dy, x, none, none, 16, 3)
        assert index.tolist() == [-1] * 3 and torch.all(scores == -math.inf)


def test_block_scores_streams_in_bands(monkeypatch):
    layout, _, x, dy, _ = _inputs((64, 48), 4, 0.3, 11, torch.float32)
    whole = ops.block_scores(dy, x, layout, 20)
    monkeypatch.setattr(block_scores_reference, "_BAND_ELEMENTS", 4 * 4 * 12)  # one block row per band
    banded = ops.block_scores(dy, x, layout, 20)
    assert torch.equal(whole[1], banded[1])
    torch.testing.assert_close(whole[0], banded[0])


def test_block_scores_ties_go_to_lower_index_and_nan_sorts_first():
    layout, _, _, _, _ = _inputs((16, 16), 4, 0.25, 4, torch.float32)
    zeros = torch.zeros(4, 16)
    scores, index = ops.block_scores(zeros, zeros, layout, 3)
    inactive = [i for i in range(16) if i not in set(layout.flat_index().tolist())]
    assert index.tolist() == inactive[:3] and torch.all(scores == 0)
    x = torch.randn(4, 16)
    x[0, 0] = float("nan")
    scores, _ = ops.block_scores(torch.randn(4, 16), x, layout, 2)
    assert torch.isnan(scores[0])


def test_update_topology_moves_slots_zeroes_values_and_rebuilds_views():
    layout, values = random_block_sparse((32, 32), 4, 0.25, seed=5)
    active = set(layout.flat_index().tolist())
    free = [i for i in range(64) if i not in active][:3]
    slots = torch.tensor([0, 4, 7])
    before = values.clone()
    new = torch.tensor(free)
    ops.update_topology(values, layout, slots, new // 8, new % 8)
    layout.validate(values)
    assert layout.flat_index()[slots].tolist() == free
    assert torch.all(values[slots] == 0)
    keep = torch.ones(layout.nnzb, dtype=torch.bool)
    keep[slots] = False
    assert torch.equal(values[keep], before[keep])


@pytest.mark.parametrize("slots,new,message", [
    ([0, 0], None, "duplicates"), ([99], None, r"slots must lie"), ([1], "kept", "collide"),
    ([1, 2], "same", "collide"), ([1], "out", "new_row"),
])
def test_update_topology_rejects_bad_updates_and_leaves_topology_intact(slots, new, message):
    layout, values = random_block_sparse((32, 32), 4, 0.25, seed=5)
    active = layout.flat_index().tolist()
    free = [i for i in range(64) if i not in set(active)]
    if new is None:
        flat = torch.tensor(free[:len(slots)])
    elif new == "kept":
        flat = torch.tensor([active[0]])
    elif new == "same":
        flat = torch.tensor([free[0], free[0]])
    else:
        flat = torch.tensor([64 + 8])
    before = [t.clone() for t in layout.topology()] + [values.clone()]
    with pytest.raises(ValueError, match=message):
        ops.update_topology(values, layout, torch.tensor(slots), flat // 8, flat % 8)
    for old, now in zip(before, list(layout.topology()) + [values]):
        assert torch.equal(old, now)


# ----------------------------------------------------------------------------- autograd and opcheck
@pytest.mark.parametrize("shape,b,density", [((12, 20), 4, 0.5), ((10, 7), 4, 0.6), ((8, 8), 1, 0.5)])
def test_gradcheck_and_double_backward(shape, b, density):
    layout, values, x, dy, bias = _inputs(shape, b, density, 5, torch.float64)
    pad = layout.padding_mask()

    def fn(x, values, bias):
        if pad is not None:
            values = values * pad  # the padding is not a free parameter
        return ops.dsd(x, values, layout, bias)

    args = (x.requires_grad_(), values.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def _op_args(op, dtype=torch.float32, requires_grad=False):
    layout, values, x, dy, bias = _inputs((30, 50), 8, 0.4, 6, dtype)
    topo = layout.topology()
    if requires_grad:
        x, values, bias, dy = (t.requires_grad_() for t in (x, values, bias, dy))
    return {
        "dsd": (x, values, bias, topo, 30),
        "dds": (dy, values, topo, 50),
        "sdd": (dy, x, topo, 8),
        "dsd_backward": (dy, x, values, topo, True, True, True),
        "block_scores": (dy.detach(), x.detach(), layout.block_row, layout.block_col, 8, 7),
        "update_topology": (values.detach().clone(), *[t.clone() for t in topo], torch.tensor([0, 1]),
                            torch.tensor([0, 0]), torch.tensor([0, 1])),
    }[op]


@pytest.mark.parametrize("op", ["dsd", "dds", "sdd", "dsd_backward"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_matmul_ops(op, requires_grad):
    torch.library.opcheck(getattr(torch.ops.rigl_sparse, op).default, _op_args(op, requires_grad=requires_grad))


def test_opcheck_block_scores():
    torch.library.opcheck(torch.ops.rigl_sparse.block_scores.default, _op_args("block_scores"))


def test_opcheck_update_topology():
    args = _op_args("update_topology")
    layout_free = set(range(24)) - set((args[1].long() * 7 + args[2].long()).tolist())
    new = torch.tensor(sorted(layout_free)[:2])
    args = args[:8] + (new // 7, new % 7)
    torch.library.opcheck(torch.ops.rigl_sparse.update_topology.default, args)


def test_ops_work_under_torch_compile():
    layout, values, x, _, bias = _inputs((30, 50), 8, 0.4, 6, torch.float32)

    def f(x, values, bias):
        return ops.dsd(x, values, layout, bias).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x1, v1, b1 = (t.clone().requires_grad_() for t in (x, values, bias))
    x2, v2, b2 = (t.clone().requires_grad_() for t in (x, values, bias))
    f(x1, v1, b1).backward()
    compiled(x2, v2, b2).backward()
    for a, c in ((x1, x2), (v1, v2), (b1, b2)):
        torch.testing.assert_close(a.grad, c.grad)


# ----------------------------------------------------------------------------- bad input
def test_ops_reject_bad_input_with_named_arguments():
    layout, values, x, dy, bias = _inputs((30, 50), 8, 0.4, 6, torch.float32)
    topo = layout.topology()
    dsd = torch.ops.rigl_sparse.dsd  # the operator itself: its arguments taken one by one
    with pytest.raises(TypeError, match="same dtype"):
        dsd(x.double(), values, bias, topo, 30)
    with pytest.raises(ValueError, match="out_features"):
        dsd(x, values, bias, topo, 50)
    with pytest.raises(ValueError, match="in_features"):
        dsd(x[:, :20], values, bias, topo, 30)
    with pytest.raises(ValueError, match="values must have shape"):
        dsd(x, values[:-1], bias, topo, 30)
    with pytest.raises(TypeError, match="block_row must be int32"):
        dsd(x, values, bias, [topo[0].long(), *topo[1:]], 30)
    with pytest.raises(ValueError, match="bias must have shape"):
        dsd(x, values, bias[:-1], topo, 30)
    with pytest.raises(ValueError, match="x must be 2-D"):
        dsd(x[None], values, bias, topo, 30)
    with pytest.raises(TypeError, match="x must be float16"):
        dsd(x.long(), values, bias, topo, 30)
    with pytest.raises(ValueError, match="same number of rows"):
        torch.ops.rigl_sparse.sdd(dy[:-1], x, topo, 8)
    with pytest.raises(ValueError, match="k must be non-negative"):
        ops.block_scores(dy, x, layout, -1)
    with pytest.raises(ValueError, match="one device"):
        dsd(x.to("meta"), values, bias, topo, 30)
