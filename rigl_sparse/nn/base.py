"""``SparseModule``: what every block-sparse layer shares (values, layout, grow scores)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rigl_sparse import backends, ops
from rigl_sparse._checks import check_density, check_positive_int
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.ops.grow_tap import keep_tap, sum_by_block, take_kept

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SparseModule(nn.Module):
    """Base of the block-sparse layers.

    Subclasses own ``values`` (``nn.Parameter[nnzb, b, b]``) and ``layout``
    (``BlockSparseLayout``) and describe their weight as a ``[out, K]`` matrix.

    Grow scores: after ``request_grow_scores(k)``, the next backward pass through
    the layer also computes the ``k`` best inactive blocks by gradient norm
    (``rigl_sparse::block_scores``) from the ``dY`` and ``X`` it already has, and
    ``take_grow_scores()`` hands them over.  This is how RigL's scheduler gets the
    dense-gradient criterion without a dense gradient.  Several backward passes
    before ``take_grow_scores()`` (gradient accumulation) sum their candidates'
    scores block by block: an upper bound on the norm of the accumulated
    gradient, over the union of each pass's top ``k``.

    With ``request_grow_scores(k, exact=True)`` the backward passes keep their
    ``dY`` and ``X`` instead (activation-sized, never weight-sized), and
    ``take_grow_scores(process_group)`` scores the accumulated gradient
    ``sum_i dY_i.T @ X_i`` exactly: over every micro-batch, and, given a process
    group, averaged over its ranks one band of block rows at a time
    (``all_reduce`` of each band, as DDP averages gradients), so every rank gets
    the same candidates and no rank holds a layer's dense gradient.
    """

    values: nn.Parameter
    layout: BlockSparseLayout

    def __init__(self) -> None:
        super().__init__()
        self._grow_request: int | None = None
        self._grow_armed = False
        self._grow_exact = False
        self._grow_scores: tuple[torch.Tensor, torch.Tensor] | None = None
        self._grow_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -------------------------------------------------------------- grow scores
    def request_grow_scores(self, k: int | None, *, exact: bool = False) -> None:
        """Compute the top-``k`` inactive block scores in the coming backward passes (None cancels);
        ``exact`` keeps their ``dY`` and ``X`` and scores at ``take_grow_scores`` instead."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"k must be a non-negative int or None, got {k!r}")
        if not isinstance(exact, bool):
            raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
        if exact and k is not None and not self._supports_exact_grow_scores():
            raise NotImplementedError(f"exact (accumulated or distributed) grow scores are not implemented for "
                                      f"{type(self).__name__}; use exact=False")
        self._grow_request = k
        self._grow_armed = k is not None
        self._grow_exact = exact
        self._grow_scores = None
        self._grow_inputs = []
        take_kept(id(self))  # forget what compiled graphs kept for an earlier request
        if k is not None:
            self._reset_grow_buffers()

    def take_grow_scores(self, process_group=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scores [k] float32, index [k] int64)`` of the backward passes since the request, or None
        (no backward recorded); clears them.  ``process_group`` (exact mode only): average the
        gradient over its ranks before scoring; every rank of the group must call this together."""
        if process_group is not None and not self._grow_exact:
            raise ValueError("process_group needs grow scores requested with exact=True")
        if self._grow_exact:
            inputs, self._grow_inputs = self._grow_inputs + take_kept(id(self)), []
            if process_group is None and not inputs:
                return None
            return self._exact_grow_scores(inputs, process_group)
        scores, self._grow_scores = self._grow_scores, None
        compiled = self._take_compiled_grow_scores()
        if compiled is None or scores is None:
            return compiled if scores is None else scores
        # eager and compiled passes in one step: merged as two passes
        return sum_by_block(torch.cat([scores[0], compiled[0]]), torch.cat([scores[1], compiled[1]]))

    def _supports_exact_grow_scores(self) -> bool:
        return False

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x, values, bias)`` in the dtype the layer computes in: under ``torch.autocast`` (for the
        input's device) the autocast dtype, as ``nn.Linear`` does (the parameters stay in their own
        dtype and receive their gradients there); otherwise the parameters' dtype, which ``x`` must have."""
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type) and x.is_floating_point():
            dtype = torch.get_autocast_dtype(device_type)
            bias = None if self.bias is None else self.bias.to(dtype)
            return x.to(dtype), self.values.to(dtype), bias
        if x.dtype != self.values.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the layer's dtype {self.values.dtype}")
        return x, self.values, self.bias

    def _record_grow_candidates(self, candidates: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Keep one backward pass's candidates; a further pass sums scores block by block."""
        if self._grow_scores is None:
            self._grow_scores = candidates
            return
        self._grow_scores = sum_by_block(torch.cat([self._grow_scores[0], candidates[0]]),
                                         torch.cat([self._grow_scores[1], candidates[1]]))

    def _exact_grow_scores(self, inputs, process_group):
        """Top-``k`` of the accumulated (and, over ``process_group``, averaged) dense gradient."""
        layout = self.layout
        k = self._grow_request
        if process_group is None:
            dy = torch.cat([d for d, _ in inputs])
            x = torch.cat([x for _, x in inputs])
            return ops.block_scores(dy, x, layout.block_row, layout.block_col, layout.block_size, k)
        from rigl_sparse.ops.block_scores.reference import scores_by_bands
        from rigl_sparse.ops.dsd.reference import blocks_of

        b = layout.block_size
        n_rows, n_cols = layout.grid
        pairs = [(blocks_of(d, b, torch.float32), blocks_of(x, b, torch.float32).flatten(1)) for d, x in inputs]

        def band(r0, r1):
            grad = torch.zeros((r1 - r0) * b, n_cols * b, dtype=torch.float32, device=layout.block_row.device)
            for dy_b, x_pad in pairs:  # a rank with no micro-batch contributes zeros
                grad.addmm_(dy_b[:, r0:r1].flatten(1).T, x_pad)
            return average_over(grad, process_group)

        return scores_by_bands(band, n_rows, n_cols, b, layout.active_mask().flatten(), k)

    def _tap_grow_scores(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Identity on ``y`` whose backward records the grow scores from ``dY`` and ``x``."""
        if not self._grow_armed or not torch.is_grad_enabled() or not y.requires_grad:
            return y  # reads a bool, not k: a compiled graph must not depend on the drop count
        if torch.compiler.is_compiling():
            if self._grow_exact:
                return keep_tap(y, x, id(self), self._compiled_grow[2])
            scores, index, passes = self._compiled_grow
            layout = self.layout
            return ops.grow_tap(y, x, layout.block_row, layout.block_col, layout.block_size, scores, index, passes)
        return _GrowScoreTap.apply(y, x, self)

    def _reset_grow_buffers(self) -> None:
        """Empty ``(scores [nnzb], index [nnzb], passes [])``, what compiled graphs record grow scores into
        (made here, outside any graph, so that a graph only reads them).  A pass writes over the scores
        while ``passes`` is 0, so emptying them is zeroing ``passes``: no device sync."""
        device = self.values.device
        nnzb = self.layout.nnzb
        buffers = getattr(self, "_compiled_grow", None)
        if buffers is None or buffers[0].numel() != nnzb or buffers[0].device != device:
            self._compiled_grow = (torch.full((nnzb,), -float("inf"), device=device),
                                   torch.full((nnzb,), -1, dtype=torch.int64, device=device),
                                   torch.zeros((), dtype=torch.int64, device=device))
        else:
            buffers[2].zero_()

    def _take_compiled_grow_scores(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first ``k`` candidates a compiled graph recorded since the request, or None; empties them."""
        buffers = getattr(self, "_compiled_grow", None)
        if buffers is None or int(buffers[2]) == 0:
            return None
        scores, index, passes = buffers
        k = self._grow_request or 0
        passes.zero_()
        return scores[:k].clone(), index[:k].clone()

    # -------------------------------------------------------------- construction
    def _create(self, shape: tuple[int, int], *, block_size: int, density: float, bias: bool, device, dtype,
                generator: torch.Generator | None) -> None:
        """Check ``dtype``/``device``, draw a random ``layout`` of the ``[out, K]`` weight, allocate
        ``values`` and ``bias``, and initialise them with ``reset_parameters``."""
        check_positive_int("block_size", block_size)
        check_density(density)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be one of float16, bfloat16, float32, float64, got {dtype}")
        device = torch.empty(0, device=device).device  # honours torch.device(...) context managers
        if device.type == "meta":
            raise ValueError(
                f"{type(self).__name__} needs a real device for its topology, got device='meta'; build the dense "
                "model on meta and convert it with rs.sparsify(model, density=..., device=...)"
            )
        self.layout = BlockSparseLayout.random(shape, block_size, density=density, generator=generator, device=device)
        self.values = nn.Parameter(torch.empty(self.layout.nnzb, block_size, block_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(shape[0], device=device, dtype=dtype)) if bias else None
        self.reset_parameters(generator=generator)

    def _reset_uniform(self, fan_in: int, generator: torch.Generator | None) -> None:
        """Active weights and bias uniform in ``±1/sqrt(fan_in)`` (torch's default layer init)."""
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            _uniform_(self.values, bound, generator)
            self._zero_padding_()
            if self.bias is not None:
                _uniform_(self.bias, bound, generator)

    # -------------------------------------------------------------- helpers
    @property
    def block_size(self) -> int:
        return self.layout.block_size

    def density(self) -> float:
        """Fraction of the real weight entries that are active."""
        return self.layout.density()

    def weight_shape(self) -> tuple[int, int]:
        """``(out, K)``: the shape of the weight as a matrix."""
        return self.layout.shape

    def _zero_padding_(self) -> None:
        pad = self.layout.padding_mask()
        if pad is not None:
            with torch.no_grad():
                self.values.masked_fill_(~pad, 0)


def average_over(grad: torch.Tensor, process_group) -> torch.Tensor:
    """``grad`` averaged in place over the ranks of ``process_group`` (as DDP averages gradients);
    unchanged for None.  Every rank of the group must call it together."""
    if process_group is None:
        return grad
    torch.distributed.all_reduce(grad, group=process_group)
    return grad.div_(torch.distributed.get_world_size(process_group))


class _GrowScoreTap(torch.autograd.Function):
    """Passes ``dY`` through unchanged and computes the layer's grow candidates from it."""

    @staticmethod
    def forward(ctx, y, x, module):
        ctx.save_for_backward(x)
        ctx.module = module
        backends.remember_forced(ctx)
        return y.clone()  # not a view: wrappers such as FSDP2 hook the output

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        module = ctx.module
        k = module._grow_request
        if k is not None and module._grow_exact:
            module._grow_inputs.append((grad_y.detach().to(x.dtype), x.detach()))
        elif k is not None:
            layout = module.layout
            with torch.no_grad(), backends.forced_again(ctx):
                module._record_grow_candidates(ops.block_scores(
                    grad_y.detach().to(x.dtype), x.detach(), layout.block_row, layout.block_col, layout.block_size, k
                ))
        return grad_y, None, None


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator | None) -> None:
    """``t.uniform_(-bound, bound)`` drawing from ``generator`` even when it lives on another device."""
    if generator is None or generator.device == t.device:
        t.uniform_(-bound, bound, generator=generator)
    else:
        t.copy_(torch.empty(t.shape, dtype=t.dtype, device=generator.device).uniform_(-bound, bound,
                                                                                     generator=generator))
