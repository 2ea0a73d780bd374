"""Elementwise functions made of a convex curve on the left and the identity on the right (Softplus,
ELU): CROWN-style relaxations with outward-rounded intercepts.

``f(x) = c(x)`` for ``x <= t1`` and ``f(x) = x`` for ``x >= t0`` (``t0 <= t1``), where the *curve*
``c`` is convex and increasing on the whole real line. On ``[t0, t1]`` the function is *set-valued*:
both pieces are allowed, so a line pair bounds every selection (Softplus: torch switches to ``x``
where ``beta * x > threshold``, a downward jump of ``c(x) - x``; the zone ``[t0, t1]`` covers the
exact switch point and every float where torch's float64 or float32 test can decide either way).
ELU has ``t0 = t1 = 0`` and ``c(0) = 0``: continuous, with a convex kink for ``alpha <= 1`` and a
concave one for ``alpha > 1`` (handled by the same scheme: soundness never assumes convexity of f).

**Slopes** (float64, then rounded to the box's dtype; the chord and tangents use ``f' = c'`` left of
the nominal switch point ``x0``, 1 from it on):

- upper line: the chord from ``(l, f(l))`` to ``(u, f(u))`` (``f'(u)`` when ``l == u``), clamped to
  ``[0, max_slope]`` (Softplus' jump can make the chord's slope negative);
- lower line, by ``RelaxOptions.lower_slope``: ``"adaptive"`` (CROWN, as the CROWN paper treats a
  convex region): the tangent slope at the midpoint ``m``; ``"parallel"`` (Fast-Lin-like): the
  chord's slope; ``"zero"`` / ``"one"``: the tangent slope at ``l`` / ``u`` (the smallest / largest
  slope of a supporting line; for ELU ``alpha = 0`` these are ReLU's slopes 0 and 1, and
  ``"adaptive"`` is CROWN's ReLU rule ``u >= -l``).

**Intercepts** (the soundness; any slope works): for a slope ``s``, the lower intercept is a
rigorous lower bound of ``min (f(x) - s x)`` over ``[l, u]``, taken piece by piece:

- the curve on ``[a, b] = [l, min(u, t1)]``: ``c(x) >= c(d) + c'(d)(x - d)`` for any ``d`` (``c`` is
  convex on R), so ``c(x) - s x >= c(d) - s d + (c'(d) - s)(x - d)``, bounded below at a corner of
  ``[c'(d)]`` (enclosed) times ``[a - d, b - d]``; ``d`` is the point where ``c'(d) = s`` clamped to
  ``[a, b]`` (then the corner term is only rounding);
- the identity on ``[max(l, t0), u]``: ``(1 - s) x`` is linear, its minimum at an end point.

The upper intercept is the maximum of ``f(v) - s v`` over the end points of each piece (each piece is
convex, so a line above its end points is above it). ``c`` and ``c'`` are enclosed by the subclass's
float64 formulas widened by an error bound; every later operation is rounded outward
(:mod:`fastcert.primitives.outward`). ``interval`` takes each piece's end values (both increase).
Box coordinates beyond 2^64 get constant lines at the interval bounds.
"""

from __future__ import annotations

import torch

from fastcert.layers.base import Box
from fastcert.primitives import outward as ow
from fastcert.primitives.base import Elementwise, Relaxation, RelaxOptions
from fastcert.primitives.leaky_relu import check_mode
from fastcert.primitives.sshape import check_box
from fastcert.rounding import round_down, round_up

INF = float("inf")


