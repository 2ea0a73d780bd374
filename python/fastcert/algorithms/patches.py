"""Windowed (patches) back-substitution for the bounds of convolution neurons in a chain
(what auto_LiRPA calls patches mode): the rows of one output position share a window of the input."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fastcert._ext import _C
from fastcert.algorithms.slack import initial_mag
from fastcert.algorithms.state import WS, Pass, uncrossed
from fastcert.layers.base import Box, Layer, empty_like_dtype
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.relu import ReLU
from fastcert.rounding import gamma_n


def patch_steps(layers: list[Layer], i: int) -> list[int] | None:
    """Indices j of the (activation j, conv j-1) steps from layer i-1 down to the input when
    layers[0..i-1] are Conv2d, activation, Conv2d, ..., Conv2d, the shape the windowed (patches)
    back-substitution handles for the bounds on the output of conv i-1; else None."""
    if not isinstance(layers[i - 1], Conv2d) or i - 1 < 2 or (i - 1) % 2:
        return None
    steps = []
    for j in range(i - 2, 0, -2):
        if not isinstance(layers[j], ReLU) or not isinstance(layers[j - 1], Conv2d):
            return None
        steps.append(j)
    return steps if isinstance(layers[0], Conv2d) else None


def patch_geometry(layers: list[Layer], i: int, steps: list[int]) -> list[tuple[int, int, int, int, int, int, int]]:
    """Windows of the rows of conv i-1's neurons: for its input, then for the input of each step's
    conv: (C, h, w, sy, sx, oy, ox): C x h x w windows whose top-left corner for output position
    (y, x) of conv i-1 is (oy + y*sy, ox + x*sx) (negative: in the zero padding)."""
    L = layers[i - 1]
    assert isinstance(L, Conv2d)
    geo = [(L.in_shape[0], int(L.W64.shape[2]), int(L.W64.shape[3]), L.stride[0], L.stride[1], -L.padding[0],
            -L.padding[1])]
    for j in steps:
        conv = layers[j - 1]
        assert isinstance(conv, Conv2d)
        _, h, w, sy, sx, oy, ox = geo[-1]
        kh, kw = int(conv.W64.shape[2]), int(conv.W64.shape[3])
        (cs_y, cs_x), (cp_y, cp_x) = conv.stride, conv.padding
        geo.append((conv.in_shape[0], (h - 1) * cs_y + kh, (w - 1) * cs_x + kw, sy * cs_y, sx * cs_x,
                    oy * cs_y - cp_y, ox * cs_x - cp_x))
    return geo


def _conv_macs(conv: Conv2d) -> int:
    OC, OH, OW = conv.out_shape
    return OC * OH * OW * int(conv.W64[0].numel())


def patch_row_macs(layers: list[Layer], i: int, steps: list[int]) -> tuple[int, int]:
    """Multiply-adds of one row of conv i-1's neurons through the steps' convolutions: (on its window,
    on the whole image)."""
    geo = patch_geometry(layers, i, steps)
    win = full = 0
    for k, j in enumerate(steps):
        conv = layers[j - 1]
        assert isinstance(conv, Conv2d)
        C_a, h, w = geo[k][:3]
        win += C_a * h * w * int(conv.W64[0].numel())
        full += _conv_macs(conv)
    return win, full


def patches_cheaper(layers: list[Layer], i: int, steps: list[int], need: torch.Tensor | None) -> bool:
    """Whether the windowed rows cost fewer multiply-adds than the full-width ones for the bounds of
    conv i-1. need: [B, n] the neurons to bound (None: all). The windowed pass bounds every position
    of a channel that needs any; the full-width one each neuron that any sample needs. A window that is
    as large as the image (deep chains on small images) is never cheaper."""
    win, full = patch_row_macs(layers, i, steps)
    L = layers[i - 1]
    OC, OH, OW = L.out_shape
    if need is None:
        return win < full
    anyb = need.any(0)
    rows_full = int(anyb.sum())
    rows_win = int(anyb.view(OC, OH * OW).any(1).sum()) * OH * OW
    return rows_win * win < rows_full * full


def _windows(A: torch.Tensor, h: int, w: int, sy: int, sx: int, oy: int, ox: int, nh: int, nw: int) -> torch.Tensor:
    """Windows of the images A [B, C, H, W]: window (a, b) covers rows oy + a*sy .. + h and columns
    ox + b*sx .. + w, zeros outside the image. Returns [B * nh * nw, C * h * w] (window-major per
    sample, each window in (c, y, x) order: the layout of a C x h x w image)."""
    B, C, H, W = A.shape
    top, left = max(0, -oy), max(0, -ox)
    bottom = max(0, oy + (nh - 1) * sy + h - H)
    right = max(0, ox + (nw - 1) * sx + w - W)
    Ap = F.pad(A, (left, right, top, bottom))[:, :, oy + top:, ox + left:]
    cols = F.unfold(Ap, (h, w), stride=(sy, sx))  # [B, C*h*w, L]
    ah, aw = (Ap.shape[2] - h) // sy + 1, (Ap.shape[3] - w) // sx + 1
    cols = cols.view(B, C * h * w, ah, aw)[:, :, :nh, :nw]
    return cols.permute(0, 2, 3, 1).reshape(B * nh * nw, C * h * w).contiguous()


def _window_steps(st: Pass, steps: list[int], geo: list, lam: torch.Tensor, bias: torch.Tensor,
                  mag: torch.Tensor, bh: np.ndarray, b0: int, b1: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """The windowed rows lam [Bc * P, S, window] through every (activation, conv) step; bias, mag updated."""
    dt = lam.dtype
    Bc = b1 - b0
    OH, OW = out_hw
    P = OH * OW
    S = lam.shape[1]
    nthr = max(1, _C.omp_max_threads())
    for k, j in enumerate(steps):
        act, conv = st.layers[j], st.layers[j - 1]
        assert isinstance(act, ReLU) and isinstance(conv, Conv2d)
        r = st.relax[j]
        assert r is not None and r[4] is None
        C_a, h, w, sy, sx, oy, ox = geo[k]  # the window on the activation (= conv output) image
        img = conv.out_shape
        gat = [_windows(t[b0:b1].reshape(Bc, *img), h, w, sy, sx, oy, ox, OH, OW) for t in r[:4]]
        G = st.G[j - 1]
        assert G is not None
        g_w = _windows(G[b0:b1].reshape(Bc, *img), h, w, sy, sx, oy, ox, OH, OW)
        pc = conv.params(dt)
        cb = (pc.bias.view(img[0], -1)[:, :1].expand(img[0], h * w).contiguous() if pc.bias.numel()
              else torch.empty(0, dtype=dt))
        n_w = C_a * h * w
        Cn, hn, wn = geo[k + 1][:3]
        out = WS.get("ping" if k % 2 == 0 else "pong", (Bc * P, S, Cn * hn * wn), dt)
        per_row = n_w + conv.W64[0].numel() * h * w
        R = max(1, min(Bc * P * S, st.opts.block_elems // per_row))
        work = WS.get("work", (R * per_row * nthr,), dt)
        _C.act_conv_backward(lam, *gat, gamma_n(0, dt), gamma_n(act.n_in, dt),
                             pc.W, cb, g_w, gamma_n(conv.back_depth, dt),
                             gamma_n(conv.n_out, dt), out, bias, mag, bh, hn, wn,
                             conv.stride[0], conv.stride[1], 0, 0, R, work)
        lam = out
    return lam


def _concretize_windows(st: Pass, geo_last: tuple, lam: torch.Tensor, bias: torch.Tensor, mag: torch.Tensor,
                        bias_hi: torch.Tensor | None, b0: int, b1: int, out_hw: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concretize the windowed rows against the input region, window by window (zeros outside the image:
    the padding): ([Bc * P, S], upper or None)."""
    dt = lam.dtype
    Bc = b1 - b0
    OH, OW = out_hw
    P = OH * OW
    S = lam.shape[1]
    e = empty_like_dtype(dt)
    bh = e if bias_hi is None else bias_hi
    # concretize against the input region, window by window (zeros outside the image: padding)
    Cn, hn, wn, sy, sx, oy, ox = geo_last
    shape0 = st.layers[0].in_shape
    pr = st.prob
    x0w, l0w, u0w = (_windows(t[b0:b1].reshape(Bc, *shape0), hn, wn, sy, sx, oy, ox, OH, OW)
                     for t in (pr.x0, pr.l0, pr.u0))
    if pr.p != 0:  # the dual norm must not see the coefficients of the padding
        inside = _windows(torch.ones(1, *shape0, dtype=dt), hn, wn, sy, sx, oy, ox, OH, OW)
        lam = lam * inside.repeat(Bc, 1).unsqueeze(1)
    eps_w = pr.eps[b0:b1].repeat_interleave(P).contiguous()
    res = torch.empty(Bc * P, S, dtype=dt)
    res_hi = None if bias_hi is None else torch.empty(Bc * P, S, dtype=dt)
    _C.concretize(lam, x0w, l0w, u0w, eps_w, pr.p, bias,
                  mag, gamma_n(lam.shape[2], dt), res, bh,
                  e if res_hi is None else res_hi)
    return res, res_hi


