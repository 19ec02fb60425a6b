"""The drop-fraction schedule of RigL."""

from __future__ import annotations

import math


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
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def check_delta_t(delta_t) -> None:
    if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t <= 0:
        raise ValueError(f"delta_t must be an int > 0, got {delta_t!r}")


def check_t_end(t_end) -> None:
    if isinstance(t_end, bool) or not isinstance(t_end, int) or t_end <= 0:
        raise ValueError(f"t_end must be an int > 0, got {t_end!r}")
