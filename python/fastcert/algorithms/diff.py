"""Differentiable bounds (the optimize / train mode): IBP, CROWN-IBP, CROWN and Fast-Lin / KW over a graph,
as functions of the model's live parameters, the input, eps and the relaxation slopes.

The same algorithms as :mod:`fastcert.algorithms.graph_bounds` (same intermediate-bound rule, same
relaxations, same final step), computed with the differentiable ops of :mod:`fastcert.ops` (kernels with
backward kernels) and, for convolutions and elementwise glue, torch's own differentiable operations, in the
model's dtype and in nominal arithmetic: no rounding term. A certificate comes from the certify mode
(:func:`fastcert.bounds`), which adds its rigorous bound to these gradients as a constant (see
docs/architecture.md, "Two modes").

Parameters are read at every call from the modules the front end recorded (``Node.op.module``):
``weight`` / ``bias`` of Linear and Conv2d, BatchNorm's affine parameters and running statistics, Normalize's
mean and std, so gradients reach them; nodes without a module (ONNX, average pooling, the output identity)
use the graph's own constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcert import ops
from fastcert.algorithms import diff_relax as dr
from fastcert.algorithms.graph_bounds import GRAPH_METHODS, RowSlopes, check_kw, exact_depth, unstable
from fastcert.algorithms.splits import Splits
from fastcert.errors import UnsupportedError
from fastcert.graph.ir import Graph, is_nonlinear
from fastcert.nn import Normalize
from fastcert.primitives.add import Add
from fastcert.layers.base import Box
from fastcert.primitives.affine import channel_expand
from fastcert.primitives.base import Elementwise
from fastcert.primitives.concat import Concat
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.linear import Dense
from fastcert.primitives.maxpool import MaxPool2d
from fastcert.primitives.relu import ReLU
from fastcert.primitives.sshape import SShaped

# method -> (ReLU lower slope, intermediate bounds, intersect them with the interval bounds): the certify
# graph engine's table, so that both modes compute the same bound
DIFF_METHODS = GRAPH_METHODS
DIFF_PRIMITIVES = ("Linear, Conv2d, BatchNorm / Normalize, AvgPool2d, MaxPool2d, flatten / reshape, add / sub, "
                   "concat, ReLU, LeakyReLU, Hardtanh, ELU, Softplus, Sigmoid, Tanh, Arctan")

IBox = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class DiffRegion:
    """The input region of the optimize mode, differentiable in x and eps: its box ``center, radius: [B, n]``
    and, for an L2 / L1 ball (``p`` 2 / 1; 0: L-inf), the ball ``||x' - x0||_p <= eps`` (x0 [B, n], eps [B])."""

    center: Tensor
    radius: Tensor
    p: int = 0
    x0: Tensor | None = None
    eps: Tensor | None = None


def region(x: Tensor, eps: Tensor, x_min: Tensor | None = None, x_max: Tensor | None = None, p: int = 0) -> DiffRegion:
    """The ``p`` ball (0: L-inf, 2, 1) ``||x' - x|| <= eps`` (eps: [B]) within ``[x_min, x_max]`` (flat [n] or
    [B, n]): x [B, n] -> its box as center / radius and the ball (torch operations, differentiable in x and
    eps)."""
    lo, hi = x - eps[:, None], x + eps[:, None]
    if x_min is not None:
        lo = torch.maximum(lo, x_min)
    if x_max is not None:
        hi = torch.minimum(hi, x_max)
    return DiffRegion((lo + hi) / 2, (hi - lo) / 2, p, x if p else None, eps if p else None)


def concretize_input(reg: DiffRegion, lam: Tensor) -> Tensor:
    """min of lam . x' over the region: lam [B, S, n] -> [B, S]. For an Lp ball within a box, the larger of
    the ball's bound ``lam . x0 - eps ||lam||_q`` and the box's (as the certify mode's kernel)."""
    box = ops.concretize_box(lam.contiguous(), reg.center.contiguous(), reg.radius.contiguous())
    if reg.p == 0:
        return box
    assert reg.x0 is not None and reg.eps is not None
    q = 2.0 if reg.p == 2 else float("inf")
    ball = (lam * reg.x0[:, None, :]).sum(-1) - reg.eps[:, None] * torch.linalg.vector_norm(lam, q, dim=-1)
    return torch.maximum(ball, box)


def _live(nd: Any) -> nn.Module | None:
    op = getattr(nd, "op", None)
    return getattr(op, "module", None) if op is not None else None


