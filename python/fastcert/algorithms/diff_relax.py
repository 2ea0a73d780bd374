"""The optimize mode's interval images and linear relaxations of the general activations and of max
pooling: the same slopes as the certify mode's primitives (:mod:`fastcert.primitives`), as torch
operations in float64 so that autograd differentiates them w.r.t. the box, with nominal intercepts.

Certify mode computes, for the slope it chose, a rigorous bound of ``min / max (f(v) - s v)`` over the
box (outward rounding, enclosures of ``f``); here the same extremum is taken over the points where it
is attained -- the box's ends, the kinks inside it and, on a convex curve, the point where the tangent
slope equals ``s`` -- with torch's ``f``. Both are the same number up to rounding (a few ulps), so the
optimize-mode bound is the certified one without its slack.

Gradients: the slope rules are differentiated where they are smooth (chords, tangents at the midpoint);
a chosen case (which piece, which kink line) is a constant of the graph, as in auto_LiRPA. The
extremum's location is a constant too (the envelope theorem: the derivative of ``min_v (f(v) - s v)``
w.r.t. ``s`` is ``-v*``), except where it is a box end. An S-shaped function's tangent point ``d``
through ``(u, f(u))`` (found by bisection) gets the derivative of its defining equation ``f(d) + f'(d)
(u - d) = f(u)`` by the implicit function theorem: ``dd/du = (f'(u) - f'(d)) / (f''(d) (u - d))``.
With ``tangent="lookup"`` (auto_LiRPA's table) ``d`` is a constant, as in auto_LiRPA. The tangent points
of S-shaped neurons can also be given (alpha-CROWN, ``tangents``: one per neuron, projected to the
valid range ``[l, d]``), then the gradient w.r.t. them is exact.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fastcert.primitives.base import Elementwise
from fastcert.primitives.curve_line import CurveLine
from fastcert.primitives.hardtanh import Hardtanh
from fastcert.primitives.leaky_relu import LeakyReLU
from fastcert.primitives.maxpool import MaxPool2d
from fastcert.primitives.sshape import SShaped

INF = float("inf")
Lines = tuple[Tensor, Tensor, Tensor, Tensor]  # lo_s, lo_b, up_s, up_b


def _sig_d(x: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(x)
    d1 = s * (1 - s)
    return d1, d1 * (1 - 2 * s)


def _tanh_d(x: Tensor) -> tuple[Tensor, Tensor]:
    t = torch.tanh(x)
    d1 = 1 - t * t
    return d1, -2 * t * d1


def _atan_d(x: Tensor) -> tuple[Tensor, Tensor]:
    d1 = 1 / (1 + x * x)
    return d1, -2 * x * d1 * d1


#: f' and f'' of the S-shaped primitives as differentiable torch expressions, by kind
SSHAPED_DERIVS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "sigmoid": _sig_d, "tanh": _tanh_d, "arctan": _atan_d,
}


def covered(p: object) -> bool:
    """Whether the optimize mode relaxes this nonlinear primitive."""
    if isinstance(p, SShaped):
        return p.kind in SSHAPED_DERIVS
    return isinstance(p, (LeakyReLU, Hardtanh, CurveLine, MaxPool2d))


def _clamp(v: Tensor, l: Tensor, u: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(v, l), u)


def _kinks(p: Elementwise, l: Tensor) -> list[Tensor]:
    """The points where a piecewise primitive changes piece (constants, [N] like ``l``)."""
    if isinstance(p, LeakyReLU):
        return [torch.zeros_like(l)]
    if isinstance(p, Hardtanh):
        return [torch.full_like(l, p.min_val), torch.full_like(l, p.max_val)]
    if isinstance(p, CurveLine):
        return [torch.full_like(l, p.t0), torch.full_like(l, p.t1)]
    return []


def _extreme(p: Elementwise, pts: list[Tensor], ok: list[Tensor | None], s: Tensor, upper: bool) -> Tensor:
    """min (max if ``upper``) of ``f(v) - s v`` over the candidate points (``ok``: where each is valid)."""
    best = None
    fill = -INF if upper else INF
    for v, m in zip(pts, ok):
        g = p.forward(v) - s * v
        if m is not None:
            g = torch.where(m, g, torch.full_like(g, fill))
        best = g if best is None else (torch.maximum(best, g) if upper else torch.minimum(best, g))
    assert best is not None
    return best


def elementwise_interval(p: Elementwise, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """[min f, max f] over [l, u] ([B, n] each, any float dtype): over the ends and the kinks inside."""
    if isinstance(p, SShaped):  # increasing
        return p.forward(l), p.forward(u)
    pts = [l, u] + [_clamp(k, l, u) for k in _kinks(p, l)]
    vals = torch.stack([p.forward(v) for v in pts])
    return vals.min(0).values, vals.max(0).values


def _piecewise_lines(p: Elementwise, l: Tensor, u: Tensor, mode: str) -> Lines:
    """LeakyReLU / Hardtanh / CurveLine on float64 [N] boxes: the primitive's slopes, nominal intercepts."""
    lo_s, up_s = p.slopes(l, u, mode)  # type: ignore[attr-defined]
    pts = [l, u] + [_clamp(k, l, u) for k in _kinks(p, l)]
    ok: list[Tensor | None] = [None] * len(pts)
    up_b = _extreme(p, pts, ok, up_s, True)
    lo_pts, lo_ok = list(pts), list(ok)
    if isinstance(p, CurveLine):  # the convex curve's minimum of c(v) - s v: where c'(v) = s
        b = u.clamp(max=p.t1)
        with torch.no_grad():
            d = p.slope_point(lo_s.detach())
            d = torch.where(torch.isnan(d), l.detach(), d)
        lo_pts.append(_clamp(d, l, b))
        lo_ok.append(l <= p.t1)
    lo_b = _extreme(p, lo_pts, lo_ok, lo_s, False)
    return lo_s, lo_b, up_s, up_b


