"""Exact Euclidean projections onto ball intersected with box (L2, L1; L-inf is clipping), steepest-descent
directions and random starts (see the :mod:`fastcert.attacks` docstring for the algorithms)."""

from __future__ import annotations

import torch

from fastcert.attacks.region import Region, make_feasible

Tensor = torch.Tensor


def proj_l2(d: Tensor, e: Tensor, l: Tensor, u: Tensor) -> Tensor:
    """Project d [N, n] onto {||t||_2 <= e, l <= t <= u} (l <= 0 <= u, possibly infinite; e [N, 1])."""
    dc = torch.minimum(torch.maximum(d, l), u)
    c = dc.abs()
    m = c.amax(-1, keepdim=True)
    ms = torch.where(m > 0, m, torch.ones_like(m))
    nrm = torch.linalg.vector_norm(c / ms, dim=-1, keepdim=True) * ms
    need = (nrm > e).squeeze(1)
    if not bool(need.any()):
        return dc
    idx = need.nonzero().squeeze(1)
    dn, cn, en, msn = d[idx], c[idx], e[idx], ms[idx]
    a = dn.abs()
    r = torch.where(a > 0, cn / torch.where(a > 0, a, torch.ones_like(a)), torch.full_like(a, 2.0))
    r_s, order = r.sort(-1)
    a_s, c_s = a.gather(-1, order) / msn, cn.gather(-1, order) / msn  # scaled (largest clipped entry 1)
    cc = c_s * c_s
    A = torch.cumsum(cc, -1) - cc  # saturated before position j
    aa = a_s * a_s
    Bs = torch.flip(torch.cumsum(torch.flip(aa, [-1]), -1), [-1])  # free from position j on
    e2 = (en / msn) ** 2
    cond = A + r_s * r_s * Bs >= e2
    j = cond.to(torch.int8).argmax(-1, keepdim=True)
    Aj, Bj = A.gather(-1, j), Bs.gather(-1, j)
    s = torch.sqrt(((e2 - Aj) / Bj.clamp_min(torch.finfo(d.dtype).tiny)).clamp(0.0, 1.0))
    s = torch.where(cond.any(-1, keepdim=True), s, en / nrm[idx])
    out = dc.clone()
    out[idx] = torch.minimum(s * a, cn) * torch.sign(dn)
    return out


def proj_l1(d: Tensor, e: Tensor, l: Tensor, u: Tensor) -> Tensor:
    """Project d [N, n] onto {||t||_1 <= e, l <= t <= u} (Duchi et al. 2008's sorting algorithm with
    per-coordinate caps; see the module docstring)."""
    dc = torch.minimum(torch.maximum(d, l), u)
    c = dc.abs()  # min(|d_i|, cap_i)
    g0 = c.sum(-1, keepdim=True)
    need = (g0 > e).squeeze(1)
    if not bool(need.any()):
        return dc
    idx = need.nonzero().squeeze(1)
    dn, cn, en, g0n = d[idx], c[idx], e[idx], g0[idx]
    a = dn.abs()
    b = a - cn  # the term starts decreasing at theta = b_i and is 0 from theta = a_i on
    t = torch.cat([b, a], -1)
    w = torch.cat([-torch.ones_like(b), torch.ones_like(a)], -1)
    t_s, order = t.sort(-1)
    w_s = w.gather(-1, order)
    W = torch.cumsum(w_s, -1)  # minus the slope right of t_s[j]
    T = torch.cumsum(w_s * t_s, -1)
    G = g0n + t_s * W - T  # sum of the terms at theta = t_s[j]
    cond = G <= en
    j = cond.to(torch.int8).argmax(-1, keepdim=True).clamp_min(1)
    tj, Gj, Wj = t_s.gather(-1, j - 1), G.gather(-1, j - 1), W.gather(-1, j - 1)
    theta = tj + (Gj - en) / (-Wj).clamp_min(1.0)
    theta = torch.where(cond.any(-1, keepdim=True), theta, a.amax(-1, keepdim=True)).clamp_min(0.0)
    # one Newton step on the directly evaluated sum (removes the cumulative sums' rounding)
    z = a - theta
    g = torch.minimum(z.clamp_min(0.0), cn).sum(-1, keepdim=True)
    cnt = ((z > 0) & (z < cn)).sum(-1, keepdim=True).to(d.dtype)
    theta = torch.where(cnt > 0, theta + (g - en) / cnt.clamp_min(1.0), theta).clamp_min(0.0)
    out = dc.clone()
    out[idx] = torch.minimum((a - theta).clamp_min(0.0), cn) * torch.sign(dn)
    return out


def project(p: Tensor, reg: Region) -> Tensor:
    """Project p [N, n] onto the region (exact up to rounding; feasibility is enforced afterwards)."""
    if reg.norm == "inf":
        return torch.minimum(torch.maximum(p, reg.lo), reg.hi)
    d = p - reg.x
    l, u = reg.lo - reg.x, reg.hi - reg.x
    d = proj_l2(d, reg.eps_dt, l, u) if reg.norm == "2" else proj_l1(d, reg.eps_dt, l, u)
    return torch.minimum(torch.maximum(reg.x + d, reg.lo), reg.hi)


def descent(g: Tensor, p: Tensor, reg: Region, l1_k: int) -> Tensor:
    """Unit steepest-descent direction (dual norm) for minimising, box-aware for L2 / L1."""
    if reg.norm == "inf":
        return -torch.sign(g)
    v = -g
    blocked = ((v > 0) & (p >= reg.hi)) | ((v < 0) & (p <= reg.lo))
    v = v.masked_fill(blocked, 0.0)
    if reg.norm == "2":
        m = v.abs().amax(-1, keepdim=True)
        v = v / torch.where(m > 0, m, torch.ones_like(m))
        nrm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        return v / torch.where(nrm > 0, nrm, torch.ones_like(nrm))
    k = min(l1_k, v.shape[-1])
    top = v.abs().topk(k, dim=-1)
    sel = torch.zeros_like(v).scatter(-1, top.indices, (top.values > 0).to(v.dtype))
    cnt = sel.sum(-1, keepdim=True)
    return sel * torch.sign(v) / cnt.clamp_min(1.0)


def random_start(reg: Region, gen: torch.Generator, N: int) -> Tensor:
    """N points uniform in the ball (drawn on the CPU in float64), clipped to the box, feasible."""
    n = reg.x.shape[1]
    e = reg.eps[:, None].cpu()
    if reg.norm == "inf":
        d = (2 * torch.rand(N, n, generator=gen, dtype=torch.float64) - 1) * e
    else:
        if reg.norm == "2":
            z = torch.randn(N, n, generator=gen, dtype=torch.float64)
            z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1e-300)
        else:  # Laplace direction: uniform on the L1 sphere
            z = -torch.log(torch.rand(N, n, generator=gen, dtype=torch.float64).clamp_min(1e-300))
            z = z * (torch.rand(N, n, generator=gen, dtype=torch.float64) < 0.5).double().mul(2).sub(1)
            z = z / z.abs().sum(-1, keepdim=True).clamp_min(1e-300)
        r = torch.rand(N, 1, generator=gen, dtype=torch.float64) ** (1.0 / n)
        d = z * r * e
    p = reg.x + d.to(device=reg.x.device, dtype=reg.x.dtype)
    return make_feasible(p, reg)
