"""Every field of a scheduler's saved state is checked on load: a refused state names the field and leaves
the scheduler as it was."""

import pytest
import torch
from torch import nn

import rigl_sparse as rs


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, dict) and any(isinstance(v, torch.Tensor) for v in x.values()):
            if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
                return False
        elif x != y:
            return False
    return True


def _rigl(masked=False, grow="gradient"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    if masked:
        rs.apply_masks(model, density=0.5, distribution="uniform", dense=("2",), first_dense=False, block_size=4)
    else:
        rs.sparsify(model, density=0.5, distribution="uniform", dense=("2",), first_dense=False, block_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=2, t_end=10, grow=grow)
    model(torch.randn(3, 16)).sum().backward()
    scheduler.step()
    return scheduler


def _corrupt(state, field, value):
    return {**state, field: value}


RIGL_CASES = [
    ("step_count", -1), ("step_count", 1.5), ("step_count", True),
    ("delta_t", 0), ("delta_t", "5"),
    ("t_end", 0), ("t_end", "10"),  # None is a scheduler whose t_end is not set yet: it loads
    ("alpha", 2.0), ("alpha", "0.3"),
    ("grow", "foo"), ("grow", "momentum"),  # SNFS on compressed layers
    ("drop", "random"),
    ("generator", torch.zeros(3)), ("generator", torch.zeros(5, dtype=torch.uint8)),
    ("stats", []), ("stats", {"updates": -1}), ("stats", {"bogus": 1}), ("stats", {"updates": 1.0}),
    ("momentum", 1.5), ("momentum", "0.9"),
    ("gradient_average", []), ("gradient_average", {"0": torch.zeros(16, 16)}),  # no masked layer named 0
]




@pytest.mark.parametrize("value", [{"0": torch.zeros(16, 15)}, {"0": torch.zeros(16, 16, dtype=torch.long)},
                                   {"0": [0.0]}])
def test_gradient_average_is_checked_against_the_masked_layers(value):
    scheduler = _rigl(masked=True, grow="momentum")
    before = scheduler.state_dict()
    assert set(before["gradient_average"]) == {"0"}  # the moving average exists after one step
    with pytest.raises(ValueError, match=r"state\['gradient_average'\] refused: gradient_average\['0'\] must be a "
                                         r"floating tensor of shape \(16, 16\)"):
        scheduler.load_state_dict(_corrupt(before, "gradient_average", value))
    assert _state_equal(scheduler.state_dict(), before)


def test_a_good_state_still_loads_and_an_old_one_without_the_optional_fields_too():
    scheduler = _rigl()
    state = scheduler.state_dict()
    other = _rigl()
    other.load_state_dict(state)
    assert _state_equal(other.state_dict(), state)
    old = {k: v for k, v in state.items() if k not in ("momentum", "gradient_average")}
    other.load_state_dict(old)
    with pytest.raises(ValueError, match="state must be a RigLScheduler.state_dict"):
        other.load_state_dict({**state, "extra": 1})


def _pruning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    rs.apply_masks(model, density=0.5, distribution="uniform", dense=("2",), first_dense=False, block_size=4,
                   start="dense")
    return rs.PruningScheduler(model, torch.optim.SGD(model.parameters(), lr=0.1), t_start=2, t_end=10, delta_t=2)


PRUNING_CASES = [
    ("step_count", -1), ("t_start", 10), ("t_start", -1), ("t_end", 0), ("delta_t", 0), ("exponent", 0),
    ("exponent", "3"), ("stats", {"pruning_steps": -2}), ("stats", {"updates": 1}), ("stats", None),
]


CASES = [("RigLScheduler", field, value) for field, value in RIGL_CASES] + [
    ("PruningScheduler", field, value) for field, value in PRUNING_CASES]


@pytest.mark.parametrize("kind, field, value", CASES, ids=[f"{k}-{f}-{i}" for i, (k, f, _) in enumerate(CASES)])
def test_a_scheduler_refuses_a_bad_field_and_keeps_its_state(kind, field, value):
    scheduler = _rigl() if kind == "RigLScheduler" else _pruning()
    before = scheduler.state_dict()
    with pytest.raises(ValueError, match=rf"{kind}.load_state_dict: state\['{field}'\] refused"):
        scheduler.load_state_dict(_corrupt(before, field, value))
    assert _state_equal(scheduler.state_dict(), before)
