"""Plain torch reference of IBP / Fast-Lin / CROWN / CROWN-IBP (no compiled code, no rounding slack).

Used by the tests (every kernel and the whole pass are compared against it in float64) and by the
benchmarks as the "plain torch" peer. Works on an ``nn.Sequential`` of Linear, Conv2d, ReLU and
Flatten. Same semantics as fastcert: L-inf region = the box ``[max(x-eps, x_min), min(x+eps, x_max)]``;
L2/L1 balls: the larger of the ball bound and the bound over that box. Intermediate bounds for
``crown`` are intersected with IBP; ``fastlin`` is not intersected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Aff:
    """An affine map on flat tensors with its transpose (both as torch ops)."""

    def __init__(self, m: nn.Module, in_shape: tuple[int, ...]) -> None:
        self.m = m
        self.in_shape = in_shape
        with torch.no_grad():
            self.out_shape = tuple(m(torch.zeros(1, *in_shape, dtype=m.weight.dtype)).shape[1:])

    def fwd(self, x: torch.Tensor, absw: bool = False, bias: bool = True) -> torch.Tensor:
        W = self.m.weight.abs() if absw else self.m.weight
        b = self.m.bias if (bias and self.m.bias is not None) else None
        xs = x.reshape(x.shape[0], *self.in_shape)
        if isinstance(self.m, nn.Linear):
            y = F.linear(xs, W, b)
        else:
            y = F.conv2d(xs, W, b, self.m.stride, self.m.padding)
        return y.reshape(x.shape[0], -1)

    def bias_flat(self) -> torch.Tensor:
        n = int(torch.tensor(self.out_shape).prod())
        if self.m.bias is None:
            return torch.zeros(n, dtype=self.m.weight.dtype)
        if isinstance(self.m, nn.Linear):
            return self.m.bias
        return self.m.bias[:, None].expand(self.out_shape[0], n // self.out_shape[0]).reshape(-1)

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        """lam: [R, n_out] -> lam @ W_flat: [R, n_in]."""
        if isinstance(self.m, nn.Linear):
            return lam @ self.m.weight
        ls = lam.reshape(lam.shape[0], *self.out_shape)
        C, H, W = self.in_shape
        s, p, k = self.m.stride, self.m.padding, self.m.kernel_size
        op = (H + 2 * p[0] - k[0]) % s[0], (W + 2 * p[1] - k[1]) % s[1]
        return F.conv_transpose2d(ls, self.m.weight, None, s, p, op).reshape(lam.shape[0], -1)


def _layers(model: nn.Sequential, in_shape: tuple[int, ...]) -> list:
    out: list = []
    shape = tuple(in_shape)
    for m in model:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            a = _Aff(m, shape)
            out.append(a)
            shape = a.out_shape
        elif isinstance(m, nn.ReLU):
            out.append("relu")
        elif isinstance(m, nn.Flatten):
            shape = (int(torch.tensor(shape).prod()),)
        else:
            raise ValueError(f"reference supports Linear/Conv2d/ReLU/Flatten, not {type(m).__name__}")
    return out


def relu_relax(l: torch.Tensor, u: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lo_slope, up_slope, up_bias) of the ReLU relaxation on [l, u]."""
    act, inact = l >= 0, u <= 0
    unst = ~(act | inact)
    s = torch.where(unst, u / (u - l).clamp_min(1e-300), act.to(l.dtype))
    t = torch.where(unst, -s * l, torch.zeros_like(l))
    if mode == "adaptive":
        lo = torch.where(unst, (u >= -l).to(l.dtype), s)
    elif mode == "parallel":
        lo = s
    else:
        raise ValueError(mode)
    return lo, s, t


