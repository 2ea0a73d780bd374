"""Directed (outward) rounding in float64 for the relaxations of elementwise primitives.

torch has no rounding modes, so each operation is rounded to nearest and then corrected:

- a sum: ``two_sum`` gives the exact error ``e`` of ``s = fl(a + b)`` (Knuth; exact barring
  overflow), so ``add_dn`` steps ``s`` down one float only where ``e < 0``: the result is the
  correctly rounded-down sum, and an exact sum stays exact (a zero intercept stays zero);
- a product is exact where a factor is 0 and is otherwise stepped one float outward
  unconditionally, which is safe because round-to-nearest is never more than one step from the
  exact value (also across a power of two and in the subnormal range). (Dekker's exact product
  error would save that step where the product is exact, at 17 more operations: not worth it.)

An overflowed sum or product (``inf`` for a finite exact value) is stepped back to the largest
float when it must be a bound from the inside (``add_dn(max, max) = max``); infinite *inputs* are
the caller's business (the primitives replace boxes beyond 2^64 by their interval bounds).

:func:`finish` rounds float64 lines to the box's dtype: the slope to nearest (any slope is valid,
since the intercept is computed afterwards for the rounded slope) and the intercepts outward.
All tensors are float64 and broadcast elementwise.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from fastcert.primitives.base import Relaxation
from fastcert.rounding import round_down, round_up

INF = float("inf")
#: Magnitude beyond which a box coordinate is treated as unbounded (constant lines are used): far
#: below any overflow of the products of slopes <= 2^64 with it.
BIG = 2.0**64


def _step_dn(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, -INF))


def _step_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, INF))


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (``e`` NaN on overflow)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def add_dn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The largest float ``<= a + b`` (exact real sum)."""
    s, e = two_sum(a, b)
    return torch.where((e < 0) | (s == INF), _step_dn(s), s)


