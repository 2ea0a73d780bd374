"""LeakyReLU of any slope ``a`` (``nn.LeakyReLU``, ``F.leaky_relu``, ONNX ``LeakyRelu``).

``f(x) = x`` for ``x >= 0``, ``a x`` for ``x < 0``: convex for ``a <= 1`` (ReLU-like, including
``a < 0``), concave for ``a > 1``, the identity for ``a == 1``. On a box crossing 0:

- the *chord* through ``(l, a l)`` and ``(u, u)`` (slope ``k = (u - a l) / (u - l)``) is the upper
  line when ``a < 1`` and the lower line when ``a > 1``;
- the other line passes through the kink ``(0, 0)`` with a slope in ``[min(a, 1), max(a, 1)]``,
  chosen by ``RelaxOptions.lower_slope`` (named for ReLU, where it is the lower line):
  ``"adaptive"``: for ``a <= 1``, auto_LiRPA 0.3's ``BoundLeakyRelu`` rule: slope 1 if ``k >= 0.5``
  else ``a`` (auto_LiRPA has ``> 0.5``; ``>=`` keeps ``a = 0`` identical to fastcert's ReLU rule
  ``u >= -l``; for other ``a`` the rule is ``u >= (1 - 2a)|l|``, not the least-area ``u >= |l|``).
  For ``a > 1`` auto_LiRPA is unsound (it keeps the chord as the *upper* line and a slope ``a`` or
  1 through 0 as the lower one); fastcert's kink line is then the upper one, of least area: slope 1
  if ``u >= |l|``, else ``a``. ``"parallel"``: ``k``; ``"zero"``: ``a``; ``"one"``: 1.

Intercepts are computed for the slopes actually returned (rounded to the box's dtype) as the
outward-rounded min / max of ``f(v) - s v = (p - s) v`` over ``v in {l, 0, u}`` (``p`` the piece's
slope), exact when ``s`` equals the piece's slope: the lower intercept of the kink line stays 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastcert.layers.base import Box
from fastcert.primitives import outward as ow
from fastcert.primitives.base import LOWER_SLOPE_MODES, Elementwise, Relaxation, RelaxOptions
from fastcert.rounding import round_down, round_up


def check_mode(prim: Elementwise, opts: RelaxOptions) -> None:
    if opts.lower_slope not in LOWER_SLOPE_MODES:
        raise ValueError(f"{prim.name or prim.kind}: RelaxOptions.lower_slope must be one of {LOWER_SLOPE_MODES}, "
                         f"got {opts.lower_slope!r}")


class LeakyReLU(Elementwise):
    """``F.leaky_relu(x, negative_slope)`` for any finite ``negative_slope`` (``a``)."""

    kind = "leaky_relu"

    def __init__(self, shape: tuple[int, ...], negative_slope: float = 0.01, name: str = "") -> None:
        super().__init__(shape, name)
        a = float(negative_slope)
        if not math.isfinite(a):
            raise ValueError(f"{name or self.kind}: negative_slope must be finite, got {negative_slope!r}")
        self.negative_slope = a
        self.lipschitz = max(1.0, abs(a))

    def unstable(self, box: Box) -> torch.Tensor:
        """The neurons whose box crosses the kink at 0 (none for the identity, a == 1)."""
        if self.negative_slope == 1.0:
            return torch.zeros_like(box.l, dtype=torch.bool)
        return (box.l < 0) & (box.u > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> F.leaky_relu(x, a)."""
        return F.leaky_relu(x, self.negative_slope)

    def gap(self, v: torch.Tensor, s: torch.Tensor, upper: bool) -> torch.Tensor:
        """A bound of ``f(v) - s v`` ([N] float64) from below / above (``upper``)."""
        p = torch.where(v >= 0, torch.ones_like(v), torch.full_like(v, self.negative_slope))
        return ow.linear_gap(p, s, v, upper)

    def intercept(self, l: torch.Tensor, u: torch.Tensor, s: torch.Tensor, upper: bool) -> torch.Tensor:
        """The lower / upper (``upper``) intercept of slope-``s`` lines on ``[l, u]`` (vertices l, 0, u)."""
        yes = torch.ones_like(l, dtype=torch.bool)
        return ow.vertex_intercept(s, [l, torch.zeros_like(l), u], [yes, (l < 0) & (u > 0), yes], self.gap, upper)

    def interval(self, box: Box) -> Box:
        """``[min f, max f]`` over the end points and 0 (f is not monotone for ``a < 0``)."""
        l = box.l.double()
        lf, uf, z = l.reshape(-1), box.u.double().reshape(-1), torch.zeros(l.numel(), dtype=l.dtype)
        lo, hi = self.intercept(lf, uf, z, False), self.intercept(lf, uf, z, True)
        return Box(round_down(lo.reshape(l.shape), box.l.dtype), round_up(hi.reshape(l.shape), box.l.dtype))

    def kink_slope(self, l: torch.Tensor, u: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
        """The slope of the line through the kink on crossing boxes (see the module docstring)."""
        a = self.negative_slope
        if mode == "parallel":
            return k
        if mode == "zero":
            return torch.full_like(k, a)
        if mode == "one":
            return torch.ones_like(k)
        if a <= 1:  # auto_LiRPA's rule (a lower line of slope 1 or a)
            return torch.where(k >= 0.5, torch.ones_like(k), torch.full_like(k, a))
        # a > 1: an upper line b + s x with s in [1, a]; its area s (u^2 - l^2) / 2 is least with s = 1
        # when u >= |l|, else with s = a
        return torch.where(u >= -l, torch.ones_like(k), torch.full_like(k, a))

    def slopes(self, l: torch.Tensor, u: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Slopes ``(lo_s, up_s)`` on finite boxes ([N] each; see the module docstring), torch operations
        (differentiable in l and u where the rule is)."""
        a = self.negative_slope
        neg = u <= 0
        pos = (l >= 0) & ~neg
        cross = ~neg & ~pos
        k = (u - a * l) / torch.where(cross, u - l, torch.ones_like(l))
        kink = self.kink_slope(l, u, k, mode)
        piece = torch.where(neg, torch.full_like(l, a), torch.ones_like(l))
        convex = a <= 1
        return torch.where(cross, kink if convex else k, piece), torch.where(cross, k if convex else kink, piece)

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
            z = torch.zeros_like(l)
            c = ow.constant_lines(self.intercept(l, u, z, False), self.intercept(l, u, z, True))
            lo_s, lo_b, up_s, up_b = (torch.where(bad, ci, x) for ci, x in zip(c, (lo_s, lo_b, up_s, up_b)))
        return ow.finish(*(x.reshape(shape) for x in (lo_s, lo_b, up_s, up_b)), dtype=dt, zero_lower_bias=True)
