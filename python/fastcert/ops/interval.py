"""``fastcert::ibp_affine``: interval propagation through a dense layer, with its backward kernel."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from fastcert._ext import _C
from fastcert.ops._common import c, check, define


def _ibp_affine(l: Tensor, u: Tensor, W: Tensor, b: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Interval bounds of ``W z + b`` for ``l <= z <= u``: l, u [B, n], W [m, n], b [m] or None ->
    (lo, hi) [B, m] = W c + b -/+ |W| r with c = (l+u)/2, r = (u-l)/2 (nominal arithmetic)."""
    dt = check("ibp_affine", ("l", l), ("u", u), ("W", W), ("b", b))
    if l.dim() != 2 or u.shape != l.shape or W.dim() != 2 or W.shape[1] != l.shape[1] or (
            b is not None and tuple(b.shape) != (W.shape[0],)):
        raise ValueError(f"fastcert::ibp_affine: l {tuple(l.shape)}, u {tuple(u.shape)} must be [B, n], W "
                         f"{tuple(W.shape)} [m, n] and b {None if b is None else tuple(b.shape)} [m]")
    B, m = l.shape[0], W.shape[0]
    lo = torch.empty(B, m, dtype=dt)
    hi = torch.empty(B, m, dtype=dt)
    if lo.numel() == 0 or W.shape[1] == 0:
        base = torch.zeros(B, m, dtype=dt) + (b.detach() if b is not None else 0)
        return base, base.clone()
    _C.d_ibp_affine_fwd(c(l), c(u), c(W), c(b).to(dt), lo, hi)
    return lo, hi


def _ibp_affine_fake(l: Tensor, u: Tensor, W: Tensor, b: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return l.new_empty(l.shape[0], W.shape[0]), l.new_empty(l.shape[0], W.shape[0])


def _ibp_affine_backward(l: Tensor, u: Tensor, W: Tensor, g_lo: Tensor, g_hi: Tensor, need_x: bool, need_W: bool,
                        need_b: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`ibp_affine`: (g_l, g_u [B, n], g_W [m, n], g_b [m]); an output not asked for is
    empty."""
    dt = check("ibp_affine_backward", ("l", l), ("u", u), ("W", W), ("g_lo", g_lo), ("g_hi", g_hi))
    (B, n), m = l.shape, W.shape[0]
    full = bool(B and m and n)  # then the kernel writes every entry (no zero-fill needed)
    new = torch.empty if full else torch.zeros
    gl = new(B, n, dtype=dt) if need_x else torch.empty(0, dtype=dt)
    gu = new(B, n, dtype=dt) if need_x else torch.empty(0, dtype=dt)
    gW = new(m, n, dtype=dt) if need_W else torch.empty(0, dtype=dt)
    gb = new(m, dtype=dt) if need_b else torch.empty(0, dtype=dt)
    if full:
        _C.d_ibp_affine_bwd(c(l), c(u), c(W), c(g_lo), c(g_hi), gl, gu, gW, gb)
    elif need_b and B and m:
        gb.copy_((g_lo + g_hi).sum(0))
    return gl, gu, gW, gb


def _ibp_affine_backward_fake(l: Tensor, u: Tensor, W: Tensor, g_lo: Tensor, g_hi: Tensor, need_x: bool, need_W: bool,
      need_b: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    (B, n), m = l.shape, W.shape[0]
    return (l.new_empty(B, n) if need_x else l.new_empty(0), l.new_empty(B, n) if need_x else l.new_empty(0),
            l.new_empty(m, n) if need_W else l.new_empty(0), l.new_empty(m) if need_b else l.new_empty(0))


def _setup(ctx: Any, inputs: tuple, output: Any) -> None:
    l, u, W, b = inputs
    ctx.save_for_backward(l, u, W)
    ctx.has_b = b is not None


def _backward(ctx: Any, g_lo: Tensor, g_hi: Tensor) -> tuple:
    l, u, W = ctx.saved_tensors
    nx = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
    nW, nb = ctx.needs_input_grad[2], ctx.has_b and ctx.needs_input_grad[3]
    gl, gu, gW, gb = ibp_affine_backward(l, u, W, g_lo.contiguous(), g_hi.contiguous(), nx, nW, nb)
    return (gl if nx else None, gu if nx else None, gW if nW else None, gb if nb else None)


ibp_affine, ibp_affine_op = define("ibp_affine", _ibp_affine, _ibp_affine_fake, _setup, _backward)
ibp_affine_backward, ibp_affine_backward_op = define("ibp_affine_backward", _ibp_affine_backward,
                                                     _ibp_affine_backward_fake)
