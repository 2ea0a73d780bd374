"""ELU ``x`` for ``x > 0``, ``alpha (e^x - 1)`` for ``x <= 0`` (``nn.ELU(alpha)``, ``F.elu``, ONNX
``Elu``): a convex curve, then the identity (:mod:`.curve_line`), continuous at 0.

The curve ``alpha expm1(x)`` is convex for every ``alpha >= 0``; ELU is convex for ``alpha <= 1``
(``alpha = 0`` is ReLU) and has a concave kink at 0 for ``alpha > 1`` (slope ``alpha`` on the left,
1 on the right). The intercepts are computed piece by piece, so the lines are sound for any
``alpha >= 0``; for ``alpha > 1`` the chord (upper line) is lifted to pass above the kink and the
midpoint tangent (lower line) is lowered below the identity piece. A negative ``alpha`` (a concave
curve) is refused.

Enclosures (libm within 4 ulps): ``alpha expm1(x)`` within ``9u`` relative, ``alpha exp(x)`` within
``9u``; widened by ``20u`` relative plus 2^-1000 absolute (every underflow); ``c(0) = 0`` and
``c'(0) = alpha`` are exact, so the lines keep exact intercepts where they should (the identity on
``[0, u]``, slope-1 and slope-``alpha`` lines through the kink: ``alpha = 0`` gives ReLU's lines).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastcert.errors import UnsupportedError
from fastcert.layers.base import Box
from fastcert.primitives import outward as ow
from fastcert.primitives.curve_line import CurveLine

U64 = 2.0**-53
ABS = 2.0**-1000
ALPHA_MAX = 2.0**20


class ELU(CurveLine):
    """``F.elu(x, alpha)`` for ``0 <= alpha <= 2^20``."""

    kind = "elu"

    def __init__(self, shape: tuple[int, ...], alpha: float = 1.0, name: str = "") -> None:
        super().__init__(shape, name)
        a = float(alpha)
        if math.isnan(a) or not 0.0 <= a <= ALPHA_MAX:
            raise UnsupportedError(f"{name or self.kind}: ELU alpha={alpha!r} is not supported; fastcert supports "
                                   f"0 <= alpha <= 2^20 (a negative alpha makes the exponential piece concave)")
        self.alpha = a
        self.lipschitz = max(1.0, a)
        self.max_slope = max(1.0, a)
        self.t0 = self.t1 = self.x0 = 0.0

    def unstable(self, box: Box) -> torch.Tensor:
        """The neurons whose box reaches below 0 (on ``[0, u]`` the lines are the identity, exactly)."""
        return (box.l < box.u) & (box.l < 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> F.elu(x, alpha)."""
        return F.elu(x, self.alpha)

    # ---- the curve -----------------------------------------------------------------------------
    def curve(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.expm1(x)

    def curve_slope(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.exp(x)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """Where the formulas are exact: ``x = 0`` (``expm1(0) = 0``, ``exp(0) = 1``) or ``alpha = 0``."""
        return (x == 0) | (self.alpha == 0)

    def curve_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.curve(x)
        w = torch.where(self.exact(x), torch.zeros_like(v), 20 * U64 * v.abs() + ABS)
        return (torch.where(w == 0, v, torch.nextafter(v - w, torch.full_like(v, -ow.INF)).clamp(min=-self.alpha)),
                torch.where(w == 0, v, torch.nextafter(v + w, torch.full_like(v, ow.INF))))

    def slope_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.curve_slope(x)
        w = torch.where(self.exact(x), torch.zeros_like(v), 20 * U64 * v + ABS)
        return (torch.where(w == 0, v, torch.nextafter(v - w, torch.full_like(v, -ow.INF)).clamp(min=0.0)),
                torch.where(w == 0, v, torch.nextafter(v + w, torch.full_like(v, ow.INF))))

    def slope_point(self, s: torch.Tensor) -> torch.Tensor:
        """``log(s / alpha)`` (``-inf`` at 0); for ``alpha = 0`` (``c' = 0``) the right end for ``s > 0``."""
        if self.alpha == 0:
            return torch.where(s > 0, torch.full_like(s, math.inf), torch.full_like(s, -math.inf))
        return torch.log(s / self.alpha)

    def eval_error(self, y: torch.Tensor) -> torch.Tensor:
        """torch computes ``(exp(x) - 1) alpha`` (or ``expm1``) for ``x <= 0``: an absolute error of at
        most ``alpha (8u e^x + u |e^x - 1|) + u |y| <= 9u alpha + u |y|``, doubled (and more), plus
        2^-1000 for underflow; ``x`` itself for ``x > 0`` (exact)."""
        return 32 * U64 * self.alpha + 8 * U64 * y.abs() + ABS
