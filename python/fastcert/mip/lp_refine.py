"""Tighter pre-activation bounds for ReLU networks by per-neuron LPs (HiGHS), with rigorous certificates.

For an activation layer ``i`` whose pre-activations ``z`` have sound bounds ``[l, u]`` (CROWN), every
*unstable* neuron (``l < 0 < u``) gets two LPs, ``min z_n`` and ``max z_n``, over the **triangle
relaxation** of the layers in front of it (the convex hull of each earlier ReLU on its box):

    y >= 0,  y >= z,  y - s z <= t   with  s = u / (u - l)  and  t >= max(-s l, u (1 - s), 0),

stable neurons exactly (``y = z`` or ``y = 0``), affine layers as equality rows ``z - W h = b``, the
input box as column bounds. One HiGHS model per layer is built from sparse arrays (one ``passModel``)
and re-solved with only the objective changed, so each LP starts from the previous optimal basis.

Soundness (why an LP optimum is turned into a *rigorous* bound)
---------------------------------------------------------------
HiGHS solves in floating point with tolerances, so its optimum is not a certificate. We only use its
**dual solution** ``lam`` (row multipliers) and apply weak duality ourselves: for *any* vector ``lam``
and every ``v`` that satisfies ``rl <= A v <= ru``, ``cl <= v <= cu``,

    c.v = lam.(A v) + r.v,   r = c - A^T lam
        >= sum_i (lam_i rl_i if lam_i >= 0 else lam_i ru_i) + sum_j (r_j cl_j if r_j >= 0 else r_j cu_j).

This holds whatever the solver did (a bad ``lam`` only gives a weak bound). It is evaluated in float64
with a bound on every rounding error: ``r`` is computed by a sparse product whose error is at most
``gamma_k (|c| + |A|^T |lam|)`` per entry (``gamma_k`` = fastcert's ``gamma_n`` of the longest column,
doubled); its effect on the sum is at most that times ``max(|cl_j|, |cu_j|)``; the final sum of
``N`` products is widened by ``gamma_{N+2}`` times the sum of their magnitudes. All data in the
formula are *valid* constraints of the true (real-arithmetic) network: the weights and biases are the
float64 values fastcert evaluates; the boxes come from fastcert's sound bounds; the triangle rows are
valid for every ``(z, relu(z))`` with ``z`` in ``[l, u]`` because ``t`` is an upper bound (rounded up) of
``max over z in {l, 0, u} of relu(z) - s z``, which is where the piecewise linear ``relu(z) - s z``
attains its maximum on ``[l, u]`` (so ``s`` itself needs no exact value). A neuron's new bound is
``max(l, certified min)`` / ``min(u, certified max)``: never looser than the input bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from fastcert.layers import Activation, Conv2d, Dense, Diag
from fastcert.network import gamma_n

__all__ = ["Encoding", "affine_matrix", "certified_lower", "encode", "highs_lp", "refine_bounds", "triangle_offset"]

INF = math.inf


def affine_matrix(L: Any) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse W [n_out, n_in] and bias [n_out] (float64) of an affine IR layer (exact copies of the float64
    weights fastcert evaluates; a convolution is expanded by convolving basis vectors, single products)."""
    b = L.bias_flat64()
    bias = np.zeros(L.n_out) if b is None or b.numel() == 0 else b.detach().double().numpy().reshape(-1).copy()
    if isinstance(L, Dense):
        W = sp.csr_matrix(L.W64.detach().double().numpy())
    elif isinstance(L, Diag):
        W = sp.diags(L.W64.detach().double().numpy().reshape(-1)).tocsr()
    elif isinstance(L, Conv2d):
        n_in = L.n_in
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *L.in_shape)
        cols = []
        for s in range(0, n_in, 512):
            out = torch.nn.functional.conv2d(eye[s:s + 512], L.W64, None, stride=L.stride, padding=L.padding)
            cols.append(sp.csr_matrix(out.reshape(out.shape[0], -1).numpy()))
        W = sp.vstack(cols).T.tocsr()
        if W.shape != (L.n_out, n_in):  # pragma: no cover - shape bookkeeping
            raise ValueError(f"conv expansion of {L.name} gave shape {W.shape}, expected {(L.n_out, n_in)}")
    else:  # pragma: no cover - callers check the layer types
        raise TypeError(f"unsupported layer {type(L).__name__}")
    W.eliminate_zeros()
    return W, bias


