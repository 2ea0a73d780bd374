"""The layer protocol of fastcert's network IR.

Every tensor that flows between layers is flat: ``[B, n]`` with ``n = prod(shape)``; layers know
their ``in_shape`` / ``out_shape`` (without batch). Layers hold only their parameters (and values
derived once from them, such as ``|W|``); algorithms pass all per-call state explicitly.

Affine layers implement ``forward``, ``interval`` (sound interval propagation returning ``g``, the
magnitude vector used by the floating-point slack), ``backward`` (the transpose applied to
coefficient rows, CROWN's A-propagation) and expose ``bias_flat``. Nonlinear layers implement
``forward``, ``interval`` and ``relax``. The primitives themselves are modules of :mod:`fastcert.primitives`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fastcert._ext import _C
from fastcert.rounding import gamma_n, underflow_slack


_TINY = {dt: torch.finfo(dt).tiny for dt in (torch.float32, torch.float64)}  # smallest normal numbers
EMPTY = {torch.float32: torch.empty(0, dtype=torch.float32), torch.float64: torch.empty(0, dtype=torch.float64)}


def underflow_slack_tiny(fan_in: int, dt: torch.dtype) -> float:
    """The absolute (underflow) term of an interval step with sums of ``fan_in`` products, raised to the
    smallest normal number of ``dt``: a subnormal operand made every elementwise step it enters 10-20x
    slower, and the larger term is still a bound."""
    return max(underflow_slack(fan_in, dt), _TINY[dt])


def empty_like_dtype(dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor of ``dtype`` (a kernel's "none" argument)."""
    return EMPTY[dtype]


@dataclass
class Box:
    """Per-sample interval: ``l, u: [B, n]``."""

    l: torch.Tensor
    u: torch.Tensor

    def mag(self) -> torch.Tensor:
        """``max(|l|, |u|)``: [B, n]."""
        return torch.maximum(self.l.abs(), self.u.abs())


@functools.lru_cache(maxsize=None)
def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


class Layer:
    kind: str = "layer"
    is_affine: bool = False
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    name: str = ""

    @property
    def n_in(self) -> int:
        return _numel(self.in_shape)

    @property
    def n_out(self) -> int:
        return _numel(self.out_shape)

    def describe(self) -> str:
        return f"{self.kind} {self.in_shape}->{self.out_shape}"


def interval_affine(layer: "Layer", box: Box, gamma: float | None = None, exact_g: bool = True
                    ) -> tuple[Box, torch.Tensor]:
    """Sound interval propagation through an affine layer in center/radius form.

    Returns the output box and ``g >= |W| max(|l|,|u|) + |b|`` (``[B, n_out]``), the magnitude that
    bounds this layer's floating-point error. Dense layers use two products, ``W c`` and ``|W| r``, and
    bound ``(|W| |c|)_i <= min(max|c| rowsum_i|W|, ||c||_2 ||W_i||_2)`` per sample (a looser g, but only
    the rounding-error terms see it). Convolutions and diagonal layers compute ``|W| h`` as well: for a
    convolution the global ``||c||_2`` would be far looser than the patch each output sees.
    ``exact_g=False`` lets a convolution bound ``|W| |c|`` by kernel sums times window maxima instead (one
    product fewer; for callers whose only use of ``g`` is float64 terms, e.g. IBP's evaluation slack).
    """
    dt = box.l.dtype
    if gamma is None:
        gamma = gamma_n(layer.fan_in, dt)  # type: ignore[attr-defined]
    tiny = underflow_slack_tiny(layer.fan_in, dt)  # type: ignore[attr-defined]
    B = box.l.shape[0]
    p = layer.params(dt)  # type: ignore[attr-defined]
    n_out = layer.n_out
    if layer.kind == "dense":
        lo = torch.empty(B, n_out, dtype=dt)
        hi = torch.empty(B, n_out, dtype=dt)
        g = torch.empty(B, n_out, dtype=dt)
        work = torch.empty(2 * box.l.numel() + 2 * B, dtype=dt)
        W, absW, bias, absb, rowabs, rownorm = p.W, p.absW, p.bias, p.absbias, p.rowabs, p.rownorm
        _C.interval_dense(box.l, box.u, W, absW, bias, rowabs, rownorm, absb, gamma, tiny, lo, hi, g, work)
        return Box(lo, hi), g
    if layer.kind == "conv2d":  # one fused kernel: c, r, h, the three products, the finishing step
        lo, hi, g = layer.interval_step(box.l, box.u, gamma, tiny, exact_g)  # type: ignore[attr-defined]
        return Box(lo, hi), g
    c = torch.empty_like(box.l)
    r = torch.empty_like(box.l)
    h = torch.empty_like(box.l)
    _C.interval_prep(box.l, box.u, c, r, h)
    mc = layer.forward(c)
    stacked = torch.cat([r, h], dim=0)
    mrg = layer.forward_abs(stacked)
    mr = mrg[:B].contiguous()
    mg = mrg[B:].contiguous()
    lo = torch.empty(B, n_out, dtype=dt)
    hi = torch.empty(B, n_out, dtype=dt)
    _C.interval_finish(mc, mr, mg, p.absbias, gamma, tiny, lo, hi)
    return Box(lo, hi), mg


@dataclass
class Centre:
    """What the centre form of a dense layer's backward step needs (see ``interval_dense_center``):
    ``c: [B, n_in]`` the centres of the input box, ``v: [B, n_out]`` float64 ``W64 c + b64``, ``w: [B, n_out]``
    the per-neuron weight of the step's rounding term (``>= gamma_back |W| r + k64 g``)."""

    c: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor


def interval_dense_center(layer: "Layer", box: Box, gamma_back: float) -> tuple[Box, torch.Tensor, Centre]:
    """Interval step of a dense layer around the centre: ``W64 c + b64`` in float64 (so the float32
    rounding of the centre product does not widen the box), ``|W| r`` in the compute dtype.

    Returns (output box, ``g >= |W| max(|l|,|u|) + |b|``: [B, n_out], :class:`Centre`). ``gamma_back`` is the
    rounding factor of the layer's backward product (``gamma_n(back_depth)``). docs/architecture.md,
    "Floating point", centre form."""
    dt = box.l.dtype
    gamma = gamma_n(layer.fan_in, dt)  # type: ignore[attr-defined]
    tiny = underflow_slack_tiny(layer.fan_in, dt)  # type: ignore[attr-defined]
    B = box.l.shape[0]
    p = layer.params(dt)  # type: ignore[attr-defined]
    n_out, n_in = layer.n_out, layer.n_in
    lo, hi, g, w = (torch.empty(B, n_out, dtype=dt) for _ in range(4))
    c = torch.empty(B, n_in, dtype=dt)
    v = torch.empty(B, n_out, dtype=torch.float64)
    work = torch.empty(B * n_in + 2 * B, dtype=dt)
    work64 = torch.empty(B * n_in, dtype=torch.float64)
    b64 = layer.b64 if layer.b64 is not None else torch.empty(0, dtype=torch.float64)  # type: ignore[attr-defined]
    _C.interval_dense_center(box.l, box.u, layer.W64, p.absW,  # type: ignore
                             b64, p.rowabs, p.rownorm, p.absbias, gamma, tiny,
                             gamma_back, lo, hi, g, w, c, v, work, work64)
    return Box(lo, hi), g, Centre(c, v, w)