def interval_affine(a: _Aff, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, r = (u + l) / 2, (u - l) / 2
    mc, mr = a.fwd(c), a.fwd(r, absw=True, bias=False)
    return mc - mr, mc + mr


def _concretize(lam: torch.Tensor, x0, eps, p, l0, u0) -> torch.Tensor:
    box = (lam.clamp_min(0) * l0[:, None]).sum(-1) + (lam.clamp_max(0) * u0[:, None]).sum(-1)
    if p == 0:
        return box
    q = {2: 2.0, 1: float("inf")}[p]
    ball = (lam * x0[:, None]).sum(-1) - eps[:, None] * lam.norm(p=q, dim=-1)
    return torch.maximum(box, ball)


def bounds(model: nn.Sequential, x: torch.Tensor, eps, norm: str = "inf", method: str = "crown", C=None,
           x_min=None, x_max=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference lower/upper bounds of ``C f(x')``: ([B, S], [B, S]). Same arguments as fastcert.bounds."""
    B = x.shape[0]
    layers = _layers(model, tuple(x.shape[1:]))
    x0 = x.reshape(B, -1)
    e = torch.as_tensor(eps, dtype=x.dtype).expand(B)
    p = {"inf": 0, "2": 2, "1": 1}[norm]
    l0, u0 = x0 - e[:, None], x0 + e[:, None]
    if x_min is not None:
        l0 = l0.clamp_min(x_min)
    if x_max is not None:
        u0 = u0.clamp_max(x_max)
    slope = {"fastlin": "parallel", "kw": "parallel", "crown": "adaptive", "crown-ibp": "adaptive"}.get(method)
    relax: dict[int, tuple] = {}
    boxes: dict[int, tuple] = {}

    def backsub(lam: torch.Tensor, start: int, bias: torch.Tensor) -> torch.Tensor:
        for j in range(start - 1, -1, -1):
            L = layers[j]
            if L == "relu":
                lo, up, ub = relax[j]
                pos, neg = lam.clamp_min(0), lam.clamp_max(0)
                bias = bias + (neg * ub[:, None]).sum(-1)
                lam = pos * lo[:, None] + neg * up[:, None]
            else:
                bias = bias + lam @ L.bias_flat()
                R = lam.shape[0] * lam.shape[1]
                lam = L.back(lam.reshape(R, -1)).reshape(lam.shape[0], lam.shape[1], -1)
        return bias + _concretize(lam, x0, e, p, l0, u0)

    l, u = l0, u0
    for i, L in enumerate(layers):
        if L == "relu":
            if slope is not None:
                if method in ("crown", "fastlin", "kw") and i > 0 and (i > 1 or p != 0):
                    n = l.shape[1]
                    eye = torch.eye(n, dtype=x.dtype).expand(B, n, n)
                    lb = backsub(eye, i, torch.zeros(B, n, dtype=x.dtype))
                    ub = -backsub(-eye, i, torch.zeros(B, n, dtype=x.dtype))
                    if method == "crown":
                        l, u = torch.maximum(l, lb), torch.minimum(u, ub)
                    else:
                        l, u = lb, ub
                relax[i] = relu_relax(l, u, slope)
            boxes[i] = (l, u)
            l, u = l.clamp_min(0), u.clamp_min(0)
        else:
            boxes[i] = (l, u)
            l, u = interval_affine(L, l, u)
    K = l.shape[1]
    Ct = torch.eye(K, dtype=x.dtype).expand(B, K, K) if C is None else torch.as_tensor(C, dtype=x.dtype)
    if Ct.dim() == 2:
        Ct = Ct.expand(B, *Ct.shape)
    if slope is None:  # IBP with the spec fused into the last layer
        last = layers[-1]
        lb_, ub_ = boxes[len(layers) - 1]
        lam = torch.cat([Ct, -Ct], 1)
        bias = lam @ last.bias_flat()
        R = lam.shape[0] * lam.shape[1]
        lam = last.back(lam.reshape(R, -1)).reshape(B, -1, lb_.shape[1])
        res = bias + (lam.clamp_min(0) * lb_[:, None]).sum(-1) + (lam.clamp_max(0) * ub_[:, None]).sum(-1)
    else:
        res = backsub(torch.cat([Ct, -Ct], 1), len(layers), torch.zeros(B, 2 * Ct.shape[1], dtype=x.dtype))
    S = Ct.shape[1]
    return res[:, :S], -res[:, S:]
