"""Per-layer densities: uniform, Erdős–Rényi (ER) and Erdős–Rényi-Kernel (ERK).

ER/ERK follow ``get_sparsities_erdos_renyi`` of the official RigL code: every
sparse layer gets density ``eps * p_l`` with ``p_l = (sum(shape)/prod(shape))**power``
(ERK, all dimensions) or ``(n_in + n_out)/(n_in * n_out)`` (ER, the two channel
dimensions), and ``eps`` is solved so the sparse layers hold as many weights as
uniform density would give them.  A layer whose density would exceed 1 is made
dense, its surplus is taken out of the budget, and ``eps`` is solved again.
Layers named in ``dense`` or ``custom`` are outside the budget equation.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping

from rigl_sparse._checks import check_density

DISTRIBUTIONS = ("uniform", "er", "erk")


def accepts_method_alias(func):
    """Let ``func`` take ``method=`` as the old, deprecated spelling of its ``distribution=`` keyword.

    ``method`` also names the training algorithm elsewhere (RigL, SET, ...), so the density distribution is
    called ``distribution`` now; ``method=`` still works, with a ``FutureWarning``, and both at once are a
    ``TypeError``."""

    position = list(inspect.signature(func).parameters).index("distribution")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "method" in kwargs:
            if "distribution" in kwargs or len(args) > position:
                raise TypeError(f"{func.__name__}() got both distribution= and method=, its old spelling; "
                                "pass distribution= only")
            warnings.warn(f"{func.__name__}(method=...) is deprecated: the keyword is now distribution=",
                          FutureWarning, stacklevel=2)
            kwargs["distribution"] = kwargs.pop("method")
        return func(*args, **kwargs)

    return wrapper


@accepts_method_alias
def layer_densities(
    shapes: Mapping[str, tuple[int, ...]],
    density: float,
    distribution: str = "erk",
    dense: Iterable[str] = (),
    custom: Mapping[str, float] | None = None,
    erk_power_scale: float = 1.0,
) -> dict[str, float]:
    """Density of every layer for an overall target ``density``.

    Args:
        shapes: layer name -> weight shape in PyTorch order, ``(out, in)`` for a
            linear layer, ``(out, in/groups, kh, kw)`` for a convolution.
        density: target fraction of active weights over the budgeted layers, in (0, 1].
        distribution: ``"uniform"``, ``"er"`` or ``"erk"``. ``method=``, its old name, is still
            accepted with a ``FutureWarning``.
        dense: names of layers kept dense (density 1, outside the budget).
        custom: name -> density for layers with a fixed density (outside the budget).
        erk_power_scale: exponent applied to the ERK ratio (below 1 is softer).

    Returns name -> density, in the order of ``shapes``.
    """
    check_density(density)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if not shapes:
        raise ValueError("shapes is empty: there is no layer to give a density")
    if isinstance(erk_power_scale, bool) or not isinstance(erk_power_scale, numbers.Real) \
            or not math.isfinite(erk_power_scale) or erk_power_scale < 0:
        raise ValueError(f"erk_power_scale must be a finite number >= 0, got {erk_power_scale!r}")
    if isinstance(dense, str):
        raise TypeError(f"dense must be a collection of layer names, got the string {dense!r}")
    shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
    for name, shape in shapes.items():
        if not shape or any(d <= 0 for d in shape):
            raise ValueError(f"shapes[{name!r}] must be a non-empty tuple of positive dims, got {shape}")
    fixed = {name: 1.0 for name in dense}
    for name, value in (custom or {}).items():
        check_density(value)
        if name in fixed:
            raise ValueError(f"layer {name!r} is named in both dense and custom")
        fixed[name] = float(value)
    unknown = sorted(set(fixed) - set(shapes))
    if unknown:
        raise ValueError(f"dense/custom name layers that are not in shapes: {unknown}; known: {sorted(shapes)}")

    if distribution == "uniform":
        return {name: fixed.get(name, float(density)) for name in shapes}

    sparsity = 1.0 - density
    made_dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        raw: dict[str, float] = {}
        for name, shape in shapes.items():
            n_param = math.prod(shape)
            n_zeros = math.floor(sparsity * n_param)
            if name in made_dense:
                rhs -= n_zeros
            elif name not in fixed:
                rhs += n_param - n_zeros
                raw[name] = _raw_probability(shape, distribution, erk_power_scale)
                divisor += raw[name] * n_param
        if not raw:
            break
        eps = rhs / divisor
        max_raw = max(raw.values())
        if max_raw * eps > 1.0:
            made_dense.update(name for name, p in raw.items() if p == max_raw)
        else:
            break
    if raw and eps <= 0:
        raise ValueError(f"density={density} is too low for these layers once the dense ones are counted")
    result = {}
    for name in shapes:
        if name in fixed:
            result[name] = fixed[name]
        elif name in made_dense:
            result[name] = 1.0
        else:
            result[name] = eps * raw[name]
    return result


def _raw_probability(shape: tuple[int, ...], distribution: str, power: float) -> float:
    if distribution == "erk":
        return (sum(shape) / math.prod(shape)) ** power
    if len(shape) < 2:
        raise ValueError(f"distribution 'er' needs at least two dims (out, in), got shape {shape}")
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)
