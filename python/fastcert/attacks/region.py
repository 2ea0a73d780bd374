"""The attack region (ball intersected with a box) as flat rows, and exact membership: every point an
attack returns passes :func:`inside` (see :mod:`fastcert.attacks`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastcert.rounding import round_down

_U64 = 2.0**-53  # float64 unit roundoff (a constant of the format, not a tuning knob)
Tensor = torch.Tensor


@dataclass
class Region:
    """Rows of flat problems: x [N, n] (dtype dt), eps [N] float64, lo / hi [N, n] dt (the box, and
    for L-inf the ball too, rounded inwards), eps_dt [N, 1] eps in dt rounded down."""

    x: Tensor
    eps: Tensor
    lo: Tensor
    hi: Tensor
    norm: str

    @property
    def eps_dt(self) -> Tensor:
        return round_down(self.eps, self.x.dtype)[:, None]

    def rows(self, idx: Tensor) -> Region:
        return Region(self.x[idx], self.eps[idx], self.lo[idx], self.hi[idx], self.norm)


def two_sum(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """s + e == a + b exactly (Knuth's TwoSum, float64)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def round_inward(s: Tensor, err: Tensor, dt: torch.dtype, up: bool) -> Tensor:
    """The value s + err (float64 pair) rounded to dt upwards (or downwards)."""
    r = s.to(dt)
    rd = r.double()
    if up:
        bad = (rd < s) | ((rd == s) & (err > 0))
        return torch.where(bad, torch.nextafter(r, torch.full_like(r, math.inf)), r)
    bad = (rd > s) | ((rd == s) & (err < 0))
    return torch.where(bad, torch.nextafter(r, torch.full_like(r, -math.inf)), r)


def ball_region(x: Tensor, eps: Tensor, norm: str, x_min: Tensor | None, x_max: Tensor | None) -> Region:
    """x [B, *shape] -> a region of B flat rows."""
    B = x.shape[0]
    xf = x.reshape(B, -1)
    dt, dev = x.dtype, x.device
    e = eps.to(dev)
    lo = (x_min.reshape(B, -1) if x_min is not None else torch.full_like(xf, -math.inf))
    hi = (x_max.reshape(B, -1) if x_max is not None else torch.full_like(xf, math.inf))
    if norm == "inf":
        x64 = xf.double()
        s, err = two_sum(x64, -e[:, None].expand_as(x64))
        lo = torch.maximum(torch.minimum(round_inward(s, err, dt, up=True), xf), lo)
        s, err = two_sum(x64, e[:, None].expand_as(x64))
        hi = torch.minimum(torch.maximum(round_inward(s, err, dt, up=False), xf), hi)
    return Region(xf.contiguous(), e, lo.contiguous(), hi.contiguous(), norm)


def inside(p: Tensor, reg: Region) -> tuple[Tensor, Tensor]:
    """Conservative exact membership test (never True wrongly): p [N, n] -> ([N] bool, [N] ratio),
    ratio an upper bound of ``||p - x|| / eps`` for L2 / L1 (inf where eps = 0 and p != x; 1 for L-inf)."""
    ok = ((p >= reg.lo) & (p <= reg.hi)).all(-1)
    dh, dl = two_sum(p.double(), -reg.x.double())
    e = reg.eps[:, None]
    if reg.norm == "inf":
        a = dh.abs()
        inside = (a < e) | ((a == e) & (dl * torch.sign(dh) <= 0))
        return ok & inside.all(-1), torch.ones_like(reg.eps)
    a = torch.where(dl == 0, dh.abs(), torch.nextafter(dh.abs() + dl.abs(), torch.full_like(dh, math.inf)))
    n = p.shape[-1]
    slack = 1.0 + 2.0 * (n + 4) * _U64
    pos = reg.eps > 0
    zero = (a == 0).all(-1)
    if reg.norm == "1":
        S = a.sum(-1) * slack
        lim = reg.eps * (1.0 - 2 * _U64)
        ratio = S / torch.where(pos, lim, torch.ones_like(lim))
        return ok & (S <= lim), torch.where(pos | zero, ratio, torch.full_like(ratio, math.inf))
    r = a / torch.where(pos, reg.eps, torch.ones_like(reg.eps))[:, None]  # scaled: no underflow in the squares
    S = (r * r).sum(-1) * slack + n * 2.0**-1000
    ratio = torch.sqrt(S / (1.0 - 4 * _U64))
    return ok & torch.where(pos, S <= 1.0 - 4 * _U64, zero), torch.where(pos | zero, ratio,
                                                                          torch.full_like(ratio, math.inf))


def make_feasible(p: Tensor, reg: Region) -> Tensor:
    """Clip p [N, n] into the box and pull rows that fail :func:`inside` towards x by (about) the
    smallest factor that passes (x itself at worst). The result is inside the region."""
    p = torch.minimum(torch.maximum(p, reg.lo), reg.hi)
    p = torch.where(torch.isfinite(p), p, reg.x)
    ok, ratio = inside(p, reg)
    if bool(ok.all()):
        return p
    bad = (~ok).nonzero().squeeze(1)
    sub = reg.rows(bad)
    pb, xb = p[bad], sub.x
    lo_c, hi_c = torch.minimum(xb, pb), torch.maximum(xb, pb)
    done = torch.zeros(bad.numel(), dtype=torch.bool, device=p.device)
    out = xb.clone()
    u = torch.finfo(p.dtype).eps / 2
    f0 = (1.0 / ratio[bad].clamp_min(1.0)).to(p.dtype)[:, None]  # the measured overshoot first
    for k in range(80):
        f = f0 * max(0.0, 1.0 - 4 * u * 2.0**k)
        cand = xb + (pb - xb) * f
        cand = torch.minimum(torch.maximum(cand, lo_c), hi_c)  # never further from x than p, coordinate-wise
        good = inside(cand, sub)[0] & ~done
        out = torch.where(good[:, None], cand, out)
        done = done | good
        if bool(done.all()) or 4 * u * 2.0**k >= 1.0:
            break
    p = p.clone()
    p[bad] = out  # rows never passing stay at x (which is inside)
    return p
