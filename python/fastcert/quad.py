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

from dataclasses import dataclass
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


@dataclass
class _Relax:
    """The relaxation of one two-layer network: per (sample, row, neuron) [B, S, m] the lower end of the
    output weight and the kind of each neuron's piece."""

    wl: torch.Tensor
    lb: torch.Tensor
    ub: torch.Tensor
    active: torch.Tensor
    quad: torch.Tensor
    chord: torch.Tensor

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """The (nominal) relaxed function of the pre-activations z [B, S, m] -> [B, S]."""
        den = torch.where(self.quad | self.chord, self.ub - self.lb, torch.ones_like(self.lb))
        h = torch.where(self.active, z, torch.zeros_like(z))
        h = torch.where(self.quad, z * (z - self.lb) / den, h)
        h = torch.where(self.chord, self.ub * (z - self.lb) / den, h)
        return (self.wl * h).sum(-1)


def _descend(prob: Any, W1: torch.Tensor, b1: torch.Tensor, r: _Relax, steps: int) -> torch.Tensor:
    """Pre-activations [B, S, m] at a point of the region near the minimum of the relaxation (projected
    descent with step halving; nominal arithmetic: any point gives a sound bound)."""
    B, S, _ = r.wl.shape
    x0, lo0, hi0, eps = prob.x0.to(D), prob.l0.to(D), prob.u0.to(D), prob.eps.to(D)

    def project(v: torch.Tensor) -> torch.Tensor:
        v = torch.maximum(torch.minimum(v, hi0[:, None, :]), lo0[:, None, :])
        if prob.p == 2:
            d = v - x0[:, None, :]
            nrm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
            v = x0[:, None, :] + d * torch.clamp(eps[:, None, None] / nrm.clamp_min(1e-300), max=1.0)
        return v

    def phi(v: torch.Tensor) -> torch.Tensor:
        return r.phi(v @ W1.T + b1)

    x = project(((lo0 + hi0) / 2)[:, None, :].expand(B, S, -1).clone())
    step = (hi0 - lo0).amax(-1).clamp_min(1e-12)[:, None, None] / 4
    for _ in range(steps if bool(r.quad.any()) else 0):
        with torch.enable_grad():
            xv = x.detach().requires_grad_(True)
            (gr,) = torch.autograd.grad(phi(xv).sum(), xv)
        with torch.no_grad():
            d = gr.sign() if prob.p == 0 else \
                gr / torch.linalg.vector_norm(gr, dim=-1, keepdim=True).clamp_min(1e-300) * eps[:, None, None]
            cand = project(x - step * d)
            better = (phi(cand) <= phi(x))[..., None]
            x = torch.where(better, cand, x)
            step = torch.where(better, step, step / 2)
    return x.detach() @ W1.T + b1


