"""S-shaped elementwise functions (sigmoid, tanh, arctan): CROWN's general-activation relaxation.

``f`` is increasing, convex on ``(-inf, 0]``, concave on ``[0, inf)``, and point-symmetric about
``(0, center / 2)``: ``f(-x) = center - f(x)``. The *lower* line on ``[l, u]`` (the CROWN paper,
as auto_LiRPA 0.3's ``BoundTanh.bound_relax_impl`` implements it):

- ``u <= 0`` (convex): the tangent at the midpoint ``m = (l + u) / 2``;
- ``l >= 0`` (concave): the chord (slope ``f'(u)`` when ``u - l < 1e-6``, as auto_LiRPA);
- ``l < 0 < u``: the chord when it does not cut ``f`` (``chord slope < f'(l)``, auto_LiRPA's
  ``mask_direct``), else the tangent at ``d in [l, 0]`` whose line passes through ``(u, f(u))``;
  ``d`` by bisection per neuron (``tangent="bisect"``: 64 steps over the float64 *bit patterns* of
  ``[l, 0]``, so it ends on adjacent floats for any width) or auto_LiRPA's table
  (``tangent="lookup"``: tangent points precomputed for ``u = 0.01 i``, ``i = int(u / 0.01) + 1``,
  ``u`` clipped to 500; slope choice also on the box clipped to [-500, 500], as auto_LiRPA).
  ``tangent="envelope"`` (fastcert's own, not CROWN's) uses the tangent at ``min(d, m)`` instead:
  every tangent at a point ``<= d`` is valid, and the one at ``m`` (when ``m <= d``) maximises the
  line at ``m``, hence its area, among *all* valid lower lines (it supports the convex envelope of
  ``f`` on ``[l, u]`` at ``m``). CROWN's ``d`` maximises the line at ``u`` instead; neither choice
  gives tighter network bounds on every input, and auto_LiRPA's table (a tangent point for a
  slightly larger ``u``, i.e. further left) often has the larger area when ``|l| > u``.

The *upper* line is the lower line of the reflected box ``[-u, -l]``, mirrored: ``f(z) <= s z +
(center - t)``.

**Soundness does not rely on the choice.** Once the slope ``s`` is fixed (rounded to the box's
dtype), the intercept is recomputed as a rigorous lower bound of ``min (f(x) - s x)`` over
``[l, u]``, split at 0: on the concave piece ``f(x) - s x`` is concave, so its minimum is at the
piece's end points; on the convex piece ``f(x) >= f(d) + f'(d) (x - d)`` for any ``d <= 0``, so
``f(x) - s x >= f(d) - s d + (f'(d) - s)(x - d)``, whose minimum over the piece and over the
enclosure of ``f'(d)`` is at a corner. With ``d`` the chosen tangent point this costs only rounding.
``f`` and ``f'`` are enclosed by the subclass's float64 formula widened by ``value_rel`` /
``deriv_rel`` (relative) and ``ABS`` (absolute), and every operation after that is rounded outward
(:mod:`fastcert.primitives.outward`). Box coordinates beyond 2^64 get constant lines.
"""

from __future__ import annotations

import functools

import torch

from fastcert.layers.base import Box
from fastcert.primitives import outward as ow
from fastcert.primitives.base import Elementwise, Relaxation, RelaxOptions
from fastcert.rounding import round_down, round_up

U64 = 2.0**-53
#: Absolute widening of the enclosures of f and f': covers every underflow of the formulas (a
#: subnormal exp, e^-x or 1/x^2 flushed to 0 where the true value is below 2^-1020).
ABS = 2.0**-1000
TANGENT_MODES = ("bisect", "lookup", "envelope")


