"""alpha-CROWN (Xu et al., "Fast and Complete", ICLR 2021): CROWN with optimized ReLU lower slopes and
S-shaped (sigmoid, tanh, arctan) tangent points.

Every unstable ReLU neuron's lower line ``alpha z`` is valid for any ``alpha`` in [0, 1]; CROWN picks 0 or
1, alpha-CROWN picks, per *start node and row* (as auto_LiRPA keys them), the slopes that maximize the
bound, by projected Adam on the optimize-mode bound (:mod:`fastcert.algorithms.diff`, whose gradients
w.r.t. the slopes come from the ``fastcert::relax_back`` backward kernel). The optimized slopes are then
handed to the *certify* engine (:func:`fastcert.algorithms.graph_bounds.graph_bounds` with
:class:`~fastcert.algorithms.graph_bounds.RowSlopes`), which bounds with them rigorously: the result is
sound by construction, whatever the optimizer did. The certified CROWN bound is computed too and the
tighter of the two is returned per entry, so alpha-CROWN is never looser than CROWN.

Options (:class:`fastcert.options.AlphaOptions`): iterations, learning rate, its decay, early stop
(patience), and whether the intermediate bounds' slopes are optimized as well (auto_LiRPA 0.3's default
keeps CROWN's intermediate bounds fixed and optimizes the output's slopes only; so does fastcert's).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from fastcert.algorithms.diff import DiffPass, DiffRegion, diff_pass, output_bounds
from fastcert.algorithms.diff_relax import sshape_tangent_points
from fastcert.algorithms.dispatch import network_bounds
from fastcert.algorithms.graph_bounds import RowSlopes, graph_bounds
from fastcert.graph.ir import Graph
from fastcert.layers.base import Box
from fastcert.options import AlphaOptions, BoundOptions
from fastcert.primitives.relu import ReLU
from fastcert.primitives.sshape import SShaped
from fastcert.rounding import round_down, round_up


def initial_rows(st: DiffPass, S: int, intermediate: bool, max_bytes: int = 1 << 62) -> RowSlopes:
    """CROWN's own lines as alpha-CROWN's starting point: for the output node (its S specification rows) and,
    with ``intermediate``, for every refined node (the neurons each bounded) when all their parameters fit
    ``max_bytes`` (else none: the intermediate bounds stay CROWN's); per upstream ReLU node v one [B, 2R, n_v]
    tensor of lower slopes, per upstream S-shaped node one [B, 2R, 2, n_v] of tangent points (the largest
    valid ones, d*, where the box crosses 0: CROWN's own)."""
    g = st.g
    out = g.output
    relus = [nd.id for nd in g.nodes[1:] if isinstance(nd.prim, ReLU)]
    sshaped = [nd.id for nd in g.nodes[1:] if isinstance(nd.prim, SShaped)]
    B = st.reg.center.shape[0]
    item = st.reg.center.element_size()
    stars: dict[int, Tensor] = {}
    for v in sshaped:
        bx = st.box[g.nodes[v].inputs[0]]
        if st.relax[v] is not None and bx is not None:
            lo, up = sshape_tangent_points(g.nodes[v].prim, bx[0], bx[1], "bisect")  # type: ignore[arg-type]
            stars[v] = torch.stack([lo, up], 1)  # [B, 2, n]

    def size(start: int, R: int) -> int:
        return sum(B * 2 * R * g.n(v) * item * (2 if v in stars else 1)
                   for v in relus + list(stars) if v < start and st.relax[v] is not None)

    sel: dict[int, Tensor] = {out: torch.arange(S)}
    if intermediate and st.sel:
        inter = {v: s for v, s in st.sel.items() if s.numel()}
        if sum(size(v, s.numel()) for v, s in inter.items()) <= max_bytes:
            sel.update(inter)
    alpha: dict[int, dict[int, Tensor]] = {}
    for start, idx in sel.items():
        R = idx.numel()
        d = {}
        for v in relus:
            rel = st.relax[v]
            if v >= start or rel is None:
                continue
            lo_s = rel[0].detach()
            d[v] = lo_s[:, None, :].expand(lo_s.shape[0], 2 * R, lo_s.shape[1]).clone().requires_grad_()
        for v, t in stars.items():
            if v < start:
                d[v] = t[:, None].expand(t.shape[0], 2 * R, *t.shape[1:]).clone().requires_grad_()
        if d:
            alpha[start] = d
    return RowSlopes(sel, alpha)


def _objective(lo: Tensor, up: Tensor, which: str) -> Tensor:
    """The loss to minimize: minus the sum of the lower bounds ("lower"), plus the upper bounds ("both")."""
    return -(lo.sum() - up.sum()) if which == "both" else -lo.sum()


class _Best:
    """Per bound entry ([B, S], lower and upper), the best value seen and the step whose slopes gave it; the
    slopes of the steps still best somewhere (as auto_LiRPA's ``keep_best``, which returns the entrywise
    best bound over the steps; here each such step's slopes are certified again)."""

    def __init__(self, lo: Tensor, up: Tensor, rows: RowSlopes, both: bool) -> None:
        self.both = both  # whether the upper bounds are optimized (and count) too
        self.lo, self.up = lo.detach().clone(), up.detach().clone()
        self.own_lo = torch.zeros(lo.shape, dtype=torch.int64)
        self.own_up = torch.zeros(up.shape, dtype=torch.int64)
        self.snaps: dict[int, dict[int, dict[int, Tensor]]] = {0: _snapshot(rows)}

    def update(self, step: int, lo: Tensor, up: Tensor, rows: RowSlopes) -> bool:
        bl, bu = lo.detach() > self.lo, up.detach() < self.up
        if not bool(bl.any() | bu.any()):
            return False
        self.lo, self.up = torch.where(bl, lo.detach(), self.lo), torch.where(bu, up.detach(), self.up)
        self.own_lo = torch.where(bl, torch.full_like(self.own_lo, step), self.own_lo)
        self.own_up = torch.where(bu, torch.full_like(self.own_up, step), self.own_up)
        self.snaps[step] = _snapshot(rows)
        live = set(self.own_lo.unique().tolist()) | (set(self.own_up.unique().tolist()) if self.both else set())
        for k in [k for k in self.snaps if k not in live]:
            del self.snaps[k]
        return True

    def candidates(self, sel: dict[int, Tensor], limit: int) -> list[RowSlopes]:
        """At most ``limit`` slope sets, each sample taking its own steps: the k-th set gives sample b the
        step that is best on the k-th most entries of b (its most frequent step where it has fewer)."""
        B = self.lo.shape[0]
        per_sample: list[list[int]] = []
        for b in range(B):
            steps = torch.cat([self.own_lo[b], self.own_up[b]]) if self.both else self.own_lo[b]
            vals, counts = steps.unique(return_counts=True)
            order = counts.argsort(descending=True, stable=True)
            per_sample.append([int(vals[i]) for i in order][:limit])
        K = max(len(p) for p in per_sample)
        out = []
        for k in range(K):
            pick = [p[k] if k < len(p) else p[0] for p in per_sample]
            alpha: dict[int, dict[int, Tensor]] = {}
            for start, d in self.snaps[pick[0]].items():
                alpha[start] = {}
                for v, a in d.items():
                    t = a.clone()
                    for b in range(1, B):
                        if pick[b] != pick[0]:
                            t[b] = self.snaps[pick[b]][start][v][b]
                    alpha[start][v] = t
            out.append(RowSlopes(sel, alpha))
        return out


def _snapshot(rows: RowSlopes) -> dict[int, dict[int, Tensor]]:
    return {k: {v: a.detach().clone() for v, a in d.items()} for k, d in rows.alpha.items()}


def optimize_slopes(g: Graph, reg: DiffRegion, C: Tensor, dtype: torch.dtype, opts: AlphaOptions,
                    tangent: str = "bisect", progress: Any = None) -> tuple[list[RowSlopes], dict[str, Any]]:
    """Adam on the optimize-mode bound of ``C f`` (C [B, S, K], detached region) over the ReLU lower slopes
    (projected to [0, 1] after each step). Returns the slope sets to certify (at most
    ``opts.candidates``, see :class:`_Best`; the first is each sample's most often best) and a log
    (``loss`` per step, ``steps``, ``nominal_lower``: the entrywise best optimize-mode lower bound)."""
    reg = DiffRegion(*(t.detach() if isinstance(t, Tensor) else t for t in
                       (reg.center, reg.radius, reg.p, reg.x0, reg.eps)))
    S = C.shape[1]
    with torch.no_grad():
        st0 = diff_pass(g, reg, C, "crown", dtype, tangent=tangent, record_sel=True, live=False)
        lo, up = output_bounds(st0, C)
    rows = initial_rows(st0, S, opts.intermediate, opts.max_bytes)
    params = [a for d in rows.alpha.values() for a in d.values()]
    slopes = [a for d in rows.alpha.values() for v, a in d.items() if isinstance(g.nodes[v].prim, ReLU)]
    intermediate = opts.intermediate and len(rows.sel) > 1
    best = _Best(lo, up, rows, opts.optimize == "both")
    log: dict[str, Any] = {"loss": [float(_objective(lo, up, opts.optimize))], "steps": 0,
                           "intermediate": intermediate}
    if params and opts.iterations > 0:
        _adam(g, reg, C, dtype, opts, tangent, st0 if not intermediate else None, rows, params, slopes, best,
              log, progress)
    log["nominal_lower"] = best.lo
    return best.candidates(rows.sel, opts.candidates), log


def _adam(g: Graph, reg: DiffRegion, C: Tensor, dtype: torch.dtype, opts: AlphaOptions, tangent: str,
          fixed: DiffPass | None, rows: RowSlopes, params: list[Tensor], slopes: list[Tensor], best: _Best,
          log: dict[str, Any], progress: Any) -> None:
    """Projected Adam steps (``slopes``: the ReLU slopes among ``params``, projected to [0, 1]; tangent points
    are projected to their valid ranges where they are used); ``fixed``: the CROWN pass whose intermediate
    bounds are kept (only the output's slopes move), None: every step recomputes them with their slopes."""
    stop = None if opts.time_limit is None else time.perf_counter() + opts.time_limit
    optim = torch.optim.Adam(params, lr=opts.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, opts.decay)
    stall = 0
    for it in range(1, opts.iterations + 1):
        with torch.no_grad():
            for a in slopes:
                a.clamp_(0, 1)
        with torch.enable_grad():
            both = opts.optimize == "both"  # "lower": the output's upper rows are not computed
            if fixed is not None:  # CROWN's intermediate bounds fixed: only the output rows move
                fixed.rows = rows
                lo, up = output_bounds(fixed, C, both)
            else:
                st = diff_pass(g, reg, C, "crown", dtype, tangent=tangent, rows=rows, live=False)
                lo, up = output_bounds(st, C, both)
            loss = _objective(lo, up, opts.optimize)
            # no parameter reached the loss (e.g. tangent points of S-shaped neurons whose boxes take no
            # tangent): nothing to optimize
            last = it == opts.iterations or not loss.requires_grad
            grads = None if last else torch.autograd.grad(loss, params, allow_unused=True)
        improved = best.update(it, lo, up if up is not None else best.up, rows)
        log["loss"].append(float(loss.detach()))
        log["steps"] = it
        if progress is not None:
            progress(it, float(loss.detach()))
        stall = 0 if improved else stall + 1
        if grads is None or stall > opts.patience or (stop is not None and time.perf_counter() > stop):
            break
        for a, gr in zip(params, grads):
            a.grad = gr
        optim.step()
        sched.step()




def region_of(prob: Any) -> DiffRegion:
    """The optimize-mode region of a certify-mode problem (its outward-rounded box, and its ball)."""
    c = (prob.l0 + prob.u0) / 2
    r = (prob.u0 - prob.l0) / 2
    return DiffRegion(c, r, prob.p, prob.x0 if prob.p else None, prob.eps.to(c.dtype) if prob.p else None)


def alpha_crown(g: Graph, prob: Any, C: Tensor, C_exact: Tensor | None = None, opts: Any = None,
                boxes: bool = False, prob64: Any = None) -> tuple[Tensor, Tensor, list[RowSlopes], list[Any] | None]:
    """alpha-CROWN on graph g over the certify-mode problem: C [B, S, K] -> (lower, upper) [B, S], certified:
    the entrywise best of CROWN and of CROWN with each optimized slope set (every one sound). Also the slope
    sets and, with ``boxes``, every node's certified box with the optimized slopes (intersected over the
    sets and with CROWN's: the MIP's pre-activation bounds).

    The slopes are optimized in ``prob``'s dtype; the certified passes run in float64 (``prob64``: the same
    region built in float64; default ``prob`` itself, which must then be float64), whose rounding slack is
    negligible, and are rounded outward to the dtype: a float32 network's weights and C are exact in float64,
    so these are bounds of the same network (the graph engine's float32 rounding analysis is much coarser
    than its float64 one, see docs/architecture.md)."""
    opts = opts or BoundOptions()
    dt = prob.x0.dtype
    p64 = prob if prob64 is None else prob64
    if p64.x0.dtype != torch.float64:
        raise ValueError("alpha_crown: prob64 must be a float64 problem")
    cands, _ = optimize_slopes(g, region_of(prob), C, dt, opts.alpha, opts.tangent)
    C64 = (C_exact if C_exact is not None else C).double().contiguous()
    lo, up, out_boxes = _certify(g, p64, C64, opts, cands, boxes)
    if dt != torch.float64:
        lo, up = round_down(lo, dt), round_up(up, dt)
    return lo, up, cands, out_boxes


def _certify(g: Graph, prob: Any, C: Tensor, opts: Any, cands: list[RowSlopes],
             boxes: bool) -> tuple[Tensor, Tensor, list[Any] | None]:
    """The certified float64 bounds: CROWN's and those with each slope set, entrywise best (and, when asked,
    every node's box, intersected over the passes)."""
    ref: list[Any] = []
    lo, up = graph_bounds(g, prob, C, "crown", opts=opts, boxes_out=ref)
    out_boxes = list(ref) if boxes else None
    for rows in cands:
        rr = RowSlopes(rows.sel, rows.alpha, ref)
        got: list[Any] = []
        la, ua = graph_bounds(g, prob, C, "crown", opts=opts, rows=rr, boxes_out=got)
        lo, up = torch.maximum(lo, la), torch.minimum(up, ua)
        if out_boxes is not None:
            for v, b in enumerate(got):
                o = out_boxes[v]
                if b is not None and o is not None:
                    out_boxes[v] = Box(torch.maximum(o.l, b.l).contiguous(), torch.minimum(o.u, b.u).contiguous())
    return lo, up, out_boxes


def network_alpha_crown(net: Any, shape: tuple[int, ...], prob: Any, C: Tensor, C_exact: Tensor | None = None,
                        opts: Any = None, *, graph: Graph | None = None, prob64: Any = None, boxes: bool = False,
                        crown: tuple[Tensor, Tensor] | None = None
                        ) -> tuple[Tensor, Tensor, list[RowSlopes], list[Any] | None]:
    """:func:`alpha_crown` for a :class:`fastcert.Network` on ``graph`` (default ``net.graph_for(shape)``),
    entrywise never looser than the engines' own CROWN bound of C f (``crown``: already computed)."""
    g = net.graph_for(shape) if graph is None else graph
    lo_a, up_a, cands, box = alpha_crown(g, prob, C, C_exact, opts, boxes=boxes, prob64=prob64)
    lo, up = crown if crown is not None else network_bounds(net, shape, prob, C, "crown", C_exact=C_exact, opts=opts)
    return torch.maximum(lo, lo_a), torch.minimum(up, up_a), cands, box


__all__ = ["alpha_crown", "initial_rows", "network_alpha_crown", "optimize_slopes", "region_of"]
