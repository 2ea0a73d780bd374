"""``fastcert::relu_relax`` (the ReLU relaxation as a function of the bounds and of alpha) and
``fastcert::relax_back`` (a back-substitution step through an elementwise relaxation), with backward kernels."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from fastcert._ext import _C
from fastcert.ops._common import c, check, define

# lower slope of an unstable ReLU neuron -> kernel code
RELU_MODES = {"adaptive": 0, "parallel": 1, "zero": 2, "one": 3, "alpha": 4}


def _relu_relax(l: Tensor, u: Tensor, alpha: Optional[Tensor], mode: int) -> tuple[Tensor, Tensor, Tensor]:
    """Linear bounds ``lo_s z <= relu(z) <= up_s z + up_b`` on ``[l, u]`` (any equal shapes): returns
    (lo_s, up_s, up_b). ``mode`` is a value of ``RELU_MODES``; with ``alpha`` (mode 4) the lower slope of
    unstable neurons is alpha (already in [0, 1]). Stable neurons get exact lines."""
    dt = check("relu_relax", ("l", l), ("u", u), ("alpha", alpha))
    if u.shape != l.shape or (alpha is not None and alpha.shape != l.shape) or (mode == 4) != (alpha is not None):
        raise ValueError(f"fastcert::relu_relax: l {tuple(l.shape)}, u {tuple(u.shape)} and alpha "
                         f"{None if alpha is None else tuple(alpha.shape)} must have one shape, alpha given iff mode 4")
    out = [torch.empty(l.shape, dtype=dt) for _ in range(3)]
    _C.d_relu_relax_fwd(c(l), c(u), c(alpha).to(dt), int(mode), *out)
    return out[0], out[1], out[2]


def _relu_relax_fake(l: Tensor, u: Tensor, alpha: Optional[Tensor], mode: int) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(l), torch.empty_like(l), torch.empty_like(l)


def _relu_relax_backward(l: Tensor, u: Tensor, mode: int, g_lo_s: Tensor, g_up_s: Tensor, g_up_b: Tensor,
                        need_alpha: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`relu_relax` w.r.t. (l, u, alpha); g_alpha is empty unless asked for."""
    dt = check("relu_relax_backward", ("l", l), ("u", u), ("g_lo_s", g_lo_s), ("g_up_s", g_up_s), ("g_up_b", g_up_b))
    gl, gu = torch.empty(l.shape, dtype=dt), torch.empty(l.shape, dtype=dt)
    ga = torch.empty(l.shape if need_alpha else (0,), dtype=dt)
    _C.d_relu_relax_bwd(c(l), c(u), int(mode), c(g_lo_s), c(g_up_s), c(g_up_b), gl, gu, ga)
    return gl, gu, ga


def _relu_relax_backward_fake(l: Tensor, u: Tensor, mode: int, g_lo_s: Tensor, g_up_s: Tensor, g_up_b: Tensor,
      need_alpha: bool) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(l), torch.empty_like(l), l.new_empty(l.shape if need_alpha else (0,))


def _relu_setup(ctx: Any, inputs: tuple, output: Any) -> None:
    l, u, alpha, mode = inputs
    ctx.save_for_backward(l, u)
    ctx.mode = mode
    ctx.has_alpha = alpha is not None


def _relu_backward(ctx: Any, g_lo_s: Tensor, g_up_s: Tensor, g_up_b: Tensor) -> tuple:
    l, u = ctx.saved_tensors
    na = ctx.has_alpha and ctx.needs_input_grad[2]
    gl, gu, ga = relu_relax_backward(l, u, ctx.mode, g_lo_s, g_up_s, g_up_b, na)
    return gl, gu, (ga if na else None), None


relu_relax, relu_relax_op = define("relu_relax", _relu_relax, _relu_relax_fake, _relu_setup, _relu_backward)


def _check_back(op: str, lam: Tensor, lo_s: Tensor, up_s: Tensor, lo_b: Optional[Tensor], up_b: Tensor) -> torch.dtype:
    dt = check(op, ("lam", lam), ("lo_s", lo_s), ("up_s", up_s), ("lo_b", lo_b), ("up_b", up_b))
    if lam.dim() != 3:
        raise ValueError(f"fastcert::{op}: lam must be [B, S, n], got {tuple(lam.shape)}")
    B, S, n = lam.shape
    ok = all(t.shape in ((B, n), (B, S, n)) for t in (lo_s, up_s)) and up_b.shape == (B, n) and (
        lo_b is None or lo_b.shape == (B, n))
    if not ok:
        raise ValueError(f"fastcert::{op}: with lam [B, S, n] = {tuple(lam.shape)}, slopes must be [B, n] or [B, S, n] "
                         f"and intercepts [B, n]; got lo_s {tuple(lo_s.shape)}, up_s {tuple(up_s.shape)}, lo_b "
                         f"{None if lo_b is None else tuple(lo_b.shape)}, up_b {tuple(up_b.shape)}")
    return dt


