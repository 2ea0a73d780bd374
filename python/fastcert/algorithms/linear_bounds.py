"""IBP, Fast-Lin, the Kolter-Wong dual bound, CROWN and CROWN-IBP: one forward interval pass and one
backward (back-substitution) pass, in the lower-bound direction only (upper = -lower(-C)).

- Fast-Lin and KW are the same quantity: CROWN with the lower ReLU slope equal to the upper one,
  u/(u-l), and intermediate bounds by the same back-substitution, not intersected with anything.
- CROWN picks the lower slope adaptively (1 if u >= -l else 0) and intersects each intermediate
  bound with the interval bound, which lets it bound only the neurons that interval arithmetic
  cannot prove stable.
- CROWN-IBP takes the intermediate bounds from interval propagation and runs one backward pass for
  the specification.

Soundness under floating point: every kernel adds a bound on its own rounding error to ``mag``
(each with the factor ``gamma_n`` of the length of the sums it computes), concretization subtracts
it, and the final bounds are also moved outward by a bound on the rounding error of a float64
evaluation of the network (``slack.eval_slack``), so ``lower <= C f(x) <= upper`` holds for the exact
function and for its float64 evaluation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fastcert._ext import _C, torch_serial
from fastcert.layers import Activation, Box, Conv2d, Dense, Diag, Layer, UnsupportedError
from fastcert.layers.base import Centre, empty_like_dtype, interval_affine, interval_dense_center, np_view
from fastcert.options import BoundOptions
from fastcert.primitives.base import Elementwise, RelaxOptions
from fastcert.rounding import gamma_n
from fastcert.algorithms.slack import check_overflow, eval_slack, initial_mag, overflow_hint

# method -> (lower slope, intermediate bounds, intersect intermediate bounds with IBP)
METHODS: dict[str, tuple[str, str, bool] | None] = {
    "ibp": None,
    "fastlin": ("parallel", "backsub", False),
    "kw": ("parallel", "backsub", False),
    "crown": ("adaptive", "backsub", True),
    "crown-ibp": ("adaptive", "ibp", True),
}



class _Workspace(threading.local):
    """Per-thread scratch buffers of the backward pass, kept between calls.

    The coefficient matrices of a back-substitution are tens to hundreds of MiB; allocating them
    fresh every step makes the C library map new pages and the kernel zero them (page faults cost
    as much as the arithmetic on small networks). Buffers grow to the largest size asked for and are
    reused; :func:`empty_cache` frees them. Nothing returned to a caller ever lives in them."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= int(d)
        buf = self.bufs.get((name, dtype))
        if buf is None or buf.numel() < numel:
            self.bufs.pop((name, dtype), None)  # free the old one before allocating the larger one
            buf = torch.empty(max(numel, 1), dtype=dtype)
            self.bufs[(name, dtype)] = buf
        return buf[:numel].view(shape)


_WS = _Workspace()
_E64 = np.empty(0, dtype=np.float64)  # "no centre form" for the kernels' float64 arguments


def empty_cache() -> int:
    """Free this thread's scratch buffers of the backward pass; returns the bytes released."""
    freed = sum(b.numel() * b.element_size() for b in _WS.bufs.values())
    _WS.bufs.clear()
    return freed


@dataclass
class Problem:
    """Per-call input region. x0, l0, u0: [B, n0]; eps: [B]; p: 0 = box (L-inf), 1 = L1, 2 = L2."""

    x0: torch.Tensor
    eps: torch.Tensor
    p: int
    l0: torch.Tensor
    u0: torch.Tensor


@dataclass
class _Pass:
    """State of one bound computation (explicit, never stored on layers)."""

    layers: list[Layer]
    prob: Problem
    boxes_in: list[Box | None]
    G: list[torch.Tensor | None]
    relax: list[tuple[torch.Tensor, ...] | None]  # (lo_s, up_s, up_b, zmag, lo_b or None) per activation
    opts: BoundOptions = field(default_factory=BoundOptions)
    uf: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B] float64 underflow units
    # dense layer -> the centre form of its backward step (None: the magnitude form with G)
    centre: dict[int, Centre] = field(default_factory=dict)


