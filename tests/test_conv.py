"""SparseConv2d against nn.Conv2d with the masked dense weight, sparsify for CNNs, RigL on a CNN."""

import copy

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse import backends
from rigl_sparse.models import cnn
from rigl_sparse.nn.conv import weight_matrix
from rigl_sparse.ops.conv2d import compute as conv_compute
from rigl_sparse.testing import assert_close_to_exact, assert_top_k_of_grid, round_toward_zero, tf32_inputs

GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=1),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=5, stride=(1, 3), padding="valid"),
]


def _pair(in_c, out_c, b, density, dtype=torch.float32, seed=0, **geometry):
    layer = rs.SparseConv2d(in_c, out_c, density=density, block_size=b, dtype=dtype,
                            generator=torch.Generator().manual_seed(seed), **geometry)
    return layer, layer.to_conv()


def _check_against_dense(layer, conv, x, dtype):
    """The layer's output and gradients meet the tolerance rule against its dense twin ``conv`` (same dtype:
    the baseline) and the twin in float64 (exact).  Under the Triton interpreter bf16 rounds toward zero."""
    x1 = x.detach().clone().requires_grad_()
    y1 = layer(x1)
    grad = torch.randn(y1.shape, generator=torch.Generator().manual_seed(1)).to(y1)
    y1.backward(grad)
    tf32 = dtype == torch.float32 and x.is_cuda  # the GPU kernels run fp32 as TF32
    truncated = copy.deepcopy(conv).double()
    with torch.no_grad():
        truncated.weight.copy_(tf32_inputs(conv.weight))
    twins = {}
    for name, twin, inputs, upstream in (("exact", copy.deepcopy(conv).double(), x.double(), grad.double()),
                                         ("baseline", truncated if tf32 else conv,
                                          tf32_inputs(x) if tf32 else x, tf32_inputs(grad) if tf32 else grad)):
        xi = inputs.detach().clone().requires_grad_()
        twin.zero_grad()
        y = twin(xi)
        y.backward(upstream)
        twins[name] = tuple(t.to(dtype) if name == "baseline" else t for t in (
            y.detach(), xi.grad, layer.layout.gather(weight_matrix(twin.weight.grad)), twin.bias.grad))
    if rs.backends.forced_backend() == "triton" and x.device.type == "cpu":
        twins["baseline"] = tuple(round_toward_zero(t.double(), dtype) for t in twins["exact"])
    got = (y1.detach(), x1.grad, layer.values.grad, layer.bias.grad)
    for label, g, exact, baseline in zip(("output", "input gradient", "values gradient", "bias gradient"), got,
                                          twins["exact"], twins["baseline"]):
        assert g.dtype == dtype
        assert_close_to_exact(g, exact, baseline, name=label)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("b,density", [(4, 0.5), (8, 0.3), (16, 1.0)])
@pytest.mark.parametrize("in_channels", [6, 16])  # b divides 16 (implicit GEMM input gradient), not 6 (patches)
def test_matches_conv2d_with_masked_dense_weight(geometry, b, density, in_channels):
    layer, conv = _pair(in_channels, 10, b, density, **geometry)
    x = torch.randn(3, in_channels, 11, 9)
    _check_against_dense(layer, conv, x, torch.float32)


