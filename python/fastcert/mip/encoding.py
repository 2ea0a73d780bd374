"""Sparse MIP / LP encoding of a graph of primitives on an input box (one encoder; a chain is the graph
whose nodes are its layers, :func:`fastcert.mip.lp_refine.encode` keeps the per-layer interface).

Per node (``Graph.nodes``, topological order; node 0 the input columns):

* affine (Dense, Conv2d expanded to sparse rows, Diag): equality rows ``z - W h = b``;
* ReLU: a stable neuron is exact and costs nothing (an active one reuses its input column, a dead one is
  the constant 0); an unstable one gets ``y >= z, y >= 0`` and, in "mip" mode, a binary ``a`` with
  ``y <= z - l (1 - a), y <= u a`` (Tjeng et al.), in "lp" mode the triangle ``y - s z <= t``;
* Add / Sub: one equality row per neuron, ``z - h_a -+ h_b = 0``;
* Concat: no rows, the inputs' columns reused in the concatenated layout;
* MaxPool2d, per window with input bounds ``[l_j, u_j]``: ``a`` the input with the largest lower bound
  ``L = l_a``; inputs with ``u_j <= L`` can never exceed ``x_a`` and are dropped; when only ``a`` is left
  (``l_a >= u_j`` for every other ``j``) the output reuses ``x_a``'s column; otherwise (the exact encoding
  of a max) ``y >= x_j`` and, per remaining ``j``, a selector ``d_j`` (binary in "mip" mode, in ``[0, 1]``
  in "lp" mode) with ``sum d_j = 1`` and ``y <= x_j + M_j (1 - d_j)``, ``M_j >= max_{i != j} u_i - l_j``
  (rounded up), plus the valid cut ``y - sum_j x_j <= L - sum_j l_j`` (rounded up) and ``L <= y <= max u``.

Every row holds for every true point of the network (in real arithmetic), every column has finite
bounds containing the true values, so the LP certificates of :func:`fastcert.mip.lp_refine.certified_lower`
apply. Outputs no later node needs get no column (``-2``); ``-1`` is the constant 0 (a dead ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from fastcert.errors import UnsupportedError
from fastcert.graph.ir import Graph, chain_graph
from fastcert.primitives.add import Add
from fastcert.primitives.concat import Concat
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.linear import Dense
from fastcert.primitives.maxpool import MaxPool2d
from fastcert.primitives.relu import ReLU
from fastcert.rounding import gamma_n

__all__ = ["Encoding", "PoolPlan", "SUPPORTED_MIP", "affine_matrix", "check_graph", "encode_graph", "graph_mats",
           "layer_graph", "node_value_bounds", "pool_plan", "relevant_neurons", "sensitivity", "triangle_offset"]

INF = float("inf")
CONST0, ABSENT = -1, -2  # column markers: the constant 0 (a dead ReLU), not encoded (no later node needs it)
SUPPORTED_MIP = "Linear, Conv2d, AvgPool2d, BatchNorm, Normalize, ReLU, Add / Sub, Concat, MaxPool2d"


def check_graph(g: Graph) -> None:
    """Raise :class:`fastcert.UnsupportedError` naming the first node without a MIP encoding."""
    for nd in g.nodes[1:]:
        p = nd.prim
        if isinstance(p, (Dense, Conv2d, Diag, Add, Concat, MaxPool2d)):
            continue
        if isinstance(p, ReLU):
            continue
        what = f"activation {p.kind!r}" if isinstance(p, ReLU) else getattr(p, "kind", type(p).__name__)
        raise UnsupportedError(f"fastcert.mip encodes ReLU networks only ({SUPPORTED_MIP}); node {nd.id} "
                               f"({nd.name or what}) is {what}, which has no piecewise-linear (MIP) encoding; use "
                               f"fastcert.bounds / fastcert.certify for sound bounds on it")


def layer_graph(layers: list, n_in: int) -> Graph:
    """The graph of a chain of IR layers on flat inputs of size ``n_in`` (node i+1 is layer i)."""
    return chain_graph(layers, (int(n_in),))


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
            out = F.conv2d(eye[s:s + 512], L.W64, None, stride=L.stride, padding=L.padding)
            cols.append(sp.csr_matrix(out.reshape(out.shape[0], -1).numpy()))
        W = sp.vstack(cols).T.tocsr()
        if W.shape != (L.n_out, n_in):  # pragma: no cover - shape bookkeeping
            raise ValueError(f"conv expansion of {L.name} gave shape {W.shape}, expected {(L.n_out, n_in)}")
    else:  # pragma: no cover - callers check the layer types
        raise TypeError(f"unsupported layer {type(L).__name__}")
    W.eliminate_zeros()
    return W, bias


def graph_mats(g: Graph) -> tuple[list, list]:
    """(mats, absW) per node: ``(W [n_out, n_in] CSR, bias [n_out])`` and ``|W|^T`` (CSR) of an affine
    node, None otherwise (node 0, nonlinear, Add, Concat)."""
    mats = [affine_matrix(nd.prim) if nd.prim is not None and nd.prim.is_affine else None for nd in g.nodes]
    absW = [None if m is None else abs(m[0]).T.tocsr() for m in mats]
    return mats, absW


def triangle_offset(l: np.ndarray, u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A float64 ``t >= max(-s l, u - s u, 0)`` (rounded up with margin): ``y - s z <= t`` is then valid for
    every ``z`` in ``[l, u]``, ``y = relu(z)``, whatever rounding ``s`` suffered."""
    t = np.maximum(np.maximum(-s * l, u - s * u), 0.0)
    return t * (1.0 + 8.0 * np.finfo(np.float64).eps) + 1e-300


