"""IBP, CROWN, CROWN-IBP and Fast-Lin / KW over a graph of primitives (residual connections,
concatenation, max pooling): the same algorithms and rounding analysis as the chain engine
(:mod:`fastcert.algorithms.linear_bounds`), which runs chains faster.

Back-substitution keeps one coefficient matrix per live node: rows reaching a node from several
consumers are summed there (a fan-out node), each sum adding its own rounding bound to ``mag``, so a
residual graph costs what a chain of the same layers costs. Intermediate bounds are computed for the
output of every node read by a nonlinear primitive (an activation or a max pool), in topological order,
before anything downstream uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fastcert._ext import _C, torch_serial
from fastcert.algorithms.graph_slack import graph_eval_slack
from fastcert.algorithms.linear_bounds import check_fp_env, finish, relax_tuple
from fastcert.algorithms.splits import Splits
from fastcert.errors import UnsupportedError
from fastcert.graph.ir import Graph, is_nonlinear
from fastcert.layers.base import Box, Layer, empty_like_dtype, interval_affine
from fastcert.options import DEFAULT_OPTIONS, BoundOptions
from fastcert.primitives.add import Add
from fastcert.primitives.base import Elementwise
from fastcert.primitives.concat import Concat
from fastcert.primitives.diag import Diag
from fastcert.primitives.maxpool import MaxPool2d
from fastcert.primitives.relu import ReLU
from fastcert.primitives.sshape import SShaped
from fastcert.rounding import eta, gamma_n, round_up

# method -> (lower slope, intermediate bounds, intersect intermediate bounds with IBP); see linear_bounds
GRAPH_METHODS: dict[str, tuple[str, str, bool] | None] = {
    "ibp": None,
    "fastlin": ("parallel", "backsub", False),
    "kw": ("parallel", "backsub", False),
    "crown": ("adaptive", "backsub", True),
    "crown-ibp": ("adaptive", "ibp", True),
}


@dataclass
class RowSlopes:
    """alpha-CROWN's ReLU lower slopes and S-shaped tangent points, one per (start node, row, neuron), as
    auto_LiRPA keys them per start node. ``sel[start]``: [R] the neurons of the start node whose bounds the
    rows are (the output node: its specification rows, ``arange(S)``); ``alpha[start][v]``: for a ReLU node
    v, [B, 2R, n_v] lower slopes for the start's lower-bound rows then its upper-bound rows (clamped to
    [0, 1] where used); for an S-shaped node (sigmoid, tanh, arctan), [B, 2R, 2, n_v] the tangent points of
    its lower and upper lines (projected to their valid ranges where used, see ``SShaped.relax_rows``).
    Rows or nodes without an entry use the method's own lines. Any slope in [0, 1], and any tangent point
    (the certify mode's intercepts are rigorous for any slope), gives valid lines, so the bounds stay sound
    whatever the values."""

    sel: dict[int, torch.Tensor]
    alpha: dict[int, dict[int, torch.Tensor]]
    #: certify mode: per node, a certified Box its refined bounds are intersected with (CROWN's own: the
    #: slopes then never loosen an intermediate bound); the optimize mode does not intersect (as auto_LiRPA)
    ref: list[Any] | None = None

    def row_index(self, start: int, sel: torch.Tensor) -> torch.Tensor | None:
        """For two-sided rows (lower rows of ``sel``'s neurons, then their upper rows): the index of each row
        in ``alpha[start][.]`` or -1 where it has none; None when the start node has no slopes."""
        mine = self.sel.get(start)
        if mine is None or not self.alpha.get(start):
            return None
        n = int(max(int(mine.max()) if mine.numel() else 0, int(sel.max()) if sel.numel() else 0)) + 1
        pos = torch.full((n,), -1, dtype=torch.int64)
        pos[mine] = torch.arange(mine.numel())
        p = pos[sel]
        R = mine.numel()
        return torch.cat([p, torch.where(p >= 0, p + R, p)])

    def lower_slopes(self, start: int, v: int, ridx: torch.Tensor, base: torch.Tensor, l: torch.Tensor,
                     u: torch.Tensor, b0: int = 0) -> torch.Tensor:
        """The lower slopes of ReLU node v for rows ``ridx`` of ``start`` ([Bc, rows, n]), or ``base`` ([Bc, n])
        where there are none; l, u: [Bc, n] the ReLU's input box, b0 the chunk's first sample."""
        a = self.alpha.get(start, {}).get(v)
        ok = ridx >= 0
        if a is None or not bool(ok.any()):
            return base
        return _rows_from(a[b0:b0 + base.shape[0]], ridx, ok, base, l, u)


    def sshape_lines(self, start: int, v: int, ridx: torch.Tensor, prim: SShaped, box: Box,
                     base: tuple[torch.Tensor | None, ...], b0: int = 0) -> tuple[torch.Tensor, ...] | None:
        """Certified lines (lo_s, lo_b, up_s, up_b: [Bc, rows, n]) of S-shaped node v for rows ``ridx`` of
        ``start`` with their tangent points, or None when there are none; ``base``: the method's own
        (lo_s, lo_b or None, up_s, up_b) [Bc, n] for rows without an entry; box: v's input box [Bc, n]."""
        a = self.alpha.get(start, {}).get(v)
        ok = ridx >= 0
        if a is None or not bool(ok.any()):
            return None
        d = a[b0:b0 + box.l.shape[0]].index_select(1, ridx.clamp(min=0)).detach()
        r = prim.relax_rows(box, d[:, :, 0], d[:, :, 1])
        out = []
        for x, b in zip((r.lo_s, r.lo_b, r.up_s, r.up_b), base):
            assert x is not None
            bb = torch.zeros_like(box.l) if b is None else b
            out.append(torch.where(ok[None, :, None], x, bb[:, None, :].expand_as(x)).contiguous())
        return tuple(out)


def _rows_from(a: torch.Tensor, ridx: torch.Tensor, ok: torch.Tensor, base: torch.Tensor, l: torch.Tensor,
               u: torch.Tensor) -> torch.Tensor:
    Bc, n = base.shape
    rows = a.index_select(1, ridx.clamp(min=0)).clamp(0, 1).to(base.dtype)
    use = ((l < 0) & (u > 0))[:, None, :] & ok[None, :, None]
    return torch.where(use, rows, base[:, None, :].expand(Bc, ridx.numel(), n)).contiguous()


@dataclass
class GraphPass:
    """State of one bound computation over a graph (explicit, never stored on the primitives)."""

    g: Graph
    prob: Any  # linear_bounds.Problem
    box: list[Box | None]
    G: list[torch.Tensor | None]
    relax: list[Any]
    uf: dict[int, torch.Tensor] = field(default_factory=dict)
    opts: BoundOptions = DEFAULT_OPTIONS
    rows: RowSlopes | None = None
    splits: Splits | None = None  # branch and bound's sub-domains (one per sample)
    input_rows: list | None = None  # receives the output rows' input coefficients (chunks of [Bc, S, n0])


def feeds_pool(g: Graph, v: int) -> bool:
    """Whether node v's box reaches a max pool's relaxation through elementwise nodes / concatenations
    (then the bounds of all its neurons matter, not only of those where an activation has a kink)."""
    for w in g.consumers[v]:
        p = g.nodes[w].prim
        if isinstance(p, MaxPool2d) or (isinstance(p, (ReLU, Elementwise, Concat)) and feeds_pool(g, w)):
            return True
    return False


def unstable(g: Graph, v: int, box: Box) -> torch.Tensor:
    """[B, n] the neurons of node v whose bounds the relaxations of v's nonlinear consumers depend on."""
    mask = torch.zeros_like(box.l, dtype=torch.bool)
    if feeds_pool(g, v):
        return box.l < box.u
    for w in g.consumers[v]:
        p = g.nodes[w].prim
        if isinstance(p, (ReLU, Elementwise)):
            mask |= p.unstable(box)
        elif isinstance(p, MaxPool2d):
            mask |= box.l < box.u
    return mask


def _units(st: GraphPass, v: int) -> torch.Tensor:
    """[B] float64: ``a`` with ``a * eta`` bounding the absolute (underflow) error one backward step
    through node v adds to every row (see slack.underflow_units), plus the sums of rows at v."""
    a = st.uf.get(v)
    if a is None:
        nd = st.g.nodes[v]
        n = st.g.n(v)
        fan = (len(st.g.consumers[v]) + 1) * (n + 8.0)  # the sums of rows arriving at v, and their mag terms
        if v == 0:
            a = torch.full((st.prob.x0.shape[0],), fan, dtype=torch.float64)
        else:
            prim = nd.prim
            b_in = st.box[nd.inputs[0]]
            assert b_in is not None and prim is not None
            l1 = b_in.mag().double().sum(1) * (1 + 4 * (b_in.l.shape[1] + 2) * 2.0**-53)
            if prim.is_affine:
                a = (prim.back_len + 2) * l1 + (3 * prim.n_out + 8)  # type: ignore[attr-defined]
            else:
                a = 2 * l1 + (5 * prim.n_out + 8)
            a = a + fan
        st.uf[v] = a
    return a


def _initial_mag(st: GraphPass, start: int, b0: int, b1: int, S: int, dt: torch.dtype) -> torch.Tensor:
    total = torch.zeros(b1 - b0, dtype=torch.float64)
    for v in range(start + 1):
        total = total + _units(st, v)[b0:b1]
    m = round_up((total * (1 + 1e-12) + 1) * eta(dt), dt)
    return m[:, None].expand(b1 - b0, S).contiguous()


def _step(st: GraphPass, v: int, lam: torch.Tensor, bias: torch.Tensor, mag: torch.Tensor, b0: int,
          b1: int, cur: tuple[int, torch.Tensor] | None = None) -> list[tuple[int, torch.Tensor]]:
    """Back-substitute rows lam [Bc, S, n_v] through node v: the rows on its inputs (bias, mag updated)."""
    nd = st.g.nodes[v]
    prim = nd.prim
    dt = lam.dtype
    Bc, S = bias.shape
    e = empty_like_dtype(dt)
    if prim.is_affine:  # type: ignore[union-attr]
        G = st.G[v]
        assert G is not None
        lam = lam.expand(Bc, S, lam.shape[2]).contiguous()
        _C.bias_mag(lam, prim.params(dt).bias, G[b0:b1], bias,  # type: ignore
                    mag, gamma_n(prim.back_depth, dt), gamma_n(prim.n_out, dt), e)  # type: ignore
        out = prim.backward(lam.reshape(Bc * S, prim.n_out), st.opts).reshape(Bc, S, prim.n_in)  # type: ignore
        return [(nd.inputs[0], out)]
    if isinstance(prim, (ReLU, Elementwise)):
        lo_s, up_s, up_b, zmag, lo_b = (None if t is None else t[b0:b1] for t in st.relax[v])
        if cur is not None and st.rows is not None and isinstance(prim, ReLU):
            b_in = st.box[nd.inputs[0]]
            assert b_in is not None and lo_s is not None
            lo_s = st.rows.lower_slopes(cur[0], v, cur[1], lo_s, b_in.l[b0:b1], b_in.u[b0:b1], b0)
        if cur is not None and st.rows is not None and isinstance(prim, SShaped):
            b_in = st.box[nd.inputs[0]]
            assert b_in is not None and lo_s is not None and up_s is not None and up_b is not None
            got = st.rows.sshape_lines(cur[0], v, cur[1], prim, Box(b_in.l[b0:b1], b_in.u[b0:b1]),
                                       (lo_s, lo_b, up_s, up_b), b0)
            if got is not None:
                lo_s, lo_b, up_s, up_b = got
        out = torch.empty(Bc, S, prim.n_in, dtype=dt)
        _C.backward_act(lam.contiguous(), lo_s, up_s,
                        e if lo_b is None else lo_b, up_b, zmag, out,
                        bias, mag, gamma_n(0, dt), gamma_n(prim.n_in, dt), e)
        return [(nd.inputs[0], out)]
    if isinstance(prim, Add):
        a, b = prim.transpose(lam)
        return [(nd.inputs[0], a), (nd.inputs[1], b)]
    if isinstance(prim, Concat):
        return list(zip(nd.inputs, prim.transpose(lam)))
    assert isinstance(prim, MaxPool2d)
    return [(nd.inputs[0], _maxpool_step(st, v, prim, lam, bias, mag, b0, b1))]


def _maxpool_step(st: GraphPass, v: int, prim: MaxPool2d, lam: torch.Tensor, bias: torch.Tensor,
                  mag: torch.Tensor, b0: int, b1: int) -> torch.Tensor:
    """Rows through a max pool in the lower-bound direction: a coefficient >= 0 (or any, where the window
    is dominated) goes to the window's lower-line input; a negative one elsewhere meets the constant upper
    bound U. mag gets the scatter sums' rounding (at most ``overlap`` terms per input) and the bias dot's."""
    r = st.relax[v]
    dt = lam.dtype
    Bc, S = bias.shape
    idx, dom, U = r.idx[b0:b1], r.dom[b0:b1], r.U[b0:b1]
    keep = (lam >= 0) | dom[:, None, :]
    c = torch.where(keep, lam, torch.zeros((), dtype=dt)).expand(Bc, S, prim.n_out)
    rest = torch.where(keep, torch.zeros((), dtype=dt), lam)
    dot = (rest * U[:, None, :]).sum(-1)
    mag_dot = (rest.abs() * U.abs()[:, None, :]).sum(-1)
    bias += dot
    out = torch.zeros(Bc, S, prim.n_in, dtype=dt)
    out.scatter_add_(2, idx[:, None, :].expand(Bc, S, prim.n_out), c)
    b_in = st.box[st.g.nodes[v].inputs[0]]
    assert b_in is not None
    zin = b_in.mag()[b0:b1].gather(1, idx)
    u = torch.finfo(dt).eps / 2
    mag += (gamma_n(prim.overlap, dt) * (c.abs() * zin[:, None, :]).sum(-1) + gamma_n(prim.n_out, dt) * mag_dot
            + 2 * u * bias.abs())
    return out


def backsub(st: GraphPass, start: int, lam: torch.Tensor, bias: torch.Tensor, b0: int, b1: int,
            stop: int = 0, ridx: torch.Tensor | None = None) -> torch.Tensor:
    """Lower bound of ``lam . z_start + bias`` over the region for samples [b0, b1): [Bc, S].

    lam: [Bc or 1, S, n_start]; bias: [Bc, S]. Back-substitutes through the graph down to node ``stop``
    and concretizes against the input region (stop 0) or node stop's interval box. ``ridx``: the rows' indices
    in ``st.rows`` (alpha-CROWN's slopes; -1: the method's own)."""
    dt = lam.dtype
    cur = None if ridx is None else (start, ridx)
    Bc, S = bias.shape
    bias = bias.clone()
    mag = _initial_mag(st, start, b0, b1, S, dt)
    pending: dict[int, torch.Tensor] = {start: lam}
    for v in range(start, stop, -1):
        lam_v = pending.pop(v, None)
        if lam_v is None:
            continue
        for w, t in _step(st, v, lam_v, bias, mag, b0, b1, cur):
            if st.splits is not None and start == st.g.output:
                t = _beta_term(st, v, w, t, mag, b0, b1)
            old = pending.get(w)
            if old is None:
                pending[w] = t
                continue
            s = old + t  # each entry off by u |s|, which multiplies |z_w| <= mag(box_w)
            zw = st.box[w].mag()[b0:b1] if w else torch.maximum(st.prob.l0.abs(), st.prob.u0.abs())[b0:b1]
            mag += gamma_n(s.shape[2], dt) * (s.abs() * zw[:, None, :]).sum(-1)
            pending[w] = s
    lam = pending.pop(stop).expand(Bc, S, st.g.n(stop)).contiguous()
    assert not pending, "internal: rows left above the stop node"
    if st.input_rows is not None and start == st.g.output and stop == 0:
        st.input_rows.append(lam)
    res = torch.empty(Bc, S, dtype=dt)
    e = empty_like_dtype(dt)
    pr = st.prob
    if stop == 0:
        _C.concretize(lam, pr.x0[b0:b1], pr.l0[b0:b1], pr.u0[b0:b1],
                      pr.eps[b0:b1], pr.p, bias, mag, gamma_n(lam.shape[2], dt),
                      res, e, e)
    else:
        box = st.box[stop]
        assert box is not None
        lb = box.l[b0:b1]
        _C.concretize(lam, lb, lb, box.u[b0:b1], pr.eps[b0:b1], 0,
                      bias, mag, gamma_n(lam.shape[2], dt), res, e, e)
    return res


def _beta_term(st: GraphPass, v: int, w: int, t: torch.Tensor, mag: torch.Tensor, b0: int,
               b1: int) -> torch.Tensor:
    """Rows t [Bc, S, n_w] reaching the input w of ReLU node v, plus the split multipliers' ``-beta s``
    (see :mod:`fastcert.algorithms.splits`); the sum's rounding (u |s| per entry, times |z_w|) goes to mag."""
    assert st.splits is not None
    d = st.splits.beta_rows(v, t.shape[1], t.dtype, b0, b1)
    if d is None:
        return t
    s = t + d
    zw = st.box[w].mag()[b0:b1]  # type: ignore[union-attr]
    # exact where d is 0 (no multiplier there)
    mag += gamma_n(2, t.dtype) * (torch.where(d != 0, s.abs(), torch.zeros((), dtype=s.dtype)) * zw[:, None, :]).sum(-1)
    return s


def _two_sided(st: GraphPass, start: int, lam: torch.Tensor, bias: torch.Tensor, b0: int, b1: int,
               stop: int = 0, sel: torch.Tensor | None = None, upper: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of ``lam . z_start + bias``; ``sel``: the neurons (or specification rows) the
    rows are, for alpha-CROWN's per-row slopes (``st.rows``); ``upper`` False: the upper bound is +inf (not
    computed: half the rows)."""
    S = lam.shape[1]
    ridx = None
    if st.rows is not None:
        ridx = st.rows.row_index(start, torch.arange(S) if sel is None else sel)
    if not upper:
        res = backsub(st, start, lam, bias, b0, b1, stop, None if ridx is None else ridx[:S])
        return res, torch.full_like(res, float("inf"))
    res = backsub(st, start, torch.cat([lam, -lam], 1), torch.cat([bias, -bias], 1), b0, b1, stop, ridx)
    return res[:, :S], -res[:, S:]


def _chunk(st: GraphPass, B: int, rows: int, itemsize: int, budget: int) -> int:
    width = sum(st.g.n(v) for v in range(len(st.g.nodes)))  # rows may be live at every node at once
    return max(1, min(B, budget // max(1, 2 * rows * width * itemsize)))


def _sparse_need(st: GraphPass, v: int, box: Box, max_frac: float = 0.9) -> torch.Tensor:
    """[B, n] auto_LiRPA 0.3's choice of the neurons of node v to re-bound (its default
    ``sparse_intermediate_bounds``, ``minimum_sparsity=max_frac``): when v feeds ReLUs only, the neurons with
    ``l < 0 < u`` in some sample of the batch, in every sample (none: keep the interval box), unless they are
    more than ``max_frac`` of the layer; otherwise every neuron."""
    relu_only = all(isinstance(p, ReLU)
                    for p in (st.g.nodes[w].prim for w in st.g.consumers[v]))
    locs = ((box.l < 0) & (box.u > 0)).any(0)
    if not relu_only or int(locs.sum()) > max_frac * locs.numel():
        locs = torch.ones_like(locs)
    return locs[None, :].expand_as(box.l)


def _refine(st: GraphPass, v: int, box: Box, intersect: bool, budget: int, sparse: bool = False) -> Box:
    """Back-substitution bounds on node v's output: CROWN (intersect) only on the neurons the consumers
    need, each intersected with the interval bound; ``sparse`` on :func:`_sparse_need`'s neurons, replacing
    the interval bound; otherwise (Fast-Lin) on every neuron."""
    dt = box.l.dtype
    B, n = box.l.shape
    if sparse:
        need, intersect = _sparse_need(st, v, box), False
    else:
        need = unstable(st.g, v, box) if intersect else torch.ones_like(box.l, dtype=torch.bool)
    lo, hi = box.l.clone(), box.u.clone()
    b0 = 0
    while b0 < B:
        sel_all = need[b0:].any(0).nonzero().flatten()
        b1 = b0 + _chunk(st, B - b0, max(1, sel_all.numel()), box.l.element_size(), budget)
        sel = need[b0:b1].any(0).nonzero().flatten()
        S = sel.numel()
        if S:
            lam = torch.zeros(1, S, n, dtype=dt)
            lam[0, torch.arange(S), sel] = 1
            l_new, u_new = _two_sided(st, v, lam, torch.zeros(b1 - b0, S, dtype=dt), b0, b1, sel=sel)
            own = need[b0:b1][:, sel]
            if intersect:
                l_new, u_new = torch.maximum(lo[b0:b1, sel], l_new), torch.minimum(hi[b0:b1, sel], u_new)
            lo[b0:b1, sel] = torch.where(own, l_new, lo[b0:b1, sel])
            hi[b0:b1, sel] = torch.where(own, u_new, hi[b0:b1, sel])
        b0 = b1
    return _ordered(lo, hi)


def _ordered(lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """The box of two sound bounds; only rounding on a degenerate box can cross them: swapping keeps it sound."""
    bad = lo > hi
    return Box(torch.where(bad, hi, lo).contiguous(), torch.where(bad, lo, hi).contiguous())


def exact_depth(g: Graph, p: int) -> list[float]:
    """Per node: how many non-elementwise affine maps separate it from the input along a path of
    single-input affine nodes (inf otherwise); interval bounds are exact on a box for depth <= 1."""
    depth = [0.0] + [float("inf")] * (len(g.nodes) - 1)
    if p != 0:
        return [float("inf")] * len(g.nodes)
    for nd in g.nodes[1:]:
        if nd.prim is not None and nd.prim.is_affine:
            depth[nd.id] = depth[nd.inputs[0]] + (0 if isinstance(nd.prim, Diag) else 1)
    return depth


def _relax(prim: Layer, box: Box, slope: str, tangent: str) -> Any:
    if isinstance(prim, MaxPool2d):
        return prim.relax(box)
    return relax_tuple(prim, box, slope, tangent)


def forward_pass(g: Graph, prob: Any, cfg: tuple[str, str, bool] | None, opts: BoundOptions,
                 rows: RowSlopes | None = None, splits: Splits | None = None) -> GraphPass:
    """Interval bounds of every node, refined by back-substitution where the method asks, and the
    relaxations of the nonlinear nodes (``rows``: alpha-CROWN's per-row ReLU slopes; ``splits``: branch and
    bound's sub-domains, one per sample, their split boxes applied where the ReLUs read them)."""
    n = len(g.nodes)
    st = GraphPass(g, prob, [None] * n, [None] * n, [None] * n, opts=opts, rows=rows, splits=splits)
    st.box[0] = Box(prob.l0, prob.u0)
    depth = exact_depth(g, prob.p)
    for nd in g.nodes[1:]:
        prim = nd.prim
        assert prim is not None
        if splits is not None and nd.id in splits.sign:
            b_in = st.box[nd.inputs[0]]
            assert b_in is not None
            st.box[nd.inputs[0]] = Box(*(t.contiguous() for t in splits.clip(nd.id, b_in.l, b_in.u)))
        ins = [st.box[i] for i in nd.inputs]
        if prim.is_affine:
            box, st.G[nd.id] = interval_affine(prim, ins[0])  # type: ignore[arg-type]
        elif is_nonlinear(prim):
            if cfg is not None:
                st.relax[nd.id] = _relax(prim, ins[0], cfg[0], opts.tangent)  # type: ignore[arg-type]
            box = prim.interval(ins[0])  # type: ignore[attr-defined]
        else:
            box = prim.interval(*ins)  # type: ignore[attr-defined]
        st.box[nd.id] = box
        known = None if splits is None else splits.known(nd.id, box.l, box.u)
        if known is not None:  # branch and bound: a sub-domain keeps the region's (or its parent's) bounds here
            st.box[nd.id] = box = Box(*known)
            if nd.id not in splits.refine:  # type: ignore[union-attr]
                continue
        # an elementwise node's interval is the exact image of its input box (up to rounding), which
        # back-substitution through its own relaxation cannot beat; neither can it beat a concatenation's
        if cfg is not None and cfg[1] == "backsub" and depth[nd.id] > 1 and \
                not isinstance(prim, (ReLU, Elementwise, Concat)) and \
                any(is_nonlinear(g.nodes[w].prim) for w in g.consumers[nd.id]):
            st.box[nd.id] = _refine(st, nd.id, box, cfg[2], opts.lambda_bytes,
                                    sparse=cfg[2] and opts.intermediate == "sparse")
            ref = None if rows is None or rows.ref is None else rows.ref[nd.id]
            if ref is not None:  # both sound: their intersection is
                b = st.box[nd.id]
                assert b is not None
                st.box[nd.id] = _ordered(torch.maximum(b.l, ref.l), torch.minimum(b.u, ref.u))
    return st


def node_boxes(g: Graph, prob: Any, method: str, opts: BoundOptions | None = None,
               rows: RowSlopes | None = None) -> list[Box | None]:
    """The box of every node's output (index = node id; 0 the input region's box) as ``method`` computes
    them: interval bounds, refined by back-substitution where the method does (``rows``: alpha-CROWN's
    slopes, with ``method="crown"``). For the MIP encoder."""
    if method not in GRAPH_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(GRAPH_METHODS)}")
    return forward_pass(g, prob, GRAPH_METHODS[method], BoundOptions() if opts is None else opts, rows).box


def check_kw(g: Graph, method: str) -> None:
    """The Kolter-Wong dual bound is defined for ReLU networks: refuse another activation by name."""
    if method == "kw":
        for nd in g.nodes[1:]:
            if is_nonlinear(nd.prim) and not (isinstance(nd.prim, ReLU)):
                raise UnsupportedError(f"{nd.name}: the Kolter-Wong dual bound (method 'kw') is defined for ReLU "
                                       f"networks only, and this node is {nd.prim.describe()}; use 'fastlin' (the "
                                       f"same bound on ReLU networks), 'crown', 'crown-ibp' or 'ibp'")


@torch_serial()  # torch's own operations on one thread, the kernels on fastcert's pool (see _ext.py)
def graph_bounds(g: Graph, prob: Any, C: torch.Tensor, method: str, lower_slope: str | None = None,
                 C_exact: torch.Tensor | None = None, opts: BoundOptions | None = None,
                 rows: RowSlopes | None = None, boxes_out: list | None = None,
                 splits: Splits | None = None, upper: bool = True,
                 input_rows: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of ``C f(x)`` over the region for a graph network: C [B, S, K] ->
    ([B, S], [B, S]). Arguments as :func:`fastcert.algorithms.linear_bounds.linear_bounds`; ``rows``:
    alpha-CROWN's per-row ReLU lower slopes (the output node's rows are C's); ``boxes_out``: a list that
    receives every node's box (index = node id); ``splits``: branch and bound's sub-domains (one per sample,
    see :mod:`fastcert.algorithms.splits`; ``splits.empty`` is set: those samples' bounds are void); ``upper``
    False: the lower bounds alone (the upper ones are +inf); ``input_rows``: a list that receives the lower
    rows' coefficients on the input, ``[B, S, n0]`` (a back-substitution method; with ``upper`` the rows of
    the upper bounds, negated, follow: ``[B, 2S, n0]``)."""
    check_fp_env()
    opts = BoundOptions() if opts is None else opts
    cfg = GRAPH_METHODS[method]
    if lower_slope is not None and cfg is not None:
        cfg = (lower_slope, cfg[1], cfg[2])
    check_kw(g, method)
    if splits is not None and (cfg is None or not isinstance(splits, Splits)):
        raise ValueError("split constraints need a back-substitution method (crown, fastlin, kw, crown-ibp)")
    st = forward_pass(g, prob, cfg, opts, rows, splits)
    if input_rows is not None:
        st.input_rows = []
    if boxes_out is not None:
        boxes_out.extend(st.box)
    out = g.output
    out_box = st.box[out]
    assert out_box is not None
    for v in range(1, out + 1):
        G = st.G[v]
        b = st.box[v]
        if (G is not None and not bool(torch.isfinite(G).all())) or (b is not None and not bool(
                torch.isfinite(b.l).all() & torch.isfinite(b.u).all())):
            raise ValueError(f"floating-point overflow in {g.nodes[v].name}: the interval bounds exceed the range of "
                             f"{prob.x0.dtype}; the weights, x or eps are too large")
    dt = prob.x0.dtype
    B, S = C.shape[0], C.shape[1]
    stop = g.nodes[out].inputs[0] if cfg is None else 0
    lower = torch.empty(B, S, dtype=dt)
    hi = torch.empty(B, S, dtype=dt)
    Bc = _chunk(st, B, 2 * S, prob.x0.element_size(), opts.lambda_bytes)
    for b0 in range(0, B, Bc):
        b1 = min(B, b0 + Bc)
        z = torch.zeros(b1 - b0, S, dtype=dt)
        lower[b0:b1], hi[b0:b1] = _two_sided(st, out, C[b0:b1].contiguous(), z, b0, b1, stop, upper=upper)
    if input_rows is not None and st.input_rows:
        input_rows.append(torch.cat(st.input_rows, 0))
    return finish(lower, hi, graph_eval_slack(st, C, C_exact))
