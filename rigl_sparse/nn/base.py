"""``SparseModule``: what every block-sparse layer shares (values, layout, the grow-score hook)."""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from rigl_sparse import ops
from rigl_sparse._checks import TOPOLOGY, check_density, check_generator, check_positive_int
from rigl_sparse.layout import BlockSparseLayout, padding_mask
from rigl_sparse.nn.grow import GrowRecorder

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Whether autocast is on for any device: one call, where asking for the input's device first costs more.
_autocast_anywhere = torch._C._is_any_autocast_enabled


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
    gradient, over the union of each pass's top ``k``.  The layer's ``grow``
    (``GrowRecorder``) records them; its forward applies the recorder's tap.

    With ``request_grow_scores(k, exact=True)`` the backward passes keep their
    ``dY`` and ``X`` instead (activation-sized, never weight-sized), and
    ``take_grow_scores()`` scores the accumulated gradient ``sum_i dY_i.T @ X_i``
    exactly, over every micro-batch.  ``exact_grow_scores(inputs, reduce)`` forms
    that gradient one band of block rows at a time (``gradient_band``) and lets
    ``reduce`` act on each band first: the scheduler averages the bands over the
    ranks of a process group that way, so every rank gets the same candidates and
    no rank holds a layer's dense gradient.  The layer itself never communicates.
    """

    values: nn.Parameter
    layout: BlockSparseLayout

    # ------------------------------------------------------------ checkpoints
    def geometry(self) -> dict[str, int]:
        """The numbers that fix what the weight means (a subclass's features or channels, kernel and block
        size): saved with the layer's state (``_extra_state``), and a checkpoint of another geometry is
        refused even when its tensors have the right shapes."""
        raise NotImplementedError(f"{type(self).__name__} must say its geometry")

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(list(self.geometry().values()), dtype=torch.int64)

    def set_extra_state(self, state) -> None:
        self._check_geometry(state, "_extra_state")  # nothing to copy: the geometry is the layer's own

    def _check_geometry(self, state, key: str) -> None:
        own = self.geometry()
        if not (isinstance(state, torch.Tensor) and state.dtype == torch.int64 and state.shape == (len(own),)):
            raise ValueError(f"state dict entry {key!r} is not the geometry of a {type(self).__name__} "
                             f"(int64 [{len(own)}]: {', '.join(own)}), got "
                             f"{f'{state.dtype} {tuple(state.shape)}' if isinstance(state, torch.Tensor) else state!r}")
        got = dict(zip(own, state.tolist()))
        if got != own:
            def words(geometry):
                return ", ".join(f"{name}={value}" for name, value in geometry.items())

            raise ValueError(f"state dict entry {key!r} is of a {type(self).__name__} of another shape ({words(got)}); "
                             f"this layer has {words(own)}")

    def check_state(self, state_dict: dict, prefix: str = "") -> None:
        """Raise ``ValueError`` naming the entry unless what ``state_dict`` holds under ``prefix`` for this layer
        can be loaded into it as it is: its geometry (where the checkpoint has one), ``values`` and ``bias`` of
        its shapes and dtype, a valid topology, and zeros in the padding of edge blocks."""
        if prefix + "_extra_state" in state_dict:
            self._check_geometry(state_dict[prefix + "_extra_state"], prefix + "_extra_state")
        own = {"values": self.values, **({} if self.bias is None else {"bias": self.bias})}
        for name, tensor in own.items():
            key = prefix + name
            if key not in state_dict:
                continue
            got = state_dict[key]
            if not isinstance(got, torch.Tensor) or got.dtype != tensor.dtype or got.shape != tensor.shape:
                what = f"{got.dtype} {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
                raise ValueError(f"state dict entry {key!r} must be a {tensor.dtype} tensor of shape "
                                 f"{tuple(tensor.shape)} (nnzb={self.layout.nnzb}, block_size={self.block_size}), "
                                 f"got {what}")
        self.layout.check_state(state_dict, prefix + "layout.")
        if prefix + "values" in state_dict:
            self._check_padding(state_dict, prefix)

    def _check_padding(self, state_dict: dict, prefix: str) -> None:
        """The incoming values must be zero outside the weight (the padding of edge blocks, under the incoming
        topology where the checkpoint has one): elsewhere those entries would rank their blocks at the next
        drop, and a checkpoint of a larger layer would lose weights without a word."""
        topology = [state_dict.get(prefix + "layout." + name) for name in TOPOLOGY]
        # the incoming topology where the checkpoint has all of it (then layout.check_state has validated it)
        block_row, block_col = (topology if all(t is not None for t in topology) else self.layout.topology())[:2]
        values = state_dict[prefix + "values"]
        values = values.full_tensor() if hasattr(values, "full_tensor") else values  # FSDP2's DTensor
        pad = padding_mask(self.weight_shape(), self.block_size, block_row.to(values.device),
                           block_col.to(values.device))
        if pad is not None and bool(values.detach().masked_select(~pad).ne(0).any()):
            out, K = self.weight_shape()
            raise ValueError(f"state dict entry {prefix + 'values'!r} holds non-zeros outside this layer's "
                             f"[{out}, {K}] weight (the padding of its edge blocks of {self.block_size}): a "
                             "checkpoint of a larger layer, or values written without the padding zeroed")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.check_state(state_dict, prefix)
        # a checkpoint from before the geometry was saved: nothing to check it against, nothing missing
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __init__(self) -> None:
        super().__init__()
        self.grow = GrowRecorder()

    # -------------------------------------------------------------- grow scores
    def request_grow_scores(self, k: int | None, *, exact: bool = False) -> None:
        """Compute the top-``k`` inactive block scores in the coming backward passes (None cancels);
        ``exact`` keeps their ``dY`` and ``X`` and scores at ``take_grow_scores`` instead."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"k must be a non-negative int or None, got {k!r}")
        if k is not None and k > self.layout.n_blocks:
            raise ValueError(f"k must be at most the layer's number of blocks ({self.layout.n_blocks}), got {k}")
        if not isinstance(exact, bool):
            raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
        if exact and k is not None and not self._supports_exact_grow_scores():
            raise NotImplementedError(f"exact (accumulated or distributed) grow scores are not implemented for "
                                      f"{type(self).__name__}; use exact=False")
        self.grow.request(k, exact, self.layout.nnzb, self.values.device)

    def take_grow_scores(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scores [k] float32, index [k] int64)`` of the backward passes since the request, or None
        (no backward recorded); clears them."""
        if self.grow.exact:
            inputs = self.grow.take_inputs()
            return self.exact_grow_scores(inputs) if inputs else None
        return self.grow.take_candidates()

    def exact_grow_scores(self, inputs, reduce=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` inactive blocks of the gradient accumulated over ``inputs`` (``(dY, X)`` pairs), formed
        one band of block rows at a time by ``gradient_band``; ``reduce(band)``, when given, acts on each
        band before it is scored (all ranks of a process group call this together then)."""
        layout = self.layout
        n_rows, n_cols = layout.grid

        def band(r0, r1):
            grad = self.gradient_band(inputs, r0, r1)
            return grad if reduce is None else reduce(grad)

        return ops.scores_by_bands(band, n_rows, n_cols, layout.block_size, layout.active_mask().flatten(),
                                   self.grow.k)

    def gradient_band(self, inputs, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0 * b : r1 * b`` of the weight gradient ``[out, K]`` accumulated over ``inputs``, fp32,
        zero-padded to whole blocks: ``[(r1 - r0) * b, C * b]``."""
        raise NotImplementedError(f"{type(self).__name__} does not form its gradient by bands")

    def _supports_exact_grow_scores(self) -> bool:
        return False

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x, values, bias)`` in the dtype the layer computes in: under ``torch.autocast`` (for the
        input's device) the autocast dtype, as ``nn.Linear`` does (the parameters stay in their own
        dtype and receive their gradients there); otherwise the parameters' dtype, which ``x`` must have.

        Every forward calls this, so it reads the parameters from the module's own dictionary (each name
        through ``nn.Module.__getattr__`` costs about 1.5 us, as much as a one-row layer's kernel) and
        asks for the input's device only under autocast."""
        params = self._parameters
        values = params["values"]
        bias = params["bias"] if "bias" in params else self.bias
        if _autocast_anywhere() and x.is_floating_point():
            device_type = x.device.type
            if torch.is_autocast_enabled(device_type):
                dtype = torch.get_autocast_dtype(device_type)
                return x.to(dtype), values.to(dtype), None if bias is None else bias.to(dtype)
        if x.dtype != values.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the layer's dtype {values.dtype}")
        return x, values, bias

    # -------------------------------------------------------------- construction
    def _create(self, shape: tuple[int, int], *, block_size: int, density: float, bias: bool, device, dtype,
                generator: torch.Generator | None) -> None:
        """Check ``dtype``/``device``, draw a random ``layout`` of the ``[out, K]`` weight, allocate
        ``values`` and ``bias``, and initialise them with ``reset_parameters``."""
        check_positive_int("block_size", block_size)
        check_density(density)
        check_generator(generator)
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

    def _density_words(self) -> str:
        if self.layout.block_row.is_meta:  # moved to meta: the topology is gone
            return "density=unknown (on meta)"
        return f"density={self.density():.4f}"

    def weight_shape(self) -> tuple[int, int]:
        """``(out, K)``: the shape of the weight as a matrix."""
        return self.layout.shape

    def _zero_padding_(self) -> None:
        pad = self.layout.padding_mask()
        if pad is not None:
            with torch.no_grad():
                self.values.masked_fill_(~pad, 0)


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator | None) -> None:
    """``t.uniform_(-bound, bound)`` drawing from ``generator`` even when it lives on another device."""
    if generator is None or generator.device == t.device:
        t.uniform_(-bound, bound, generator=generator)
    else:
        t.copy_(torch.empty(t.shape, dtype=t.dtype, device=generator.device).uniform_(-bound, bound,
                                                                                     generator=generator))