def _sshape_lower(p: SShaped, l: Tensor, u: Tensor, tangent: str, d_given: Tensor | None,
                  d_star: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CROWN's lower line of an S-shaped f on float64 [N] boxes (as ``SShaped.lower_line``): (s, t).
    ``d_given``: tangent points for the crossing neurons that need one (alpha-CROWN), projected to the
    valid ``[l, d*]``; ``d_star`` ([N], detached): d* already computed (``SShaped.star_points``), else by
    bisection here."""
    deriv = SSHAPED_DERIVS[p.kind]
    lookup = tangent == "lookup"
    lc = l.clamp(min=-p.table_limit) if lookup else l
    uc = u.clamp(max=p.table_limit) if lookup else u
    width = uc - lc
    close = (width < 1e-6).detach()
    fl, fu = p.forward(lc), p.forward(uc)
    k = torch.where(close, deriv(uc)[0], (fu - fl) / width.clamp(min=1e-6))
    m = (lc + uc) / 2
    with torch.no_grad():
        neg = u <= 0
        pos = (l >= 0) & ~neg
        cross = ~neg & ~pos
        direct = cross & (k < deriv(lc)[0])
        tan = cross & ~direct
    d = torch.where(neg, m, torch.where(direct, l, torch.zeros_like(l)))
    if bool(tan.any()):
        idx = tan.nonzero().squeeze(1)
        with torch.no_grad():
            if lookup:
                d0 = p.lookup_point(uc[idx].detach())
            elif d_star is not None:
                d0 = d_star[idx]
            else:
                d0 = p.bisect_point(l[idx].detach(), u[idx].detach())
        if lookup:
            dt_ = d0
        else:
            ui = u[idx]
            d1, d2 = deriv(d0)
            du = deriv(ui.detach())[0]
            den = d2 * (ui.detach() - d0)
            slope = torch.where(den != 0, (du - d1) / torch.where(den != 0, den, torch.ones_like(den)),
                                torch.zeros_like(den))
            dt_ = d0 + slope.detach() * (ui - ui.detach())  # the value d0, the implicit derivative
            if tangent == "envelope":
                dt_ = torch.where(m[idx].detach() < d0, m[idx], dt_)
        if d_given is not None:  # any tangent point in [l, d*] gives a valid lower line
            dt_ = torch.minimum(torch.maximum(d_given[idx], l[idx]), dt_)
        d = d.index_put((idx,), dt_)
    s = torch.where(neg | tan, deriv(d)[0], k)
    pts = [l, u, d]
    ok: list[Tensor | None] = [None, None, neg | tan]
    return s, _extreme(p, pts, ok, s, False)


def _sshape_lines(p: SShaped, l: Tensor, u: Tensor, tangent: str,
                  tangents: tuple[Tensor, Tensor] | None) -> Lines:
    lo_s, lo_b = _sshape_lower(p, l, u, tangent, None if tangents is None else tangents[0])
    # the upper line: the lower line of the reflected box [-u, -l], mirrored (f(-x) = center - f(x))
    up_s, t = _sshape_lower(p, -u, -l, tangent, None if tangents is None else -tangents[1])
    return lo_s, lo_b, up_s, p.center - t


def elementwise_lines(p: Elementwise, l: Tensor, u: Tensor, mode: str, tangent: str,
                      tangents: tuple[Tensor, Tensor] | None = None) -> Lines:
    """``lo_s z + lo_b <= f(z) <= up_s z + up_b`` on the box l, u ([B, n], model dtype): four [B, n] tensors
    in that dtype, differentiable in l and u (and in the tangent points ``tangents`` = (lower, upper)
    [B, n] each, alpha-CROWN, S-shaped primitives only). Computed in float64."""
    dt, shape = l.dtype, l.shape
    lf, uf = l.double().reshape(-1), u.double().reshape(-1)
    if isinstance(p, SShaped):
        tg = None if tangents is None else (tangents[0].double().reshape(-1), tangents[1].double().reshape(-1))
        lines = _sshape_lines(p, lf, uf, tangent, tg)
    else:
        lines = _piecewise_lines(p, lf, uf, mode)
    return tuple(x.reshape(shape).to(dt).contiguous() for x in lines)  # type: ignore[return-value]


def sshape_row_lines(p: SShaped, l: Tensor, u: Tensor, d_lo: Tensor, d_up: Tensor) -> Lines:
    """alpha-CROWN's per-row lines of an S-shaped node (the optimize-mode twin of ``SShaped.relax_rows``):
    box l, u [B, n] (live), tangent points d_lo, d_up [B, R, n] (lower / upper line) -> four [B, R, n] in the
    box's dtype, differentiable in the box and the tangent points. d* is found once per neuron (bisection),
    not per row."""
    dt = l.dtype
    B, R, n = d_lo.shape
    lf, uf = l.double(), u.double()
    with torch.no_grad():
        s_lo, s_up = p.star_points(lf.detach(), uf.detach())
    L = lf[:, None, :].expand(B, R, n).reshape(-1)
    U = uf[:, None, :].expand(B, R, n).reshape(-1)
    e = (B, R, n)
    lo_s, lo_b = _sshape_lower(p, L, U, "bisect", d_lo.double().reshape(-1), s_lo[:, None, :].expand(e).reshape(-1))
    up_s, t = _sshape_lower(p, -U, -L, "bisect", -d_up.double().reshape(-1), s_up[:, None, :].expand(e).reshape(-1))
    return tuple(x.reshape(e).to(dt).contiguous() for x in (lo_s, lo_b, up_s, p.center - t))  # type: ignore


def sshape_tangent_points(p: SShaped, l: Tensor, u: Tensor, tangent: str) -> tuple[Tensor, Tensor]:
    """The method's own tangent points (lower, upper: [B, n], detached) of an S-shaped node: alpha-CROWN's
    starting point (0 where no tangent is used)."""
    out = []
    for a, b, sgn in ((l, u, 1.0), (-u, -l, -1.0)):
        af, bf = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
        cross = (af < 0) & (bf > 0)
        d = torch.zeros_like(af)
        if bool(cross.any()):
            idx = cross.nonzero().squeeze(1)
            d[idx] = p.bisect_point(af[idx], bf[idx])
        out.append((sgn * d).reshape(l.shape).to(l.dtype))
    return out[0], out[1]


def maxpool_interval(p: MaxPool2d, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    B = l.shape[0]

    def pool(t: Tensor) -> Tensor:
        return F.max_pool2d(t.reshape(B, *p.in_shape), p.k, p.s, p.p).reshape(B, -1)

    return pool(l), pool(u)


def maxpool_back(p: MaxPool2d, rel: tuple[Tensor, Tensor, Tensor], lam: Tensor) -> tuple[Tensor, Tensor]:
    """Rows through a max pool in the lower-bound direction (as the certify mode's step): lam [B, S, n_out]
    -> (lam' [B, S, n_in], bias [B, S]). rel = (idx, dom, U): the window's lower-line input, whether it
    dominates the window, the window's upper bound (differentiable)."""
    idx, dom, U = rel
    B, S, n_out = lam.shape
    keep = (lam >= 0) | dom[:, None, :]
    c = torch.where(keep, lam, torch.zeros_like(lam))
    rest = lam - c
    bias = (rest * U[:, None, :]).sum(-1)
    out = lam.new_zeros(B, S, p.n_in).scatter_add(2, idx[:, None, :].expand(B, S, n_out), c)
    return out, bias
