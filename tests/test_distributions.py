import math

import pytest

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
    (dict(density=0.0), "density"), (dict(density=1.2), "density"), (dict(method="gaussian"), "method"),
    (dict(dense=["nope"]), "not in shapes"), (dict(custom={"a": 2.0}), "density"),
    (dict(dense="a"), "collection"), (dict(erk_power_scale=-1), "erk_power_scale"),
    (dict(dense=["a"], custom={"a": 0.5}), "both"),
])
def test_bad_arguments(kwargs, match):
    args = dict(shapes={"a": (4, 4), "b": (8, 4)}, density=0.5)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        rs.layer_densities(**args)