class SShaped(Elementwise):
    """Base of the S-shaped primitives. Subclasses set ``kind``, ``lipschitz``, ``center``, the
    range ``[range_lo, range_hi]`` of ``f``, the error factors and implement ``forward`` (torch's
    own function), ``value`` and ``deriv`` (float64 formulas whose error the factors bound)."""

    center = 0.0
    range_lo = -float("inf")
    range_hi = float("inf")
    value_rel = 64 * U64
    deriv_rel = 128 * U64
    #: auto_LiRPA's table: tangent points for u = step * i, i < limit / step + 5
    table_limit = 500.0
    table_step = 0.01

    def value(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """float64 x -> float64 f(x), within ``value_rel |f| + ABS``."""
        raise NotImplementedError

    def deriv(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """float64 x -> float64 f'(x), within ``deriv_rel |f'| + ABS``."""
        raise NotImplementedError

    def value_deriv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(value(x), deriv(x))``; subclasses share their exponential."""
        return self.value(x), self.deriv(x)

    # ---- enclosures ------------------------------------------------------------------------
    def value_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 ``x`` -> ``(lo, hi)`` with ``lo <= f(x) <= hi`` (exact real f)."""
        v = self.value(x)
        w = self.value_rel * v.abs() + ABS
        lo = torch.nextafter(v - w, torch.full_like(v, -ow.INF)).clamp(min=self.range_lo)
        hi = torch.nextafter(v + w, torch.full_like(v, ow.INF)).clamp(max=self.range_hi)
        return lo, hi

    def deriv_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 ``x`` -> ``(lo, hi)`` with ``lo <= f'(x) <= hi``."""
        v = self.deriv(x)
        w = self.deriv_rel * v.abs() + ABS
        return (torch.nextafter(v - w, torch.full_like(v, -ow.INF)).clamp(min=0.0),
                torch.nextafter(v + w, torch.full_like(v, ow.INF)))

    def interval(self, box: Box) -> Box:
        """f is increasing: ``[f(l), f(u)]``, rounded outward to the box's dtype."""
        dt = box.l.dtype
        check_box(self, box)
        return Box(round_down(self.value_bounds(box.l.double())[0], dt),
                   round_up(self.value_bounds(box.u.double())[1], dt))

    # ---- relaxation ------------------------------------------------------------------------
    def relax(self, box: Box, opts: RelaxOptions) -> Relaxation:
        """CROWN's lines on ``box`` (``[B, n]`` each), see the module docstring."""
        if opts.tangent not in TANGENT_MODES:
            raise ValueError(f"{self.name or self.kind}: RelaxOptions.tangent must be one of {TANGENT_MODES}, "
                             f"got {opts.tangent!r}")
        check_box(self, box)
        dt = box.l.dtype
        shape = box.l.shape
        l = box.l.double().reshape(-1)
        u = box.u.double().reshape(-1)
        bad = ow.unbounded(l, u)
        l0 = torch.where(bad, torch.zeros_like(l), l)
        u0 = torch.where(bad, torch.zeros_like(u), u)
        lo_s, lo_b = self.lower_line(l0, u0, opts.tangent, dt)
        up_s, t = self.lower_line(-u0, -l0, opts.tangent, dt)
        up_b = ow.sub_up(torch.full_like(t, self.center), t)
        if bool(bad.any()):
            c = ow.constant_lines(self.value_bounds(l)[0], self.value_bounds(u)[1])
            lo_s, lo_b, up_s, up_b = (torch.where(bad, ci, x) for ci, x in zip(c, (lo_s, lo_b, up_s, up_b)))
        return ow.finish(*(x.reshape(shape) for x in (lo_s, lo_b, up_s, up_b)), dtype=dt)

    def lower_line(self, l: torch.Tensor, u: torch.Tensor, tangent: str,
                   dtype: torch.dtype, d_tan: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat float64 ``l, u`` ([N], finite) -> ``(s, t)``: ``s z + t <= f(z)`` on ``[l, u]``, ``s``
        representable in ``dtype``, ``t`` a rigorous float64 intercept. ``d_tan`` ([N]): the tangent points
        of the crossing neurons that take a tangent (alpha-CROWN's, projected by the caller to ``[l, d*]``;
        any value keeps the line sound: the intercept is rigorous for whatever slope)."""
        lookup = tangent == "lookup"
        lc = l.clamp(min=-self.table_limit) if lookup else l
        uc = u.clamp(max=self.table_limit) if lookup else u
        width = uc - lc
        close = width < 1e-6
        k = torch.where(close, self.deriv(uc), (self.value(uc) - self.value(lc)) / width.clamp(min=1e-6))
        m = (lc + uc) / 2
        neg = u <= 0
        pos = (l >= 0) & ~neg
        cross = ~neg & ~pos
        direct = cross & (k < self.deriv(lc))
        tan = cross & ~direct
        d = torch.where(neg, m, torch.where(direct, l, torch.zeros_like(l)))
        if d_tan is not None:
            d = torch.where(tan, d_tan, d)
        elif bool(tan.any()):
            idx = tan.nonzero().squeeze(1)
            if lookup:
                dt_ = self.lookup_point(uc[idx])
            else:
                dt_ = self.bisect_point(l[idx], u[idx])
                if tangent == "envelope":  # the tangent at m when it is valid (m <= d*)
                    dt_ = torch.minimum(dt_, m[idx])
            d = d.index_put((idx,), dt_)
        s = torch.where(neg | tan, self.deriv(d), k)
        s = ow.slope_to(s, dtype)
        return s, self.lower_intercept(l, u, s, d)

    def star_points(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 ``l, u`` (any shape, finite) -> the largest valid tangent points (d*) of the lower line
        (in ``[l, 0]``) and of the mirrored upper line (in ``[-u, 0]``, the lower line of ``[-u, -l]``) where
        the box crosses 0; 0 elsewhere."""
        out = []
        for a, b in ((l, u), (-u, -l)):
            af, bf = a.reshape(-1), b.reshape(-1)
            d = torch.zeros_like(af)
            cross = (af < 0) & (bf > 0)
            if bool(cross.any()):
                idx = cross.nonzero().squeeze(1)
                d[idx] = self.bisect_point(af[idx], bf[idx])
            out.append(d.reshape(l.shape))
        return out[0], out[1]

    def relax_rows(self, box: Box, d_lo: torch.Tensor, d_up: torch.Tensor) -> Relaxation:
        """alpha-CROWN's per-row lines: box [Bc, n]; ``d_lo``, ``d_up`` [Bc, R, n] the tangent points of the
        lower and upper lines for each row (as auto_LiRPA keys them per start node). Where a neuron's box
        crosses 0 and its line is a tangent, the tangent is taken at ``d_lo`` projected to ``[l, d*]`` (the
        upper line: at ``d_up`` projected to ``[d*', u]``); every other neuron gets CROWN's line. Sound for
        any ``d`` (the intercepts are rigorous, as in :meth:`relax`). -> lines [Bc, R, n] in the box's
        dtype."""
        check_box(self, box)
        dt = box.l.dtype
        Bc, R, n = d_lo.shape
        l = box.l.double()
        u = box.u.double()
        bad = ow.unbounded(l, u)
        l0 = torch.where(bad, torch.zeros_like(l), l)
        u0 = torch.where(bad, torch.zeros_like(u), u)
        s_lo, s_up = self.star_points(l0, u0)
        L = l0[:, None, :].expand(Bc, R, n)
        U = u0[:, None, :].expand(Bc, R, n)
        dl = torch.minimum(torch.maximum(d_lo.double(), L), s_lo[:, None, :])
        du = torch.minimum(torch.maximum(-d_up.double(), -U), s_up[:, None, :])  # mirrored: in [-u, d*']
        Lf, Uf = L.reshape(-1), U.reshape(-1)
        lo_s, lo_b = self.lower_line(Lf, Uf, "bisect", dt, d_tan=dl.reshape(-1))
        up_s, t = self.lower_line(-Uf, -Lf, "bisect", dt, d_tan=du.reshape(-1))
        up_b = ow.sub_up(torch.full_like(t, self.center), t)
        badf = bad[:, None, :].expand(Bc, R, n).reshape(-1)
        if bool(badf.any()):
            lv = self.value_bounds(l[:, None, :].expand(Bc, R, n).reshape(-1))[0]
            uv = self.value_bounds(u[:, None, :].expand(Bc, R, n).reshape(-1))[1]
            c = ow.constant_lines(lv, uv)
            lo_s, lo_b, up_s, up_b = (torch.where(badf, ci, x) for ci, x in zip(c, (lo_s, lo_b, up_s, up_b)))
        return ow.finish(*(x.reshape(Bc, R, n) for x in (lo_s, lo_b, up_s, up_b)), dtype=dt)

    def lower_intercept(self, l: torch.Tensor, u: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """A float ``t <= min over [l, u] of (f(x) - s x)`` (exact), using the tangent at ``d`` on the
        convex piece ``[l, min(u, 0)]`` and the end points of the concave piece ``[max(l, 0), u]``."""
        d = d.clamp(max=0.0)
        b1 = u.clamp(max=0.0)
        a2 = l.clamp(min=0.0)
        fd_lo = self.value_bounds(d)[0]
        dlo, dhi = self.deriv_bounds(d)
        qlo, qhi = ow.sub_dn(dlo, s), ow.sub_up(dhi, s)
        corner = torch.minimum(ow.imul_lo(qlo, qhi, ow.sub_dn(l, d), ow.sub_up(l, d)),
                               ow.imul_lo(qlo, qhi, ow.sub_dn(b1, d), ow.sub_up(b1, d)))
        t1 = ow.add_dn(ow.gap_lo(fd_lo, s, d), corner)
        t2 = torch.minimum(ow.gap_lo(self.value_bounds(a2)[0], s, a2), ow.gap_lo(self.value_bounds(u)[0], s, u))
        inf = torch.full_like(t1, ow.INF)
        return torch.minimum(torch.where(l <= 0, t1, inf), torch.where(u >= 0, t2, inf))

    def bisect_point(self, l: torch.Tensor, u: torch.Tensor, steps: int = 64) -> torch.Tensor:
        """For ``l < 0 < u`` ([N]): the point ``d in [l, 0]`` nearest 0 with the tangent at ``d`` below
        ``f(u)`` at ``u`` (``h(d) = f(d) + f'(d)(u - d) - f(u) <= 0``; ``h`` increases on ``[l, 0]``).
        Bisection over the bit patterns of ``-d in [0, -l]`` (ordered like the values)."""
        fu = self.value(u)
        lo_bits = torch.zeros_like(l, dtype=torch.int64)  # -d = 0: h > 0
        hi_bits = (-l).view(torch.int64)  # -d = -l: h <= 0 (not a direct chord)
        for _ in range(steps):
            mid = lo_bits + (hi_bits - lo_bits) // 2
            d = -(mid.view(torch.float64))
            fd, dd = self.value_deriv(d)
            below = fd + dd * (u - d) - fu <= 0
            hi_bits = torch.where(below, mid, hi_bits)
            lo_bits = torch.where(below, lo_bits, mid)
        return -(hi_bits.view(torch.float64))

    def lookup_point(self, uc: torch.Tensor) -> torch.Tensor:
        """auto_LiRPA's table lookup: ``uc`` ([N], clipped to 500) -> tangent point ``d <= 0``."""
        table = tangent_table(type(self))
        idx = (uc / self.table_step).to(torch.int64).clamp(min=0) + 1
        return table[idx]


def check_box(prim: Elementwise, box: Box) -> None:
    """A NaN bound is an upstream bug or an invalid input: refuse it by name."""
    if bool(torch.isnan(box.l).any() | torch.isnan(box.u).any()):
        raise ValueError(f"{prim.name or prim.kind}: the input box has NaN bounds; check the inputs and eps")


@functools.lru_cache(maxsize=None)
def tangent_table(cls: type) -> torch.Tensor:
    """auto_LiRPA 0.3's ``precompute_relaxation`` ``d_lower`` table, in float64 with ``cls``'s
    formulas: for ``u_i = step * i`` the tangent point ``d <= 0`` found by doubling from -1 and 100
    bisection steps, whose tangent is below ``f(u_i)`` at ``u_i``."""
    f = cls((1,))
    n = int(f.table_limit / f.table_step) + 5
    upper = f.table_step * torch.arange(0, n, dtype=torch.float64)
    fu = f.value(upper)

    def below(d: torch.Tensor) -> torch.Tensor:
        return f.deriv(d) * (upper - d) + f.value(d) <= fu

    lo = -torch.ones_like(upper)
    hi = torch.zeros_like(upper)
    while True:
        ok = below(lo)
        if bool(ok.all()):
            break
        lo = torch.where(ok, lo, 2 * lo)
    for _ in range(100):
        m = (lo + hi) / 2
        ok = below(m)
        lo = torch.where(ok, m, lo)
        hi = torch.where(ok, hi, m)
    return lo
