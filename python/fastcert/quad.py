"""The quadratic bound for two-layer ReLU networks (the CROWN reference's ``--quad``, Zhang et al. NeurIPS 2018,
CROWN-quad), as a rigorous lower bound of ``C f`` over an L-inf or L2 ball.

For ``f(x) = W2 relu(W1 x + b1) + b2`` and a row c, with ``w = c W2`` enclosed in ``[w_lo, w_hi]`` and the
pre-activation box ``[l, u]`` of ``z = W1 x + b1`` from CROWN: ``c f(x) >= c b2 + sum_i w_lo_i h_i(z_i)`` where
``h_i`` is ``z`` on active neurons, 0 on inactive ones, the quadratic ``z (z - l) / (u - l) <= relu(z)`` (it meets
relu at l, 0 and u) on unstable neurons with ``w_lo_i >= 0`` and the chord ``u (z - l) / (u - l) >= relu(z)`` on
unstable neurons with ``w_lo_i < 0``. That function is convex in x; its minimum over the ball is approached by
projected gradient descent (nominal), and the bound is certified at the point z^ found: by convexity each term
lies above its tangent at z^, so ``c f(x) >= c b2 + beta . (W1 x + b1) + kappa`` for every x, a linear function
whose minimum over the ball is computed with outward rounding (every coefficient an interval). Any z^ gives a
sound bound; the descent only makes it tight.
"""

from __future__ import annotations

from typing import Any

import torch

from fastcert._ext import _C
from fastcert.errors import UnsupportedError
from fastcert.primitives.linear import Dense
from fastcert.primitives.relu import ReLU
from fastcert.rounding import gamma_n
from fastcert.rounding import next_down as _dn
from fastcert.rounding import next_up as _up

D = torch.float64
_INF = float("inf")