@dataclass
class Encoding:
    """Sparse MIP / LP encoding of (a prefix of) a network on an input box.

    Rows ``row_lo <= A v <= row_hi``, columns ``col_lo <= v <= col_hi``; ``integer[j]`` marks binaries.
    ``x``: input columns; ``out[i]``: per node (graph encodings, ``out[0] = x``) or per layer (the chain
    interface), the column of each output neuron (-1: the constant 0, a dead ReLU; -2: not encoded);
    ``binary[i] = (neurons, cols)`` for the unstable ReLUs of node / layer i (MIP mode), and for a max
    pool ``(pairs [k, 2] of (output, flat input index), cols)``: its selectors.
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
        """terms: (local row, column, value) triplets (columns < 0, constants 0, are skipped); rows
        lo <= sum <= hi."""
        for rr, cc, vv in terms:
            rr, cc = np.asarray(rr), np.asarray(cc)
            vv = np.broadcast_to(np.asarray(vv, dtype=np.float64), cc.shape)
            ok = cc >= 0
            self.r.append(rr[ok] + self.nrow)
            self.c.append(cc[ok])
            self.v.append(vv[ok])
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


# --------------------------------------------------------------------------- max pooling


@dataclass(frozen=True)
class PoolPlan:
    """The MIP plan of a max pool on input bounds ``(l, u)``: ``win`` [n_out, K] flat input indices of
    each window (-1 in the padding), ``a`` [n_out] the window position with the largest lower bound,
    ``dom`` [n_out] whether it dominates (the output is ``x_a``), ``cand`` [n_out, K] the inputs that can be
    the maximum (only ``a`` where dominated), ``L`` / ``U`` [n_out] the output's bounds, ``M`` [n_out, K]
    the big-M ``max_{i != j, cand} u_i - l_j``, rounded up."""

    win: np.ndarray
    a: np.ndarray
    dom: np.ndarray
    cand: np.ndarray
    L: np.ndarray
    U: np.ndarray
    M: np.ndarray


def pool_windows(p: MaxPool2d) -> np.ndarray:
    """[n_out, kh*kw] flat input indices of each output's window (-1 in the padding), output order C, OH, OW."""
    C, H, W = p.in_shape
    idx = torch.arange(C * H * W, dtype=torch.float64).reshape(1, C, H, W)
    if p.p != (0, 0):
        idx = F.pad(idx, (p.p[1], p.p[1], p.p[0], p.p[0]), value=-1.0)
    cols = F.unfold(idx, p.k, stride=p.s)  # [1, C*kh*kw, L]
    K = p.k[0] * p.k[1]
    return cols.view(C, K, -1).permute(0, 2, 1).reshape(-1, K).numpy().astype(np.int64)


