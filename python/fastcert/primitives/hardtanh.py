"""Hardtanh / clipped ReLU / clamp: ``f(x) = min(max(x, a), b)`` for any ``a < b``, either possibly
infinite (``nn.Hardtanh(a, b)``, ``nn.ReLU6`` = ``Hardtanh(0, 6)``, ``Hardtanh(0, t)``,
``torch.clamp(x, min, max)`` with one side None, ONNX ``Clip``).

``f`` is flat (``a``) left of ``a``, the identity on ``[a, b]``, flat (``b``) right of ``b``: a convex
kink at ``a``, a concave one at ``b``. Lines per case (auto_LiRPA 0.3 has no Hardtanh / Clip
operator to compare with; ``Hardtanh(0, inf)`` gives exactly fastcert's ReLU lines):

- ``u <= a`` / ``l >= b``: both lines flat (``a`` / ``b``); ``a <= l``, ``u <= b``: the identity;
- one kink at ``a`` (``l < a < u <= b``): upper = chord from ``(l, a)`` to ``(u, u)``; lower through
  ``(a, a)`` with slope 0 or 1 (``"adaptive"``: 1 iff ``u - a >= a - l``, CROWN's ReLU rule shifted);
- one kink at ``b`` (``a <= l < b < u``): lower = chord from ``(l, l)`` to ``(u, b)``; upper through
  ``(b, b)`` with slope 1 iff ``b - l >= u - b`` (least area), else 0;
- both kinks (``l < a``, ``b < u``): upper through ``(b, b)`` with slope ``(b - a) / (b - l)`` (the
  concave envelope's left edge) iff ``b - l >= u - b``, else flat; lower through ``(a, a)`` with slope
  ``(b - a) / (u - a)`` iff ``u - a >= a - l``, else flat. These support the concave / convex
  envelope of ``f`` on ``[l, u]`` at its midpoint, so no sound line pair has a smaller area.

``"parallel"`` gives the adaptive line the chord's slope (two kinks: both lines the slope of the
chord from ``(l, a)`` to ``(u, b)``); ``"zero"`` / ``"one"`` force the adaptive line(s) to slope 0 /
the largest slope above. Intercepts are recomputed for the returned (rounded) slopes as the
outward-rounded min / max of ``f(v) - s v`` over the end points and the kinks inside the box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastcert.layers.base import Box
from fastcert.primitives import outward as ow
from fastcert.primitives.base import Elementwise, Relaxation, RelaxOptions
from fastcert.primitives.leaky_relu import check_mode
from fastcert.rounding import round_down, round_up


class Hardtanh(Elementwise):
    """``clamp(x, min_val, max_val)`` with ``min_val < max_val`` (``-inf`` / ``inf`` for a missing side)."""

    kind = "hardtanh"
    lipschitz = 1.0

    def __init__(self, shape: tuple[int, ...], min_val: float = -1.0, max_val: float = 1.0, name: str = "") -> None:
        super().__init__(shape, name)
        a, b = float(min_val), float(max_val)
        if math.isnan(a) or math.isnan(b) or not a < b:
            raise ValueError(f"{name or self.kind}: needs min_val < max_val (use -inf / inf for a missing side), "
                             f"got min_val={min_val!r}, max_val={max_val!r}")
        self.min_val = a
        self.max_val = b

    def unstable(self, box: Box) -> torch.Tensor:
        """The neurons whose box contains a kink (min_val or max_val) strictly inside."""
        a, b = self.min_val, self.max_val
        return ((box.l < a) & (box.u > a)) | ((box.l < b) & (box.u > b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> F.hardtanh(x, a, b) (torch.clamp when a side is infinite)."""
        a, b = self.min_val, self.max_val
        if math.isfinite(a) and math.isfinite(b):
            return F.hardtanh(x, a, b)
        return torch.clamp(x, min=a if math.isfinite(a) else None, max=b if math.isfinite(b) else None)

    def gap(self, v: torch.Tensor, s: torch.Tensor, upper: bool) -> torch.Tensor:
        """A bound of ``f(v) - s v`` ([N] float64) from below / above (``upper``)."""
        mid = ow.linear_gap(torch.ones_like(v), s, v, upper)
        left = v <= self.min_val
        right = v >= self.max_val
        fv = torch.where(left, torch.full_like(v, self.min_val), torch.full_like(v, self.max_val))
        flat = (ow.gap_hi if upper else ow.gap_lo)(fv, s, v)
        return torch.where(left | right, flat, mid)

    def intercept(self, l: torch.Tensor, u: torch.Tensor, s: torch.Tensor, upper: bool) -> torch.Tensor:
        """The lower / upper (``upper``) intercept of slope-``s`` lines on ``[l, u]`` (vertices: the ends
        and the kinks inside)."""
        a = torch.full_like(l, self.min_val)
        b = torch.full_like(l, self.max_val)
        yes = torch.ones_like(l, dtype=torch.bool)
        return ow.vertex_intercept(s, [l, a, b, u], [yes, (l < a) & (a < u), (l < b) & (b < u), yes], self.gap, upper)

    def interval(self, box: Box) -> Box:
        """f is nondecreasing: ``[f(l), f(u)]`` (exact in float64, rounded outward)."""
        a, b = self.min_val, self.max_val
        lo = box.l.double().clamp(min=a, max=b)
        hi = box.u.double().clamp(min=a, max=b)
        return Box(round_down(lo, box.l.dtype), round_up(hi, box.l.dtype))

    def slopes(self, l: torch.Tensor, u: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 slopes ``(lo_s, up_s)`` per case (see the module docstring); l, u: [N], finite."""
        a, b = self.min_val, self.max_val
        one = torch.ones_like(l)
        zero = torch.zeros_like(l)
        ka = l < a
        kb = u > b
        flat = (u <= a) | (l >= b)
        w = torch.where(u > l, u - l, one)
        # the line through a kink: its largest slope, and the least-area choice
        lo_max = torch.where(kb, (b - a) / torch.where(kb, u - a, one), one)
        up_max = torch.where(ka, (b - a) / torch.where(ka, b - l, one), one)
        lo_area = u - a >= a - l
        up_area = b - l >= u - b
        chord_a = (u.clamp(max=b) - a) / w  # from (l, a) to (u, f(u))
        chord_b = (b - l.clamp(min=a)) / w  # from (l, f(l)) to (u, b)
        if mode == "adaptive":
            lo_k = torch.where(lo_area, lo_max, zero)
            up_k = torch.where(up_area, up_max, zero)
        elif mode == "parallel":
            both = ka & kb
            lo_k = torch.where(both, (b - a) / w, chord_a)
            up_k = torch.where(both, (b - a) / w, chord_b)
        elif mode == "zero":
            lo_k, up_k = zero, zero
        else:
            lo_k, up_k = lo_max, up_max
        lo_s = torch.where(flat, zero, torch.where(ka, lo_k, torch.where(kb, chord_b, one)))
        up_s = torch.where(flat, zero, torch.where(kb, up_k, torch.where(ka, chord_a, one)))
        return lo_s, up_s

    def relax(self, box: Box, opts: RelaxOptions) -> Relaxation:
        """Lines on ``box`` ([B, n] each); ``lo_b`` is None when every lower intercept is 0."""
        check_mode(self, opts)
        dt, shape, l, u = ow.flat_box(self, box)
        bad = ow.unbounded(l, u)
        l0 = torch.where(bad, torch.zeros_like(l), l)
        u0 = torch.where(bad, torch.zeros_like(u), u)
        lo_s, up_s = self.slopes(l0, u0, opts.lower_slope)
        lo_s, up_s = ow.slope_to(lo_s, dt), ow.slope_to(up_s, dt)
        lo_b = self.intercept(l0, u0, lo_s, False)
        up_b = self.intercept(l0, u0, up_s, True)
        if bool(bad.any()):
            c = ow.constant_lines(l.clamp(min=self.min_val, max=self.max_val),
                                  u.clamp(min=self.min_val, max=self.max_val))
            lo_s, lo_b, up_s, up_b = (torch.where(bad, ci, x) for ci, x in zip(c, (lo_s, lo_b, up_s, up_b)))
        return ow.finish(*(x.reshape(shape) for x in (lo_s, lo_b, up_s, up_b)), dtype=dt, zero_lower_bias=True)
