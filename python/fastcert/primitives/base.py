"""The primitive protocol and the registry of primitives.

A primitive is one operation of the graph IR (:mod:`fastcert.graph`). Every tensor that flows
between primitives is flat, ``[B, n]`` with ``n = prod(shape)``; a primitive instance knows its
``in_shape`` / ``out_shape`` (without batch) and holds only its parameters (and values derived once
from them); algorithms pass all per-call state explicitly.

- Affine primitives (``is_affine``): ``forward``, ``interval`` (through
  :func:`fastcert.layers.base.interval_affine`), ``backward`` (the transpose applied to coefficient
  rows), ``params(dtype)``.
- Elementwise nonlinear primitives (:class:`Elementwise`): ``forward``, ``interval`` and ``relax``.

The contract of ``interval`` and ``relax`` is exact real arithmetic: for every real ``z`` with
``l <= z <= u`` (``l``, ``u`` the floating-point values given), ``interval`` returns ``lo <= f(z) <= hi``
and ``relax`` returns lines with ``lo_s z + lo_b <= f(z) <= up_s z + up_b``, where ``f`` is the
exact function (and also every value torch's own evaluation of the module can return). The
coefficients are floating-point numbers of the box's dtype; the backward kernels bound the rounding
of the products they are used in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from fastcert.layers.base import Box, Layer


@dataclass(frozen=True)
class Relaxation:
    """Linear bounds of an elementwise function on a box: ``lo_s z + lo_b <= f(z) <= up_s z + up_b``.

    Every tensor is ``[B, n]`` in the box's dtype, contiguous; ``lo_b`` is None when the lower
    intercepts are all zero (ReLU), which lets the backward kernels skip them."""

    lo_s: torch.Tensor
    lo_b: torch.Tensor | None
    up_s: torch.Tensor
    up_b: torch.Tensor


LOWER_SLOPE_MODES = ("adaptive", "parallel", "zero", "one")


@dataclass(frozen=True)
class RelaxOptions:
    """How an elementwise primitive chooses its relaxation.

    ``lower_slope`` (ReLU-like primitives): "adaptive" (CROWN), "parallel" (Fast-Lin / KW: the lower
    line parallel to the upper one), "zero", "one". ``tangent`` (S-shaped primitives): "bisect" finds
    the tangent points through the interval's end points per neuron by vectorised bisection (the
    CROWN paper); "lookup" uses auto_LiRPA's precomputed table (step 0.01; looser, kept to compare
    with it)."""

    lower_slope: str = "adaptive"
    tangent: str = "bisect"


class Elementwise(Layer):
    """Base of elementwise nonlinear primitives: ``in_shape == out_shape``.

    Subclasses set ``kind`` (the primitive's name, e.g. "sigmoid") and implement ``forward``,
    ``interval`` and ``relax``; ``lipschitz`` is a global Lipschitz constant of ``f`` (used by the
    float64-evaluation slack)."""

    is_affine = False
    kind = "elementwise"
    lipschitz: float = 1.0

    def __init__(self, shape: tuple[int, ...], name: str = "") -> None:
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """x: [B, n] -> f(x): [B, n], computed as torch computes the module."""
        raise NotImplementedError

    def interval(self, box: Box) -> Box:  # pragma: no cover - abstract
        """Sound bounds of f over the box (see the module docstring)."""
        raise NotImplementedError

    def relax(self, box: Box, opts: RelaxOptions) -> Relaxation:  # pragma: no cover - abstract
        """Sound linear bounds of f over the box (see the module docstring)."""
        raise NotImplementedError

    def unstable(self, box: Box) -> torch.Tensor:
        """[B, n] bool: the neurons whose relaxation depends on their bounds (a kink or a curve inside the
        box), i.e. those worth bounding more tightly. Default: every non-degenerate interval."""
        return box.l < box.u

    def eval_error(self, y: torch.Tensor) -> torch.Tensor:
        """A bound on ``|torch's float64 f(z) - f(z)|`` for outputs of magnitude ``|y|`` ([B, n], float64):
        by default 4 ulps plus 8 smallest subnormals (libm-class accuracy)."""
        return 8 * (torch.finfo(torch.float64).eps / 2) * y.abs() + 8 * 2.0**-1074


class RegistryError(ValueError):
    """A primitive registered twice for the same torch type, functional call or ONNX op."""


@dataclass(frozen=True)
class Entry:
    """How one source construct becomes a primitive: ``build(source, where)`` returns the shape-free
    op description the graph front ends use (see :mod:`fastcert.graph`)."""

    key: Any
    build: Callable[..., Any]
    module: str


class Registry:
    """Maps torch module types, functional callables / torch methods and ONNX op names to the
    function that converts them. Registering a key twice raises :class:`RegistryError`."""

    def __init__(self) -> None:
        self._torch: dict[Any, Entry] = {}
        self._onnx: dict[str, Entry] = {}

    def register_torch(self, key: Any, build: Callable[..., Any]) -> None:
        if key in self._torch:
            raise RegistryError(f"{key!r} is already registered (by {self._torch[key].module}); a torch type or "
                                f"call maps to one primitive")
        self._torch[key] = Entry(key, build, getattr(build, "__module__", "?"))

    def register_onnx(self, op: str, build: Callable[..., Any]) -> None:
        if op in self._onnx:
            raise RegistryError(f"ONNX op {op!r} is already registered (by {self._onnx[op].module})")
        self._onnx[op] = Entry(op, build, getattr(build, "__module__", "?"))

    def torch_entry(self, key: Any) -> Entry | None:
        return self._torch.get(key)

    def onnx_entry(self, op: str) -> Entry | None:
        return self._onnx.get(op)

    def torch_keys(self) -> list[Any]:
        return list(self._torch)

    def onnx_ops(self) -> list[str]:
        return sorted(self._onnx)
