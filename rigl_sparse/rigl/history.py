"""What each topology update did, as numbers (``RigLScheduler.last_update``, TensorBoard scalars) and as
pictures (``TopologyHistory``, ``plot_topology``): which blocks are alive, how old they are, how many moved.

The pictures need matplotlib (the ``bench`` extra), imported only when one is drawn; they are drawn on
figures of their own (no pyplot), returned and, given a path, saved.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rigl_sparse.rigl.targets import CompressedTarget, find_targets


def update_record(target, decision, t: int, moved: int, grown_scores: torch.Tensor | None) -> dict:
    """One layer's part of the update at step ``t``: its density, the blocks dropped, grown and regrown
    (grown again right after being dropped), and the grow scores of the grown blocks.  ``decision`` is the
    scheduler's ``(flat, dropped, grown)`` or None (nothing changed)."""
    n_active, n_blocks = int(target.active().numel()), int(target.n_blocks)
    record = {"step": t, "density": n_active / n_blocks, "active_blocks": n_active, "dropped": 0, "grown": 0,
              "regrown": 0, "regrown_fraction": 0.0, "moved": moved}
    if decision is not None:
        flat, dropped, grown = decision
        regrown = int(torch.isin(grown, flat[dropped]).sum())
        record.update(dropped=int(dropped.numel()), grown=int(grown.numel()), regrown=regrown,
                      regrown_fraction=regrown / max(1, int(grown.numel())))
    if grown_scores is not None and grown_scores.numel():
        scores = grown_scores.float()
        record.update(grow_score_min=float(scores.min()), grow_score_mean=float(scores.mean()),
                      grow_score_max=float(scores.max()))
    return record


def write_scalars(writer, last_update: dict[str, dict]) -> None:
    """Writes every layer's record of an update as ``rigl/<layer>/<quantity>`` scalars at the update's step,
    through a ``torch.utils.tensorboard.SummaryWriter`` (or anything with its ``add_scalar``)."""
    for name, record in last_update.items():
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"rigl/{name or 'model'}/{key}", value, record["step"])


def _grid(target) -> tuple[int, int]:
    if isinstance(target, CompressedTarget):
        return tuple(target.layer.layout.grid)
    return tuple(target.layer.block_mask.active.shape)


