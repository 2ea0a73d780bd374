"""``fastcert::linear_back`` (back-substitution through a dense layer) and ``fastcert::concretize_box``
(the lower bound of linear functions over a box), with backward kernels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastcert._ext import _C
from fastcert.ops._common import c, check, define


def _linear_back(lam: Tensor, W: Tensor) -> Tensor:
    """Coefficients through a dense layer: lam [..., m], W [m, n] -> lam W [..., n] (one GEMM)."""
    dt = check("linear_back", ("lam", lam), ("W", W))
    if W.dim() != 2 or lam.shape[-1] != W.shape[0]:
        raise ValueError(f"fastcert::linear_back: lam {tuple(lam.shape)} must end with W's rows; W {tuple(W.shape)}")
    out = torch.empty(*lam.shape[:-1], W.shape[1], dtype=dt)
    if out.numel() and W.shape[0]:
        _C.d_linear_back_fwd(c(lam), c(W), out)
    else:
        out.zero_()
    return out


def _linear_back_fake(lam: Tensor, W: Tensor) -> Tensor:
    return lam.new_empty(*lam.shape[:-1], W.shape[1])


def _linear_back_backward(lam: Tensor, W: Tensor, g: Tensor, need_lam: bool, need_W: bool) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`linear_back`: (g W^T, lam^T g summed over the leading dimensions); empty if not asked."""
    dt = check("linear_back_backward", ("lam", lam), ("W", W), ("g", g))
    gl = torch.empty(lam.shape if need_lam else (0,), dtype=dt)
    gW = torch.empty(W.shape if need_W else (0,), dtype=dt)
    if lam.numel() and W.numel():
        _C.d_linear_back_bwd(c(lam), c(W), c(g), gl, gW)  # writes every entry (GEMMs with beta 0)
    else:
        gl.zero_()
        gW.zero_()
    return gl, gW


def _linear_back_backward_fake(lam: Tensor, W: Tensor, g: Tensor, need_lam: bool, need_W: bool) -> tuple[Tensor,
                               Tensor]:
    return lam.new_empty(lam.shape if need_lam else (0,)), W.new_empty(W.shape if need_W else (0,))


def _lb_setup(ctx: Any, inputs: tuple, output: Any) -> None:
    ctx.save_for_backward(*inputs)


def _lb_backward(ctx: Any, g: Tensor) -> tuple:
    lam, W = ctx.saved_tensors
    nl, nW = ctx.needs_input_grad
    gl, gW = linear_back_backward(lam, W, g.contiguous(), nl, nW)
    return (gl if nl else None), (gW if nW else None)


linear_back, linear_back_op = define("linear_back", _linear_back, _linear_back_fake, _lb_setup, _lb_backward)


def _concretize_box(lam: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """min over the box |z - center| <= radius of lam . z: lam [B, S, n], center/radius [B, n] ->
    lam . center - |lam| . radius [B, S]."""
    dt = check("concretize_box", ("lam", lam), ("center", center), ("radius", radius))
    if lam.dim() != 3 or center.shape != (lam.shape[0], lam.shape[2]) or radius.shape != center.shape:
        raise ValueError(f"fastcert::concretize_box: lam [B, S, n] {tuple(lam.shape)}, center {tuple(center.shape)} "
                         f"and radius {tuple(radius.shape)} [B, n] do not match")
    out = torch.empty(lam.shape[:2], dtype=dt)
    _C.d_concretize_box_fwd(c(lam), c(center), c(radius), out)
    return out


def _concretize_box_fake(lam: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    return lam.new_empty(lam.shape[:2])


def _concretize_box_backward(lam: Tensor, center: Tensor, radius: Tensor, g: Tensor, need_lam: bool, need_center: bool,
                            need_radius: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`concretize_box` w.r.t. (lam, center, radius); empty where not asked."""
    dt = check("concretize_box_backward", ("lam", lam), ("center", center), ("radius", radius), ("g", g))
    out = (torch.empty(lam.shape if need_lam else (0,), dtype=dt),
           torch.empty(center.shape if need_center else (0,), dtype=dt),
           torch.empty(radius.shape if need_radius else (0,), dtype=dt))
    _C.d_concretize_box_bwd(c(lam), c(center), c(radius), c(g), *out)
    return out


def _concretize_box_backward_fake(lam: Tensor, center: Tensor, radius: Tensor, g: Tensor, need_lam: bool,
                                  need_center: bool,
      need_radius: bool) -> tuple[Tensor, Tensor, Tensor]:
    return (lam.new_empty(lam.shape if need_lam else (0,)), center.new_empty(center.shape if need_center else (0,)),
            radius.new_empty(radius.shape if need_radius else (0,)))


def _cb_setup(ctx: Any, inputs: tuple, output: Any) -> None:
    ctx.save_for_backward(*inputs)


def _cb_backward(ctx: Any, g: Tensor) -> tuple:
    nl, nc, nr = ctx.needs_input_grad
    gl, gc, gr = concretize_box_backward(*ctx.saved_tensors, g.contiguous(), nl, nc, nr)
    return (gl if nl else None), (gc if nc else None), (gr if nr else None)


concretize_box, concretize_box_op = define("concretize_box", _concretize_box, _concretize_box_fake, _cb_setup,
                                           _cb_backward)
linear_back_backward, linear_back_backward_op = define("linear_back_backward", _linear_back_backward,
                                                       _linear_back_backward_fake)
concretize_box_backward, concretize_box_backward_op = define("concretize_box_backward", _concretize_box_backward,
                                                             _concretize_box_backward_fake)
