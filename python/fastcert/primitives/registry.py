"""The registry of elementwise primitives: one entry (one line of ``ENTRIES``) per primitive, naming
its class, the torch modules, functional calls / tensor methods and ONNX ops that map to it, and how
their arguments become the primitive's parameters.

Front ends ask :func:`from_module`, :func:`from_call` and :func:`from_onnx` for an op description
``{"act": name, **params}``; the graph builders ask :func:`build` for the primitive instance; the
soundness tests generate networks from :data:`ENTRIES` (each entry's ``examples``), so a new
primitive is tested by construction. A construct registered twice raises :class:`RegistryError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastcert.errors import UnsupportedError
from fastcert.layers.base import Layer
from fastcert.nn import Arctan as ArctanModule
from fastcert.nn import ClippedReLU
from fastcert.primitives.arctan import Arctan
from fastcert.primitives.base import Registry, RegistryError
from fastcert.primitives.elu import ELU
from fastcert.primitives.hardtanh import Hardtanh
from fastcert.primitives.leaky_relu import LeakyReLU
from fastcert.primitives.relu import ReLU
from fastcert.primitives.sigmoid import Sigmoid
from fastcert.primitives.softplus import Softplus
from fastcert.primitives.tanh import Tanh

Params = dict[str, Any]


def _number(v: Any, what: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UnsupportedError(f"{where}: {what} must be a number, got {v!r} (tensor-valued bounds are not supported)")
    f = float(v)
    if math.isnan(f):
        raise ValueError(f"{where}: {what} is NaN")
    return f


def _arg(args: tuple, kw: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kw.get(name, default)


def _leaky(args: tuple, kw: dict, where: str) -> Params:
    a = _number(_arg(args, kw, 1, "negative_slope", 0.01), "negative_slope", where)
    if not math.isfinite(a):
        raise ValueError(f"{where}: negative_slope {a} is not finite")
    return {"alpha": a}


def clamp_params(lo: Any, hi: Any, where: str) -> Params:
    """Hardtanh's parameters for clamp(min=lo, max=hi) (None: no bound on that side)."""
    return _clamp(lo, hi, where)


def _clamp(lo: Any, hi: Any, where: str) -> Params:
    a = -math.inf if lo is None else _number(lo, "min", where)
    b = math.inf if hi is None else _number(hi, "max", where)
    if not a < b:
        raise ValueError(f"{where}: clamp / Hardtanh needs min < max, got min={a}, max={b}")
    return {"min": a, "max": b}


def _nums(where: str, **params: Any) -> Params:
    """Numeric parameters by name, each checked by :func:`_number` (the primitive checks its ranges)."""
    return {k: _number(v, k, where) for k, v in params.items()}


@dataclass(frozen=True)
class Spec:
    """One elementwise primitive and the constructs that map to it."""

    name: str
    build: Callable[[tuple[int, ...], Params, str], Layer]
    modules: dict[type, Callable[[nn.Module, str], Params]] = field(default_factory=dict)
    calls: dict[Any, Callable[[tuple, dict, str], Params]] = field(default_factory=dict)
    onnx: dict[str, Callable[[dict, str], Params]] = field(default_factory=dict)
    examples: tuple[Params, ...] = ({},)
    module: Callable[[Params], nn.Module] | None = None  # a torch module computing it (tests, docs)


_NONE: Callable[..., Params] = lambda *a: {}  # noqa: E731 - no parameters