def add_up(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest float ``>= a + b``."""
    s, e = two_sum(a, b)
    return torch.where((e > 0) | (s == -INF), _step_up(s), s)


def sub_dn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A float ``<= a - b``."""
    return add_dn(a, -b)


def sub_up(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A float ``>= a - b``."""
    return add_up(a, -b)


def mul_dn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A float ``<= a b``: exact where a factor is 0, else one step below the rounded product."""
    p = a * b
    return torch.where(((a == 0) | (b == 0)) & (p == p), p, _step_dn(p))


def mul_up(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A float ``>= a b``: exact where a factor is 0, else one step above the rounded product."""
    p = a * b
    return torch.where(((a == 0) | (b == 0)) & (p == p), p, _step_up(p))


def imul_lo(alo: torch.Tensor, ahi: torch.Tensor, blo: torch.Tensor, bhi: torch.Tensor) -> torch.Tensor:
    """A float ``<= min {a b : a in [alo, ahi], b in [blo, bhi]}`` (finite inputs)."""
    return torch.minimum(torch.minimum(mul_dn(alo, blo), mul_dn(alo, bhi)),
                         torch.minimum(mul_dn(ahi, blo), mul_dn(ahi, bhi)))


def imul_hi(alo: torch.Tensor, ahi: torch.Tensor, blo: torch.Tensor, bhi: torch.Tensor) -> torch.Tensor:
    """A float ``>= max {a b : a in [alo, ahi], b in [blo, bhi]}`` (finite inputs)."""
    return torch.maximum(torch.maximum(mul_up(alo, blo), mul_up(alo, bhi)),
                         torch.maximum(mul_up(ahi, blo), mul_up(ahi, bhi)))


def gap_lo(f_lo: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float ``<= f(x) - s x`` given ``f_lo <= f(x)``: the intercept a line of slope ``s`` through
    ``(x, f_lo)`` would need to stay below ``f`` at ``x``."""
    return sub_dn(f_lo, mul_up(s, x))


def gap_hi(f_hi: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float ``>= f(x) - s x`` given ``f_hi >= f(x)``."""
    return sub_up(f_hi, mul_dn(s, x))


def slope_to(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The slope as it will be returned in ``dtype`` (nearest), back in float64 (exact)."""
    return s.to(dtype).double()


def finish(lo_s: torch.Tensor, lo_b: torch.Tensor, up_s: torch.Tensor, up_b: torch.Tensor,
           dtype: torch.dtype, zero_lower_bias: bool = False) -> Relaxation:
    """float64 lines (slopes already representable in ``dtype``, see :func:`slope_to`) -> a
    :class:`Relaxation` in ``dtype``: intercepts rounded outward; ``lo_b`` None when every lower
    intercept is exactly zero and ``zero_lower_bias`` allows it."""
    lb: torch.Tensor | None = round_down(lo_b, dtype)
    if zero_lower_bias and bool((lo_b == 0).all()):
        lb = None
    return Relaxation(lo_s.to(dtype).contiguous(), lb, up_s.to(dtype).contiguous(), round_up(up_b, dtype))


def constant_lines(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Slope-0 lines at the interval bounds ``lo <= f <= hi`` (float64): ``(lo_s, lo_b, up_s, up_b)``."""
    z = torch.zeros_like(lo)
    return z, lo, z.clone(), hi


def flat_box(prim: Any, box: Any) -> tuple[torch.dtype, torch.Size, torch.Tensor, torch.Tensor]:
    """(dtype, shape, l, u) of a box for a relaxation: l, u flat float64; NaN bounds refused naming ``prim``."""
    l = box.l.double().reshape(-1)
    u = box.u.double().reshape(-1)
    if bool(torch.isnan(l).any() | torch.isnan(u).any()):
        raise ValueError(f"{prim.name or prim.kind}: the input box has NaN bounds; check the inputs and eps")
    return box.l.dtype, box.l.shape, l, u


def unbounded(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Neurons whose box reaches beyond :data:`BIG` (or is not finite): they get constant lines."""
    return ~((l.abs() <= BIG) & (u.abs() <= BIG))


def linear_gap(p: torch.Tensor, s: torch.Tensor, v: torch.Tensor, upper: bool) -> torch.Tensor:
    """A bound of ``(p - s) v`` from below (``upper`` False) or above (exact when ``p == s``: a line
    parallel to a linear piece through its kink keeps an exact zero intercept)."""
    qlo, qhi = sub_dn(p, s), sub_up(p, s)
    if upper:
        g = torch.maximum(mul_up(qlo, v), mul_up(qhi, v))
    else:
        g = torch.minimum(mul_dn(qlo, v), mul_dn(qhi, v))
    flat = (qlo == 0) & (qhi == 0)  # 0 even for an infinite v (no 0 * inf = NaN)
    return torch.where(flat, torch.zeros_like(g), g)


def vertex_intercept(s: torch.Tensor, pts: list[torch.Tensor], inside: list[torch.Tensor],
                     gap: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], upper: bool) -> torch.Tensor:
    """Intercepts of the lines of slope ``s`` below / above a piecewise-linear ``f`` on ``[l, u]``.

    ``pts`` are the box ends and the kinks (float64, [N] each), ``inside[i]`` says where ``pts[i]``
    lies in the box: a line lies below a piecewise-linear function on an interval iff it does at the
    interval's ends and kinks, so ``t_lo = min (f(v) - s v)`` (``upper`` False) or ``t_up = max``
    (``upper`` True) over those points. ``gap(v, s, upper)`` bounds ``f(v) - s v`` from below
    (``upper`` False) or above."""
    t = torch.full_like(s, -INF if upper else INF)
    pick = torch.maximum if upper else torch.minimum
    for v, ok in zip(pts, inside):
        g = gap(torch.where(ok, v, torch.zeros_like(v)), s, upper)
        t = torch.where(ok, pick(t, g), t)
    return t
