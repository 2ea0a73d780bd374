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

import numpy as np
import torch

from fastcert._ext import _C, torch_serial
from fastcert.algorithms.ibp_chain import ibp_chain
from fastcert.algorithms.patches import (
    intermediate_patches,
    patch_geometry,
    patch_row_macs,
    patch_steps,
    patches_cheaper,
)
from fastcert.algorithms.slack import check_overflow, eval_slack, initial_mag
from fastcert.algorithms.state import (
    E64,
    METHODS,
    WS,
    Pass,
    Problem,
    check_fp_env,
    chunk,
    empty_cache,
    finish,
    relax_tuple,
    uncrossed,
)
from fastcert.errors import UnsupportedError
from fastcert.layers.base import Box, Layer, empty_like_dtype, interval_affine, interval_dense_center
from fastcert.options import BoundOptions
from fastcert.primitives.base import Elementwise
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.linear import Dense
from fastcert.primitives.relu import ReLU
from fastcert.rounding import gamma_n

__all__ = ["METHODS", "Problem", "check_fp_env", "empty_cache", "finish", "linear_bounds", "patch_geometry",
           "patch_row_macs", "patch_steps", "relax_tuple"]

def _rows(L: Layer, sel: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``sel`` of the layer's matrix, [S, n_in], without forming the whole matrix."""
    if isinstance(L, Dense):  # numpy's take: single-threaded, no OpenMP team to wake for a small copy
        return L.params(dtype).W.index_select(0, sel)
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


def _fused_step(st: Pass, j: int, L: Layer, prev: Layer, lam: torch.Tensor, out: torch.Tensor,
                bias: torch.Tensor, mag: torch.Tensor, bh: np.ndarray, b0: int, b1: int) -> torch.Tensor:
    """Rows lam [Bc, S, n] through activation j and the affine layer j-1 before it in one kernel (the
    relaxed rows never hit memory); returns ``out`` [Bc, S, n_in of layer j-1]. bias, mag updated."""
    dt = lam.dtype
    Bc, S = bias.shape
    r = st.relax[j]
    G = st.G[j - 1]
    assert r is not None and G is not None
    lo_s, up_s, up_b, zmag = (t[b0:b1] for t in r[:4])
    p = prev.params(dt)
    nthr = max(1, _C.omp_max_threads())
    if isinstance(prev, Conv2d):
        C_, H_, W_ = prev.in_shape
        per_row = L.n_in + prev.W64[0].numel() * prev.out_shape[1] * prev.out_shape[2]
        R = max(1, min(Bc * S, st.opts.block_elems // per_row))
        work = WS.get("work", (R * per_row * nthr,), dt)  # a block per thread
        _C.act_conv_backward(lam, lo_s, up_s, up_b, zmag,
                             gamma_n(0, dt), gamma_n(L.n_in, dt), p.W, prev.params(dt).bias,
                             G[b0:b1], gamma_n(prev.back_depth, dt), gamma_n(prev.n_out, dt),
                             out, bias, mag, bh, H_, W_, prev.stride[0],
                             prev.stride[1], prev.padding[0], prev.padding[1], R, work)
    else:
        R = max(1, min(Bc * S, st.opts.block_elems // L.n_in))
        work = WS.get("work", (R * L.n_in * nthr,), dt)
        ce = st.centre.get(j - 1)
        if ce is not None:  # centre form: the bias inside v, the weight w replaces gamma * G
            _C.act_dense_backward(lam, lo_s, up_s, up_b, zmag,
                                  gamma_n(0, dt), gamma_n(L.n_in, dt), p.W, empty_like_dtype(dt),
                                  ce.w[b0:b1], 1.0, 0.0, out, bias, mag, bh, R,
                                  work, ce.v[b0:b1], ce.c[b0:b1])
        else:
            _C.act_dense_backward(lam, lo_s, up_s, up_b, zmag,
                                  gamma_n(0, dt), gamma_n(L.n_in, dt), p.W, p.bias, G[b0:b1],
                                  gamma_n(prev.back_depth, dt), gamma_n(prev.n_out, dt), out,
                                  bias, mag, bh, R, work, E64, empty_like_dtype(dt))
    return out


def _backsub(st: Pass, lam: torch.Tensor, bias: torch.Tensor, mag: torch.Tensor, start: int, stop: int,
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
    bh = e if bias_hi is None else bias_hi
    flip = [0]

    def out_buf(n_in: int) -> torch.Tensor:  # alternate two scratch buffers: a step reads one, writes the other
        flip[0] ^= 1
        return WS.get("ping" if flip[0] else "pong", (Bc, S, n_in), dt)

    j = start - 1
    while j >= stop:
        L = st.layers[j]
        prev = st.layers[j - 1] if j - 1 >= stop else None
        if not L.is_affine and isinstance(prev, (Conv2d, Dense)) and st.relax[j][4] is None:
            # activation + the affine layer before it in one kernel: the relaxed rows never hit memory
            # (zero lower intercepts only: the fused kernels have no lower-intercept input)
            lam = _fused_step(st, j, L, prev, lam, out_buf(prev.n_in), bias, mag, bh, b0, b1)
            j -= 2
            continue
        idx, j = j, j - 1
        if L.is_affine and st.centre.get(idx) is not None:
            ce = st.centre[idx]
            new = L.backward(lam.reshape(Bc * S, L.n_out), st.opts).reshape(Bc, S, L.n_in)
            _C.affine_center(lam, new, ce.v[b0:b1], ce.c[b0:b1],
                             ce.w[b0:b1], bias, mag, bh)
            lam = new
        elif L.is_affine:
            G = st.G[idx]
            assert G is not None
            _C.bias_mag(lam, L.params(dt).bias, G[b0:b1], bias, mag,
                        gamma_n(L.back_depth, dt), gamma_n(L.n_out, dt), bh)
            lam = L.backward(lam.reshape(Bc * S, L.n_out), st.opts).reshape(Bc, S, L.n_in)
        else:
            r = st.relax[idx]
            assert r is not None
            lo_s, up_s, up_b, zmag = (t[b0:b1] for t in r[:4])
            lo_b = e if r[4] is None else r[4][b0:b1]
            out = out_buf(L.n_in)
            _C.backward_act(lam, lo_s, up_s, lo_b, up_b, zmag,
                            out, bias, mag, gamma_n(0, dt), gamma_n(L.n_in, dt), bh)
            lam = out
    res = torch.empty(Bc, S, dtype=dt)
    res_hi = None if bias_hi is None else torch.empty(Bc, S, dtype=dt)
    rh = e if res_hi is None else res_hi
    if stop == 0:
        pr = st.prob
        _C.concretize(lam, pr.x0[b0:b1], pr.l0[b0:b1], pr.u0[b0:b1],
                      pr.eps[b0:b1], pr.p, bias, mag, gamma_n(lam.shape[2], dt),
                      res, bh, rh)
    else:
        box = st.boxes_in[stop]
        assert box is not None
        lb = box.l[b0:b1]
        _C.concretize(lam, lb, lb, box.u[b0:b1], st.prob.eps[b0:b1], 0,
                      bias, mag, gamma_n(lam.shape[2], dt), res, bh, rh)
    return res, res_hi


def _two_sided(st: Pass, lam: torch.Tensor, bias: torch.Tensor, start: int, stop: int, b0: int, b1: int,
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
    lam2 = WS.get("in", (lam.shape[0], 2 * S, lam.shape[2]), lam.dtype)
    torch.cat([lam, -lam], 1, out=lam2)
    mag = initial_mag(st, start, stop, b0, b1, 2 * S, lam.dtype)
    res, _ = _backsub(st, lam2, torch.cat([bias, -bias], 1), mag, start, stop, b0, b1)
    return res[:, :S], -res[:, S:]


def _intermediate(st: Pass, i: int, ibp: Box, intersect: bool, symmetric: bool, stats: dict | None = None) -> Box:
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
        return intermediate_patches(st, i, ibp, intersect, symmetric, steps)
    lo, hi = ibp.l.clone(), ibp.u.clone()
    width = max(max(Lj.n_in, Lj.n_out) for Lj in st.layers[:i])
    all_idx = torch.arange(n)
    b0 = 0
    while b0 < B:
        sel_all = unstable[b0:].any(0).nonzero().flatten() if intersect else all_idx
        Bc = chunk(B - b0, (1 if symmetric else 2) * max(1, sel_all.numel()), width, ibp.l.element_size(),
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
            rows = WS.get("rows", (b1 - b0, S, lam.shape[2]), dt)
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
    return uncrossed(lo, hi)


def _refuse_kw(layers: list[Layer]) -> None:
    bad = next(Lj for Lj in layers if not (Lj.is_affine or isinstance(Lj, ReLU)))
    raise UnsupportedError(f"{bad.name or bad.kind}: the Kolter-Wong dual bound (method 'kw') is defined for "
                           f"ReLU networks only, and this layer is {bad.describe()}; use 'fastlin', 'crown', "
                           f"'crown-ibp' or 'ibp'")


def _forward(st: Pass, cfg: tuple[str, str, bool] | None, relu_only: bool, stats: dict | None) -> Box:
    """The interval pass, with back-substitution bounds on the inputs of activations where the method asks,
    and the activations' relaxations; returns the output box."""
    layers, prob = st.layers, st.prob
    dt = prob.x0.dtype
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
                # plain IBP in float32: only the last layer's backward step reads G with a float32 gamma
                # (the others feed the float64 evaluation slack), so the others may take the cheaper conv
                # magnitude (in float64 the exact one keeps the bounds those of before, to 1e-9)
                cheap = cfg is None and dt == torch.float32 and i < len(layers) - 1
                box, st.G[i] = interval_affine(L, box, exact_g=not cheap)
            continue
        assert isinstance(L, (ReLU, Elementwise))
        if cfg is not None:
            slope, inter, intersect = cfg
            # on a box, interval bounds through elementwise layers and at most one other affine layer
            # are exact
            first_exact = prob.p == 0 and all(Lj.is_affine for Lj in layers[:i]) and \
                sum(not isinstance(Lj, Diag) for Lj in layers[:i]) <= 1
            if inter == "backsub" and i > 0 and not first_exact:
                box = _intermediate(st, i, box, intersect, symmetric=slope == "parallel" and relu_only, stats=stats)
                st.boxes_in[i] = box
            st.relax[i] = relax_tuple(L, box, slope, st.opts.tangent)
        box = L.interval(box)
    return box


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
    check_fp_env()
    cfg = METHODS[method]
    if lower_slope is not None and cfg is not None:
        cfg = (lower_slope, cfg[1], cfg[2])
    dt = prob.x0.dtype
    B = prob.x0.shape[0]
    opts = BoundOptions() if opts is None else opts
    if cfg is None and C_exact is None:  # IBP of a plain chain: the whole computation in one core call
        res = ibp_chain(layers, prob, C, opts)
        if res is not None:
            return res
    st = Pass(layers, prob, [None] * len(layers), [None] * len(layers), [None] * len(layers), opts)
    # the one-pass (symmetric) Fast-Lin / KW trick needs lower slope == upper slope everywhere: ReLU's
    relu_only = all(Lj.is_affine or isinstance(Lj, ReLU) for Lj in layers)
    if method == "kw" and not relu_only:
        _refuse_kw(layers)
    out_box = _forward(st, cfg, relu_only, stats)
    check_overflow(st, out_box)
    stop = len(layers) - 1 if cfg is None else 0
    S = C.shape[1]
    # one pass serves both directions when every relaxation on the way is symmetric (Fast-Lin / KW),
    # or when there is none (IBP: only the last layer, fused with C)
    symmetric = cfg is None or (cfg[0] == "parallel" and relu_only)
    width = max(max(Lj.n_in, Lj.n_out) for Lj in layers)
    lower = torch.empty(B, S, dtype=dt)
    upper = torch.empty(B, S, dtype=dt)
    Bc = chunk(B, (1 if symmetric else 2) * S, width, prob.x0.element_size(), opts.lambda_bytes)
    for b0 in range(0, B, Bc):
        b1 = min(B, b0 + Bc)
        z = torch.zeros(b1 - b0, S, dtype=dt)
        lower[b0:b1], upper[b0:b1] = _two_sided(st, C[b0:b1].contiguous(), z, len(layers), stop, b0, b1,
                                                symmetric)
    return finish(lower, upper, eval_slack(st, out_box, C, C_exact))