def pool_plan(p: MaxPool2d, l: np.ndarray, u: np.ndarray) -> PoolPlan:
    """See :class:`PoolPlan`; l, u: [n_in] bounds of the pool's input."""
    win = pool_windows(p)
    pad = win < 0
    lw = np.where(pad, -INF, l[np.maximum(win, 0)])
    uw = np.where(pad, -INF, u[np.maximum(win, 0)])
    a = lw.argmax(axis=1)
    rows = np.arange(win.shape[0])
    L = lw[rows, a]
    others = uw.copy()
    others[rows, a] = -INF
    dom = L >= others.max(axis=1)
    cand = ((uw > L[:, None]) & ~pad) & ~dom[:, None]
    cand[rows, a] = True
    U = np.where(cand, uw, -INF).max(axis=1)
    cu = np.where(cand, uw, -INF)  # the largest candidate u other than j: top two per window
    top = cu.argmax(axis=1)
    first = cu[rows, top]
    cu2 = cu.copy()
    cu2[rows, top] = -INF
    second = cu2.max(axis=1)
    other_max = np.where(np.arange(win.shape[1])[None, :] == top[:, None], second[:, None], first[:, None])
    M = np.where(cand & ~dom[:, None], np.nextafter(other_max - lw, INF), 0.0)
    return PoolPlan(win, a, dom, cand, L, U, M)


# --------------------------------------------------------------------------- bounds of every node's values


def _affine_interval(W: sp.csr_matrix, b: np.ndarray, hl: np.ndarray, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``W h + b`` for h in [hl, hu], widened by 1e-9 of the magnitudes: far beyond the
    float64 rounding of these products for any realistic layer width."""
    mid, rad = (hl + hu) / 2, (hu - hl) / 2
    aW = abs(W)
    c = W @ mid + b
    mag = aW @ np.maximum(np.abs(hl), np.abs(hu)) + np.abs(b)
    slack = aW @ rad + 1e-9 * mag + 1e-300
    return c - slack, c + slack


def node_value_bounds(g: Graph, mats: list, pre: dict, lo: np.ndarray, hi: np.ndarray,
                      upto: int | None = None) -> list:
    """Sound bounds ``(l, u)`` (flat float64) of every node's output, nodes 0..upto: ``pre[v]`` (bounds of
    node v, required for the inputs of ReLU / max-pool nodes) where given, intersected with the image of
    the inputs' bounds (affine nodes and sums with ``pre`` use ``pre`` alone; without it: interval
    arithmetic, widened far beyond the float64 rounding)."""
    n = g.output if upto is None else upto
    Bd: list = [None] * (n + 1)
    for v in range(n + 1):
        nd = g.nodes[v]
        p = nd.prim
        given = pre.get(v)
        if p is not None and (p.is_affine or isinstance(p, Add)) and given is not None:
            Bd[v] = (np.asarray(given[0], dtype=np.float64), np.asarray(given[1], dtype=np.float64))
            continue
        if p is None:
            dl, du = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        elif p.is_affine:
            dl, du = _affine_interval(*mats[v], *Bd[nd.inputs[0]])
        elif isinstance(p, Add):
            (al, au), (bl, bu) = Bd[nd.inputs[0]], Bd[nd.inputs[1]]
            sl, su = (al + bl, au + bu) if p.sign > 0 else (al - bu, au - bl)
            slack = 1e-9 * (np.maximum(np.abs(al), np.abs(au)) + np.maximum(np.abs(bl), np.abs(bu))) + 1e-300
            dl, du = sl - slack, su + slack  # one rounding per sum, far inside the slack
        elif isinstance(p, ReLU):
            il, iu = Bd[nd.inputs[0]]
            dl, du = np.maximum(il, 0.0), np.maximum(iu, 0.0)
        else:  # Concat / MaxPool2d: exact images (a concatenation, a max)
            ins = [Bd[i] for i in nd.inputs]
            dl = p.forward(*(torch.from_numpy(b[0])[None] for b in ins))[0].numpy()  # type: ignore[attr-defined]
            du = p.forward(*(torch.from_numpy(b[1])[None] for b in ins))[0].numpy()  # type: ignore[attr-defined]
        if given is not None:
            dl, du = np.maximum(dl, given[0]), np.minimum(du, given[1])
        Bd[v] = (dl, du)
    return Bd


def relevant_neurons(g: Graph, v: int, l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[n_v] bool: the neurons of node v whose bounds ``(l, u)`` the encodings of v's ReLU / max-pool
    consumers depend on (unstable ReLU inputs; the possible maxima of undecided windows)."""
    m = np.zeros(len(l), dtype=bool)
    for w in g.consumers[v]:
        p = g.nodes[w].prim
        if isinstance(p, ReLU):
            m |= (l < 0) & (u > 0)
        elif isinstance(p, MaxPool2d):
            pl = pool_plan(p, l, u)
            sel = pl.cand & ~pl.dom[:, None]
            m[pl.win[sel]] = True
    return m


