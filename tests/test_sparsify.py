import pickle

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.models import mlp


def test_sparsify_converts_linears_with_erk_densities_and_keeps_dense_init_values():
    torch.manual_seed(0)
    model = mlp()
    originals = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    biases = {name: m.bias.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    rs.sparsify(model, density=0.1, distribution="erk", block_size=4, generator=torch.Generator().manual_seed(0))
    expected = rs.layer_densities({"1": (300, 784), "3": (100, 300), "5": (10, 100)}, 0.1, "erk")
    assert expected["5"] == 1.0 and isinstance(model[5], nn.Linear)
    for name in ("1", "3"):
        layer = model.get_submodule(name)
        assert isinstance(layer, rs.SparseLinear)
        assert layer.layout.block_density == pytest.approx(expected[name], abs=1 / layer.layout.n_blocks)
        dense = layer.to_dense()
        mask = dense != 0
        assert torch.equal(dense[mask], originals[name][mask])  # dense init on the active blocks
        assert torch.equal(layer.bias, biases[name])
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_sparsify_dense_names_and_uniform():
    model = mlp()
    rs.sparsify(model, density=0.2, distribution="uniform", block_size=4, dense=["1"])
    assert isinstance(model[1], nn.Linear)
    assert isinstance(model[3], rs.SparseLinear) and isinstance(model[5], rs.SparseLinear)
    assert model[3].layout.block_density == pytest.approx(0.2, abs=0.01)


def test_sparsify_meta_model_is_created_sparse_on_the_target_device():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.LayerNorm(4096), nn.Linear(4096, 16))
    rs.sparsify(model, density=0.01, distribution="uniform", block_size=64, device="cpu", dense=["3"],
                first_dense=False)
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    sparse = model[0]
    assert isinstance(sparse, rs.SparseLinear) and sparse.values.numel() == sparse.layout.nnzb * 64 * 64
    assert sparse.values.numel() < 0.02 * 4096 * 4096  # no dense weight was ever allocated for it
    assert torch.all(model[2].weight == 1)  # LayerNorm initialised by its reset_parameters
    assert model(torch.randn(3, 4096)).shape == (3, 16)


def test_sparsify_errors():
    with pytest.raises(ValueError, match="no nn.Linear"):
        rs.sparsify(nn.ReLU(), density=0.5)
    with pytest.raises(ValueError, match="not in shapes"):
        rs.sparsify(mlp(), density=0.5, dense=["missing"])
    with pytest.raises(ValueError, match="density"):
        rs.sparsify(mlp(), density=1.5)


def test_a_transformer_encoder_with_sparse_feed_forward_layers_runs_in_eval_as_in_training():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
    with pytest.warns(UserWarning, match=r"nn.MultiheadAttention \['layers.0.self_attn', 'layers.1.self_attn'\] "
                                         r"stays dense"):
        rs.sparsify(model, density=0.5, distribution="uniform", first_dense=False, block_size=8)
    assert isinstance(model.layers[0].linear1, rs.SparseLinear) and isinstance(model.layers[1].linear2, rs.SparseLinear)
    x = torch.randn(3, 5, 32)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    with torch.no_grad():
        trained = model(x, src_key_padding_mask=padding)  # training mode: torch's ordinary path
        model.eval()
        for kwargs in ({"src_key_padding_mask": padding}, {}):  # the nested-tensor path and the layers' fused one
            evaluated = model(x, **kwargs)
            expected = trained if kwargs else model.train()(x)
            model.eval()
            real = ~padding[..., None] if kwargs else torch.ones(3, 5, 1, dtype=torch.bool)
            torch.testing.assert_close(evaluated * real, expected * real)
    restored = pickle.loads(pickle.dumps(model))  # the hook pickles with the model
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))


@pytest.mark.parametrize("stage", ["building", "replacing"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_sparsify_converts_all_layers_or_none(monkeypatch, stage, error):
    import importlib

    module = importlib.import_module("rigl_sparse.rigl.sparsify")  # the module, not the function of that name

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    layers = [model[0], model[2], model[4]]
    real, calls = getattr(module, "_sparse_layer" if stage == "building" else "_replace"), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error("out of memory on the second layer")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "_sparse_layer" if stage == "building" else "_replace", failing)
    with pytest.raises(error, match="out of memory on the second layer"):
        rs.sparsify(model, density=0.5, distribution="uniform", first_dense=False, block_size=8)
    monkeypatch.undo()
    assert [model[0], model[2], model[4]] == layers  # the same dense modules, none converted
    rs.sparsify(model, density=0.5, distribution="uniform", first_dense=False, block_size=8)  # a retry converts all
    assert all(isinstance(model[i], rs.SparseLinear) for i in (0, 2, 4))


def test_densify_gives_back_dense_modules_with_the_same_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Sequential(nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10)))
    rs.sparsify(model, density=0.3, distribution="uniform", first_dense=False, block_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=6)
    for step in range(5):  # a few updates: the topology is no longer the initial one
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        model(x).square().mean().backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert rs.densify(model) is model
        assert [type(m) for m in (model[0], model[3][0], model[3][2])] == [nn.Conv2d, nn.Linear, nn.Linear]
        assert not any(isinstance(m, rs.SparseModule) for m in model.modules())
        torch.testing.assert_close(model(x), expected)
    layer = rs.SparseLinear(32, 16, density=0.5, block_size=8)
    dense = rs.densify(layer)  # a sparse layer itself: its dense counterpart
    assert type(dense) is nn.Linear and float((dense.weight != 0).float().mean()) <= 0.5
    torch.testing.assert_close(dense(torch.ones(2, 32)), layer(torch.ones(2, 32)).detach())


def test_densify_puts_a_transformer_encoder_back_on_torch_s_fused_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
    with pytest.warns(UserWarning, match="stays dense"):
        rs.sparsify(model, density=0.5, distribution="uniform", first_dense=False, block_size=8)
    x = torch.randn(3, 5, 32)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        rs.densify(model)
        assert model.use_nested_tensor and not any(m._forward_pre_hooks for m in model.layers)
        torch.testing.assert_close(model(x), expected)


def test_export_bsr_runs_in_a_process_without_rigl_sparse(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 20, bias=False), nn.ReLU(), nn.Linear(20, 5))
    rs.sparsify(model, density=0.3, distribution="uniform", first_dense=False, block_size=8)  # 30 and 20: padded
    x = torch.randn(7, 30)
    with torch.no_grad():
        expected = model(x)
    exported = rs.export_bsr(model)
    assert all(isinstance(model[i], rs.SparseLinear) for i in (0, 2, 4))  # the model itself unchanged
    path = tmp_path / "model.pt"
    exported.save(str(path))
    torch.save(x, tmp_path / "x.pt")
    child = (f"import sys; sys.modules['rigl_sparse'] = None\nimport torch\n"  # importing rigl_sparse now fails
             f"model = torch.jit.load({str(path)!r})\n"
             f"torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected)
    traced = rs.export_bsr(model, example_inputs=x)  # for a model that does not script
    torch.testing.assert_close(traced(x), expected)
    conv = rs.sparsify(nn.Sequential(nn.Conv2d(8, 16, 3)), density=0.5, distribution="uniform", first_dense=False,
                       block_size=8)
    images = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(rs.export_bsr(conv)(images), conv(images))  # convolutions go dense
