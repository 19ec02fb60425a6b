"""How the matmul and convolution ops are defined: operators of torch's dispatcher, one path for every call.

``define`` puts ``rigl_sparse::<name>`` on the dispatcher with its Python kernel for every device (it checks
the arguments and calls the implementation the backend registry selects, so ``use_backend`` and ``info``
keep working), a fake for fake and meta tensors, and an autograd kernel.  Eager calls, ``torch.compile``
graphs, fake tensors and ``torch.func.functional_call`` all reach the kernels through these operators.  The
operators have reverse-mode derivatives only: forward-mode AD and ``torch.func``'s transforms are refused
with an error naming the operator, where a kernel would otherwise drop a tangent.  For CPU
tensors the native extension may also register the cpu backend's kernels with the dispatcher
(``csrc/cpu/dispatch.cpp``); they hand every call they do not take to the Python kernel.

Why not ``torch.library.custom_op``: its Python wrappers (schema defaults, per-call metadata, the backward
wrapper) cost more than a small layer's kernels (``benchmarks/results/cpu-avx512/
overhead_python_custom_op*.json``: 1.9x a 64x32 ``SparseLinear``'s step).  The autograd kernel here does
what the dispatcher needs and no more: under grad mode with an input that requires grad it runs an
``autograd.Function`` whose forward re-enters the operator below the autograd keys, otherwise it
re-enters directly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.autograd import forward_ad

NAMESPACE = "rigl_sparse"
LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")

# Dispatch below the autograd keys (what a backward-free re-entry into an operator needs), the test for
# inputs that require grad and for active torch.func transforms: torch offers them only under torch._C;
# its own custom ops and autograd.Function use them.
_below_autograd = torch._C._AutoDispatchBelowAutograd
_any_requires_grad = torch._C._any_requires_grad
_functorch_active = torch._C._are_functorch_transforms_active
# Tensors left behind by a finished torch.func transform, as their plain tensors (what
# ``autograd.Function.apply`` does first).
_unwrap_dead_wrappers = torch._functorch.utils.unwrap_dead_wrappers


def _refuse_tangents(overload, args) -> None:
    """Raise if forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) gives an argument a
    tangent: the operators have no forward-mode derivative, and the kernels would drop the tangent, a
    derivative of zero where it is not.  Called only while a dual level is active."""
    if any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args):
        raise NotImplementedError(
            f"{overload} has no forward-mode derivative: torch.func.jvp, jacfwd and torch.autograd.forward_ad "
            "cannot differentiate through it (reverse mode, loss.backward() or torch.autograd.grad, can)")


class Operator:
    """A ``rigl_sparse::`` operator as the package calls it: ``op(*args)`` is ``op.overload(*args)``.

    Where autograd has something to record in plain eager mode, the call enters the operator's
    ``autograd.Function`` itself instead of reaching it through the dispatcher's autograd key: the same
    function the autograd kernel runs, whose forward re-enters the operator below the autograd keys, so
    the kernel is still reached only through the dispatcher (and every mode, subclass and transform sees
    the operator), one dispatch instead of two.  Under ``torch.compile`` and ``torch.func`` transforms
    the call is the overload's."""

    __slots__ = ("overload", "function", "_apply")

    def __init__(self, overload, function=None) -> None:
        self.overload = overload
        self.function = function
        # The function's apply without its Python wrapper, whose checks for torch.func transforms are already
        # made where this is called: 5-10 us of a one-row layer's 30 us forward.
        self._apply = None if function is None else super(torch.autograd.Function, function).apply

    def __call__(self, *args):
        if torch.compiler.is_compiling():  # first: what follows is not for graphs
            return self.overload(*args)
        if forward_ad._current_level >= 0:  # a dual level is active
            _refuse_tangents(self.overload, args)
        if _functorch_active():
            return self.overload(*args)
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            return self.overload(*args) if self._apply is None else self._apply(*_unwrap_dead_wrappers(args))
        with _below_autograd():  # what the autograd kernel does then, without entering it (5 us a call)
            return self.overload(*args)

    def __repr__(self) -> str:
        return f"Operator({self.overload})"


def define(name: str, kernel: Callable, fake: Callable, *, mutates_args: Sequence[str] = (),
           setup_context: Callable | None = None, backward: Callable | None = None,
           composite: Callable | None = None) -> Operator:
    """Define ``rigl_sparse::name`` with the schema of ``kernel``'s annotations.

    With ``backward`` it is differentiable: ``setup_context(ctx, inputs, output)`` runs in the forward,
    ``backward(ctx, *grads)`` returns one gradient (or None) per input.  With ``composite`` instead, a call
    that autograd must record runs ``composite(*args)``, the same result from differentiable operators.
    With neither, its outputs carry no gradient."""
    schema = torch.library.infer_schema(kernel, mutates_args=tuple(mutates_args))
    LIBRARY.define(name + schema)
    LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=LIBRARY)
    overload = getattr(getattr(torch.ops, NAMESPACE), name).default
    LIBRARY.impl(name, _refuse_vmap(overload), "FuncTorchBatched")
    if composite is not None:
        _register_composite(name, overload, composite)
    if backward is None:
        return Operator(overload)
    return Operator(overload, _register_autograd(name, overload, setup_context, backward))


def _refuse_vmap(overload) -> Callable:
    """The kernel ``torch.func.vmap`` reaches: our refusal, in words, instead of torch's missing batching rule."""
    def refuse(*args):
        raise NotImplementedError(f"{overload} does not support torch.func.vmap: call the layer on the whole batch "
                                  "(its kernels take any number of rows), or loop over the samples")
    return refuse


def _register_composite(name: str, overload, composite: Callable) -> None:
    def autograd_kernel(*args):
        if forward_ad._current_level >= 0:
            _refuse_tangents(overload, args)
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            return composite(*args)
        with _below_autograd():
            return overload(*args)

    LIBRARY.impl(name, autograd_kernel, "Autograd")


def _register_autograd(name: str, overload, setup_context: Callable, backward: Callable):
    """Register the autograd kernel of ``overload``; return its ``autograd.Function``."""

    def forward(ctx, *args):
        with _below_autograd():
            output = overload(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"{name}_autograd", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def autograd_kernel(*args):
        if forward_ad._current_level >= 0:
            _refuse_tangents(overload, args)
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            if _functorch_active():
                raise NotImplementedError(
                    f"{overload} does not support torch.func's transforms (grad, vjp, jacrev, vmap): "
                    "differentiate with loss.backward() or torch.autograd.grad, over torch.func.functional_call "
                    "where the parameters must be swapped")
            return function.apply(*args)
        with _below_autograd():
            return overload(*args)

    LIBRARY.impl(name, autograd_kernel, "Autograd")
    return function


__all__ = ["LIBRARY", "NAMESPACE", "Operator", "define"]