def _imul(al: torch.Tensor, ah: torch.Tensor, bl: torch.Tensor, bh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outward-rounded product of intervals [al, ah] x [bl, bh]."""
    c = torch.stack([al * bl, al * bh, ah * bl, ah * bh])
    return _dn(c.amin(0)), _up(c.amax(0))


def _idiv_pos(al: torch.Tensor, ah: torch.Tensor, dl: torch.Tensor, dh: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Outward-rounded quotient of [al, ah] by [dl, dh] with dl > 0."""
    c = torch.stack([al / dl, al / dh, ah / dl, ah / dh])
    return _dn(c.amin(0)), _up(c.amax(0))


def _sum_down(v: torch.Tensor) -> torch.Tensor:
    """A lower bound of the exact sum of the last dimension of v (float64)."""
    n = v.shape[-1]
    if n == 0:
        return v.new_zeros(v.shape[:-1])
    g = gamma_n(n, D)
    err = _up(_up(v.abs().sum(-1) * (1 + 2 * g)) * g + 2.0 * (n + 2) * 2.0**-1074)
    return _dn(v.sum(-1) - err)


def _interval_rows_times(Yl: torch.Tensor, Yu: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous bounds of Y W for Y in [Yl, Yu] ([R, m]) and W [m, n] (the Jacobian kernel's dense step)."""
    R, n = Yl.shape[0], W.shape[1]
    ol, ou = torch.empty(R, n, dtype=D), torch.empty(R, n, dtype=D)
    _C.jac_dense_back(Yl.contiguous(), Yu.contiguous(), W.contiguous(), W.abs().contiguous(), ol, ou)
    return ol, ou


def two_layer(g: Any) -> tuple[Dense, Dense]:
    """The two Dense layers of a Linear -> ReLU -> Linear graph, or UnsupportedError naming what differs."""
    nodes = g.nodes[1:g.output + 1]
    kinds = [type(nd.prim).__name__ for nd in nodes]
    ok = len(nodes) == 3 and isinstance(nodes[0].prim, Dense) and isinstance(nodes[1].prim, ReLU) and \
        isinstance(nodes[2].prim, Dense) and all(tuple(nd.inputs) == (k,) for k, nd in enumerate(nodes))
    if not ok:
        raise UnsupportedError(f"the quadratic bound covers two-layer ReLU networks (Linear, ReLU, Linear, with "
                               f"Flatten allowed before them); this network is {' -> '.join(kinds)}")
    return nodes[0].prim, nodes[2].prim


def quad_lower(g: Any, prob: Any, C: torch.Tensor, box1: Any, steps: int = 100) -> torch.Tensor:
    """Certified lower bounds of ``C f`` ([B, S, K] float64 C) over the certify-mode region ``prob`` of a
    two-layer ReLU graph g, given the certified pre-activation box ``box1`` of its first layer ([B, m])."""
    L1, L2 = two_layer(g)
    W1, W2 = L1.W64, L2.W64
    b1 = L1.b64 if L1.b64 is not None else torch.zeros(W1.shape[0], dtype=D)
    b2 = L2.b64 if L2.b64 is not None else torch.zeros(W2.shape[0], dtype=D)
    B, S, K = C.shape
    m, n = W1.shape
    l, u = box1.l.to(D), box1.u.to(D)  # [B, m]
    Cr = C.reshape(B * S, K).to(D)
    wl, _ = _interval_rows_times(Cr, Cr, W2)  # [B*S, m]: c W2 >= wl
    cb2, _ = _interval_rows_times(Cr, Cr, b2[:, None])  # [B*S, 1]
    wl = wl.reshape(B, S, m)
    lb = l[:, None, :].expand(B, S, m)
    ub = u[:, None, :].expand(B, S, m)
    active, inactive = lb >= 0, ub <= 0
    unstable = ~(active | inactive)
    quadm = unstable & (wl >= 0)
    chord = unstable & (wl < 0)
    den = torch.where(unstable, ub - lb, torch.ones_like(lb))
    x0 = prob.x0.to(D)  # [B, n]
    lo0, hi0 = prob.l0.to(D), prob.u0.to(D)
    p = prob.p
    eps = prob.eps.to(D)
    # ---- nominal: minimize phi(x) = sum_i wl_i h_i(z_i) over the region by projected gradient descent
    x = ((lo0 + hi0) / 2)[:, None, :].expand(B, S, n).clone()

    def project(v: torch.Tensor) -> torch.Tensor:
        v = torch.maximum(torch.minimum(v, hi0[:, None, :]), lo0[:, None, :])
        if p == 2:
            d = v - x0[:, None, :]
            nrm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
            v = x0[:, None, :] + d * torch.clamp(eps[:, None, None] / nrm.clamp_min(1e-300), max=1.0)
        return v

    def phi(v: torch.Tensor) -> torch.Tensor:
        z = v @ W1.T + b1
        h = torch.where(active, z, torch.zeros_like(z))
        h = torch.where(quadm, z * (z - lb) / den, h)
        h = torch.where(chord, ub * (z - lb) / den, h)
        return (wl * h).sum(-1)

    step = (hi0 - lo0).amax(-1).clamp_min(1e-12)[:, None, None] / 4
    x = project(x)
    if bool(quadm.any()):
        for _ in range(steps):
            with torch.enable_grad():
                xv = x.detach().requires_grad_(True)
                (gr,) = torch.autograd.grad(phi(xv).sum(), xv)
            with torch.no_grad():
                cand = project(x - step * (gr.sign() if p == 0 else gr / torch.linalg.vector_norm(
                    gr, dim=-1, keepdim=True).clamp_min(1e-300) * eps[:, None, None]))
                better = (phi(cand) <= phi(x))[..., None]
                x = torch.where(better, cand, x)
                step = torch.where(better, step, step / 2)
    zh = (x.detach() @ W1.T + b1)  # [B, S, m]: any values give a sound bound
    # ---- rigorous: beta, kappa per neuron as intervals
    zl = torch.zeros_like(zh)
    bl, bh = zl.clone(), zl.clone()
    kl = zl.clone()
    bl = torch.where(active, wl, bl)
    bh = torch.where(active, wl, bh)
    dl, dh = _dn(ub - lb), _up(ub - lb)
    dl = torch.where(unstable, dl, torch.ones_like(dl))
    dh = torch.where(unstable, dh, torch.ones_like(dh))
    # quadratic: beta = w (2 z^ - l) / (u - l), kappa = -w z^2 / (u - l)
    nl, nh = _dn(2 * zh - lb), _up(2 * zh - lb)
    ql, qh = _idiv_pos(nl, nh, dl, dh)
    qbl, qbh = _imul(wl, wl, ql, qh)
    sl, sh = _dn(zh * zh), _up(zh * zh)
    tl, th = _idiv_pos(sl, sh, dl, dh)
    qkl, _ = _imul(wl, wl, -th, -tl)
    bl, bh = torch.where(quadm, qbl, bl), torch.where(quadm, qbh, bh)
    kl = torch.where(quadm, qkl, kl)
    # chord: beta = w u / (u - l), kappa = -w u l / (u - l)
    al_, ah_ = _idiv_pos(ub, ub, dl, dh)
    cbl, cbh = _imul(wl, wl, al_, ah_)
    ckl, _ = _imul(cbl, cbh, -lb, -lb)
    bl, bh = torch.where(chord, cbl, bl), torch.where(chord, cbh, bh)
    kl = torch.where(chord, ckl, kl)
    # ---- min over the region of beta . (W1 x + b1) + sum kappa
    lam_l, lam_h = _interval_rows_times(bl.reshape(B * S, m), bh.reshape(B * S, m), W1)  # [B*S, n]
    bb1, _ = _interval_rows_times(bl.reshape(B * S, m), bh.reshape(B * S, m), b1[:, None])  # [B*S, 1]
    lam_l, lam_h = lam_l.reshape(B, S, n), lam_h.reshape(B, S, n)
    a, b = lo0[:, None, :], hi0[:, None, :]
    corners = torch.stack([lam_l * a, lam_l * b, lam_h * a, lam_h * b])
    box_min = _sum_down(_dn(corners.amin(0)))
    region_min = box_min
    if p == 2:
        c0 = torch.stack([lam_l * x0[:, None, :], lam_h * x0[:, None, :]])
        lmax = torch.maximum(lam_l.abs(), lam_h.abs())
        nrm = _up(_up(torch.sqrt(_up(_up((lmax * lmax).sum(-1)) * (1 + 2 * gamma_n(n, D))))) * (1 + 2.0**-50))
        ball_min = _dn(_sum_down(_dn(c0.amin(0))) - _up(nrm * _up(eps)[:, None]))
        region_min = torch.maximum(box_min, ball_min)
    total = torch.stack([cb2.reshape(B, S), bb1.reshape(B, S), _sum_down(kl), region_min], -1)
    return _sum_down(total)


__all__ = ["quad_lower", "two_layer"]
