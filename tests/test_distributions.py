import math
import warnings

import pytest
import torch
from torch import nn

import rigl_sparse as rs


def test_uniform_and_dense_and_custom():
    shapes = {"a": (100, 784), "b": (10, 100)}
    assert rs.layer_densities(shapes, 0.1, "uniform") == {"a": 0.1, "b": 0.1}
    assert rs.layer_densities(shapes, 0.1, "uniform", dense=["a"]) == {"a": 1.0, "b": 0.1}
    assert rs.layer_densities(shapes, 0.1, "uniform", custom={"b": 0.5}) == {"a": 0.1, "b": 0.5}


def test_erk_two_layer_mlp_by_hand():
    # p_a = (300+784)/(300*784), p_b = (100+300)/(100*300).  Budget: 0.1 * (235200 + 30000) ones
    # (floor of zeros: 211680 and 27000 -> ones 23520 + 3000 = 26520).
    shapes = {"a": (300, 784), "b": (100, 300)}
    p_a, p_b = 1084 / 235200, 400 / 30000
    eps = 26520 / (p_a * 235200 + p_b * 30000)
    d = rs.layer_densities(shapes, 0.1, "erk")
    assert d["a"] == pytest.approx(eps * p_a, rel=1e-12) and d["b"] == pytest.approx(eps * p_b, rel=1e-12)
    assert d["a"] * 235200 + d["b"] * 30000 == pytest.approx(26520)


def test_erk_densifies_small_layers_iteratively_lenet_300_100():
    # LeNet-300-100 at density 0.1: the 10x100 classifier would exceed 1, so it is made dense,
    # its surplus (floor(0.9 * 1000) = 900 zeros) leaves the budget and eps is solved again.
    shapes = {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}
    n = {"fc1": 235200, "fc2": 30000, "fc3": 1000}
    p = {"fc1": 1084 / 235200, "fc2": 400 / 30000, "fc3": 110 / 1000}
    ones = {k: v - math.floor(0.9 * v) for k, v in n.items()}
    eps_all = (ones["fc1"] + ones["fc2"] + ones["fc3"]) / sum(p[k] * n[k] for k in n)
    assert eps_all * p["fc3"] > 1  # the first solve is invalid
    eps = (ones["fc1"] + ones["fc2"] - math.floor(0.9 * n["fc3"])) / (p["fc1"] * n["fc1"] + p["fc2"] * n["fc2"])
    d = rs.layer_densities(shapes, 0.1, "erk")
    assert d["fc3"] == 1.0
    assert d["fc1"] == pytest.approx(eps * p["fc1"], rel=1e-12)
    assert d["fc2"] == pytest.approx(eps * p["fc2"], rel=1e-12)
    total = sum(d[k] * n[k] for k in n)
    assert total == pytest.approx(sum(ones.values()))  # the overall budget is kept


def test_erk_uses_kernel_dims_and_er_only_channels_for_convolutions():
    # A conv (64, 32, 3, 3) and a linear (128, 256); neither reaches density 1.
    shapes = {"conv": (64, 32, 3, 3), "fc": (128, 256)}
    n = {"conv": 18432, "fc": 32768}
    ones = {k: v - math.floor(0.8 * v) for k, v in n.items()}
    p_erk = {"conv": (64 + 32 + 3 + 3) / 18432, "fc": 384 / 32768}
    eps = sum(ones.values()) / sum(p_erk[k] * n[k] for k in n)
    d = rs.layer_densities(shapes, 0.2, "erk")
    assert d["conv"] == pytest.approx(eps * p_erk["conv"]) and d["fc"] == pytest.approx(eps * p_erk["fc"])
    p_er = {"conv": (64 + 32) / (64 * 32), "fc": 384 / 32768}
    eps = sum(ones.values()) / sum(p_er[k] * n[k] for k in n)
    d = rs.layer_densities(shapes, 0.2, "er")
    assert max(d.values()) < 1
    assert d["conv"] == pytest.approx(eps * p_er["conv"]) and d["fc"] == pytest.approx(eps * p_er["fc"])


def test_erk_power_scale_and_custom_layers_outside_budget():
    shapes = {"a": (256, 256), "b": (512, 256), "c": (10, 512)}
    d_soft = rs.layer_densities(shapes, 0.2, "erk", erk_power_scale=0.5)
    p = {k: (sum(s) / math.prod(s)) ** 0.5 for k, s in shapes.items()}
    n = {k: math.prod(s) for k, s in shapes.items()}
    ones = {k: v - math.floor(0.8 * v) for k, v in n.items()}
    eps = sum(ones.values()) / sum(p[k] * n[k] for k in n)
    for k in shapes:
        assert d_soft[k] == pytest.approx(min(1.0, eps * p[k]))
    # "c" fixed at 0.5: the others share only their own budget
    d = rs.layer_densities(shapes, 0.2, "erk", custom={"c": 0.5})
    p = {k: sum(s) / math.prod(s) for k, s in shapes.items()}
    eps = (ones["a"] + ones["b"]) / (p["a"] * n["a"] + p["b"] * n["b"])
    assert d["c"] == 0.5
    assert d["a"] == pytest.approx(eps * p["a"]) and d["b"] == pytest.approx(eps * p["b"])


def test_density_one_makes_everything_dense():
    assert rs.layer_densities({"a": (4, 4), "b": (8, 4)}, 1.0, "erk") == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("kwargs,match", [
    (dict(density=0.0), "density"), (dict(density=1.2), "density"), (dict(distribution="gaussian"), "distribution"),
    (dict(dense=["nope"]), "not in shapes"), (dict(custom={"a": 2.0}), "density"),
    (dict(dense="a"), "collection"), (dict(erk_power_scale=-1), "erk_power_scale"),
    (dict(dense=["a"], custom={"a": 0.5}), "both"),
])
def test_bad_arguments(kwargs, match):
    args = dict(shapes={"a": (4, 4), "b": (8, 4)}, density=0.5)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        rs.layer_densities(**args)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


def _state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


DISTRIBUTION_TAKERS = {  # each returns what the call decided: densities, or the sparse model's state
    "layer_densities": lambda **kw: rs.layer_densities({"a": (64, 32), "b": (16, 64)}, 0.25, **kw),
    "sparsify": lambda **kw: _state(rs.sparsify(_mlp(), density=0.25, block_size=4,
                                                generator=torch.Generator().manual_seed(0), **kw)),
    "apply_masks": lambda **kw: _state(rs.apply_masks(_mlp(), density=0.25, block_size=4,
                                                      generator=torch.Generator().manual_seed(0), **kw)),
}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                                        for k in a)


@pytest.mark.parametrize("name", sorted(DISTRIBUTION_TAKERS))
def test_method_is_the_deprecated_old_name_of_distribution(name):
    call = DISTRIBUTION_TAKERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns of nothing
        new = call(distribution="uniform")
    with pytest.warns(FutureWarning, match=r"distribution=") as caught:
        old = call(method="uniform")
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert _same(old, new) and not _same(old, call())  # the alias took effect: uniform is not the default ERK
    with pytest.raises(TypeError, match="both distribution= and method="):
        call(distribution="uniform", method="uniform")


def test_method_alias_with_a_positional_distribution_is_refused():
    with pytest.raises(TypeError, match="both distribution= and method="):
        rs.layer_densities({"a": (4, 4)}, 0.5, "uniform", method="uniform")
