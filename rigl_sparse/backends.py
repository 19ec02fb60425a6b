"""The backend registry: which implementation runs each op on each device.

Every ``rigl_sparse::`` op dispatches here at call time.  A backend is a named
family of implementations (``reference``, ``cpu``, ``triton``, ``cuda``); each
op registers the implementations it has.  Selection is by priority among the
backends that serve the tensors' device and are available in this build, except
where a measurement on this GPU model (``rigl_sparse/measurements/``, written by
``benchmarks/bench_gpu_matmul.py --record-choice``) found another backend faster
for an op and block size; ``use_backend`` forces one.  Nothing falls back silently: a forced backend that
cannot run an op raises, and ``python -m rigl_sparse.info`` prints every choice
with its reason.

This module holds the package's only mutable global state.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import json
import os
import re
from pathlib import Path
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Backend", "BACKENDS", "register_backend", "register_impl", "register_block_size", "select", "use_backend",
           "forced_backend",
           "remember_forced", "forced_again", "backend_status", "measured_choices", "add_force_listener", "fallbacks"]


@dataclass(frozen=True)
class Backend:
    name: str
    device_types: tuple[str, ...] | None  # None: any device
    priority: int  # higher wins when several can run an op
    probe: Callable[[], str | None]  # None when available, else why not
    forced_device_types: Callable[[], tuple[str, ...]] = tuple  # extra device types, only under use_backend

    def unavailable_reason(self) -> str | None:
        return _probe_once(self.probe)

    def serves(self, device_type: str, *, forced: bool = False) -> bool:
        if self.device_types is None or device_type in self.device_types:
            return True
        return forced and device_type in self.forced_device_types()


@functools.cache
def _probe_once(probe: Callable[[], str | None]) -> str | None:
    """Availability does not change within a process; probe once (ops run this on every call)."""
    return probe()


def _always() -> str | None:
    return None


def _probe_cpu() -> str | None:
    return importlib.import_module("rigl_sparse.ops.cpu_extension").unavailable_reason()


def _probe_cuda() -> str | None:
    return importlib.import_module("rigl_sparse.ops.cuda_extension").unavailable_reason()


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _probe_triton() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed: pip install triton (rigl_sparse's [gpu] extra)"
    if not _triton_interpreting() and not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (set TRITON_INTERPRET=1 to run the kernels on the CPU interpreter)"
    return None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("reference", None, 0, _always),
        Backend("cpu", ("cpu",), 10, _probe_cpu),
        # Under TRITON_INTERPRET=1 the kernels also run on CPU tensors, when forced (tests).
        Backend("triton", ("cuda",), 20, _probe_triton,
                lambda: ("cpu",) if _triton_interpreting() else ()),
        # Below triton: the CUDA kernels run first only where a measurement says they are faster.
        Backend("cuda", ("cuda",), 15, _probe_cuda),
    )
}


_BY_PRIORITY = sorted(BACKENDS.values(), key=lambda b: -b.priority)

# What each backend accepts beyond its devices; `info` prints these.
LIMITS = {
    "reference": "any block size and float dtype; fp32 accumulation (fp64 for fp64)",
    "cpu": "the block sizes and dtypes its kernels are built for (csrc/cpu; info lists them: fp32 arithmetic); "
           "other arguments run on the next backend with a warning; update_topology uses torch's ops",
    "triton": "block sizes 16, 32, 64, 128; float16, bfloat16, float32 (as TF32); other arguments run on the "
              "next backend with a warning; update_topology uses torch's device ops",
    "cuda": "block sizes 32, 64, 128; float16, bfloat16; runs before triton only for an op and block size where "
            "a measurement on this GPU model, its outputs checked first, found it faster (otherwise only when "
            "forced); update_topology uses torch's device ops",
}


@dataclass(frozen=True)
class _Impl:
    fn: Callable
    supports: Callable[..., str | None] | None  # None when it can run these arguments, else why not


_IMPLS: dict[str, dict[str, _Impl]] = {}
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("rigl_sparse_backend", default=None)
_FALLBACKS: dict[tuple[str, str, str], int] = {}  # (op, backend passed over, why) -> calls; warned on the first
_FORCE_LISTENERS: list[tuple[Callable[[], None], Callable[[], None]]] = []
_ABOVE_CPU: list[str] = []  # registered backends ranked above cpu on CPU tensors: the native kernels stand aside


def add_force_listener(enter: Callable[[], None], exit: Callable[[], None]) -> None:
    """Call ``enter()`` whenever a block forces a backend (``use_backend``, ``forced_again``) and ``exit()``
    when it ends: kernels registered outside this registry (the native CPU kernels on torch's dispatcher)
    take only unforced calls and hand the rest to the ops' Python kernels, which read the forced backend.
    While a backend ranked above ``cpu`` serves CPU tensors, they hand every call on (``register_backend``)."""
    _FORCE_LISTENERS.append((enter, exit))
    for _ in _ABOVE_CPU:
        enter()


def register_backend(backend: Backend, *, limits: str) -> None:
    """Add ``backend`` to the registry (its ops come with ``register_impl``); ``limits`` says in words what it
    accepts beyond its devices (``info`` prints it).  Ranked by its ``priority`` with the others: one that
    serves CPU tensors above ``cpu`` runs every op it implements there, and the native CPU kernels, which
    would otherwise take the calls the cpu backend takes without asking the registry, hand every call to it."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a rigl_sparse.backends.Backend, got {type(backend).__name__}")
    if backend.name in BACKENDS:
        raise ValueError(f"a backend named {backend.name!r} is already registered: {sorted(BACKENDS)}")
    if not isinstance(limits, str) or not limits:
        raise ValueError("limits must say in words what the backend accepts (info prints it)")
    BACKENDS[backend.name] = backend
    LIMITS[backend.name] = limits
    _BY_PRIORITY[:] = sorted(BACKENDS.values(), key=lambda b: -b.priority)
    _runnable.cache_clear()
    if backend.serves("cpu") and backend.priority > BACKENDS["cpu"].priority:
        _ABOVE_CPU.append(backend.name)
        _enter_forced()


