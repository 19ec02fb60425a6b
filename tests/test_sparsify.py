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