def node_params(g: Graph, dtype: torch.dtype) -> list[dict[str, Tensor | None]]:
    """Per node, its parameters as tensors of ``dtype`` that carry the modules' autograd history:
    ``W``, ``b`` (Dense: [m, n] / [m]; Conv2d: [O, C, kh, kw] / [O]) or ``s``, ``t`` (Diag: flat [n])."""
    out: list[dict[str, Tensor | None]] = [{}]
    for nd in g.nodes[1:]:
        p, m = nd.prim, _live(nd)
        d: dict[str, Tensor | None] = {}
        if isinstance(p, (Dense, Conv2d)):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                d["W"] = m.weight.to(dtype)
                d["b"] = None if m.bias is None else m.bias.to(dtype)
            else:
                d["W"] = p.W64.to(dtype)
                d["b"] = None if p.b64 is None else p.b64.to(dtype)
        elif isinstance(p, Diag):
            s, t = _diag_live(m, dtype)
            if s is None or t is None:
                d["s"], d["t"] = p.W64.to(dtype), (p.b64.to(dtype) if p.b64 is not None else None)
            else:
                d["s"], d["t"] = channel_expand(s, p.in_shape), channel_expand(t, p.in_shape)
        out.append(d)
    return out


def _diag_live(m: nn.Module | None, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Per-channel scale and shift of a BatchNorm (eval mode) or Normalize module, from its live tensors."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None and m.running_mean is not None:
        s = 1.0 / torch.sqrt(m.running_var.to(dtype) + float(m.eps))
        if m.weight is not None:
            s = s * m.weight.to(dtype)
        t = -m.running_mean.to(dtype) * s
        if m.bias is not None:
            t = t + m.bias.to(dtype)
        return s, t
    if isinstance(m, Normalize):
        std = m.std.to(dtype)
        return 1.0 / std, -m.mean.to(dtype) / std
    return None, None


def check_graph(g: Graph) -> None:
    """Refuse, naming the node, a primitive the optimize mode does not cover yet."""
    for nd in g.nodes[1:]:
        if not (isinstance(nd.prim, (Dense, Conv2d, Diag, Add, Concat, ReLU)) or dr.covered(nd.prim)):
            kind = nd.prim.describe() if nd.prim is not None else "?"
            raise UnsupportedError(f"{nd.name}: differentiable bounds do not cover {kind} yet (they cover "
                                   f"{DIFF_PRIMITIVES}); its certified bounds are available without gradients "
                                   f"(call fastcert.bounds under torch.no_grad())")


def _conv_interval(p: Conv2d, prm: dict, box: IBox) -> IBox:
    B = box[0].shape[0]
    c = ((box[0] + box[1]) / 2).reshape(B, *p.in_shape)
    r = ((box[1] - box[0]) / 2).reshape(B, *p.in_shape)
    mid = F.conv2d(c, prm["W"], prm["b"], stride=p.stride, padding=p.padding).reshape(B, -1)
    rad = F.conv2d(r, prm["W"].abs(), None, stride=p.stride, padding=p.padding).reshape(B, -1)
    return mid - rad, mid + rad


def interval(p: Any, prm: dict, boxes: list[IBox]) -> IBox:
    """The interval image of one node's input boxes (nominal arithmetic)."""
    if isinstance(p, Dense):
        return ops.ibp_affine(boxes[0][0], boxes[0][1], prm["W"], prm["b"])
    if isinstance(p, Conv2d):
        return _conv_interval(p, prm, boxes[0])
    if isinstance(p, Diag):
        (l, u), s, t = boxes[0], prm["s"], prm["t"]
        mid, rad = (l + u) / 2 * s, (u - l) / 2 * s.abs()
        if t is not None:
            mid = mid + t
        return mid - rad, mid + rad
    if isinstance(p, Add):
        (la, ua), (lb, ub) = boxes
        return (la + lb, ua + ub) if p.sign > 0 else (la - ub, ua - lb)
    if isinstance(p, Concat):
        return p.forward(*(b[0] for b in boxes)), p.forward(*(b[1] for b in boxes))
    if isinstance(p, ReLU):
        return boxes[0][0].clamp_min(0), boxes[0][1].clamp_min(0)
    if isinstance(p, MaxPool2d):
        return dr.maxpool_interval(p, *boxes[0])
    if isinstance(p, Elementwise):
        return dr.elementwise_interval(p, *boxes[0])
    raise AssertionError(type(p))  # check_graph refused it


def _conv_back(p: Conv2d, W: Tensor, lam: Tensor) -> Tensor:
    """lam [B, S, O*OH*OW] -> conv^T lam [B, S, C*H*W]."""
    B, S = lam.shape[:2]
    C, H, Wd = p.in_shape
    O, OH, OW = p.out_shape
    kh, kw = W.shape[2:]
    oph = H - ((OH - 1) * p.stride[0] - 2 * p.padding[0] + kh)
    opw = Wd - ((OW - 1) * p.stride[1] - 2 * p.padding[1] + kw)
    y = F.conv_transpose2d(lam.reshape(B * S, O, OH, OW), W, None, stride=p.stride, padding=p.padding,
                           output_padding=(oph, opw))
    return y.reshape(B, S, -1)


@dataclass
class DiffPass:
    """State of one differentiable bound computation (explicit, never stored on the graph)."""

    g: Graph
    prm: list[dict]
    reg: DiffRegion
    box: list[IBox | None]
    relax: list[tuple[Tensor, ...] | None]
    rows: RowSlopes | None = None
    sel: dict[int, Tensor] | None = None  # filled: the neurons each refined node bounded (alpha-CROWN's rows)
    cfg: tuple[str, str, bool] | None = None
    splits: Splits | None = None  # branch and bound's sub-domains (one per sample)
    #: when a dict: the output rows' coefficients arriving at each nonlinear node (node id -> [B, S, n]) and at
    #: the input (0), recorded by the output's back-substitution (branching scores, candidate points)
    trace: dict[int, Tensor] | None = None


def _has_rows(rows: RowSlopes, start: int, v: int, ridx: Tensor) -> bool:
    return rows.alpha.get(start, {}).get(v) is not None and bool((ridx >= 0).any())


def _sshape_rows_back(st: DiffPass, start: int, v: int, p: SShaped, ridx: Tensor, rel: Any,
                      a: Tensor) -> tuple[Tensor, Tensor]:
    """Rows a [B, S, n] through S-shaped node v with alpha-CROWN's per-row tangent points (rows without an
    entry: the method's lines ``rel``) -> (a', bias)."""
    assert st.rows is not None
    d = st.rows.alpha[start][v].index_select(1, ridx.clamp(min=0))  # [B, S, 2, n]
    bx = st.box[st.g.nodes[v].inputs[0]]
    assert bx is not None
    lines = dr.sshape_row_lines(p, bx[0], bx[1], d[:, :, 0], d[:, :, 1])
    ok = (ridx >= 0)[None, :, None]
    lo_s, lo_b, up_s, up_b = (torch.where(ok, x, b[:, None, :]) for x, b in zip(lines, rel))
    pos, neg = a.clamp_min(0), a.clamp_max(0)
    return pos * lo_s + neg * up_s, (pos * lo_b + neg * up_b).sum(-1)


def _linear_back(p: Any, prm: dict, a: Tensor) -> tuple[Tensor | None, tuple[Tensor, ...]] | None:
    """A linear node's back-substitution step: (its bias term [B, S] or None, the rows on its inputs), or None
    for a nonlinear node."""
    if isinstance(p, Dense):
        return (None if prm["b"] is None else a @ prm["b"]), (ops.linear_back(a, prm["W"]),)
    if isinstance(p, Conv2d):
        t = None if prm["b"] is None else (a.reshape(*a.shape[:2], p.out_shape[0], -1).sum(-1) * prm["b"]).sum(-1)
        return t, (_conv_back(p, prm["W"], a),)
    if isinstance(p, Diag):
        return (None if prm["t"] is None else a @ prm["t"]), (a * prm["s"],)
    if isinstance(p, (Add, Concat)):
        return None, p.transpose(a)
    return None


def backsub(st: DiffPass, start: int, lam: Tensor, stop: int = 0, ridx: Tensor | None = None) -> Tensor:
    """Lower bound of ``lam . z_start`` over the region: lam [B, S, n_start] -> [B, S]. Rows are carried back
    to ``stop`` (its box concretizes them; 0: the input region), one coefficient matrix per live node.
    ``ridx``: the rows' indices in ``st.rows`` (alpha-CROWN's ReLU slopes; -1: the method's own)."""
    g = st.g
    A: dict[int, Tensor] = {start: lam}
    bias = lam.new_zeros(lam.shape[:2])
    for v in range(start, stop, -1):
        a = A.pop(v, None)
        if a is None:
            continue
        nd, prm = g.nodes[v], st.prm[v]
        p = nd.prim
        lin = _linear_back(p, prm, a)
        if lin is not None:
            if lin[0] is not None:
                bias = bias + lin[0]
            ins = lin[1]
        else:  # ReLU (lo_s, up_s, up_b), general activation (lo_s, lo_b, up_s, up_b), max pool (idx, dom, U)
            rel = st.relax[v]
            assert rel is not None
            if isinstance(p, ReLU):
                lo_s = rel[0]
                if ridx is not None and st.rows is not None:
                    bx = st.box[nd.inputs[0]]
                    assert bx is not None
                    lo_s = st.rows.lower_slopes(start, v, ridx, lo_s, bx[0].detach(), bx[1].detach())
                a_in, b_in = ops.relax_back(a.contiguous(), lo_s, rel[1], None, rel[2])
            elif isinstance(p, MaxPool2d):
                a_in, b_in = dr.maxpool_back(p, rel, a)  # type: ignore[arg-type]
            elif isinstance(p, SShaped) and ridx is not None and st.rows is not None and \
                    _has_rows(st.rows, start, v, ridx):
                a_in, b_in = _sshape_rows_back(st, start, v, p, ridx, rel, a)
            else:
                a_in, b_in = ops.relax_back(a.contiguous(), rel[0], rel[2], rel[1], rel[3])
            bias = bias + b_in
            ins = (a_in,)
            if start == g.output and st.trace is not None:
                st.trace[v] = a.detach()
            if start == g.output and st.splits is not None and isinstance(p, ReLU):
                d = st.splits.beta_rows(v, a_in.shape[1], a_in.dtype)
                if d is not None:
                    ins = (a_in + d,)
        for i, t in zip(nd.inputs, ins):
            A[i] = t if i not in A else A[i] + t
    for v, a in A.items():
        if v == 0:
            if start == g.output and st.trace is not None:
                st.trace[0] = a.detach()
            bias = bias + concretize_input(st.reg, a)
            continue
        bx = st.box[v]
        assert bx is not None
        c, r = (bx[0] + bx[1]) / 2, (bx[1] - bx[0]) / 2
        bias = bias + ops.concretize_box(a.contiguous(), c.contiguous(), r.contiguous())
    return bias


def _shared_slopes(st: DiffPass, start: int, stop: int) -> bool:
    """Whether the lower and upper bounds of rows from ``start`` can share one back-substitution: no per-row
    slopes, splits or trace, and every nonlinear node on the way a ReLU whose lower and upper lines have the
    same slope (Fast-Lin / KW's parallel relaxation; stable neurons): the coefficients for ``-lam`` are then
    exactly minus those for ``lam`` at every node, and only the intercepts and the concretizations differ."""
    if st.rows is not None or st.splits is not None or st.trace is not None:
        return False
    for v in range(start, stop, -1):
        p = st.g.nodes[v].prim
        if isinstance(p, (Dense, Conv2d, Diag, Add, Concat)):
            continue
        if not isinstance(p, ReLU):
            return False
        rel = st.relax[v]
        if rel is None or not (rel[0] is rel[1] or torch.equal(rel[0], rel[1])):
            return False
    return True


def backsub_both(st: DiffPass, start: int, lam: Tensor, stop: int = 0) -> tuple[Tensor, Tensor]:
    """(lower, upper) bounds of ``lam . z_start`` in one back-substitution, where :func:`_shared_slopes` holds:
    the coefficients are carried once; a ReLU's intercept ``up_b`` enters the lower bound through the negative
    coefficients and the upper bound through the positive ones; each box and the input region are concretized
    both ways. Equal to :func:`backsub` of ``[lam, -lam]`` (negation is exact), at half the rows."""
    g = st.g
    A: dict[int, Tensor] = {start: lam}
    lo = lam.new_zeros(lam.shape[:2])
    hi = lam.new_zeros(lam.shape[:2])
    for v in range(start, stop, -1):
        a = A.pop(v, None)
        if a is None:
            continue
        nd, prm = g.nodes[v], st.prm[v]
        lin = _linear_back(nd.prim, prm, a)
        if lin is not None:
            if lin[0] is not None:
                lo, hi = lo + lin[0], hi + lin[0]
            ins = lin[1]
        else:  # a ReLU with equal slopes (checked by _shared_slopes)
            rel = st.relax[v]
            assert rel is not None
            a_in, b_lo = ops.relax_back(a.contiguous(), rel[0], rel[1], None, rel[2])
            lo = lo + b_lo
            hi = hi + (a.clamp_min(0) * rel[2].unsqueeze(1)).sum(-1)
            ins = (a_in,)
        for i, t in zip(nd.inputs, ins):
            A[i] = t if i not in A else A[i] + t
    for v, a in A.items():
        if v == 0:
            lo = lo + concretize_input(st.reg, a)
            hi = hi - concretize_input(st.reg, -a)
            continue
        bx = st.box[v]
        assert bx is not None
        c, r = ((bx[0] + bx[1]) / 2).contiguous(), ((bx[1] - bx[0]) / 2).contiguous()
        lo = lo + ops.concretize_box(a.contiguous(), c, r)
        hi = hi - ops.concretize_box((-a).contiguous(), c, r)
    return lo, hi


def two_sided(st: DiffPass, start: int, lam: Tensor, stop: int = 0, sel: Tensor | None = None,
              upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """Lower and upper bounds of ``lam . z_start``: lam [B, S, n] -> ([B, S], [B, S]) in one pass (``sel``: the
    neurons or specification rows the rows are, for ``st.rows``). ``upper`` False: the lower bound alone
    (half the rows), upper None."""
    S = lam.shape[1]
    ridx = None
    if st.rows is not None:
        ridx = st.rows.row_index(start, torch.arange(S) if sel is None else sel)
    if not upper:
        return backsub(st, start, lam, stop, None if ridx is None else ridx[:S]), None
    if _shared_slopes(st, start, stop):
        return backsub_both(st, start, lam, stop)
    both = backsub(st, start, torch.cat([lam, -lam], 1), stop, ridx)
    return both[:, :S], -both[:, S:]


def _refine(st: DiffPass, v: int, box: IBox, intersect: bool) -> IBox:
    """Back-substitution bounds of node v's neurons that its nonlinear consumers need (CROWN: the unstable
    ones, intersected with the interval bound) or of all of them (Fast-Lin)."""
    lo, hi = box
    B, n = lo.shape
    if intersect:
        need = unstable(st.g, v, Box(box[0].detach(), box[1].detach()))
    else:
        need = torch.ones_like(lo, dtype=torch.bool)
    if st.rows is not None and v in st.rows.sel:  # alpha-CROWN: the rows its slopes were made for
        sel = st.rows.sel[v]
    else:
        sel = need.any(0).nonzero().flatten()
    if st.sel is not None:
        st.sel[v] = sel
    S = sel.numel()
    if S == 0:
        return box
    lam = lo.new_zeros(1, S, n)
    lam[0, torch.arange(S), sel] = 1
    l_new, u_new = two_sided(st, v, lam.expand(B, S, n), sel=sel)
    l_old, u_old = lo[:, sel], hi[:, sel]
    if intersect:
        l_new, u_new = torch.maximum(l_old, l_new), torch.minimum(u_old, u_new)
    own = need[:, sel]
    lo = lo.index_copy(1, sel, torch.where(own, l_new, l_old))
    hi = hi.index_copy(1, sel, torch.where(own, u_new, u_old))
    bad = lo > hi
    return torch.where(bad, hi, lo), torch.where(bad, lo, hi)


def relax_node(p: Any, l: Tensor, u: Tensor, mode: str, tangent: str, alpha: Any = None) -> tuple[Tensor, ...]:
    """The optimize-mode relaxation of one nonlinear node on its input box l, u ([B, n]). ``alpha``: ReLU lower
    slopes in [0, 1] ([B, n] or per row [B, S, n]) or an S-shaped node's (lower, upper) tangent points."""
    if isinstance(p, ReLU):
        m = ops.RELU_MODES["alpha" if alpha is not None else mode]
        return ops.relu_relax(l.contiguous(), u.contiguous(), alpha, m)
    if isinstance(p, MaxPool2d):
        r = p.relax(Box(l.detach(), u.detach()))
        return r.idx, r.dom, dr.maxpool_interval(p, l, u)[1]
    return dr.elementwise_lines(p, l, u, mode, tangent, alpha)


def forward_pass(g: Graph, prm: list[dict], reg: DiffRegion, cfg: tuple[str, str, bool] | None,
                 alphas: dict[int, Any] | None = None, tangent: str = "bisect", rows: RowSlopes | None = None,
                 record_sel: bool = False, splits: Splits | None = None) -> DiffPass:
    """Boxes of every node (refined by back-substitution where the method asks) and the relaxations.
    ``alphas`` (node id -> ReLU lower slopes or S-shaped tangent points, see :func:`relax_node`) replaces
    the method's choice there; ``rows``: alpha-CROWN's per-row ReLU slopes; ``record_sel``: keep the
    neurons each refinement bounded in ``.sel``; ``splits``: branch and bound's sub-domains, one per sample."""
    n = len(g.nodes)
    st = DiffPass(g, prm, reg, [None] * n, [None] * n, rows, {} if record_sel else None, splits=splits)
    st.box[0] = (reg.center - reg.radius, reg.center + reg.radius)
    depth = exact_depth(g, reg.p)
    for nd in g.nodes[1:]:
        p = nd.prim
        if splits is not None and nd.id in splits.sign:
            b_in = st.box[nd.inputs[0]]
            assert b_in is not None
            st.box[nd.inputs[0]] = splits.clip(nd.id, *b_in)
        ins = [st.box[i] for i in nd.inputs]
        if cfg is not None and is_nonlinear(p):
            l, u = ins[0]  # type: ignore[misc]
            a = None if alphas is None else alphas.get(nd.id)
            st.relax[nd.id] = relax_node(p, l, u, cfg[0], tangent, a)
        box = interval(p, prm[nd.id], ins)  # type: ignore[arg-type]
        known = None if splits is None else splits.known(nd.id, *box)
        if known is not None:  # branch and bound: a sub-domain keeps the region's (or its parent's) bounds here
            st.box[nd.id] = box = known
            if nd.id not in splits.refine:  # type: ignore[union-attr]
                continue
        if cfg is not None and cfg[1] == "backsub" and depth[nd.id] > 1 and \
                not isinstance(p, (ReLU, Elementwise, Concat)) \
                and any(is_nonlinear(g.nodes[w].prim) for w in g.consumers[nd.id]):
            box = _refine(st, nd.id, box, cfg[2])
        st.box[nd.id] = box
    return st


def graph_bounds_diff(g: Graph, reg: DiffRegion, C: Tensor, method: str, dtype: torch.dtype,
                      lower_slope: str | None = None, alphas: dict[int, Any] | None = None,
                      tangent: str = "bisect", rows: RowSlopes | None = None,
                      upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """Differentiable lower / upper bounds of ``C f(x')`` over the region: C [B, S, K] -> ([B, S], [B, S]).
    ``rows``: alpha-CROWN's per-row ReLU lower slopes (method "crown"); ``upper`` False: upper is None."""
    st = diff_pass(g, reg, C, method, dtype, lower_slope, alphas, tangent, rows)
    return output_bounds(st, C, upper)


def diff_pass(g: Graph, reg: DiffRegion, C: Tensor, method: str, dtype: torch.dtype,
              lower_slope: str | None = None, alphas: dict[int, Any] | None = None, tangent: str = "bisect",
              rows: RowSlopes | None = None, record_sel: bool = False, live: bool = True,
              splits: Splits | None = None) -> DiffPass:
    """The checked forward pass of :func:`graph_bounds_diff` (boxes and relaxations of every node); ``live``
    False: the parameters as constants (no gradient reaches them: alpha-CROWN's slopes only); ``splits``:
    branch and bound's sub-domains (one per sample; a back-substitution method)."""
    if method not in DIFF_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(DIFF_METHODS)}")
    check_graph(g)
    check_kw(g, method)
    cfg = DIFF_METHODS[method]
    if lower_slope is not None and cfg is not None:
        cfg = (lower_slope, cfg[1], cfg[2])
    prm = node_params(g, dtype)
    if not live:
        prm = [{k: (None if t is None else t.detach()) for k, t in d.items()} for d in prm]
    if splits is not None and cfg is None:
        raise ValueError("split constraints need a back-substitution method (crown, fastlin, kw, crown-ibp)")
    st = forward_pass(g, prm, reg, cfg, alphas, tangent, rows, record_sel, splits)
    st.cfg = cfg
    return st


def output_bounds(st: DiffPass, C: Tensor, upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """Bounds of ``C f`` ([B, S, K] -> ([B, S], [B, S])) from a forward pass; ``upper`` False: the lower
    bound alone (upper None; half the back-substitution rows)."""
    out = st.g.output
    stop = st.g.nodes[out].inputs[0] if st.cfg is None else 0
    return two_sided(st, out, C, stop, upper=upper)