def triangle_offset(l: np.ndarray, u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A float64 ``t >= max(-s l, u - s u, 0)`` (rounded up with margin): ``y - s z <= t`` is then valid for
    every ``z`` in ``[l, u]``, ``y = relu(z)``, whatever rounding ``s`` suffered."""
    t = np.maximum(np.maximum(-s * l, u - s * u), 0.0)
    return t * (1.0 + 8.0 * np.finfo(np.float64).eps) + 1e-300


@dataclass
class Encoding:
    """Sparse MIP / LP encoding of a prefix of a ReLU network on an input box.

    Rows ``row_lo <= A v <= row_hi``, columns ``col_lo <= v <= col_hi``; ``integer[j]`` marks binaries.
    ``x``: input columns; ``out[i]``: per layer i, the column of each output neuron (-1: the constant 0,
    a dead ReLU); ``binary[i] = (neurons, cols)`` for the unstable ReLUs of layer i (MIP mode).
    """

    ncol: int
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    x: np.ndarray
    out: list = field(default_factory=list)
    binary: dict = field(default_factory=dict)

    @property
    def n_binaries(self) -> int:
        return int(self.integer.sum())


class _Builder:
    def __init__(self) -> None:
        self.ncol = 0
        self.nrow = 0
        self.clo: list[np.ndarray] = []
        self.chi: list[np.ndarray] = []
        self.cint: list[np.ndarray] = []
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.rlo: list[np.ndarray] = []
        self.rhi: list[np.ndarray] = []

    def cols(self, lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
        k = len(lo)
        self.clo.append(np.asarray(lo, dtype=np.float64))
        self.chi.append(np.asarray(hi, dtype=np.float64))
        self.cint.append(np.full(k, integer))
        idx = np.arange(self.ncol, self.ncol + k)
        self.ncol += k
        return idx

    def rows(self, terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray) -> None:
        """terms: (local row, column, value) triplets; rows lo <= sum <= hi."""
        for rr, cc, vv in terms:
            self.r.append(np.asarray(rr) + self.nrow)
            self.c.append(np.asarray(cc))
            self.v.append(np.asarray(vv, dtype=np.float64))
        self.rlo.append(np.asarray(lo, dtype=np.float64))
        self.rhi.append(np.asarray(hi, dtype=np.float64))
        self.nrow += len(lo)

    def done(self, x: np.ndarray, out: list, binary: dict) -> Encoding:
        cat = (lambda xs, dt=np.float64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        A = sp.csr_matrix((cat(self.v), (cat(self.r, np.int64), cat(self.c, np.int64))), shape=(self.nrow, self.ncol))
        A.sum_duplicates()
        A.eliminate_zeros()
        return Encoding(self.ncol, cat(self.clo), cat(self.chi), cat(self.cint, bool), A, cat(self.rlo), cat(self.rhi),
                        x, out, binary)


def encode(layers: list, mats: list, pre: dict, lo: np.ndarray, hi: np.ndarray, upto: int | None = None,
           mode: str = "mip", last_keep: np.ndarray | None = None) -> Encoding:
    """Encode ``layers[:upto]`` (affine + ReLU IR layers) on the input box ``[lo, hi]``.

    mats[i]: ``affine_matrix`` of affine layer i (None for activations). pre[i]: sound bounds ``(l, u)``
    (flat arrays) of the input of activation layer i; they also bound the output columns of layer i-1.
    mode "mip": big-M with a binary per unstable ReLU (Tjeng et al.); "lp": the triangle relaxation.
    Stable ReLUs are exact and add nothing: an active one reuses its input column, a dead one is the
    constant 0 (column -1). Every column gets finite bounds (an affine layer not followed by a ReLU: interval
    arithmetic on the bounds of its input, widened by 1e-9 of the magnitudes, far more than the float64
    rounding of the products for any realistic layer width). Affine outputs that only feed dead ReLUs get no column either (-1; leaving
    out their rows only relaxes the model); ``last_keep`` restricts the outputs of the last encoded
    layer further.
    """
    bld = _Builder()
    n = len(layers) if upto is None else upto
    x = bld.cols(lo, hi)
    h = x
    hl, hu = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)  # bounds of the values h
    outs: list[np.ndarray] = []
    binary: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(n):
        L = layers[i]
        if isinstance(L, Activation):
            l, u = pre[i]
            hl, hu = np.maximum(l, 0.0), np.maximum(u, 0.0)
            act = l >= 0
            uns = (l < 0) & (u > 0)
            y = np.where(act, h, -1)
            iu = np.nonzero(uns & (h >= 0))[0]
            if len(iu):
                li, ui = l[iu], u[iu]
                k = len(iu)
                yc = bld.cols(np.zeros(k), ui)
                y[iu] = yc
                ar = np.arange(k)
                bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -np.ones(k))], np.zeros(k), np.full(k, INF))  # y >= z
                if mode == "mip":
                    ac = bld.cols(np.zeros(k), np.ones(k), integer=True)
                    binary[i] = (iu, ac)
                    # y - z - l a <= -l  (a = 0 forces y <= z - l ... with y >= z: y = z when active)
                    bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -np.ones(k)), (ar, ac, -li)], np.full(k, -INF), -li)
                    bld.rows([(ar, yc, np.ones(k)), (ar, ac, -ui)], np.full(k, -INF), np.zeros(k))  # y <= u a
                else:
                    s = ui / (ui - li)
                    t = triangle_offset(li, ui, s)
                    bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -s)], np.full(k, -INF), t)
            h = y
        else:
            W, b = mats[i]
            nxt = pre.get(i + 1)
            if nxt is not None:
                zl, zu = nxt
                keep = zu > 0  # outputs feeding a dead ReLU are not needed (dropping rows only relaxes)
            else:  # interval bounds, widened far beyond the float64 rounding of these products
                mid, rad = (hl + hu) / 2, (hu - hl) / 2
                aW = abs(W)
                c = W @ mid + b
                mag = aW @ np.maximum(np.abs(hl), np.abs(hu)) + np.abs(b)
                slack = aW @ rad + 1e-9 * mag + 1e-300
                zl, zu = c - slack, c + slack
                keep = np.ones(L.n_out, dtype=bool)
            if i == n - 1 and last_keep is not None:
                keep = keep & last_keep
            rows_k = np.nonzero(keep)[0]
            live = np.nonzero(h >= 0)[0]
            Wc = W[rows_k][:, live].tocoo()
            k = len(rows_k)
            z = np.full(L.n_out, -1, dtype=np.int64)
            z[rows_k] = bld.cols(zl[rows_k], zu[rows_k])
            ar = np.arange(k)
            bld.rows([(ar, z[rows_k], np.ones(k)), (Wc.row, h[live][Wc.col], -Wc.data)], b[rows_k], b[rows_k])
            h = z  # z - W h = b
            hl, hu = zl, zu
        outs.append(h)
    return bld.done(x, outs, binary)


def certified_lower(enc: Encoding, cost: np.ndarray, lam: np.ndarray, absA_T: sp.csr_matrix | None = None,
                    gamma_col: float | None = None) -> float:
    """A rigorous lower bound of ``min cost.v`` over the encoding's LP (triangle relaxation, binaries
    relaxed to [0, 1]) from *any* row multipliers ``lam``, by weak duality evaluated with a bound on
    every float64 rounding error (see the module docstring). -inf if some needed bound is infinite."""
    lam = np.asarray(lam, dtype=np.float64).copy()
    rl, ru = enc.row_lo, enc.row_hi
    lam[~np.isfinite(lam)] = 0.0
    lam[(lam > 0) & ~np.isfinite(rl)] = 0.0
    lam[(lam < 0) & ~np.isfinite(ru)] = 0.0
    AT = enc.A.T.tocsr()
    if absA_T is None:
        absA_T = abs(AT)
    if gamma_col is None:
        nnz = np.diff(enc.A.tocsc().indptr)
        gamma_col = 2.0 * gamma_n(int(nnz.max(initial=0)) + 2, torch.float64)
    r = cost - AT @ lam
    delta = gamma_col * (np.abs(cost) + absA_T @ np.abs(lam)) * 1.01 + 1e-300
    cl, cu = enc.col_lo, enc.col_hi
    row_terms = np.where(lam > 0, lam * np.where(np.isfinite(rl), rl, 0.0), lam * np.where(np.isfinite(ru), ru, 0.0))
    col_terms = np.where(r > 0, r * cl, r * cu)
    col_terms = np.where(r == 0, 0.0, col_terms)
    if not np.isfinite(col_terms).all():
        return -INF
    M = np.maximum(np.abs(cl), np.abs(cu))
    M = np.where(np.isfinite(M), M, 0.0)
    if np.any((delta > 0) & ~np.isfinite(np.maximum(np.abs(cl), np.abs(cu)))):
        return -INF
    total = float(row_terms.sum()) + float(col_terms.sum())
    mag = float(np.abs(row_terms).sum()) + float(np.abs(col_terms).sum())
    N = len(row_terms) + len(col_terms)
    err = 2.0 * gamma_n(N + 2, torch.float64) * mag * 1.01 + float((delta * M).sum()) * 1.01
    return total - err


def highs_lp(enc: Encoding, cost: np.ndarray, time_limit: float, *, offset: float = 0.0,
             integer: bool = False) -> Any:
    """A HiGHS instance holding ``min cost . v + offset`` over the encoding (one ``passModel`` from the
    sparse rows), single-threaded, seeded, output off. ``integer``: keep the encoding's binaries (a MIP),
    else the LP relaxation."""
    import highspy

    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_ = enc.ncol
    lp.num_row_ = enc.A.shape[0]
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.offset_ = float(offset)
    lp.col_lower_ = np.where(np.isfinite(enc.col_lo), enc.col_lo, -inf)
    lp.col_upper_ = np.where(np.isfinite(enc.col_hi), enc.col_hi, inf)
    lp.row_lower_ = np.where(np.isfinite(enc.row_lo), enc.row_lo, -inf)
    lp.row_upper_ = np.where(np.isfinite(enc.row_hi), enc.row_hi, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = enc.ncol
    lp.a_matrix_.num_row_ = enc.A.shape[0]
    lp.a_matrix_.start_ = enc.A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = enc.A.indices.astype(np.int32)
    lp.a_matrix_.value_ = enc.A.data
    if integer and enc.n_binaries:
        lp.integrality_ = [highspy.HighsVarType.kInteger if v else highspy.HighsVarType.kContinuous
                           for v in enc.integer]
    hs = highspy.Highs()
    hs.setOptionValue("output_flag", False)
    hs.setOptionValue("threads", 1)
    hs.setOptionValue("random_seed", 0)
    hs.setOptionValue("time_limit", float(max(1e-3, time_limit)))
    if hs.passModel(lp) == highspy.HighsStatus.kError:  # pragma: no cover
        raise RuntimeError("HiGHS rejected the " + ("MIP" if integer else "LP") + " model (passModel returned an error)")
    return hs


def refine_bounds(layers: list, mats: list, pre: dict, lo: np.ndarray, hi: np.ndarray, *, time_budget: float = 10.0,
                  max_layers: int | None = None, deadline: float | None = None) -> tuple[dict, dict]:
    """Tighten the bounds ``pre[i] = (l, u)`` of the unstable neurons of the activation layers after the
    first one (the first is exact on a box already when one affine layer precedes it), layer by layer,
    with per-neuron LPs on the triangle relaxation (module docstring); each layer uses the bounds just
    refined in front of it. Stops when ``time_budget`` seconds are spent (the neurons not reached keep
    their bounds). ``max_layers``: refine at most this many activation layers (the earliest ones).

    Returns ``(new_pre, info)``: new_pre has the same keys and shapes, every entry at least as tight
    as in ``pre``; info counts LPs, neurons tightened, stable neurons gained and time.
    """
    import highspy

    t0 = time.perf_counter()
    stop = t0 + time_budget if deadline is None else min(deadline, t0 + time_budget)
    new = {k: (v[0].copy(), v[1].copy()) for k, v in pre.items()}
    act_idx = sorted(new)
    info: dict[str, Any] = {"lps": 0, "neurons": 0, "stabilised": 0, "layers": [], "complete": True}
    todo = act_idx[1:] if act_idx and act_idx[0] <= 1 else act_idx
    if max_layers is not None:
        todo = todo[:max_layers]
    for i in todo:
        l, u = new[i]
        uns = np.nonzero((l < 0) & (u > 0))[0]
        if len(uns) == 0:
            continue
        if time.perf_counter() >= stop:
            info["complete"] = False
            break
        enc = encode(layers, mats, new, lo, hi, upto=i, mode="lp", last_keep=(l < 0) & (u > 0))
        zc = enc.out[i - 1]
        cost = np.zeros(enc.ncol)
        hs = highs_lp(enc, cost, max(1e-3, stop - time.perf_counter()))
        AT = enc.A.T.tocsr()
        absAT = abs(AT)
        nnz = np.diff(enc.A.tocsc().indptr)
        gcol = 2.0 * gamma_n(int(nnz.max(initial=0)) + 2, torch.float64)
        # most-ambiguous neurons first: largest min(-l, u)
        order = uns[np.argsort(-np.minimum(-l[uns], u[uns]))]
        n_done = 0
        before = len(uns)
        for nrn in order:
            col = int(zc[nrn])
            for sign in (1.0, -1.0):
                if time.perf_counter() >= stop:
                    break
                if sign > 0 and l[nrn] >= 0 or sign < 0 and u[nrn] <= 0:
                    continue
                hs.changeColCost(col, sign)
                hs.setOptionValue("time_limit", float(max(1e-3, stop - time.perf_counter())))
                hs.run()
                info["lps"] += 1
                ok = hs.getModelStatus() == highspy.HighsModelStatus.kOptimal
                sol = hs.getSolution()
                hs.changeColCost(col, 0.0)
                if not ok or not sol.dual_valid:
                    continue
                c = np.zeros(enc.ncol)
                c[col] = sign
                lb = certified_lower(enc, c, np.asarray(sol.row_dual), absAT, gcol)
                if sign > 0:
                    l[nrn] = max(l[nrn], lb)
                else:
                    u[nrn] = min(u[nrn], -lb)
            else:
                n_done += 1
                continue
            info["complete"] = False
            break
        info["neurons"] += n_done
        after = int(((l < 0) & (u > 0)).sum())
        info["stabilised"] += before - after
        info["layers"].append({"layer": i, "unstable_before": before, "unstable_after": after, "refined": n_done})
        if n_done < len(order):
            break
    info["time_s"] = time.perf_counter() - t0
    return new, info