def _need(g: Graph, Bd: list, upto: int, last_keep: np.ndarray | None) -> list:
    """Per node, [n_v] bool: which outputs a later node (or the encoded output) reads."""
    need = [np.zeros(g.n(v), dtype=bool) for v in range(upto + 1)]
    need[upto][:] = True
    if last_keep is not None:
        need[upto] &= last_keep
    for w in range(upto, 0, -1):
        nw = need[w]
        if not nw.any():
            continue
        nd = g.nodes[w]
        p, ins = nd.prim, nd.inputs
        if p.is_affine:  # type: ignore[union-attr]
            need[ins[0]][:] = True
        elif isinstance(p, ReLU):
            need[ins[0]] |= nw & (Bd[ins[0]][1] > 0)
        elif isinstance(p, Add):
            need[ins[0]] |= nw
            need[ins[1]] |= nw
        elif isinstance(p, Concat):
            for i, part in zip(ins, p.transpose(torch.from_numpy(nw)[None, None])):
                need[i] |= part[0, 0].numpy()
        else:
            assert isinstance(p, MaxPool2d)
            pl = pool_plan(p, *Bd[ins[0]])
            need[ins[0]][pl.win[pl.cand & nw[:, None]]] = True
    return need


# --------------------------------------------------------------------------- the encoder


def _affine(bld: _Builder, W: sp.csr_matrix, b: np.ndarray, h: np.ndarray, zl: np.ndarray, zu: np.ndarray,
            keep: np.ndarray, where: str) -> np.ndarray:
    rows_k = np.nonzero(keep)[0]
    if (h == ABSENT).any() and W[rows_k][:, np.nonzero(h == ABSENT)[0]].nnz:  # pragma: no cover - internal
        raise RuntimeError(f"internal error: {where} reads a neuron the encoding dropped")
    live = np.nonzero(h >= 0)[0]
    Wc = W[rows_k][:, live].tocoo()
    k = len(rows_k)
    z = np.full(W.shape[0], ABSENT, dtype=np.int64)
    z[rows_k] = bld.cols(zl[rows_k], zu[rows_k])
    ar = np.arange(k)
    bld.rows([(ar, z[rows_k], np.ones(k)), (Wc.row, h[live][Wc.col], -Wc.data)], b[rows_k], b[rows_k])
    return z  # z - W h = b


def _relu(bld: _Builder, h: np.ndarray, l: np.ndarray, u: np.ndarray, keep: np.ndarray, mode: str,
          binary: dict, key: int) -> np.ndarray:
    y = np.where(l >= 0, h, CONST0)
    y = np.where(keep | (u <= 0), y, ABSENT)
    iu = np.nonzero((l < 0) & (u > 0) & keep & (h >= 0))[0]
    if len(iu):
        li, ui = l[iu], u[iu]
        k = len(iu)
        yc = bld.cols(np.zeros(k), ui)
        y[iu] = yc
        ar = np.arange(k)
        bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -np.ones(k))], np.zeros(k), np.full(k, INF))  # y >= z
        if mode == "mip":
            ac = bld.cols(np.zeros(k), np.ones(k), integer=True)
            binary[key] = (iu, ac)
            # y - z - l a <= -l  (a = 0 forces y <= z - l ... with y >= z: y = z when active)
            bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -np.ones(k)), (ar, ac, -li)], np.full(k, -INF), -li)
            bld.rows([(ar, yc, np.ones(k)), (ar, ac, -ui)], np.full(k, -INF), np.zeros(k))  # y <= u a
        else:
            s = ui / (ui - li)
            t = triangle_offset(li, ui, s)
            bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -s)], np.full(k, -INF), t)
    return y