def test_native_cpu_path_and_the_reference_path_meet_the_rule(cpu_isa):
    layer, conv = _pair(32, 48, 16, 0.3, kernel_size=3, padding=1, stride=(2, 1))
    x = torch.randn(4, 32, 9, 7)
    for backend in ("cpu", "reference"):
        layer.values.grad = layer.bias.grad = None
        with rs.use_backend(backend):
            _check_against_dense(layer, conv, x, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_dtypes(dtype):
    layer, conv = _pair(16, 24, 8, 0.4, dtype=dtype, kernel_size=3, padding=1, stride=2)
    x = torch.randn(2, 16, 9, 10).to(dtype)
    with rs.use_backend("reference"):
        _check_against_dense(layer, conv, x, dtype)


@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[3]], ids=str)
@pytest.mark.parametrize("b,in_channels", [(8, 16), (16, 32), (32, 64), (16, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_implicit_gemm_on_every_isa(geometry, b, in_channels, dtype, cpu_isa):
    layer, conv = _pair(in_channels, 2 * b + (0 if b > 8 else 3), b, 0.4, dtype=dtype, **geometry)
    x = torch.randn(2, in_channels, 9, 10).to(dtype)
    with rs.use_backend("cpu"):
        _check_against_dense(layer, conv, x, dtype)


@pytest.mark.parametrize("groups,b", [(2, 4), (4, 4), (2, 8)])
def test_grouped_convolution_on_every_cpu_isa(groups, b, cpu_isa):
    layer, conv = _pair(8, 16 * groups // 2 * (b // 4), b, 0.5, kernel_size=3, padding=1, stride=(1, 2),
                        groups=groups)
    x = torch.randn(3, 8, 7, 6)
    with rs.use_backend("cpu"):
        _check_against_dense(layer, conv, x, torch.float32)


@pytest.mark.triton
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[4]], ids=str)
@pytest.mark.parametrize("in_channels,dtype", [(16, torch.float32), (6, torch.float32), (16, torch.bfloat16)])
def test_triton_implicit_gemm(geometry, in_channels, dtype):
    # On a GPU the Triton kernels; without one, the same kernels on Triton's CPU interpreter.
    if backends.BACKENDS["triton"].unavailable_reason() is not None:
        pytest.skip(backends.BACKENDS["triton"].unavailable_reason())
    layer, conv = _pair(in_channels, 20, 16, 0.5, dtype=dtype, **geometry)
    x = torch.randn(2, in_channels, 7, 6).to(dtype)
    if torch.cuda.is_available():
        layer, conv, x = layer.cuda(), conv.cuda(), x.cuda()
    with rs.use_backend("triton"):
        _check_against_dense(layer, conv, x, dtype)


@pytest.mark.triton
@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("groups,b", [(2, 4), (4, 4), (2, 8)])
def test_grouped_convolution(backend, groups, b):
    if backends.BACKENDS[backend].unavailable_reason() is not None:
        pytest.skip(backends.BACKENDS[backend].unavailable_reason())
    if backend == "triton" and b < 16:
        b = 16
    layer, conv = _pair(8, 16 * groups // 2 * (b // 4), b, 0.5, kernel_size=3, padding=1, stride=(1, 2),
                        groups=groups)
    x = torch.randn(3, 8, 7, 6)
    if backend == "triton" and torch.cuda.is_available():  # the interpreter takes CPU tensors, a GPU its own
        layer, conv, x = layer.cuda(), conv.cuda(), x.cuda()
    with rs.use_backend(backend):
        _check_against_dense(layer, conv, x, torch.float32)


def _check_grow_scores(scores, index, layer, conv, x, k):
    """The layer's grow candidates are the top k inactive blocks of the dense twin's weight gradient (exact:
    the twin in float64; baseline: the twin in fp32), by the tolerance rule."""
    grids = []
    for twin, inputs in ((copy.deepcopy(conv).double(), x.double()), (conv, x)):
        twin.zero_grad()
        twin(inputs).square().sum().backward()
        grad = weight_matrix(twin.weight.grad)
        b = layer.layout.block_size
        rows, cols = layer.layout.grid
        grids.append(grad.view(rows, b, cols, b).pow(2).sum(dim=(1, 3)).sqrt().flatten())
    assert_top_k_of_grid(scores, index, *grids, layer.layout.flat_index(), k, x.dtype)
    ranked = grids[0].clone()
    ranked[layer.layout.flat_index()] = -float("inf")
    # fp32 ties resolve as in fp64 at these sizes: the very same blocks, in order
    assert torch.equal(index, torch.sort(ranked, descending=True, stable=True).indices[:k])


def test_grouped_grow_scores_are_the_dense_gradient_block_norms():
    b, k = 4, 5
    layer, conv = _pair(8, 16, b, 0.3, kernel_size=3, padding=1, groups=2)
    x = torch.randn(3, 8, 6, 5)
    layer.request_grow_scores(k)
    layer(x).square().sum().backward()
    scores, index = layer.take_grow_scores()
    _check_grow_scores(scores, index, layer, conv, x, k)


def test_channels_last_input_and_output():
    layer, conv = _pair(8, 12, 4, 0.5, kernel_size=3, padding=1)
    x = torch.randn(2, 8, 7, 7).to(memory_format=torch.channels_last)
    _check_against_dense(layer, conv, x, torch.float32)
    assert layer(x).is_contiguous(memory_format=torch.channels_last)


def test_chunked_patches_equal_one_chunk(monkeypatch):
    layer, _ = _pair(8, 12, 4, 0.5, kernel_size=3, padding=1)
    x = torch.randn(5, 8, 6, 6, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    whole = (y.detach(), x.grad.clone(), layer.values.grad.clone())
    x.grad, layer.values.grad = None, None
    monkeypatch.setattr(conv_compute, "PATCH_BYTES", 1)  # one image per chunk
    y = layer(x)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), whole[0])
    torch.testing.assert_close(x.grad, whole[1])
    torch.testing.assert_close(layer.values.grad, whole[2])


def test_grow_scores_are_the_dense_gradient_block_norms():
    b, k = 4, 6
    layer, conv = _pair(8, 12, b, 0.3, kernel_size=3, padding=1)
    x = torch.randn(3, 8, 6, 5)
    layer.request_grow_scores(k)
    layer(x).square().sum().backward()
    scores, index = layer.take_grow_scores()
    _check_grow_scores(scores, index, layer, conv, x, k)


