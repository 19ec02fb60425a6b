"""Drop and grow criteria: how an update step ranks a layer's blocks.

On an update step each layer drops the ``k`` active blocks a ``DropCriterion`` scores lowest, then grows
``k`` blocks that a ``GrowCriterion`` chooses among the inactive ones and the just dropped.  The built-in
criteria are the paper's (``DROP`` and ``GROW`` name them, read-only); a new one is a subclass in any file,
passed to ``RigLScheduler`` as an instance::

    class GradientTimesWeight(rs.DropCriterion):
        name = "gradient_times_weight"

        def scores(self, blocks):
            return (blocks.values() * blocks.grads()).flatten(1).norm(dim=1)

    rs.RigLScheduler(model, optimizer, t_end=..., drop=GradientTimesWeight())

A grow criterion says which statistic of the layer it ranks (``statistic``): ``"gradient"``, the block
norms of the dense gradient (compressed layers stream them in their backward, never forming the gradient);
``"gradient_average"``, the block norms of an exponential moving average of the dense gradient, kept at
every step (masked layers only: compressed layers never form the dense gradient); or None (no statistic).
Checkpoints save a criterion by its ``name``.
"""

from __future__ import annotations

import types

import torch

STATISTICS = ("gradient", "gradient_average", None)


class ActiveBlocks:
    """A layer's active blocks as a drop criterion sees them, in the order of ``index``.

    ``index``: ``[n]`` int64 row-major block indices; ``norms()``: ``[n]`` fp32 Frobenius norms of their
    weights; ``values()`` / ``grads()``: ``[n, b, b]`` weights and their gradient (None without one), blocks
    past a ragged edge zero-padded.
    """

    def __init__(self, index: torch.Tensor, norms, values, grads):
        self.index = index
        self._norms, self._values, self._grads = norms, values, grads

    def norms(self) -> torch.Tensor:
        return self._norms()

    def values(self) -> torch.Tensor:
        return self._values()

    def grads(self) -> torch.Tensor | None:
        return self._grads()


class DropCriterion:
    """Scores a layer's active blocks; the ``k`` of lowest score are dropped (ties to the lower block index)."""

    name: str = ""

    def scores(self, blocks: ActiveBlocks) -> torch.Tensor:
        """``[n]`` one score per active block, in the order of ``blocks.index``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class GrowCriterion:
    """Chooses the ``k`` blocks a layer grows among its candidates (its inactive blocks and the just dropped).

    ``statistic``: what the candidates are scored by (see the module's docstring).  ``moves``: False for a
    criterion that never changes the topology (no update step happens).
    """

    name: str = ""
    statistic: str | None = "gradient"
    moves: bool = True

    def choose(self, scores: torch.Tensor | None, index: torch.Tensor, k: int, generator: torch.Generator):
        """``(grown, None)``: ``[k]`` block indices taken from the candidates ``index`` (``[m]`` int64,
        ascending when ``statistic`` is None), ranked by their ``scores`` (``[m]`` fp32; None when
        ``statistic`` is None); or ``(None, why)`` to keep the layer's topology this time, ``why`` one of
        ``"skipped_nonfinite"`` and ``"skipped_zero_gradient"`` (counted in the scheduler's ``stats``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def largest(scores: torch.Tensor, index: torch.Tensor, k: int):
    """``(the k candidates of largest score, ties to the lower index, None)``, or ``(None, why)``: the scores
    hold NaN/Inf (``"skipped_nonfinite"``) or are all zero (``"skipped_zero_gradient"``; a layer without
    gradient keeps its topology)."""
    if not bool(torch.isfinite(scores).all()):
        return None, "skipped_nonfinite"
    if scores.numel() and not bool((scores != 0).any()):
        return None, "skipped_zero_gradient"
    order = torch.argsort(index)
    scores, index = scores[order], index[order]
    return index[torch.sort(scores, descending=True, stable=True).indices[:k]], None


class MagnitudeDrop(DropCriterion):
    """The paper's drop: the blocks of smallest weight norm."""

    name = "magnitude"

    def scores(self, blocks: ActiveBlocks) -> torch.Tensor:
        return blocks.norms()


class GradientGrow(GrowCriterion):
    """RigL: the candidates of largest dense-gradient norm."""

    name, statistic = "gradient", "gradient"

    def choose(self, scores, index, k, generator):
        return largest(scores, index, k)


class RandomGrow(GrowCriterion):
    """SET: candidates drawn uniformly (from the scheduler's generator)."""

    name, statistic = "random", None

    def choose(self, scores, index, k, generator):
        pick = torch.randperm(index.numel(), generator=generator)[:k].to(index.device)
        return index[pick], None


class MomentumGrow(GradientGrow):
    """SNFS without redistribution: the candidates of largest norm of the gradient's moving average."""

    name, statistic = "momentum", "gradient_average"


class NoGrow(GrowCriterion):
    """A static topology: no update step."""

    name, statistic, moves = "none", None, False

    def choose(self, scores, index, k, generator):
        return None, None


DROP = types.MappingProxyType({c.name: c for c in (MagnitudeDrop(),)})
GROW = types.MappingProxyType({c.name: c for c in (GradientGrow(), RandomGrow(), MomentumGrow(), NoGrow())})


def criterion(kind: str, value, builtins, base: type):
    """``value`` as a criterion: a built-in's name, or an instance of ``base`` (``kind`` names the argument in
    the error)."""
    if isinstance(value, base):
        if not isinstance(value.name, str) or not value.name:
            raise ValueError(f"{kind} criterion {type(value).__name__} needs a name (a non-empty str class "
                             "attribute `name`): checkpoints save it")
        if isinstance(value, GrowCriterion) and value.statistic not in STATISTICS:
            raise ValueError(f"{kind} criterion {value.name!r}: statistic must be one of {STATISTICS}, got "
                             f"{value.statistic!r}")
        return value
    if isinstance(value, str) and value in builtins:
        return builtins[value]
    raise ValueError(f"{kind} must be one of {tuple(builtins)} or a rs.{base.__name__}, got {value!r}")
