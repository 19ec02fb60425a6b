"""The drop-fraction schedule of RigL."""

from __future__ import annotations

import math
import numbers


def drop_fraction(step: int, *, alpha: float, t_end: int) -> float:
    """Cosine-annealed drop fraction ``alpha/2 * (1 + cos(pi * step / t_end))``; 0 after ``t_end``.

    Args:
        step: training step (>= 0).
        alpha: initial drop fraction, in [0, 1].
        t_end: step after which the topology no longer changes (> 0).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    check_alpha(alpha)
    check_t_end(t_end)
    if step > t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def check_delta_t(delta_t) -> None:
    if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t <= 0:
        raise ValueError(f"delta_t must be an int > 0, got {delta_t!r}")


def check_t_end(t_end, *, unset: bool = False) -> None:
    """``t_end``: an int > 0 (or, with ``unset``, None: not set yet)."""
    if t_end is None and unset:
        return
    if isinstance(t_end, bool) or not isinstance(t_end, int) or t_end <= 0:
        raise ValueError(f"t_end must be an int > 0{' or None' if unset else ''}, got {t_end!r}")


def check_scaler(scaler) -> None:
    """``scaler``: a ``torch.amp.GradScaler`` or None."""
    import torch

    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")


def check_loss_scale(loss_scale) -> float:
    """``loss_scale``: a finite number > 0 (what a ``GradScaler`` multiplied the loss by); returns it as float."""
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, numbers.Real) or not 0 < loss_scale < math.inf:
        raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale!r}")
    return float(loss_scale)


def check_step_count(step_count) -> None:
    if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
        raise ValueError(f"step_count must be an int >= 0, got {step_count!r}")


def check_t_start(t_start, t_end: int) -> None:
    if isinstance(t_start, bool) or not isinstance(t_start, int) or not 0 <= t_start < t_end:
        raise ValueError(f"t_start must be an int in [0, t_end={t_end}), got {t_start!r}")


def check_exponent(exponent) -> None:
    if isinstance(exponent, bool) or not isinstance(exponent, numbers.Real) or not exponent > 0:
        raise ValueError(f"exponent must be a number > 0, got {exponent!r}")


def check_momentum(momentum) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")


def check_stats(stats, known) -> None:
    """``stats`` maps counters named in ``known`` to ints >= 0 (a checkpoint may lack counters added since)."""
    if not isinstance(stats, dict):
        raise ValueError(f"stats must be a dict of counters, got {type(stats).__name__}")
    unknown = sorted(str(name) for name in set(stats) - set(known))
    if unknown:
        raise ValueError(f"stats holds counters {unknown} this scheduler does not keep ({sorted(known)})")
    for name, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"stats[{name!r}] must be an int >= 0, got {value!r}")


def check_state(kind: str, state, checks: dict, optional: set = frozenset()) -> None:
    """``state`` is a dict with the keys of ``kind``'s ``state_dict()`` (``checks``' keys, and maybe the
    ``optional`` ones), and ``checks[field](state[field])`` passes for each field it holds; else
    ``ValueError`` naming the field."""
    expected = set(checks) - set(optional)
    if not isinstance(state, dict) or not expected <= set(state) <= set(checks):
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state must be a {kind}.state_dict() with keys {sorted(checks)}, got {got}")
    for field, check in checks.items():
        if field in state:
            try:
                check(state[field])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{kind}.load_state_dict: state[{field!r}] refused: {err}") from None


def check_choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