_GUARDED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def guard_state_loading(model: nn.Module) -> None:
    """Make ``model.load_state_dict`` check the whole checkpoint before it copies anything
    (``check_before_loading``), so that a refused checkpoint leaves ``model`` as it was (``rs.sparsify``,
    ``rs.apply_masks`` and the schedulers call this; each sparse layer also checks its own entries before its
    own copy)."""
    if model in _GUARDED:
        return
    _GUARDED.add(model)
    model.register_load_state_dict_pre_hook(check_before_loading)


def check_before_loading(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict``'s pre-hook on a guarded model: raise before anything is copied if a sparse layer
    refuses its entries (``SparseModule.check_state``) or an entry has another shape than the model's (which
    torch refuses too, but only after it copied the others).  Missing and unexpected keys are torch's to report
    (it never tells a hook whether ``strict`` is on); ``rs.load_state_dict`` checks those first as well.  A
    module-level function, so that the model still pickles."""
    for name, layer in module.named_modules():
        if isinstance(layer, SparseModule):
            layer.check_state(state_dict, prefix + (name + "." if name else ""))
    mismatched = [(key, tuple(got.shape), tuple(tensor.shape))
                  for key, tensor in module.state_dict(prefix=prefix, keep_vars=True).items()
                  if isinstance(tensor, torch.Tensor) and isinstance(got := state_dict.get(key), torch.Tensor)
                  and got.shape != tensor.shape]
    if mismatched:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__} (nothing was loaded): "
                           + "; ".join(f"size mismatch for {key!r}: the checkpoint has {got}, the model {own}"
                                       for key, got, own in mismatched))