def intermediate_patches(st: Pass, i: int, ibp: Box, intersect: bool, symmetric: bool, steps: list[int]) -> Box:
    """Back-substitution bounds on the output of the convolution layer i-1, one window per output
    position (what auto_LiRPA calls patches mode).

    The row of neuron (oc, y, x) is non-zero only on the receptive field of (y, x): a KH x KW window of
    the conv's input, and after each further (activation, conv) step a window grown by that conv's
    kernel and stride. Every row of one output position shares its window, so the positions become the
    kernels' "samples" ([B * P] of them, P = OH * OW) with the activation slopes, intercepts and
    rounding magnitudes gathered per window (zeros outside the image, which zero the rows there:
    those entries multiply the convolutions' zero padding, not neurons), and the rows of all
    positions are the same (+-W[oc], shared). The kernels and their rounding terms are the ones of the
    full-width pass (act_conv_backward, concretize), on windows instead of whole images, so the bounds
    equal the full-width ones up to the order of the sums.
    """
    L = st.layers[i - 1]
    assert isinstance(L, Conv2d)
    dt = ibp.l.dtype
    B = ibp.l.shape[0]
    OC, OH, OW = L.out_shape
    P = OH * OW
    lo, hi = ibp.l.clone(), ibp.u.clone()
    unstable = (ibp.l < 0) & (ibp.u > 0)
    geo = patch_geometry(st.layers, i, steps)
    pL = L.params(dt)
    width = max(C * h * w for C, h, w, *_ in geo)
    b0 = 0
    while b0 < B:
        sel_c = (unstable[b0:].view(B - b0, OC, P).any(2).any(0).nonzero().flatten() if intersect
                 else torch.arange(OC))
        Sc = sel_c.numel()
        rows_per_sample = P * (1 if symmetric else 2) * max(1, Sc)
        Bc = max(1, min(B - b0, st.opts.lambda_bytes // max(1, rows_per_sample * width * ibp.l.element_size())))
        b1 = b0 + Bc
        if intersect:
            sel_c = unstable[b0:b1].view(Bc, OC, P).any(2).any(0).nonzero().flatten()
            Sc = sel_c.numel()
        if Sc == 0:
            b0 = b1
            continue
        rows = pL.W.reshape(OC, -1)[sel_c].unsqueeze(0)  # [1, Sc, C0*KH*KW], the same at every position
        bsel = pL.bias.view(OC, P)[sel_c, 0] if pL.bias.numel() else torch.zeros(Sc, dtype=dt)
        lam = rows if symmetric else torch.cat([rows, -rows], 1)
        S = lam.shape[1]
        bias = (bsel if symmetric else torch.cat([bsel, -bsel])).unsqueeze(0).expand(Bc * P, S).contiguous()
        # the windows of a sample see at most its whole boxes: the per-sample underflow bound covers them
        mag = initial_mag(st, i - 1, 0, b0, b1, S, dt, repeat=P)
        bias_hi = bias.clone() if symmetric else None
        e = empty_like_dtype(dt)
        bh = e if bias_hi is None else bias_hi
        lam = _window_steps(st, steps, geo, lam, bias, mag, bh, b0, b1, (OH, OW))
        res, res_hi = _concretize_windows(st, geo[-1], lam, bias, mag, bias_hi, b0, b1, (OH, OW))
        if symmetric:
            assert res_hi is not None
            l_new, u_new = res, res_hi
        else:
            l_new, u_new = res[:, :Sc], -res[:, Sc:]
        # [Bc*P, Sc] -> [Bc, Sc * P] in the layer's (oc, y, x) order, for the selected channels
        l_new = l_new.view(Bc, P, Sc).transpose(1, 2).reshape(Bc, Sc, P)
        u_new = u_new.view(Bc, P, Sc).transpose(1, 2).reshape(Bc, Sc, P)
        lo_v, hi_v = lo[b0:b1].view(Bc, OC, P), hi[b0:b1].view(Bc, OC, P)
        if intersect:
            own = unstable[b0:b1].view(Bc, OC, P)[:, sel_c]
            lo_v[:, sel_c] = torch.where(own, torch.maximum(lo_v[:, sel_c], l_new), lo_v[:, sel_c])
            hi_v[:, sel_c] = torch.where(own, torch.minimum(hi_v[:, sel_c], u_new), hi_v[:, sel_c])
        else:
            lo_v[:, sel_c] = l_new
            hi_v[:, sel_c] = u_new
        b0 = b1
    return uncrossed(lo, hi)