class CurveLine(Elementwise):
    """Base of the curve-then-identity primitives. Subclasses set ``t0 <= x0 <= t1`` (the switch zone
    and the nominal switch point), ``max_slope`` (a bound on every slope of f) and implement
    ``forward`` (torch's function), ``curve`` / ``curve_slope`` (float64 formulas of ``c`` and
    ``c'``), ``curve_bounds`` / ``slope_bounds`` (rigorous enclosures) and ``slope_point`` (where
    ``c' = s``)."""

    t0 = 0.0
    t1 = 0.0
    x0 = 0.0
    max_slope = 1.0

    # ---- the curve (subclasses) ------------------------------------------------------------
    def curve(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """float64 ``x`` -> float64 ``c(x)`` (approximate)."""
        raise NotImplementedError

    def curve_slope(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """float64 ``x`` -> float64 ``c'(x)`` (approximate)."""
        raise NotImplementedError

    def curve_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """float64 ``x`` (``-inf`` allowed) -> ``(lo, hi)`` with ``lo <= c(x) <= hi`` (exact real c)."""
        raise NotImplementedError

    def slope_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """float64 finite ``x`` -> ``(lo, hi)`` with ``lo <= c'(x) <= hi``."""
        raise NotImplementedError

    def slope_point(self, s: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """float64 slopes -> a float64 ``d`` with ``c'(d)`` close to ``s`` (``+-inf`` or NaN outside
        the range of ``c'``; the caller clamps it into the piece)."""
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------------
    def unstable(self, box: Box) -> torch.Tensor:
        """The neurons whose box reaches the curve (on the identity piece the lines are exact)."""
        return (box.l < box.u) & (box.l <= self.t1)

    def deriv(self, x: torch.Tensor) -> torch.Tensor:
        """float64 ``f'`` (approximate): ``c'`` left of ``x0``, 1 from it on."""
        return torch.where(x < self.x0, self.curve_slope(x.clamp(max=min(self.x0, 1e300))), torch.ones_like(x))

    def pieces(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(on_curve, b, on_line, c)``: the curve piece is ``[l, b]`` where ``on_curve``, the identity
        piece ``[c, u]`` where ``on_line`` (float64 [N])."""
        on_curve = l <= self.t1
        on_line = u >= self.t0
        return on_curve, u.clamp(max=self.t1), on_line, l.clamp(min=self.t0)

    def interval(self, box: Box) -> Box:
        """``[min f, max f]`` from the pieces' end values (both pieces increase), rounded outward."""
        check_box(self, box)
        l, u = box.l.double(), box.u.double()
        on_curve, b, on_line, c = self.pieces(l, u)
        big = torch.full_like(l, INF)
        lo = torch.minimum(torch.where(on_curve, self.curve_bounds(torch.where(on_curve, l, b))[0], big),
                           torch.where(on_line, c, big))
        hi = torch.maximum(torch.where(on_curve, self.curve_bounds(b)[1], -big), torch.where(on_line, u, -big))
        return Box(round_down(lo, box.l.dtype), round_up(hi, box.l.dtype))

    def lower_intercept(self, l: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """A float ``t <= min over [l, u] of (f(x) - s x)`` (exact f; l, u, s: finite float64 [N])."""
        on_curve, b, on_line, c = self.pieces(l, u)
        a = torch.where(on_curve, l, b)  # keep the unused lanes finite and ordered
        d = self.slope_point(s)
        d = torch.where(torch.isnan(d), a, d)
        d = torch.minimum(torch.maximum(d, a), b)
        dlo, dhi = self.slope_bounds(d)
        qlo, qhi = ow.sub_dn(dlo, s), ow.sub_up(dhi, s)
        corner = torch.minimum(ow.imul_lo(qlo, qhi, ow.sub_dn(a, d), ow.sub_up(a, d)),
                               ow.imul_lo(qlo, qhi, ow.sub_dn(b, d), ow.sub_up(b, d)))
        t_curve = ow.add_dn(ow.gap_lo(self.curve_bounds(d)[0], s, d), corner)
        one = torch.ones_like(s)
        t_line = torch.minimum(ow.linear_gap(one, s, c, False), ow.linear_gap(one, s, u, False))
        big = torch.full_like(s, INF)
        return torch.minimum(torch.where(on_curve, t_curve, big), torch.where(on_line, t_line, big))

    def upper_intercept(self, l: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """A float ``t >= max over [l, u] of (f(x) - s x)`` (the pieces' end points)."""
        on_curve, b, on_line, c = self.pieces(l, u)
        a = torch.where(on_curve, l, b)
        t_curve = torch.maximum(ow.gap_hi(self.curve_bounds(a)[1], s, a), ow.gap_hi(self.curve_bounds(b)[1], s, b))
        one = torch.ones_like(s)
        t_line = torch.maximum(ow.linear_gap(one, s, c, True), ow.linear_gap(one, s, u, True))
        big = torch.full_like(s, -INF)
        return torch.maximum(torch.where(on_curve, t_curve, big), torch.where(on_line, t_line, big))

    def slopes(self, l: torch.Tensor, u: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 slopes ``(lo_s, up_s)`` on finite boxes (see the module docstring)."""
        fl = torch.where(l < self.x0, self.curve(l.clamp(max=min(self.x0, 1e300))), l)
        fu = torch.where(u < self.x0, self.curve(u.clamp(max=min(self.x0, 1e300))), u)
        w = u - l
        k = torch.where(w > 0, (fu - fl) / torch.where(w > 0, w, torch.ones_like(w)), self.deriv(u))
        if mode == "parallel":
            lo = k
        elif mode == "zero":
            lo = self.deriv(l)
        elif mode == "one":
            lo = self.deriv(u)
        else:
            lo = self.deriv(l / 2 + u / 2)
        top = self.max_slope
        return lo.nan_to_num(0.0).clamp(0.0, top), k.nan_to_num(top).clamp(0.0, top)

    def relax(self, box: Box, opts: RelaxOptions) -> Relaxation:
        """Lines on ``box`` ([B, n] each); ``lo_b`` is None when every lower intercept is 0."""
        check_mode(self, opts)
        check_box(self, box)
        dt = box.l.dtype
        shape = box.l.shape
        l = box.l.double().reshape(-1)
        u = box.u.double().reshape(-1)
        bad = ow.unbounded(l, u)
        l0 = torch.where(bad, torch.zeros_like(l), l)
        u0 = torch.where(bad, torch.zeros_like(u), u)
        lo_s, up_s = self.slopes(l0, u0, opts.lower_slope)
        lo_s, up_s = ow.slope_to(lo_s, dt), ow.slope_to(up_s, dt)
        lo_b = self.lower_intercept(l0, u0, lo_s)
        up_b = self.upper_intercept(l0, u0, up_s)
        if bool(bad.any()):
            iv = self.interval(Box(l, u))
            c = ow.constant_lines(iv.l, iv.u)
            lo_s, lo_b, up_s, up_b = (torch.where(bad, ci, x) for ci, x in zip(c, (lo_s, lo_b, up_s, up_b)))
        return ow.finish(*(x.reshape(shape) for x in (lo_s, lo_b, up_s, up_b)), dtype=dt, zero_lower_bias=True)