def _rows(L: Layer, sel: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``sel`` of the layer's matrix, [S, n_in], without forming the whole matrix."""
    if isinstance(L, Dense):  # numpy's take: single-threaded, no OpenMP team to wake for a small copy
        return torch.from_numpy(np.take(L.params(dtype).np[0], sel.numpy(), axis=0))
    if isinstance(L, Diag):
        out = torch.zeros(sel.numel(), L.n_in, dtype=dtype)
        out[torch.arange(sel.numel()), sel] = L.params(dtype).W[sel]
        return out
    assert isinstance(L, Conv2d)
    W = L.params(dtype).W
    OC, OH, OW = L.out_shape
    C, H, Wd = L.in_shape
    (sh, sw), (ph, pw) = L.stride, L.padding
    KH, KW = W.shape[2], W.shape[3]
    oc, rem = sel // (OH * OW), sel % (OH * OW)
    oh, ow = rem // OW, rem % OW
    S = sel.numel()
    buf = torch.zeros(S, C, H + 2 * ph, Wd + 2 * pw, dtype=dtype)
    ar = torch.arange(S)
    for kh in range(KH):
        for kw in range(KW):
            # each (row, kh, kw) hits a distinct input position, so assignment is exact
            buf[ar, :, oh * sh + kh, ow * sw + kw] = W[oc, :, kh, kw]
    return buf[:, :, ph:ph + H, pw:pw + Wd].reshape(S, -1).contiguous()


def _backsub(st: _Pass, lam: torch.Tensor, bias: torch.Tensor, mag: torch.Tensor, start: int, stop: int,
             b0: int, b1: int, bias_hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lower bound of lam . z_start over the region, for the batch slice [b0, b1).

    lam: [Bc, S, n] on the input of layer ``start`` (= output of layer start-1); bias, mag: [Bc, S].
    Back-substitutes through layers start-1 .. stop and concretizes against the input region
    (stop == 0) or the interval box of layer ``stop``'s input. Returns ([Bc, S], None).
    With ``bias_hi`` (only valid when every relaxation on the way is symmetric, lower slope ==
    upper slope, as in Fast-Lin / KW) the same pass also yields the upper bound: ([Bc,S], [Bc,S]).
    """
    dt = lam.dtype
    Bc, S = bias.shape
    e = empty_like_dtype(dt)
    bh = e if bias_hi is None else np_view(bias_hi)
    flip = [0]

    def out_buf(n_in: int) -> torch.Tensor:  # alternate two scratch buffers: a step reads one, writes the other
        flip[0] ^= 1
        return _WS.get("ping" if flip[0] else "pong", (Bc, S, n_in), dt)

    j = start - 1
    while j >= stop:
        L = st.layers[j]
        prev = st.layers[j - 1] if j - 1 >= stop else None
        if not L.is_affine and isinstance(prev, (Conv2d, Dense)) and st.relax[j][4] is None:
            # activation + the affine layer before it in one kernel: the relaxed rows never hit memory
            # (zero lower intercepts only: the fused kernels have no lower-intercept input)
            r = st.relax[j]
            G = st.G[j - 1]
            assert r is not None and G is not None
            lo_s, up_s, up_b, zmag = (t[b0:b1] for t in r[:4])
            out = out_buf(prev.n_in)
            p = prev.params(dt)
            nthr = max(1, _C.omp_max_threads())
            if isinstance(prev, Conv2d):
                C_, H_, W_ = prev.in_shape
                per_row = L.n_in + prev.W64[0].numel() * prev.out_shape[1] * prev.out_shape[2]
                R = max(1, min(Bc * S, st.opts.block_elems // per_row))
                work = _WS.get("work", (R * per_row * nthr,), dt)  # a block per thread
                _C.act_conv_backward(np_view(lam), np_view(lo_s), np_view(up_s), np_view(up_b), np_view(zmag),
                                     gamma_n(0, dt), gamma_n(L.n_in, dt), p.np[0], np_view(prev.params(dt).bias),
                                     np_view(G[b0:b1]), gamma_n(prev.back_depth, dt), gamma_n(prev.n_out, dt),
                                     np_view(out), np_view(bias), np_view(mag), bh, H_, W_, prev.stride[0],
                                     prev.stride[1], prev.padding[0], prev.padding[1], R, np_view(work))
            else:
                R = max(1, min(Bc * S, st.opts.block_elems // L.n_in))
                work = _WS.get("work", (R * L.n_in * nthr,), dt)
                ce = st.centre.get(j - 1)
                if ce is not None:  # centre form: the bias inside v, the weight w replaces gamma * G
                    _C.act_dense_backward(np_view(lam), np_view(lo_s), np_view(up_s), np_view(up_b), np_view(zmag),
                                          gamma_n(0, dt), gamma_n(L.n_in, dt), p.np[0], e, np_view(ce.w[b0:b1]),
                                          1.0, 0.0, np_view(out), np_view(bias), np_view(mag), bh, R, np_view(work),
                                          np_view(ce.v[b0:b1]), np_view(ce.c[b0:b1]))
                else:
                    _C.act_dense_backward(np_view(lam), np_view(lo_s), np_view(up_s), np_view(up_b), np_view(zmag),
                                          gamma_n(0, dt), gamma_n(L.n_in, dt), p.np[0], p.np[2], np_view(G[b0:b1]),
                                          gamma_n(prev.back_depth, dt), gamma_n(prev.n_out, dt), np_view(out),
                                          np_view(bias), np_view(mag), bh, R, np_view(work), _E64, e)
            lam = out
            j -= 2
            continue
        idx, j = j, j - 1
        if L.is_affine and st.centre.get(idx) is not None:
            ce = st.centre[idx]
            new = L.backward(lam.reshape(Bc * S, L.n_out)).reshape(Bc, S, L.n_in)
            _C.affine_center(np_view(lam), np_view(new), np_view(ce.v[b0:b1]), np_view(ce.c[b0:b1]),
                             np_view(ce.w[b0:b1]), np_view(bias), np_view(mag), bh)
            lam = new
        elif L.is_affine:
            G = st.G[idx]
            assert G is not None
            _C.bias_mag(np_view(lam), np_view(L.params(dt).bias), np_view(G[b0:b1]), np_view(bias), np_view(mag),
                        gamma_n(L.back_depth, dt), gamma_n(L.n_out, dt), bh)
            lam = L.backward(lam.reshape(Bc * S, L.n_out)).reshape(Bc, S, L.n_in)
        else:
            r = st.relax[idx]
            assert r is not None
            lo_s, up_s, up_b, zmag = (t[b0:b1] for t in r[:4])
            lo_b = e if r[4] is None else np_view(r[4][b0:b1])
            out = out_buf(L.n_in)
            _C.backward_act(np_view(lam), np_view(lo_s), np_view(up_s), lo_b, np_view(up_b), np_view(zmag),
                            np_view(out), np_view(bias), np_view(mag), gamma_n(0, dt), gamma_n(L.n_in, dt), bh)
            lam = out
    res = torch.empty(Bc, S, dtype=dt)
    res_hi = None if bias_hi is None else torch.empty(Bc, S, dtype=dt)
    rh = e if res_hi is None else np_view(res_hi)
    if stop == 0:
        pr = st.prob
        _C.concretize(np_view(lam), np_view(pr.x0[b0:b1]), np_view(pr.l0[b0:b1]), np_view(pr.u0[b0:b1]),
                      np_view(pr.eps[b0:b1]), pr.p, np_view(bias), np_view(mag), gamma_n(lam.shape[2], dt),
                      np_view(res), bh, rh)
    else:
        box = st.boxes_in[stop]
        assert box is not None
        lb = box.l[b0:b1]
        _C.concretize(np_view(lam), np_view(lb), np_view(lb), np_view(box.u[b0:b1]), np_view(st.prob.eps[b0:b1]), 0,
                      np_view(bias), np_view(mag), gamma_n(lam.shape[2], dt), np_view(res), bh, rh)
    return res, res_hi


def _two_sided(st: _Pass, lam: torch.Tensor, bias: torch.Tensor, start: int, stop: int, b0: int, b1: int,
               symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of lam . z_start + bias: ([Bc, S], [Bc, S]).

    lam: [Bc or 1, S, n]; bias: [Bc, S]. Symmetric relaxations need one pass; otherwise the rows
    are stacked with their negations (upper = -lower(-lam)).
    """
    S = lam.shape[1]
    if symmetric:
        mag = initial_mag(st, start, stop, b0, b1, S, lam.dtype)
        lo, hi = _backsub(st, lam, bias.clone(), mag, start, stop, b0, b1, bias_hi=bias.clone())
        assert hi is not None
        return lo, hi
    lam2 = _WS.get("in", (lam.shape[0], 2 * S, lam.shape[2]), lam.dtype)
    torch.cat([lam, -lam], 1, out=lam2)
    mag = initial_mag(st, start, stop, b0, b1, 2 * S, lam.dtype)
    res, _ = _backsub(st, lam2, torch.cat([bias, -bias], 1), mag, start, stop, b0, b1)
    return res[:, :S], -res[:, S:]


def _chunk(B: int, rows: int, width: int, itemsize: int, budget: int) -> int:
    return max(1, min(B, budget // max(1, rows * width * itemsize)))


def _uncrossed(lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """The box [lo, hi]; a bound that crosses (lo > hi) can only come from rounding on a degenerate
    box, and swapping the two keeps it sound."""
    bad = lo > hi
    if bad.any():
        lo, hi = torch.where(bad, torch.minimum(lo, hi), lo), torch.where(bad, torch.maximum(lo, hi), hi)
    return Box(lo.contiguous(), hi.contiguous())


def patch_steps(layers: list[Layer], i: int) -> list[int] | None:
    """Indices j of the (activation j, conv j-1) steps from layer i-1 down to the input when
    layers[0..i-1] are Conv2d, activation, Conv2d, ..., Conv2d, the shape the windowed (patches)
    back-substitution handles for the bounds on the output of conv i-1; else None."""
    if not isinstance(layers[i - 1], Conv2d) or i - 1 < 2 or (i - 1) % 2:
        return None
    steps = []
    for j in range(i - 2, 0, -2):
        if not isinstance(layers[j], Activation) or not isinstance(layers[j - 1], Conv2d):
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


def _intermediate_patches(st: _Pass, i: int, ibp: Box, intersect: bool, symmetric: bool, steps: list[int]) -> Box:
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
        bh = e if bias_hi is None else np_view(bias_hi)
        nthr = max(1, _C.omp_max_threads())
        for k, j in enumerate(steps):
            act, conv = st.layers[j], st.layers[j - 1]
            assert isinstance(act, Activation) and isinstance(conv, Conv2d)
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
            out = _WS.get("ping" if k % 2 == 0 else "pong", (Bc * P, S, Cn * hn * wn), dt)
            per_row = n_w + conv.W64[0].numel() * h * w
            R = max(1, min(Bc * P * S, st.opts.block_elems // per_row))
            work = _WS.get("work", (R * per_row * nthr,), dt)
            _C.act_conv_backward(np_view(lam), *(np_view(t) for t in gat), gamma_n(0, dt), gamma_n(act.n_in, dt),
                                 pc.np[0], np_view(cb), np_view(g_w), gamma_n(conv.back_depth, dt),
                                 gamma_n(conv.n_out, dt), np_view(out), np_view(bias), np_view(mag), bh, hn, wn,
                                 conv.stride[0], conv.stride[1], 0, 0, R, np_view(work))
            lam = out
        # concretize against the input region, window by window (zeros outside the image: padding)
        Cn, hn, wn, sy, sx, oy, ox = geo[-1]
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
        _C.concretize(np_view(lam), np_view(x0w), np_view(l0w), np_view(u0w), np_view(eps_w), pr.p, np_view(bias),
                      np_view(mag), gamma_n(lam.shape[2], dt), np_view(res), bh,
                      e if res_hi is None else np_view(res_hi))
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
    return _uncrossed(lo, hi)


def _intermediate(st: _Pass, i: int, ibp: Box, intersect: bool, symmetric: bool, stats: dict | None = None) -> Box:
    """Back-substitution bounds on the input of activation layer i (the output of layer i-1).

    ``stats`` (optional) receives ``stats["rows"][i]``: [B] int64, the neurons each sample needs
    bounded here (the work the method must do; the benchmarks' FLOP counts read it)."""
    L = st.layers[i - 1]
    dt = ibp.l.dtype
    B, n = ibp.l.shape
    unstable = st.layers[i].unstable(ibp)
    if stats is not None:
        stats.setdefault("rows", {})[i] = unstable.sum(1) if intersect else torch.full((B,), n)
    steps = patch_steps(st.layers, i) if st.opts.patches != "never" else None
    if steps is not None and (st.opts.patches == "always" or
                              patches_cheaper(st.layers, i, steps, unstable if intersect else None)):
        return _intermediate_patches(st, i, ibp, intersect, symmetric, steps)
    lo, hi = ibp.l.clone(), ibp.u.clone()
    width = max(max(Lj.n_in, Lj.n_out) for Lj in st.layers[:i])
    all_idx = torch.arange(n)
    b0 = 0
    while b0 < B:
        sel_all = unstable[b0:].any(0).nonzero().flatten() if intersect else all_idx
        Bc = _chunk(B - b0, (1 if symmetric else 2) * max(1, sel_all.numel()), width, ibp.l.element_size(),
                    st.opts.lambda_bytes)
        b1 = b0 + Bc
        sel = unstable[b0:b1].any(0).nonzero().flatten() if intersect else all_idx
        S = sel.numel()
        if S == 0:
            b0 = b1
            continue
        # rows shared by the chunk ([1, S, n]) are fine when an activation kernel reads them first
        first_shared = i - 2 >= 0 and not st.layers[i - 2].is_affine
        if L.is_affine:
            lam = _rows(L, sel, dt).unsqueeze(0)  # [1, S, n]: the same rows for the whole chunk
            bv = L.params(dt).bias
            bsel = bv[sel] if bv.numel() else torch.zeros(S, dtype=dt)
            start = i - 1
        else:  # activation directly before an activation: start from one-hot rows
            lam = torch.zeros(1, S, n, dtype=dt)
            lam[0, torch.arange(S), sel] = 1
            bsel = torch.zeros(S, dtype=dt)
            start = i
            first_shared = not L.is_affine
        if not first_shared:
            rows = _WS.get("rows", (b1 - b0, S, lam.shape[2]), dt)
            rows.copy_(lam.expand(b1 - b0, S, lam.shape[2]))
            lam = rows
        bias = bsel.unsqueeze(0).expand(b1 - b0, S).contiguous()  # rows and bias are exact copies: no slack
        l_new, u_new = _two_sided(st, lam, bias, start, 0, b0, b1, symmetric)
        if intersect:
            # update only each sample's own unstable neurons, so a sample's bounds do not depend
            # on which other samples share its batch
            own = unstable[b0:b1][:, sel]
            lo[b0:b1, sel] = torch.where(own, torch.maximum(lo[b0:b1, sel], l_new), lo[b0:b1, sel])
            hi[b0:b1, sel] = torch.where(own, torch.minimum(hi[b0:b1, sel], u_new), hi[b0:b1, sel])
        else:
            lo[b0:b1, sel] = l_new
            hi[b0:b1, sel] = u_new
        b0 = b1
    return _uncrossed(lo, hi)


@torch_serial()  # torch's own operations on one thread, the kernels on fastcert's pool (see _ext.py)
def linear_bounds(layers: list[Layer], prob: Problem, C: torch.Tensor, method: str,
                  lower_slope: str | None = None, stats: dict | None = None,
                  C_exact: torch.Tensor | None = None, opts: BoundOptions | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of ``C f(x)`` over the region. C: [B, S, K] -> (lower, upper): [B, S].

    ``C_exact`` ([B, S, K] float64, optional): the specification ``C`` was rounded from; the bounds
    are then widened by ``|C_exact - C| max|f|`` so that they hold for ``C_exact f``.

    ``lower_slope`` overrides the method's ReLU lower slope for ``crown`` / ``crown-ibp``
    ("adaptive", "parallel", "zero" or "one"; any slope in [0, 1] is sound). ``stats``, when given,
    is filled with the per-layer row counts of the back-substitutions (see :func:`_intermediate`)."""
    if not _C.fp_env_ok():
        raise ValueError("the floating-point environment flushes subnormal numbers to zero or does not round to "
                         "nearest, on this thread or on an OpenMP worker thread (e.g. after "
                         "torch.set_flush_denormal(True): workers started meanwhile keep that mode); fastcert's "
                         "rounding analysis needs IEEE round-to-nearest with gradual underflow: call "
                         "torch.set_flush_denormal(False), or restart the process without setting it")
    cfg = METHODS[method]
    if lower_slope is not None and cfg is not None:
        cfg = (lower_slope, cfg[1], cfg[2])
    dt = prob.x0.dtype
    B = prob.x0.shape[0]
    opts = BoundOptions() if opts is None else opts
    st = _Pass(layers, prob, [None] * len(layers), [None] * len(layers), [None] * len(layers), opts)
    # the one-pass (symmetric) Fast-Lin / KW trick needs lower slope == upper slope everywhere: ReLU's
    relu_only = all(Lj.is_affine or isinstance(Lj, Activation) for Lj in layers)
    if method == "kw" and not relu_only:
        bad = next(Lj for Lj in layers if not (Lj.is_affine or isinstance(Lj, Activation)))
        raise UnsupportedError(f"{bad.name or bad.kind}: the Kolter-Wong dual bound (method 'kw') is defined for "
                               f"ReLU networks only, and this layer is {bad.describe()}; use 'fastlin', 'crown', "
                               f"'crown-ibp' or 'ibp'")
    box = Box(prob.l0, prob.u0)
    # the centre form of dense layers (docs/architecture.md, "Floating point"): a float64 product per
    # layer in the interval pass, paid where back-substitution passes dominate the cost; float32 only
    # (in float64 its float64 sums' own term, 12 gamma64 g, would exceed the gamma64 g it replaces)
    centre = cfg is not None and cfg[1] == "backsub" and dt == torch.float32
    for i, L in enumerate(layers):
        st.boxes_in[i] = box
        if L.is_affine:
            if centre and isinstance(L, Dense):
                box, st.G[i], st.centre[i] = interval_dense_center(L, box, gamma_n(L.back_depth, dt))
            else:
                box, st.G[i] = interval_affine(L, box)
            continue
        assert isinstance(L, (Activation, Elementwise))
        if cfg is not None:
            slope, inter, intersect = cfg
            # on a box, interval bounds through elementwise layers and at most one other affine layer
            # are exact
            first_exact = prob.p == 0 and all(Lj.is_affine for Lj in layers[:i]) and \
                sum(not isinstance(Lj, Diag) for Lj in layers[:i]) <= 1
            if inter == "backsub" and i > 0 and not first_exact:
                box = _intermediate(st, i, box, intersect, symmetric=slope == "parallel" and relu_only, stats=stats)
                st.boxes_in[i] = box
            if isinstance(L, Activation):
                lo_s, up_s, up_b = L.relax(box, slope)
                st.relax[i] = (lo_s, up_s, up_b, box.mag().contiguous(), None)
            else:
                r = L.relax(box, RelaxOptions(lower_slope=slope, tangent=opts.tangent))
                st.relax[i] = (r.lo_s.contiguous(), r.up_s.contiguous(), r.up_b.contiguous(), box.mag().contiguous(),
                               None if r.lo_b is None else r.lo_b.contiguous())
        box = L.interval(box)
    out_box = box
    check_overflow(st, out_box)
    last = len(layers) - 1
    stop = last if cfg is None else 0
    S = C.shape[1]
    # one pass serves both directions when every relaxation on the way is symmetric (Fast-Lin / KW),
    # or when there is none (IBP: only the last layer, fused with C)
    symmetric = cfg is None or (cfg[0] == "parallel" and relu_only)
    width = max(max(Lj.n_in, Lj.n_out) for Lj in layers)
    lower = torch.empty(B, S, dtype=dt)
    upper = torch.empty(B, S, dtype=dt)
    Bc = _chunk(B, (1 if symmetric else 2) * S, width, prob.x0.element_size(), opts.lambda_bytes)
    for b0 in range(0, B, Bc):
        b1 = min(B, b0 + Bc)
        z = torch.zeros(b1 - b0, S, dtype=dt)
        lower[b0:b1], upper[b0:b1] = _two_sided(st, C[b0:b1].contiguous(), z, len(layers), stop, b0, b1,
                                                symmetric)
    slack = eval_slack(st, out_box, C, C_exact)
    lower = lower - slack
    upper = upper + slack
    if torch.isnan(lower).any() or torch.isnan(upper).any():
        raise ValueError("floating-point overflow in the backward pass: the weights, x or eps are too large "
                         f"for {dt} ({overflow_hint(dt)})")
    # round the subtraction outward
    lower = torch.nextafter(lower, torch.full_like(lower, -torch.inf))
    upper = torch.nextafter(upper, torch.full_like(upper, torch.inf))
    return lower, upper