def _tangents(r: _Relax, zh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Interval coefficients of the tangent planes at zh: ``w_lo h(z) >= beta z + kappa`` per neuron, as
    (beta_lo, beta_hi, kappa_lo) [B, S, m], outward rounded."""
    wl, lb, ub = r.wl, r.lb, r.ub
    bl = torch.where(r.active, wl, torch.zeros_like(wl))
    bh, kl = bl.clone(), torch.zeros_like(wl)
    unstable = r.quad | r.chord
    dl = torch.where(unstable, _dn(ub - lb), torch.ones_like(lb))
    dh = torch.where(unstable, _up(ub - lb), torch.ones_like(lb))
    # quadratic: beta = w (2 z^ - l) / (u - l), kappa = -w z^2 / (u - l)
    ql, qh = _idiv_pos(_dn(2 * zh - lb), _up(2 * zh - lb), dl, dh)
    qbl, qbh = _imul(wl, wl, ql, qh)
    tl, th = _idiv_pos(_dn(zh * zh), _up(zh * zh), dl, dh)
    qkl, _ = _imul(wl, wl, -th, -tl)
    bl, bh, kl = torch.where(r.quad, qbl, bl), torch.where(r.quad, qbh, bh), torch.where(r.quad, qkl, kl)
    # chord: beta = w u / (u - l), kappa = -w u l / (u - l)
    al_, ah_ = _idiv_pos(ub, ub, dl, dh)
    cbl, cbh = _imul(wl, wl, al_, ah_)
    ckl, _ = _imul(cbl, cbh, -lb, -lb)
    return torch.where(r.chord, cbl, bl), torch.where(r.chord, cbh, bh), torch.where(r.chord, ckl, kl)


def _region_min(prob: Any, lam_l: torch.Tensor, lam_h: torch.Tensor) -> torch.Tensor:
    """A lower bound of min over the region of lam . x for lam in [lam_l, lam_h] [B, S, n] -> [B, S]: the box's
    corners, and for an L2 ball also ``lam . x0 - eps ||lam||_2``, the larger of the two."""
    x0, a, b = prob.x0.to(D)[:, None, :], prob.l0.to(D)[:, None, :], prob.u0.to(D)[:, None, :]
    box_min = _sum_down(_dn(torch.stack([lam_l * a, lam_l * b, lam_h * a, lam_h * b]).amin(0)))
    if prob.p != 2:
        return box_min
    n = lam_l.shape[-1]
    lmax = torch.maximum(lam_l.abs(), lam_h.abs())
    nrm = _up(_up(torch.sqrt(_up(_up((lmax * lmax).sum(-1)) * (1 + 2 * gamma_n(n, D))))) * (1 + 2.0**-50))
    ball_min = _dn(_sum_down(_dn(torch.stack([lam_l * x0, lam_h * x0]).amin(0))) -
                   _up(nrm * _up(prob.eps.to(D))[:, None]))
    return torch.maximum(box_min, ball_min)


def quad_lower(g: Any, prob: Any, C: torch.Tensor, box1: Any, steps: int = 100) -> torch.Tensor:
    """Certified lower bounds of ``C f`` ([B, S, K] float64 C) over the certify-mode region ``prob`` of a
    two-layer ReLU graph g, given the certified pre-activation box ``box1`` of its first layer ([B, m])."""
    L1, L2 = two_layer(g)
    W1, W2 = L1.W64, L2.W64
    b1 = L1.b64 if L1.b64 is not None else torch.zeros(W1.shape[0], dtype=D)
    b2 = L2.b64 if L2.b64 is not None else torch.zeros(W2.shape[0], dtype=D)
    B, S, K = C.shape
    m, n = W1.shape
    Cr = C.reshape(B * S, K).to(D)
    wl, _ = _interval_rows_times(Cr, Cr, W2)  # [B*S, m]: c W2 >= wl
    cb2, _ = _interval_rows_times(Cr, Cr, b2[:, None])  # [B*S, 1]
    wl = wl.reshape(B, S, m)
    lb = box1.l.to(D)[:, None, :].expand(B, S, m)
    ub = box1.u.to(D)[:, None, :].expand(B, S, m)
    active, unstable = lb >= 0, (lb < 0) & (ub > 0)
    r = _Relax(wl, lb, ub, active, unstable & (wl >= 0), unstable & (wl < 0))
    bl, bh, kl = _tangents(r, _descend(prob, W1, b1, r, steps))
    # min over the region of beta . (W1 x + b1) + sum kappa
    lam_l, lam_h = _interval_rows_times(bl.reshape(B * S, m), bh.reshape(B * S, m), W1)  # [B*S, n]
    bb1, _ = _interval_rows_times(bl.reshape(B * S, m), bh.reshape(B * S, m), b1[:, None])  # [B*S, 1]
    region_min = _region_min(prob, lam_l.reshape(B, S, n), lam_h.reshape(B, S, n))
    total = torch.stack([cb2.reshape(B, S), bb1.reshape(B, S), _sum_down(kl), region_min], -1)
    return _sum_down(total)


__all__ = ["quad_lower", "two_layer"]
