"""Input checks and small helpers shared by the op registrations (:mod:`fastcert.ops`)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

FLOATS = (torch.float32, torch.float64)


def check(op: str, *named: tuple[str, torch.Tensor | None]) -> torch.dtype:
    """The common dtype of the given tensors, after checking that each is a float32/float64 CPU tensor of
    finite shape and that they share one dtype; the error names the op, the argument and the fix."""
    dt = None
    for name, t in named:
        if t is None:
            continue
        if t.device.type != "cpu":
            raise NotImplementedError(f"fastcert::{op}: argument {name!r} is on {t.device}; only a CPU kernel is "
                                      f"built for this op so far (move the model and inputs with .cpu())")
        if t.dtype not in FLOATS:
            raise TypeError(f"fastcert::{op}: argument {name!r} has dtype {t.dtype}; use float32 or float64")
        if dt is None:
            dt = t.dtype
        elif t.dtype != dt:
            raise TypeError(f"fastcert::{op}: argument {name!r} has dtype {t.dtype} but earlier arguments are {dt}; "
                            f"cast them to one dtype")
    assert dt is not None
    return dt


def c(t: torch.Tensor | None) -> torch.Tensor:
    """A contiguous tensor for a kernel (an empty one for a missing optional argument)."""
    if t is None:
        return torch.empty(0)
    return t.detach().contiguous()


def none_if_empty(t: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    return t if wanted else None


def _plain(args: tuple) -> bool:
    """Whether a call can skip the dispatcher: eager mode, no functorch transform, plain tensors only."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def define(name: str, impl: Callable[..., Any], fake: Callable[..., Any],
           setup_context: Callable[..., None] | None = None, backward: Callable[..., Any] | None = None
           ) -> tuple[Callable[..., Any], Any]:
    """Register ``impl`` as the CPU kernel of the custom op ``fastcert::<name>`` (with its fake and, if
    given, its autograd formula) and return ``(call, opdef)``.

    ``call`` is what the engine calls: on plain tensors in eager mode it runs ``impl`` directly, under a
    ``torch.autograd.Function`` made of the same ``setup_context`` / ``backward`` as the registration, so
    the values and gradients are the op's while skipping the dispatcher round trips of a Python custom op
    (~100 us a call with autograd, measured: docs/architecture.md, "Two modes"); under ``torch.compile``,
    functorch transforms or tensor subclasses (fake tensors) it calls the registered op."""
    opdef = torch.library.custom_op(f"fastcert::{name}", impl, mutates_args=(), device_types="cpu")
    opdef.register_fake(fake)
    if backward is None:
        def call(*args: Any) -> Any:
            return impl(*args) if _plain(args) else opdef(*args)
    else:
        assert setup_context is not None
        opdef.register_autograd(backward, setup_context=setup_context)

        class _Fn(torch.autograd.Function):
            # the "forward(ctx, ...)" form: with a separate setup_context, Function.apply binds the arguments
            # through inspect.signature at every call (~30 us)
            @staticmethod
            def forward(ctx: Any, *args: Any) -> Any:
                out = impl(*args)
                setup_context(ctx, args, out)
                return out

            @staticmethod
            def backward(ctx: Any, *grads: Any) -> Any:
                return backward(ctx, *grads)

        _Fn.__name__ = _Fn.__qualname__ = f"fastcert_{name}"
        # the C-level apply; Function.apply adds only the functorch handling that _plain has ruled out
        apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, _Fn)

        def call(*args: Any) -> Any:
            return apply(*args) if _plain(args) else opdef(*args)
    functools.update_wrapper(call, impl)
    call.__name__ = call.__qualname__ = name
    return call, opdef