def _add(bld: _Builder, p: Add, ha: np.ndarray, hb: np.ndarray, zl: np.ndarray, zu: np.ndarray,
         keep: np.ndarray) -> np.ndarray:
    rk = np.nonzero(keep)[0]
    if (ha[rk] == ABSENT).any() or (hb[rk] == ABSENT).any():  # pragma: no cover - internal
        raise RuntimeError(f"internal error: {p.name} reads a neuron the encoding dropped")
    z = np.full(len(keep), ABSENT, dtype=np.int64)
    k = len(rk)
    z[rk] = bld.cols(zl[rk], zu[rk])
    ar = np.arange(k)
    bld.rows([(ar, z[rk], np.ones(k)), (ar, ha[rk], -np.ones(k)), (ar, hb[rk], -float(p.sign) * np.ones(k))],
             np.zeros(k), np.zeros(k))  # z - a -+ b = 0
    return z


def _maxpool(bld: _Builder, p: MaxPool2d, h: np.ndarray, l: np.ndarray, u: np.ndarray, keep: np.ndarray,
             mode: str, binary: dict, key: int) -> np.ndarray:
    pl = pool_plan(p, l, u)
    rows = np.arange(len(keep))
    y = np.full(len(keep), ABSENT, dtype=np.int64)
    d = keep & pl.dom
    y[d] = h[pl.win[rows[d], pl.a[d]]]
    o = np.nonzero(keep & ~pl.dom)[0]
    if len(o) == 0:
        return y
    if (h[pl.win[o][pl.cand[o]]] == ABSENT).any():  # pragma: no cover - internal
        raise RuntimeError(f"internal error: {p.name} reads a neuron the encoding dropped")
    k = len(o)
    yc = bld.cols(pl.L[o], pl.U[o])
    y[o] = yc
    wo, jo = np.nonzero(pl.cand[o])  # (window among o, position): the candidate pairs
    inp = pl.win[o[wo], jo]
    xc = h[inp]
    m = len(wo)
    ar = np.arange(m)
    bld.rows([(ar, yc[wo], np.ones(m)), (ar, xc, -np.ones(m))], np.zeros(m), np.full(m, INF))  # y >= x_j
    dc = bld.cols(np.zeros(m), np.ones(m), integer=(mode == "mip"))
    if mode == "mip":
        binary[key] = (np.stack([o[wo], inp], axis=1), dc)
    M = pl.M[o[wo], jo]
    # y - x_j + M_j d_j <= M_j: d_j = 1 gives y <= x_j; d_j = 0 gives y - x_j <= max_{i != j} u_i - l_j
    bld.rows([(ar, yc[wo], np.ones(m)), (ar, xc, -np.ones(m)), (ar, dc, M)], np.full(m, -INF), M)
    bld.rows([(wo, dc, np.ones(m))], np.ones(k), np.ones(k))  # sum_j d_j = 1
    # y - sum_j x_j <= L - sum_j l_j  (y = x_i for some i: y - L <= x_i - l_i <= sum_j (x_j - l_j))
    lj = l[inp]
    s_l = np.bincount(wo, weights=lj, minlength=k)
    mag = np.abs(pl.L[o]) + np.bincount(wo, weights=np.abs(lj), minlength=k)
    cnt = np.bincount(wo, minlength=k)
    rhs = pl.L[o] - s_l + 2.0 * gamma_n(int(cnt.max()) + 1, torch.float64) * mag + 1e-300
    bld.rows([(np.arange(k), yc, np.ones(k)), (wo, xc, -np.ones(m))], np.full(k, -INF), rhs)
    return y


