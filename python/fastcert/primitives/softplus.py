"""Softplus ``log(1 + e^(beta x)) / beta`` with torch's threshold (``nn.Softplus(beta, threshold)``,
``F.softplus``, ONNX ``Softplus``): a convex curve, then the identity (:mod:`.curve_line`).

torch computes ``x if x * beta > threshold else log1p(exp(x * beta)) / beta``: above
``x0 = threshold / beta`` it returns ``x``, below softplus by ``log1p(exp(-beta x)) / beta`` (a
downward jump of ``log1p(e^-threshold) / beta`` at ``x0``, 2.1e-9 for the defaults). The lines and
the interval bound that piecewise function, set-valued on the zone ``[t0, t1] = x0 -+ (2^-20 |x0| +
2^-100)``, which contains the exact switch point and every float where torch's float64 or float32
test ``x * beta > threshold`` (with its rounded product, float32 beta and threshold) can decide either
way. ``eval_error`` adds the jump to the float64 evaluation error (a perturbed input can switch
branches; see :meth:`Softplus.eval_error`). ``threshold = inf`` (ONNX ``Softplus``, which has no
threshold) is the plain softplus, evaluated by the overflow-free formula.

Enclosures, with ``z = fl(beta x)`` (relative error ``u``) and libm within 4 ulps:
``c = (max(z, 0) + log1p(exp(-|z|))) / beta`` is within ``(24 + |min(z, 0)|) u`` relative (for
``z < 0``, ``e^z`` inherits ``|z| u`` from ``z``; for ``z > 0`` the rounding of ``z`` is relative to
the result); ``c' = sigmoid(z)`` within ``(20 + |min(z, 0)|) u`` (the sigmoid formula of
:mod:`.sigmoid`). Both are widened by twice that, plus 2^-1000 absolute (an ``exp`` below the normal
range, divided by ``beta >= 2^-20``); ``|z|`` is capped at 800 there (where ``z < -745`` the exp is 0
and both values are below ``e^-745 2^20 < 2^-1050``, inside the absolute term).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastcert.errors import UnsupportedError
from fastcert.primitives import outward as ow
from fastcert.primitives.curve_line import CurveLine

U64 = 2.0**-53
ABS = 2.0**-1000
BETA_RANGE = (2.0**-20, 2.0**20)
#: torch's float64 softplus overflows to inf where ``709.78 < beta x <= threshold``
THRESHOLD_MAX = 700.0


class Softplus(CurveLine):
    """``F.softplus(x, beta, threshold)``; ``threshold = inf``: the plain softplus (ONNX)."""

    kind = "softplus"
    lipschitz = 1.0
    max_slope = 1.0

    def __init__(self, shape: tuple[int, ...], beta: float = 1.0, threshold: float = 20.0, name: str = "") -> None:
        super().__init__(shape, name)
        where = name or self.kind
        b, t = float(beta), float(threshold)
        if not BETA_RANGE[0] <= b <= BETA_RANGE[1]:
            raise UnsupportedError(f"{where}: Softplus beta={beta!r} is not supported; fastcert supports beta in "
                                   f"[2^-20, 2^20] (a negative beta is a concave function: use -softplus(-x) "
                                   f"with beta > 0)")
        if math.isnan(t) or t == -math.inf or (math.isfinite(t) and abs(t) > THRESHOLD_MAX):
            raise UnsupportedError(f"{where}: Softplus threshold={threshold!r} is not supported; it must lie in "
                                   f"[-{THRESHOLD_MAX:g}, {THRESHOLD_MAX:g}] (torch's softplus overflows to inf "
                                   f"for beta * x above 709.78 and below the threshold)")
        self.beta = b
        self.threshold = t
        self.x0 = t / b
        if math.isfinite(t):
            half = 2.0**-20 * abs(self.x0) + 2.0**-100
            self.t0 = self.x0 - half
            self.t1 = self.x0 + half
            x = torch.tensor([self.t0], dtype=torch.float64)
            # the largest jump c(x) - x of a float evaluation that takes the identity branch (x >= t0)
            self.jump = float(ow.sub_up(self.curve_bounds(x)[1], x))
        else:
            self.t0 = self.t1 = math.inf
            self.jump = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> F.softplus(x, beta, threshold) (threshold inf: the overflow-free formula)."""
        if math.isfinite(self.threshold):
            return F.softplus(x, self.beta, self.threshold)
        z = x * self.beta
        return (z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))) / self.beta

    # ---- the curve -----------------------------------------------------------------------------
    def curve(self, x: torch.Tensor) -> torch.Tensor:
        z = x * self.beta
        return (z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))) / self.beta

    def curve_slope(self, x: torch.Tensor) -> torch.Tensor:
        z = x * self.beta
        e = torch.exp(-z.abs())
        p = 1.0 / (1.0 + e)
        return torch.where(z >= 0, p, e * p)

    def _widen(self, x: torch.Tensor, v: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
        zneg = (-(x * self.beta)).clamp(min=0.0, max=800.0).nan_to_num(800.0)
        w = (2 * base + 2 * zneg) * U64 * v.abs() + ABS
        return (torch.nextafter(v - w, torch.full_like(v, -ow.INF)).clamp(min=0.0),
                torch.nextafter(v + w, torch.full_like(v, ow.INF)))

    def curve_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._widen(x, self.curve(x), 24.0)

    def slope_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._widen(x, self.curve_slope(x), 20.0)
        return lo, hi.clamp(max=1.0)

    def slope_point(self, s: torch.Tensor) -> torch.Tensor:
        """``logit(s) / beta`` (``-inf`` at 0, ``inf`` at 1)."""
        return (torch.log(s) - torch.log1p(-s)) / self.beta

    def eval_error(self, y: torch.Tensor) -> torch.Tensor:
        """A bound on ``|torch's float64 softplus - f|`` for outputs of magnitude ``y``, plus the jump.

        On the curve branch the error is at most ``(24 + |min(z, 0)|) u c`` with ``|z| <=
        log(1 / (beta c))`` when ``z < 0`` (``beta c = log1p(e^z) <= e^z``), plus ``2^-1000`` for an
        ``exp`` below the normal range; ``y (64 + 2 max(0, log(1 / (beta y))))`` doubles that and is
        nondecreasing in ``y``, so it bounds every output below ``y``. The identity branch is exact.
        A float64 evaluation whose (perturbed) input ``x~`` takes another branch than the exact input
        ``x`` deviates by at most the jump ``c(t0) - t0`` beyond the Lipschitz term. With ``t0 > 0``
        that needs an output of at least ``t0``: if ``c(x) <= y < t0 <= x~`` (torch returns ``x~``), then
        ``0 < x~ - c(x) <= x~ - x`` (as ``c(x) >= x``), within the input's error; the identity branch
        taken exactly (``x > t1``) has an output ``x > t0``."""
        yl = torch.where(y > 0, y, torch.ones_like(y)) * self.beta
        h = y * (64.0 + 2.0 * torch.log(1.0 / yl).clamp(min=0.0))
        err = (h * U64 * (1 + 1e-6) + ABS).clamp(min=0.0)
        if self.jump > 0.0:
            near = (y >= self.t0) if self.t0 > 0 else torch.ones_like(y, dtype=torch.bool)
            err = err + torch.where(near, torch.full_like(y, 2.0 * self.jump), torch.zeros_like(y))
        return err