def _relax_back(lam: Tensor, lo_s: Tensor, up_s: Tensor, lo_b: Optional[Tensor], up_b: Tensor) -> tuple[Tensor, Tensor]:
    """One back-substitution step for the *lower* bound of ``lam . f(z)`` given ``lo_s z + lo_b <= f(z) <=
    up_s z + up_b``: lam [B, S, n] -> (lam' = lam+ lo_s + lam- up_s [B, S, n], bias = sum lam+ lo_b + lam- up_b
    [B, S]). Slopes [B, n] or per row [B, S, n]; lo_b None means zero. (An upper bound is minus the lower bound
    of -lam.)"""
    dt = _check_back("relax_back", lam, lo_s, up_s, lo_b, up_b)
    B, S, n = lam.shape
    out, bias = torch.empty(B, S, n, dtype=dt), torch.empty(B, S, dtype=dt)
    _C.d_relax_back_fwd(c(lam), c(lo_s), c(up_s), c(lo_b).to(dt), c(up_b), out, bias)
    return out, bias


def _relax_back_fake(lam: Tensor, lo_s: Tensor, up_s: Tensor, lo_b: Optional[Tensor], up_b: Tensor) -> tuple[Tensor,
                     Tensor]:
    return torch.empty_like(lam), lam.new_empty(lam.shape[:2])


def _relax_back_backward(lam: Tensor, lo_s: Tensor, up_s: Tensor, lo_b: Optional[Tensor], up_b: Tensor, g_out: Tensor,
                        g_bias: Tensor, need_lo_s: bool = True, need_up_s: bool = True, need_lo_b: bool = True,
                        need_up_b: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`relax_back` w.r.t. (lam, lo_s, up_s, lo_b, up_b); empty where not asked (g_lo_b also
    when lo_b is None)."""
    dt = _check_back("relax_back_backward", lam, lo_s, up_s, lo_b, up_b)
    g = [torch.empty(lam.shape, dtype=dt), torch.empty(lo_s.shape if need_lo_s else (0,), dtype=dt),
         torch.empty(up_s.shape if need_up_s else (0,), dtype=dt),
         torch.empty(up_b.shape if lo_b is not None and need_lo_b else (0,), dtype=dt),
         torch.empty(up_b.shape if need_up_b else (0,), dtype=dt)]
    _C.d_relax_back_bwd(c(lam), c(lo_s), c(up_s), c(lo_b).to(dt), c(up_b), c(g_out), c(g_bias), *g)
    return g[0], g[1], g[2], g[3], g[4]


def _relax_back_backward_fake(lam: Tensor, lo_s: Tensor, up_s: Tensor, lo_b: Optional[Tensor], up_b: Tensor,
                              g_out: Tensor,
      g_bias: Tensor, need_lo_s: bool = True, need_up_s: bool = True, need_lo_b: bool = True,
      need_up_b: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(lam), lo_s.new_empty(lo_s.shape if need_lo_s else (0,)),
            up_s.new_empty(up_s.shape if need_up_s else (0,)),
            up_b.new_empty(up_b.shape if lo_b is not None and need_lo_b else (0,)),
            up_b.new_empty(up_b.shape if need_up_b else (0,)))


def _back_setup(ctx: Any, inputs: tuple, output: Any) -> None:
    lam, lo_s, up_s, lo_b, up_b = inputs
    ctx.has_lo_b = lo_b is not None
    ctx.save_for_backward(lam, lo_s, up_s, lo_b if lo_b is not None else up_b, up_b)


def _back_backward(ctx: Any, g_out: Tensor, g_bias: Tensor) -> tuple:
    lam, lo_s, up_s, lo_b, up_b = ctx.saved_tensors
    _, n_ls, n_us, n_lb, n_ub = ctx.needs_input_grad
    g = relax_back_backward(lam, lo_s, up_s, lo_b if ctx.has_lo_b else None, up_b, g_out.contiguous(),
                            g_bias.contiguous(), n_ls, n_us, n_lb, n_ub)
    return g[0], (g[1] if n_ls else None), (g[2] if n_us else None), (g[3] if ctx.has_lo_b and n_lb else None), \
        (g[4] if n_ub else None)


relax_back, relax_back_op = define("relax_back", _relax_back, _relax_back_fake, _back_setup, _back_backward)
relu_relax_backward, relu_relax_backward_op = define("relu_relax_backward", _relu_relax_backward,
                                                     _relu_relax_backward_fake)
relax_back_backward, relax_back_backward_op = define("relax_back_backward", _relax_back_backward,
                                                     _relax_back_backward_fake)