def _enter_forced() -> None:
    for listener in _FORCE_LISTENERS:
        listener[0]()


def _exit_forced() -> None:
    for listener in _FORCE_LISTENERS:
        listener[1]()


def register_impl(op: str, backend: str, fn: Callable, *, supports: Callable[..., str | None] | None = None) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``.

    ``supports(*args)`` may say why some arguments (a block size, a dtype) are
    outside what this implementation handles; the op then runs on the next
    backend and a warning says so once.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
    _IMPLS.setdefault(op, {})[backend] = _Impl(fn, supports)
    _runnable.cache_clear()


# ---- measured preferences on GPUs ----------------------------------------------------------------

MEASUREMENTS_DIR = Path(__file__).resolve().parent / "measurements"
_BLOCK_SIZE_OF: dict[str, Callable[..., int]] = {}


def register_block_size(op: str, block_size_of: Callable[..., int]) -> None:
    """How to read the block size from ``op``'s arguments (measured choices are per block size)."""
    _BLOCK_SIZE_OF[op] = block_size_of


def device_slug(name: str) -> str:
    """File name of a GPU model's measurements: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# A measurement counts only where the benchmark checked every timed backend's outputs (by the tolerance
# rule of rigl_sparse.testing) before it timed them: a backend is never chosen for speed on a GPU model
# where its results were not seen to be right.
CHECKED_FIELD = "outputs_checked"


@functools.cache
def measured_choices(device_name: str) -> dict[str, dict[int, dict]]:
    """``{op: {block_size: {"backend": name, "ms": {backend: ms}}}}`` measured on this GPU model, or {}
    (also when the record does not say that the timed outputs were checked)."""
    path = MEASUREMENTS_DIR / f"{device_slug(device_name)}.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not data.get(CHECKED_FIELD):
        return {}
    return {op: {int(b): entry for b, entry in per_block.items()} for op, per_block in data["choices"].items()}


@functools.cache
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _measured_order(op: str, args) -> tuple[Backend, ...]:
    """Backends for ``op`` on a CUDA tensor: the measured winner for its block size first, if any."""
    block_size_of = _BLOCK_SIZE_OF.get(op)
    if block_size_of is None:
        return _BY_PRIORITY
    device = args[0].device
    index = device.index if device.index is not None else torch.cuda.current_device()
    entry = measured_choices(_gpu_name(index)).get(op, {}).get(block_size_of(*args))
    if entry is None or entry["backend"] not in BACKENDS:
        return _BY_PRIORITY
    first = BACKENDS[entry["backend"]]
    return (first,) + tuple(b for b in _BY_PRIORITY if b is not first)


def lazy(module: str, name: str) -> Callable:
    """An implementation imported on first call (keeps Triton out of package import)."""
    cache: list[Callable] = []

    def call(*args, **kwargs):
        if not cache:
            cache.append(getattr(importlib.import_module(module), name))
        return cache[0](*args, **kwargs)

    call.__qualname__ = f"{module}.{name}"
    return call


def forced_backend() -> str | None:
    """The backend forced by the innermost ``use_backend``, or None."""
    return _FORCED.get()


def remember_forced(ctx) -> None:
    """Save on an autograd ``ctx`` the backend forced while its forward runs (see ``forced_again``)."""
    ctx.rigl_sparse_backend = _FORCED.get()


class forced_again:
    """Force again, for a backward, the backend that was forced when ``ctx``'s forward ran: autograd may run
    a CUDA graph's backward on a thread of its own, which does not see the caller's ``use_backend``.
    (A class, not a generator: every backward enters it.)"""

    __slots__ = ("name", "token")

    def __init__(self, ctx) -> None:
        self.name = getattr(ctx, "rigl_sparse_backend", None)
        self.token = None

    def __enter__(self) -> None:
        if self.name is not None and _FORCED.get() != self.name:
            self.token = _FORCED.set(self.name)
            _enter_forced()

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            _FORCED.reset(self.token)
            self.token = None
            _exit_forced()


@contextlib.contextmanager
def use_backend(name: str):
    """Run every op inside the block on backend ``name`` (errors instead of falling back)."""
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name={name!r} is not a backend; choose one of {sorted(BACKENDS)}")
    reason = BACKENDS[name].unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"use_backend: backend {name!r} is not available: {reason}")
    token = _FORCED.set(name)
    _enter_forced()
    try:
        yield
    finally:
        _FORCED.reset(token)
        _exit_forced()


def _candidates(op: str, device_type: str, args=None, forced: str | None = None):
    """Every backend with its verdict for ``op`` on ``device_type``: (name, reason or None)."""
    impls = _IMPLS.get(op, {})
    for backend in sorted(BACKENDS.values(), key=lambda b: -b.priority):
        if not backend.serves(device_type, forced=backend.name == forced):
            yield backend.name, f"does not run on {device_type} tensors"
        elif (reason := backend.unavailable_reason()) is not None:
            yield backend.name, f"is unavailable: {reason}"
        elif backend.name not in impls:
            yield backend.name, f"has no implementation of {op}"
        elif args is not None and impls[backend.name].supports is not None \
                and (reason := impls[backend.name].supports(*args)) is not None:
            yield backend.name, f"does not support these arguments: {reason}"
        else:
            yield backend.name, None


@functools.cache
def _runnable(op: str, device_type: str) -> tuple[tuple[str, _Impl], ...]:
    """``op``'s implementations that can run on ``device_type`` in this process, by priority (backends'
    availability does not change within a process; ``register_impl`` clears this)."""
    impls = _IMPLS.get(op, {})
    return tuple((b.name, impls[b.name]) for b in _BY_PRIORITY
                 if b.name in impls and b.serves(device_type) and b.unavailable_reason() is None)


def select(op: str, device_type: str, args=None) -> tuple[str, Callable]:
    """The backend name and implementation that run ``op`` on ``device_type`` (for ``args``) now."""
    forced = _FORCED.get()
    impls = _IMPLS.get(op, {})
    if forced is not None:
        verdicts = dict(_candidates(op, device_type, args, forced))
        if verdicts[forced] is not None:
            raise RuntimeError(f"rigl_sparse::{op} cannot run on backend {forced!r} (forced by use_backend): "
                               f"it {verdicts[forced]}")
        return forced, impls[forced].fn
    # The hot path (every op call): no strings are built unless an implementation declines.
    if device_type == "cuda" and args is not None:
        order = [(b.name, impls[b.name]) for b in _measured_order(op, args) if b.name in impls
                 and b.serves(device_type) and b.unavailable_reason() is None]
    else:
        order = _runnable(op, device_type)
    for name, impl in order:
        reason = impl.supports(*args) if (args is not None and impl.supports is not None) else None
        if reason is None:
            return name, impl.fn
        key = (op, name, reason)
        _FALLBACKS[key] = _FALLBACKS.get(key, 0) + 1
        if _FALLBACKS[key] == 1:
            warnings.warn(f"rigl_sparse::{op} on {device_type}: backend {name!r} does not support these "
                          f"arguments: {reason}; using the next backend", RuntimeWarning, stacklevel=4)
    raise RuntimeError(f"no backend can run rigl_sparse::{op} on {device_type}: "
                       f"{dict(_candidates(op, device_type, args))}")


def fallbacks(clear: bool = False) -> dict[str, dict[str, int]]:
    """Every fallback so far in this process: ``{op: {"<backend passed over>: <why>": calls}}`` (each was
    warned about on its first call); ``clear``: forget them, so that the next ones warn again."""
    counts: dict[str, dict[str, int]] = {}
    for (op, backend, reason), n in sorted(_FALLBACKS.items()):
        counts.setdefault(op, {})[f"{backend}: {reason}"] = n
    if clear:
        _FALLBACKS.clear()
    return counts


def backend_status(op: str, device_type: str) -> tuple[str, list[tuple[str, str]]]:
    """For ``info``: the chosen backend and why each higher-priority one was passed over."""
    chosen, _ = select(op, device_type)
    passed = []
    for name, reason in _candidates(op, device_type):
        if name == chosen:
            break
        if BACKENDS[name].serves(device_type):
            passed.append((name, reason))
    return chosen, passed