class TopologyHistory:
    """Follows a model's sparse layers through training: each active block's age (steps since it became
    active), a snapshot of the topology at every update, and the blocks moved per update.

    Call ``observe(t)`` after the ``scheduler.step()`` of step ``t`` (0-based; ``rs.RigLOptimizer(...,
    history=h)`` does): it compares each layer's active blocks with the last ones it saw (with
    ``changed=False`` it only advances the clock).

    Args:
        model: the model whose ``SparseModule`` and masked layers are followed.
        snapshots: keep a snapshot (active blocks and ages) of every update for ``plot_strip``.
    """

    def __init__(self, model: torch.nn.Module, *, snapshots: bool = True):
        self.targets = find_targets(model)
        if not self.targets:
            raise ValueError("model has no sparse layer to follow")
        self.born = {t.name: torch.zeros(t.n_blocks, dtype=torch.long) for t in self.targets}
        self.active = {t.name: self._active(t) for t in self.targets}
        self.moves: list[tuple[int, int]] = []  # (step, blocks that became active)
        self.snapshots = [] if snapshots else None
        self._step = 0
        if snapshots:
            self.snapshots.append(self._snapshot(0))

    @staticmethod
    def _active(target) -> torch.Tensor:
        mask = torch.zeros(target.n_blocks, dtype=torch.bool)
        mask[target.active().cpu()] = True
        return mask

    def observe(self, step: int, *, changed: bool = True) -> int:
        """Takes the topology after training step ``step`` (0-based); returns the number of blocks that became
        active.  ``changed=False`` (the caller knows the topology did not change) only moves the clock the
        ages count to."""
        self._step = step
        if not changed:
            return 0
        new = 0
        for target in self.targets:
            active = self._active(target)
            grown = active & ~self.active[target.name]
            if grown.any():
                self.born[target.name][grown] = step
                new += int(grown.sum())
            self.active[target.name] = active
        if new:
            self.moves.append((step, new))
            if self.snapshots is not None:
                self.snapshots.append(self._snapshot(step))
        return new

    def ages(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """Each layer's ``[R, C]`` block ages at ``step`` (default: the last observed), -1 where inactive."""
        step = self._step if step is None else step
        return {t.name: torch.where(self.active[t.name], step - self.born[t.name], -1).view(_grid(t))
                for t in self.targets}

    def _snapshot(self, step: int) -> tuple[int, dict[str, torch.Tensor]]:
        return step, self.ages(step)

    def plot(self, path: str | Path | None = None):
        """Each sparse layer's active blocks now, coloured by age; returns the figure (saved to ``path``)."""
        return _draw([(self._step, self.ages())], path, title="active blocks, coloured by age (steps)")

    def plot_strip(self, path: str | Path | None = None, *, frames: int = 6):
        """A strip of ``frames`` snapshots, evenly spaced over the updates, one row per snapshot."""
        if not self.snapshots:
            raise ValueError("no snapshots: build the TopologyHistory with snapshots=True")
        picks = torch.linspace(0, len(self.snapshots) - 1, min(frames, len(self.snapshots))).round().long()
        return _draw([self.snapshots[i] for i in dict.fromkeys(picks.tolist())], path,
                     title="topology over training (age in steps)")

    def plot_moves(self, path: str | Path | None = None):
        """Blocks that became active at each update."""
        fig = _figure(figsize=(6, 3), layout="constrained")
        axis = fig.subplots()
        steps, counts = zip(*self.moves) if self.moves else ((), ())
        axis.bar(steps, counts, width=max(1, (max(steps) if steps else 1) / 80))
        axis.set(xlabel="training step", ylabel="blocks moved", title="blocks moved (grown, as many dropped) "
                 "per topology update")
        return _save(fig, path)


def plot_topology(model: torch.nn.Module, path: str | Path | None = None):
    """Each sparse layer's active blocks (one image per layer); returns the figure (saved to ``path``)."""
    ages = TopologyHistory(model, snapshots=False).ages()  # nothing observed: 0 where active, -1 elsewhere
    return _draw([(None, ages)], path, title="active blocks")


def _figure(**kwargs):
    """A matplotlib ``Figure`` of its own: no pyplot, so neither the user's backend nor its figure list changes."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("drawing the topology needs matplotlib: pip install matplotlib "
                          "(rigl_sparse's [bench] extra)") from err
    return Figure(**kwargs)


def _draw(frames, path, *, title: str):
    """One row per layer (named on the left), one column per frame ``(step, ages)`` (its step on top); white
    where a block is inactive.  Sized so that its text stays legible when a page shows it at column width."""
    import matplotlib

    names = list(frames[0][1])
    fig = _figure(figsize=(1.6 + 1.7 * len(frames), 0.8 + 1.3 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(frames), squeeze=False)
    top = max(1, max(int(a.max()) for _, ages in frames for a in ages.values()))
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(under="white")  # inactive blocks: white
    for column, (step, ages) in enumerate(frames):
        for row, name in enumerate(names):
            axis = axes[row][column]
            image = axis.imshow(ages[name].numpy(), cmap=cmap, vmin=0, vmax=top, interpolation="nearest",
                                aspect="auto")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0 and step is not None:
                axis.set_title(f"step {step}", fontsize=11)
            if column == 0:
                axis.set_ylabel(f"layer {name}", fontsize=11)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9)
    bar.ax.tick_params(labelsize=10)
    if top > 1:
        bar.set_label("age (steps)", fontsize=11)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _save(fig, path):
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