def encode_graph(g: Graph, mats: list, pre: dict, lo: np.ndarray, hi: np.ndarray, upto: int | None = None,
                 mode: str = "mip", last_keep: np.ndarray | None = None) -> Encoding:
    """Encode nodes ``0..upto`` (default: the whole graph) of ``g`` on the input box ``[lo, hi]`` (module
    docstring). mats: :func:`graph_mats`. pre[v]: sound bounds ``(l, u)`` (flat float64) of node v's
    output, required for every input of a ReLU or max-pool node. mode "mip": binaries; "lp": the LP
    relaxation (ReLU triangles, max-pool selectors in [0, 1]). ``last_keep`` restricts which outputs of
    node ``upto`` are encoded. ``out`` and ``binary`` are per node."""
    if mode not in ("mip", "lp"):
        raise ValueError(f"mode must be 'mip' or 'lp', got {mode!r}")
    n = g.output if upto is None else upto
    Bd = node_value_bounds(g, mats, pre, lo, hi, n)
    need = _need(g, Bd, n, last_keep)
    bld = _Builder()
    x = bld.cols(lo, hi)
    outs: list[np.ndarray] = [x]
    binary: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for v in range(1, n + 1):
        nd = g.nodes[v]
        p, ins = nd.prim, nd.inputs
        keep = need[v]
        if not keep.any() and not isinstance(p, Concat):
            outs.append(np.full(g.n(v), ABSENT, dtype=np.int64))
            continue
        zl, zu = Bd[v]
        if p.is_affine:  # type: ignore[union-attr]
            W, b = mats[v]
            h = _affine(bld, W, b, outs[ins[0]], zl, zu, keep, nd.name)
        elif isinstance(p, ReLU):
            h = _relu(bld, outs[ins[0]], *Bd[ins[0]], keep, mode, binary, v)
        elif isinstance(p, Add):
            h = _add(bld, p, outs[ins[0]], outs[ins[1]], zl, zu, keep)
        elif isinstance(p, Concat):
            h = p.forward(*(torch.from_numpy(outs[i])[None] for i in ins))[0].numpy().copy()
        elif isinstance(p, MaxPool2d):
            h = _maxpool(bld, p, outs[ins[0]], *Bd[ins[0]], keep, mode, binary, v)
        else:  # pragma: no cover - check_graph refuses it first
            raise UnsupportedError(f"{nd.name}: no MIP encoding for {p.describe()}")  # type: ignore[union-attr]
        outs.append(h)
    return bld.done(x, outs, binary)


def sensitivity(g: Graph, mats: list, absW: list, pre: dict, lo: np.ndarray, hi: np.ndarray, s: np.ndarray) -> float:
    """sum over the variables v of (how much |c . f| can move per unit change of v) * (how much a
    tolerance-sized violation can move v, in units of tol): 1 per equality row (affine, sum), plus the
    big-M of an unstable ReLU or of an undecided max-pool window whose binaries may be fractional by tol.
    ReLU and max are 1-Lipschitz, affine nodes by |W|; a dead ReLU (``u <= 0``) is the constant 0 in the
    encoding (no variable), so nothing reaches its input. mats, absW: from :func:`graph_mats`; pre, lo, hi
    as for :func:`encode_graph`; s: ``|c|`` [K] on the output."""
    Bd = node_value_bounds(g, mats, pre, lo, hi)
    sv: list = [None] * len(g.nodes)
    sv[g.output] = np.asarray(s, dtype=np.float64)
    total = float(sv[g.output].sum())
    for v in range(g.output, 0, -1):
        s_v = sv[v]
        if s_v is None:
            continue
        nd = g.nodes[v]
        p, ins = nd.prim, nd.inputs
        parts: list[tuple[int, np.ndarray]]
        if absW[v] is not None:
            total += float(s_v.sum())
            parts = [(ins[0], absW[v] @ s_v)]
        elif isinstance(p, ReLU):
            l, u = Bd[ins[0]]
            uns = (l < 0) & (u > 0)
            total += float(s_v.sum()) + float(s_v[uns] @ np.maximum(-l[uns], u[uns]))
            parts = [(ins[0], np.where(u > 0, s_v, 0.0))]
        elif isinstance(p, Add):
            total += float(s_v.sum())
            parts = [(ins[0], s_v), (ins[1], s_v)]
        elif isinstance(p, Concat):
            parts = [(i, t[0, 0].numpy()) for i, t in zip(ins, p.transpose(torch.from_numpy(s_v)[None, None]))]
        else:
            assert isinstance(p, MaxPool2d)
            pl = pool_plan(p, *Bd[ins[0]])
            und = ~pl.dom
            total += float(s_v.sum()) + float(s_v[und] @ pl.M[und].max(axis=1, initial=0.0))
            s_in = np.zeros(p.n_in)
            np.add.at(s_in, pl.win[pl.cand], np.broadcast_to(s_v[:, None], pl.cand.shape)[pl.cand])
            parts = [(ins[0], s_in)]
        for i, t in parts:
            sv[i] = t.copy() if sv[i] is None else sv[i] + t
    return total + float(sv[0].sum()) if sv[0] is not None else total