def test_dense_round_trip_and_state_dict():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = rs.SparseConv2d.from_dense(conv, density=0.5, block_size=8)
    dense = layer.to_dense()
    assert dense.shape == conv.weight.shape
    kept = dense != 0
    assert torch.equal(dense[kept], conv.weight.detach()[kept])
    copy = rs.SparseConv2d(8, 16, 3, padding=1, density=0.5, block_size=8)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(copy(x), layer(x))
    torch.testing.assert_close(layer.to_conv()(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(groups=3), ValueError, "divisible by groups"),
    (dict(groups=2, out_channels=4), ValueError, "must divide out_channels / groups"),
    (dict(padding_mode="reflect"), ValueError, "padding_mode"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "stride 1"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(stride=(1, 2, 3)), TypeError, "stride"),
    (dict(density=0.0), ValueError, "density"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3, density=0.5, block_size=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rs.SparseConv2d(**args)


def test_bad_input():
    layer = rs.SparseConv2d(4, 8, 3, density=0.5, block_size=4)
    with pytest.raises(ValueError, match=r"\[N, 4, H, W\]"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(2, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer(torch.randn(2, 4, 2, 2))


def test_sparsify_converts_convolutions_and_keeps_depthwise_ones_dense():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                          nn.Conv2d(32, 64, 1), nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    grouped = nn.Sequential(nn.Conv2d(16, 32, 3, groups=2), nn.Conv2d(32, 32, 1))
    rs.sparsify(grouped, density=0.3, block_size=8)
    assert isinstance(grouped[0], rs.SparseConv2d) and grouped[0].groups == 2
    x = torch.randn(2, 3, 4, 4)
    rs.sparsify(model, density=0.2, distribution="erk", block_size=8)
    assert isinstance(model[0], rs.SparseConv2d) and isinstance(model[3], rs.SparseConv2d)
    assert type(model[2]) is nn.Conv2d  # depthwise stays dense
    expected = rs.layer_densities({"0": (32, 3, 3, 3), "3": (64, 32, 1, 1), "5": (10, 1024)}, 0.2, "erk")
    for name in ("0", "3", "5"):
        layer = model.get_submodule(name)
        if expected[name] < 1:
            assert layer.layout.block_density == pytest.approx(expected[name], abs=1 / layer.layout.n_blocks)
    assert model(x).shape == (2, 10)


def test_uniform_keeps_the_first_layer_dense_unless_told():
    model = cnn()
    rs.sparsify(model, density=0.1, distribution="uniform", block_size=8)
    assert type(model[0]) is nn.Conv2d and isinstance(model[3], rs.SparseConv2d)
    model = cnn()
    rs.sparsify(model, density=0.1, distribution="uniform", block_size=8, first_dense=False, dense=["9"])
    assert isinstance(model[0], rs.SparseConv2d) and type(model[9]) is nn.Linear


def test_flops_count_output_positions():
    model = nn.Sequential(rs.SparseConv2d(4, 8, 3, padding=1, density=0.5, block_size=4, bias=False))
    report = rs.flops(model, (2, 4, 6, 5))
    nnz = model[0].layout.nnz()
    assert report.forward == 2 * nnz * 2 * 6 * 5
    assert report.dense_forward == 2 * 8 * 4 * 9 * 2 * 6 * 5


def test_rigl_trains_a_sparse_cnn():
    torch.manual_seed(0)
    model = rs.sparsify(cnn(channels=(8, 16), hidden=32), density=0.3, distribution="erk", block_size=4,
                        generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = rs.RigLScheduler(model, opt, delta_t=4, t_end=24)
    x = torch.randn(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if sched.step():
            opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert sched.stats["blocks_moved"] > 0
    for module in model.modules():
        if isinstance(module, rs.SparseConv2d):
            module.layout.validate(module.values)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet"])
def test_reference_cnns_sparsify_and_train_a_step(name):
    from rigl_sparse.models import mobilenet, resnet18

    model = resnet18(in_channels=1, width=8) if name == "resnet18" else mobilenet(in_channels=1, width=8)
    dense_convs = sum(type(m) is nn.Conv2d for m in model.modules())
    rs.sparsify(model, density=0.2, distribution="erk", block_size=8)
    sparse_convs = sum(isinstance(m, rs.SparseConv2d) for m in model.modules())
    depthwise = sum(type(m) is nn.Conv2d and m.groups > 1 for m in model.modules())
    assert sparse_convs > 0 and sparse_convs + depthwise <= dense_convs
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = rs.RigLScheduler(model, opt, delta_t=1, t_end=10)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    stepped = []
    for _ in range(2):  # step 0 trains, step 1 (delta_t=1) updates the topology instead
        nn.functional.cross_entropy(model(x), y).backward()
        stepped.append(sched.step())
        if stepped[-1]:
            opt.step()
        opt.zero_grad()
    assert stepped == [True, False] and sched.stats["blocks_moved"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_with_the_selected_backend(dtype):
    layer, conv = _pair(64, 96, 32, 0.3, dtype=dtype, kernel_size=3, padding=1, stride=2)
    layer, conv = layer.cuda(), conv.cuda()
    x = torch.randn(8, 64, 17, 15, device="cuda").to(dtype)
    _check_against_dense(layer, conv, x, dtype)


def test_double_backward_is_refused_not_wrong():
    layer, _ = _pair(4, 8, 4, 0.5, kernel_size=3, padding=1)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    (grad_x,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|twice"):
        grad_x.sum().backward()


@pytest.mark.triton
def test_triton_input_gradient_is_right_when_autotuned(monkeypatch):
    """The input gradient accumulates into a zeroed buffer with atomic adds: every autotuning trial must
    start from zero again, or the first call per shape returns a multiple of the gradient."""
    if backends.BACKENDS["triton"].unavailable_reason() is not None:
        pytest.skip(backends.BACKENDS["triton"].unavailable_reason())
    from rigl_sparse.ops import _triton

    monkeypatch.setenv(_triton.AUTOTUNE_VARIABLE, "always")
    layer, conv = _pair(16, 32, 16, 0.5, seed=3, kernel_size=3, padding=1)
    x = torch.randn(2, 16, 5, 4)
    if torch.cuda.is_available():
        layer, conv, x = layer.cuda(), conv.cuda(), x.cuda()
    with rs.use_backend("triton"):
        _check_against_dense(layer, conv, x, torch.float32)


def test_eager_grow_scores_sum_each_passes_own_top_k():
    """With gradient accumulation a block's score is the sum over the passes in whose top k it was, as for a
    linear layer: passes scored (10, 9, .5) then (.5, 9, 10) with k = 1 keep block 0 (10 + 0) against block 2."""
    from rigl_sparse.nn.grow import GrowRecorder

    recorder = GrowRecorder()
    recorder.request(1, False, 3, torch.device("cpu"))
    for scores in ([10.0, 9.0, 0.5], [0.5, 9.0, 10.0]):
        order = torch.tensor(scores).argsort(descending=True)[:1]
        recorder.record((torch.tensor(scores)[order], order))
    scores, index = recorder.take_candidates()
    assert dict(zip(index.tolist(), scores.tolist())) == {0: 10.0, 2: 10.0}


def test_eager_conv_grow_scores_over_two_passes_sum_their_own_top_k():
    layer, conv = _pair(8, 16, 4, 0.3, kernel_size=3, padding=1)
    k = 3
    xs = [torch.randn(2, 8, 6, 5) for _ in range(2)]
    per_pass = []
    for x in xs:  # each pass alone
        layer.request_grow_scores(k)
        layer(x).square().sum().backward()
        per_pass.append(layer.take_grow_scores())
    layer.request_grow_scores(k)
    for x in xs:
        layer(x).square().sum().backward()
    scores, index = layer.take_grow_scores()
    expected = {}
    for s, i in per_pass:
        for score, block in zip(s.tolist(), i.tolist()):
            expected[block] = expected.get(block, 0.0) + score
    assert set(index.tolist()) == set(expected)
    for score, block in zip(scores.tolist(), index.tolist()):
        assert abs(score - expected[block]) < 1e-4 * max(1.0, expected[block])


@pytest.mark.triton
def test_triton_input_gradient_is_deterministic_under_deterministic_algorithms(monkeypatch):
    """The implicit-GEMM input gradient adds tiles atomically, in no fixed order: with
    torch.use_deterministic_algorithms(True) the input gradient takes the patches (Triton dds and a fold)
    instead, the weight gradient stays implicit, and the results meet the tolerance rule as before."""
    if backends.BACKENDS["triton"].unavailable_reason() is not None:
        pytest.skip(backends.BACKENDS["triton"].unavailable_reason())
    from rigl_sparse.ops.conv2d import triton as conv_triton

    layer, conv = _pair(16, 32, 16, 0.5, seed=4, kernel_size=3, padding=1)
    x = torch.randn(2, 16, 5, 4)
    if torch.cuda.is_available():
        layer, conv, x = layer.cuda(), conv.cuda(), x.cuda()

    def atomic(*args, **kwargs):
        raise AssertionError("the atomic input-gradient kernel ran under deterministic algorithms")

    monkeypatch.setattr(conv_triton, "input_grad", atomic)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with rs.use_backend("triton"):
            _check_against_dense(layer, conv, x, torch.float32)
            grads = []
            for _ in range(2):
                x1 = x.clone().requires_grad_()
                layer(x1).square().sum().backward()
                grads.append(x1.grad)
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(deterministic)