ENTRIES: tuple[Spec, ...] = (
    Spec("relu", lambda s, p, n: ReLU(s, name=n), {nn.ReLU: _NONE},
         {F.relu: _NONE, torch.relu: _NONE, "relu": _NONE}, {"Relu": _NONE}, module=lambda p: nn.ReLU()),
    Spec("leaky_relu", lambda s, p, n: LeakyReLU(s, p["alpha"], name=n),
         {nn.LeakyReLU: lambda m, w: _leaky((None, m.negative_slope), {}, w)}, {F.leaky_relu: _leaky},
         {"LeakyRelu": lambda at, w: _leaky((None, at.get("alpha", 0.01)), {}, w)},
         ({"alpha": 0.1}, {"alpha": -0.5}, {"alpha": 2.0}), lambda p: nn.LeakyReLU(p["alpha"])),
    Spec("sigmoid", lambda s, p, n: Sigmoid(s, name=n), {nn.Sigmoid: _NONE},
         {torch.sigmoid: _NONE, F.sigmoid: _NONE, "sigmoid": _NONE}, {"Sigmoid": _NONE}, module=lambda p: nn.Sigmoid()),
    Spec("tanh", lambda s, p, n: Tanh(s, name=n), {nn.Tanh: _NONE},
         {torch.tanh: _NONE, F.tanh: _NONE, "tanh": _NONE}, {"Tanh": _NONE}, module=lambda p: nn.Tanh()),
    Spec("arctan", lambda s, p, n: Arctan(s, name=n), {ArctanModule: _NONE},
         {torch.atan: _NONE, torch.arctan: _NONE, "atan": _NONE, "arctan": _NONE}, {"Atan": _NONE},
         module=lambda p: ArctanModule()),
    Spec("hardtanh", lambda s, p, n: Hardtanh(s, p["min"], p["max"], name=n),
         {nn.ReLU6: lambda m, w: {"min": 0.0, "max": 6.0},
          nn.Hardtanh: lambda m, w: _clamp(m.min_val, m.max_val, w),
          ClippedReLU: lambda m, w: _clamp(0.0, m.conversion_key(), w)},
         {F.hardtanh: lambda a, k, w: _clamp(_arg(a, k, 1, "min_val", -1.0), _arg(a, k, 2, "max_val", 1.0), w),
          F.relu6: lambda a, k, w: {"min": 0.0, "max": 6.0},
          torch.clamp: lambda a, k, w: _clamp(_arg(a, k, 1, "min", None), _arg(a, k, 2, "max", None), w),
          torch.clip: lambda a, k, w: _clamp(_arg(a, k, 1, "min", None), _arg(a, k, 2, "max", None), w),
          "clamp": lambda a, k, w: _clamp(_arg(a, k, 1, "min", None), _arg(a, k, 2, "max", None), w),
          "clip": lambda a, k, w: _clamp(_arg(a, k, 1, "min", None), _arg(a, k, 2, "max", None), w)},
         {},  # ONNX Clip takes its bounds as inputs: the importer reads them as constants
         ({"min": -1.0, "max": 1.0}, {"min": 0.0, "max": 6.0}, {"min": 0.0, "max": math.inf},
          {"min": -math.inf, "max": 0.5}), lambda p: nn.Hardtanh(p["min"], p["max"])),
    Spec("softplus", lambda s, p, n: Softplus(s, p["beta"], p["threshold"], name=n),
         {nn.Softplus: lambda m, w: _nums(w, beta=m.beta, threshold=m.threshold)},
         {F.softplus: lambda a, k, w: _nums(w, beta=_arg(a, k, 1, "beta", 1.0),
                                            threshold=_arg(a, k, 2, "threshold", 20.0))},
         {"Softplus": lambda at, w: {"beta": 1.0, "threshold": math.inf}},  # ONNX: no threshold
         ({"beta": 1.0, "threshold": 20.0}, {"beta": 2.0, "threshold": 5.0}, {"beta": 0.5, "threshold": 20.0},
          {"beta": 1.0, "threshold": -1.0}),
         lambda p: nn.Softplus(p.get("beta", 1.0), p.get("threshold", 20.0))),
    Spec("elu", lambda s, p, n: ELU(s, p["alpha"], name=n), {nn.ELU: lambda m, w: _nums(w, alpha=m.alpha)},
         {F.elu: lambda a, k, w: _nums(w, alpha=_arg(a, k, 1, "alpha", 1.0))},
         {"Elu": lambda at, w: _nums(w, alpha=at.get("alpha", 1.0))},
         ({"alpha": 1.0}, {"alpha": 0.3}, {"alpha": 2.5}), lambda p: nn.ELU(p.get("alpha", 1.0))),
)

REGISTRY = Registry()
_BY_NAME: dict[str, Spec] = {}
for _spec in ENTRIES:
    if _spec.name in _BY_NAME:
        raise RegistryError(f"primitive {_spec.name!r} is registered twice")
    _BY_NAME[_spec.name] = _spec
    for _k in list(_spec.modules) + list(_spec.calls):
        REGISTRY.register_torch(_k, _spec.build)
    for _op in _spec.onnx:
        REGISTRY.register_onnx(_op, _spec.build)

MODULE_TYPES: tuple[type, ...] = tuple(t for s in ENTRIES for t in s.modules)


def names() -> list[str]:
    return [s.name for s in ENTRIES]


def spec(name: str) -> Spec:
    s = _BY_NAME.get(name)
    if s is None:
        raise UnsupportedError(f"unknown activation {name!r}; registered: {names()}")
    return s


def from_module(m: nn.Module, where: str) -> Params | None:
    """``{"act": name, **params}`` for an activation module (its class or a base class registered), else None."""
    for cls in type(m).__mro__:
        for s in ENTRIES:
            f = s.modules.get(cls)
            if f is not None:
                return {"act": s.name, **f(m, where)}
    return None


def from_call(target: Any, args: tuple, kwargs: dict, where: str) -> Params | None:
    """The op of a functional call / tensor method (``target``: the callable or the method name), else None."""
    for s in ENTRIES:
        try:
            f = s.calls.get(target)
        except TypeError:  # an unhashable target
            return None
        if f is not None:
            kw = {k: v for k, v in kwargs.items() if k != "inplace"}
            return {"act": s.name, **f(args, kw, where)}
    return None


def from_onnx(op: str, attrs: dict, where: str) -> Params | None:
    for s in ENTRIES:
        f = s.onnx.get(op)
        if f is not None:
            return {"act": s.name, **f(attrs, where)}
    return None


def build(name: str, shape: tuple[int, ...], params: Params, where: str) -> Layer:
    """The primitive instance of activation ``name`` on per-sample ``shape``."""
    return spec(name).build(tuple(shape), params, where)
