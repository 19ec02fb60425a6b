import math

import pytest

import rigl_sparse as rs


def test_cosine_drop_fraction_values():
    assert rs.drop_fraction(0, alpha=0.3, t_end=1000) == pytest.approx(0.3)
    assert rs.drop_fraction(500, alpha=0.3, t_end=1000) == pytest.approx(0.15)
    assert rs.drop_fraction(250, alpha=0.3, t_end=1000) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert rs.drop_fraction(1000, alpha=0.3, t_end=1000) == pytest.approx(0.0, abs=1e-12)
    assert rs.drop_fraction(1001, alpha=0.3, t_end=1000) == 0.0
    assert rs.drop_fraction(100, alpha=0.5, t_end=400) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("kwargs", [dict(step=-1), dict(alpha=1.5), dict(alpha=-0.1), dict(t_end=0), dict(t_end=-5),
                                    dict(step=1.5)])
def test_bad_arguments(kwargs):
    args = dict(step=10, alpha=0.3, t_end=100)
    args.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        rs.drop_fraction(args.pop("step"), **args)
