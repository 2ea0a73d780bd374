"""Branch and bound over ReLU splits with alpha/beta-CROWN bounds (Wang et al., "Beta-CROWN", NeurIPS 2021).

The question: does ``A f(x) <= b`` (a conjunction of R rows; a counterexample region) hold for some x in
the input region? A sub-domain is closed when some row's certified lower bound exceeds its b
(``max_i (lb_i - b_i) > 0``) or when its split boxes prove it empty; the answer is "unsat" when every
sub-domain is closed. The sub-domains of a split cover their parent (``z_j >= 0`` or ``z_j <= 0``), so the
leaves cover the region.

Each batch of sub-domains (the children of the open sub-domains with the lowest bounds) is bounded in one
call: the optimize mode (:mod:`fastcert.algorithms.diff`) computes CROWN's intermediate bounds on each
sub-domain (split boxes applied), then projected Adam maximizes the output rows' lower bounds over the ReLU
lower slopes (alpha) and the split multipliers (beta); the certify mode (:func:`graph_bounds`, float64,
rigorous rounding) then bounds each sub-domain with the best slopes and multipliers found. Only certified
bounds close a sub-domain; whatever the optimizer did, they are sound (any alpha in [0, 1], beta >= 0).

Counterexamples: the minimizer of each row's final linear lower bound over the input box (a vertex of the
box) is evaluated on the network; a point with ``A f - b <= 0`` is handed to ``confirm`` (which proves it
with rigorous arithmetic) and answers "sat".

Branching: the split neuron of a sub-domain is the unsplit unstable neuron with the largest
intercept score (BaBSR, Bunel et al., JMLR 2020): the loss its upper line's intercept ``-l u / (u - l)``
causes in the rows that use it (coefficient < 0), with the coefficient-times-width score as the fallback.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from fastcert.algorithms.alpha import initial_rows, region_of
from fastcert.algorithms.diff import DiffRegion, diff_pass, output_bounds
from fastcert.algorithms.graph_bounds import RowSlopes, graph_bounds
from fastcert.algorithms.bab_leaf import solve_leaf
from fastcert.algorithms.splits import Splits
from fastcert.graph.ir import Graph, is_nonlinear
from fastcert.options import BoundOptions
from fastcert.primitives.relu import ReLU


@dataclass(frozen=True)
class BabOptions:
    """batch: sub-domains bounded per call (the children of ``batch // 2`` parents); iterations: Adam steps on
    alpha and beta per batch (``root_iterations`` on the whole region); lr_alpha / lr_beta: their learning
    rates; max_domains: the cap on open sub-domains (reached: "unknown"); dtype: the optimize mode's."""

    batch: int = 256
    iterations: int = 20
    root_iterations: int = 50
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    max_domains: int = 200_000
    dtype: torch.dtype = torch.float32
    #: the sub-domains' intermediate bounds: "none" keeps the root's (with the split boxes), "after" recomputes
    #: (CROWN, intersected with the root's) the nodes after the earliest node split in the batch
    recompute: str = "none"
    #: filtered smart branching: the number of BaBSR candidates whose children are bounded to choose (0, 1: none)
    fsb: int = 0


@dataclass
class BabResult:
    """verdict: "unsat", "sat", "unknown" (the domain cap or no neuron left to split), "timeout" or "stopped"
    (the caller's ``stop`` said so); x: the confirmed counterexample (sat); lower: the smallest
    ``max_i (lb_i - b_i)`` over the open sub-domains (> 0 once unsat); counts and times of the run."""

    verdict: str
    x: Any = None
    lower: float = -math.inf
    domains: int = 0  # sub-domains bounded (root included)
    batches: int = 0
    leaves: int = 0  # sub-domains with every unstable neuron split, decided by their LP's multipliers
    max_open: int = 0
    time_s: float = 0.0
    bound_s: float = 0.0  # time in bounding batches (optimize + certify)
    certify_s: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def domains_per_s(self) -> float:
        return self.domains / self.bound_s if self.bound_s > 0 else 0.0


@dataclass(order=True)
class _Domain:
    value: float
    key: int
    sign: dict[int, Tensor] = field(compare=False)  # ReLU node -> [n] int8
    branch: tuple[int, int] | None = field(compare=False, default=None)  # (node, neuron) to split next
    depth: int = field(compare=False, default=0)
    alpha: dict[int, Tensor] | None = field(compare=False, default=None)  # ReLU node -> [S, n] its lower rows' slopes
    beta: dict[int, Tensor] | None = field(compare=False, default=None)  # ReLU node -> [S, n] its multipliers


def relu_nodes(g: Graph) -> list[int]:
    """The ReLU nodes of g (the split candidates); refuses graphs with other nonlinear nodes by name."""
    out = []
    for nd in g.nodes[1:]:
        if isinstance(nd.prim, ReLU):
            out.append(nd.id)
        elif is_nonlinear(nd.prim):
            raise ValueError(f"{nd.name}: branch and bound splits ReLU neurons only, and this node is "
                             f"{nd.prim.describe()}; use the incomplete bounds (alpha-crown) for this network")
    return out


def _repeat_prob(prob: Any, B: int) -> Any:
    return type(prob)(*(t.expand(B, *t.shape[1:]).contiguous() if isinstance(t, Tensor) and t.dim() > 0 else t
                        for t in (prob.x0, prob.eps, prob.p, prob.l0, prob.u0)))


def _repeat_region(reg: DiffRegion, B: int) -> DiffRegion:
    def rep(t: Any) -> Any:
        return t.expand(B, *t.shape[1:]).contiguous() if isinstance(t, Tensor) else t
    return DiffRegion(rep(reg.center), rep(reg.radius), reg.p, rep(reg.x0), rep(reg.eps))


class Bounder:
    """Bounds batches of sub-domains of one region and one row set."""

    def __init__(self, g: Graph, prob64: Any, A: Tensor, b: Tensor, opts: BabOptions, bopts: BoundOptions,
                 known: dict[int, tuple[Tensor, Tensor]] | None = None) -> None:
        self.g, self.prob64, self.opts, self.bopts = g, prob64, opts, bopts
        self.A64 = A.double()
        self.b = b.double()
        self.relus = relu_nodes(g)
        self.reg = region_of(prob64)
        if opts.dtype != torch.float64:
            self.reg = DiffRegion(*(t.to(opts.dtype) if isinstance(t, Tensor) else t for t in
                                    (self.reg.center, self.reg.radius, self.reg.p, self.reg.x0, self.reg.eps)))
        self.certify_s = 0.0
        #: the root's certified boxes of the ReLUs' inputs (set by the first, full bound; the sub-domains keep them)
        self.known: dict[int, tuple[Tensor, Tensor]] = dict(known or {})
        #: past it, a batch's slope optimization stops at the step it has reached (its best step is certified)
        self.deadline: float | None = None

    def bound(self, sign: dict[int, Tensor], iterations: int, first: int | None = None,
              alpha0: dict[int, Tensor] | None = None, beta0: dict[int, Tensor] | None = None) -> dict[str, Any]:
        """Sub-domains ``sign`` (node -> [B, n]): certified ``value`` [B] (max_i lb_i - b_i; +inf when proved
        empty), candidate points ``x`` [B, R, n0] (float64), branching choice ``node``, ``neuron`` [B] (-1:
        none left), the kept ``alpha`` / ``beta`` (node -> [B, S, n]). ``alpha0`` / ``beta0``: starting slopes
        and multipliers (node -> [B, S, n], e.g. the parents'; default CROWN's slopes and 0); ``first``: the
        earliest node split in this batch (``recompute="after"``)."""
        g, S, dt = self.g, self.A64.shape[0], self.opts.dtype
        B = next(iter(sign.values())).shape[0]
        reg = _repeat_region(self.reg, B)
        C = self.A64.to(dt)[None].expand(B, S, -1).contiguous()
        refine: frozenset[int] = frozenset()
        if first is not None and self.opts.recompute == "after":
            refine = frozenset(v for v in self.known if v > first)
        splits = Splits(sign, boxes=self.known, refine=refine)
        with torch.no_grad():
            st = diff_pass(g, reg, C, "crown", dt, record_sel=True, live=False, splits=splits)
        rows = initial_rows(st, S, False)
        out_alpha = rows.alpha.get(g.output, {})
        if alpha0:
            with torch.no_grad():
                for v, a in out_alpha.items():
                    if v in alpha0:
                        a[:, :S] = alpha0[v].to(dt)
        betas = {}
        for v in self.relus:
            if bool((sign[v] != 0).any()):
                b0 = beta0.get(v) if beta0 else None
                t = torch.zeros(B, S, g.n(v), dtype=dt) if b0 is None else b0.to(dt).clone()
                betas[v] = t.requires_grad_()
        splits.beta = betas
        st.rows, st.trace = rows, {}
        keep_a, keep_b = self._optimize(st, C, out_alpha, betas, iterations)
        value = self._certify(sign, rows.sel, keep_a, keep_b, refine)
        out: dict[str, Any] = {"value": value, "alpha": {v: a[:, :S] for v, a in keep_a.items()}, "beta": keep_b}
        trace = st.trace
        # candidate points: each row's lower-bound minimizer over the input box
        lam0 = trace.get(0)
        if lam0 is not None:
            l0, u0 = self.prob64.l0, self.prob64.u0
            out["x"] = torch.where(lam0.double() >= 0, l0[:, None, :], u0[:, None, :])
        node, neuron = self._branch(st, trace, sign, rows.sel, {g.output: keep_a}, keep_b, refine)
        out["node"], out["neuron"] = node, neuron
        out["boxes"] = {g.nodes[v].inputs[0]: tuple(t.detach().double() for t in st.box[g.nodes[v].inputs[0]])
                        for v in self.relus}
        return out

    def _optimize(self, st: Any, C: Tensor, alphas: dict[int, Tensor], betas: dict[int, Tensor],
                  iterations: int) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Projected Adam on the output rows' slopes (``alphas``: node -> [B, 2S, n]) and multipliers (``betas``:
        node -> [B, S, n]) of the optimize-mode pass ``st``; returns each sub-domain's best step's values (by its
        best row margin). The last step's coefficients stay in ``st.trace``."""
        B, dt = C.shape[0], self.opts.dtype
        b = self.b.to(dt)
        best = torch.full((B,), -math.inf, dtype=dt)
        keep_a = {v: a.detach().clone() for v, a in alphas.items()}
        keep_b = {v: t.detach().clone() for v, t in betas.items()}
        optim = None
        if (alphas or betas) and iterations > 0:
            # fused: one kernel per step instead of per tensor (prop_5_0.05, 20 s: 661-783 sub-domains/s vs 544)
            optim = torch.optim.Adam([{"params": list(alphas.values()), "lr": self.opts.lr_alpha},
                                      {"params": list(betas.values()), "lr": self.opts.lr_beta}], fused=True)
        for it in range(iterations + 1):
            with torch.enable_grad():
                lo, _ = output_bounds(st, C, upper=False)
                loss = -lo.sum()
            val = (lo.detach() - b).amax(1)
            better = val > best
            if bool(better.any()):
                best = torch.where(better, val, best)
                for d, src in ((keep_a, alphas), (keep_b, betas)):
                    for v, t in src.items():
                        d[v][better] = t.detach()[better]
            if optim is None or it == iterations or not loss.requires_grad:
                break
            if self.deadline is not None and time.perf_counter() > self.deadline:
                break
            optim.zero_grad()
            loss.backward()
            optim.step()
            with torch.no_grad():
                for a in alphas.values():
                    a.clamp_(0, 1)
                for t in betas.values():
                    t.clamp_(min=0)
        return keep_a, keep_b

    def _certify(self, sign: dict[int, Tensor], sel: dict[int, Tensor], alpha: dict[int, Tensor],
                 beta: dict[int, Tensor], refine: frozenset[int]) -> Tensor:
        """The certified float64 ``max_i lb_i - b_i`` [B] with these slopes and multipliers (+inf: proved empty);
        the root's call (one sub-domain, no known boxes yet) keeps its boxes as the known ones."""
        g, S = self.g, self.A64.shape[0]
        B = next(iter(sign.values())).shape[0]
        t0 = time.perf_counter()
        cs = Splits(sign, {v: t.double() for v, t in beta.items()}, boxes=self.known, refine=refine)
        got: list[Any] = []
        lb, _ = graph_bounds(g, _repeat_prob(self.prob64, B), self.A64[None].expand(B, S, -1).contiguous(), "crown",
                             opts=self.bopts, rows=RowSlopes(sel, {g.output: {v: a.double() for v, a in alpha.items()}}),
                             splits=cs, upper=False, boxes_out=got)
        if not self.known and B == 1:  # the root
            ins = [g.nodes[v].inputs[0] for v in self.relus]
            self.known = {w: (got[w].l, got[w].u) for w in ins if got[w] is not None}
        self.certify_s += time.perf_counter() - t0
        value = (lb - self.b).amax(1)
        if cs.empty is not None:
            value = torch.where(cs.empty, torch.full_like(value, math.inf), value)
        return value

    def _branch(self, st: Any, trace: dict[int, Tensor], sign: dict[int, Tensor], sel: dict[int, Tensor],
                alpha: dict[int, dict[int, Tensor]], beta: dict[int, Tensor],
                refine: frozenset[int]) -> tuple[Tensor, Tensor]:
        """Per sub-domain, the neuron to split next ([B] node ids and neuron indices; -1: none left): BaBSR's
        intercept score (fallback: coefficient times width); with ``opts.fsb`` = k > 0, of its k best
        candidates the one whose two children have the best smaller bound, each child bounded once with the
        sub-domain's slopes and multipliers (filtered smart branching, De Palma et al., ICLR 2021)."""
        g = self.g
        scores, backup, ids = [], [], []
        for v in self.relus:
            w = g.nodes[v].inputs[0]
            l, u = (t.detach() for t in st.box[w])
            a = trace.get(v)
            open_ = (l < 0) & (u > 0) & (sign[v] == 0)
            width = (u - l).clamp_min(1e-30)
            if a is None:
                a = torch.zeros(l.shape[0], 1, l.shape[1], dtype=l.dtype)
            icpt = (-l * u / width).clamp_min(0)
            s1 = ((-a).clamp_min(0) * icpt[:, None, :]).sum(1)
            s2 = (a.abs() * torch.minimum(u, -l)[:, None, :]).sum(1) + 1e-30 * width
            zero = torch.zeros((), dtype=l.dtype)
            scores.append(torch.where(open_, s1, zero - 1))
            backup.append(torch.where(open_, s2, zero - 1))
            ids.append(torch.full((l.shape[1],), v))
        s1, s2, vid = torch.cat(scores, 1), torch.cat(backup, 1), torch.cat(ids)
        offs = torch.cat([torch.arange(g.n(v)) for v in self.relus])
        m1, i1 = s1.max(1)
        m2, i2 = s2.max(1)
        idx = torch.where(m1 > 0, i1, i2)
        none = m2 < 0
        k = min(self.opts.fsb, s1.shape[1])
        if k > 1 and not bool(none.all()):
            score = torch.where((m1 > 0)[:, None], s1, s2)
            top, cand = score.topk(k, 1)  # [B, k]
            idx = self._fsb(sign, sel, alpha, beta, refine, vid, offs, top, cand, idx)
        node = torch.where(none, -1, vid[idx])
        neuron = torch.where(none, -1, offs[idx])
        return node, neuron

    def _fsb(self, sign: dict[int, Tensor], sel: dict[int, Tensor], alpha: dict[int, dict[int, Tensor]],
             beta: dict[int, Tensor], refine: frozenset[int], vid: Tensor, offs: Tensor, top: Tensor, cand: Tensor,
             idx: Tensor) -> Tensor:
        g, S, dt = self.g, self.A64.shape[0], self.opts.dtype
        B, k = cand.shape
        # children: (candidate c, side) blocks of B sub-domains: c-th candidate active, then inactive
        sg = {v: s.repeat(2 * k, 1).clone() for v, s in sign.items()}
        for c in range(k):
            for side, val in ((0, 1), (1, -1)):
                rows_ = torch.arange(B) + (2 * c + side) * B
                cv, co = vid[cand[:, c]], offs[cand[:, c]]
                for v in self.relus:
                    m = cv == v
                    if bool(m.any()):
                        sg[v][rows_[m], co[m]] = val
        N = 2 * k * B
        bt = {v: (beta[v] if v in beta else torch.zeros(B, S, g.n(v), dtype=dt)).repeat(2 * k, 1, 1)
              for v in self.relus if bool((sg[v] != 0).any())}
        al = {start: {v: a.repeat(2 * k, 1, 1) for v, a in d.items()} for start, d in alpha.items()}
        C = self.A64.to(dt)[None].expand(N, S, -1).contiguous()
        with torch.no_grad():
            st = diff_pass(g, _repeat_region(self.reg, N), C, "crown", dt, live=False,
                           splits=Splits(sg, bt, boxes=self.known, refine=refine))
            st.rows = RowSlopes(sel, al)
            lo, _ = output_bounds(st, C, upper=False)
        val = (lo - self.b.to(dt)).amax(1)
        if st.splits is not None and st.splits.empty is not None:
            val = torch.where(st.splits.empty, torch.full_like(val, math.inf), val)
        val = val.reshape(k, 2, B).amin(1).T  # [B, k]: the worse child per candidate
        val = torch.where(top >= 0, val, torch.full_like(val, -math.inf))
        best = val.argmax(1)
        pick = cand.gather(1, best[:, None])[:, 0]
        return torch.where(top[:, 0] >= 0, pick, idx)


def bab(g: Graph, prob64: Any, A: Tensor, b: Tensor, *, deadline: float | None = None,
        opts: BabOptions | None = None, bopts: BoundOptions | None = None,
        evaluate: Callable[[Tensor], Tensor] | None = None,
        confirm: Callable[[Any], Any] | None = None, log: Callable[[str], None] | None = None,
        known: dict[int, tuple[Tensor, Tensor]] | None = None, stop: Callable[[], bool] | None = None) -> BabResult:
    """Decide whether ``A f(x) <= b`` (A [R, K], b [R]) holds for some x in ``prob64``'s region (one sample,
    float64, a box or an L-inf ball) for the ReLU network graph g. ``evaluate``: x [N, n0] float64 -> f(x)
    [N, K] (the candidate points' check); ``confirm``: a flat point with ``A f - b <= 0`` -> the proved
    counterexample or None; ``known``: node id -> certified box (l, u: [1, n] float64) of the node's output on
    the region (e.g. alpha-CROWN's pre-activation bounds), kept by every sub-domain (default: the root's
    CROWN bounds); ``stop``: polled between batches, True ends the run with verdict "stopped" (e.g. another
    solver decided the job). Returns a :class:`BabResult`."""
    opts = opts or BabOptions()
    bopts = bopts or BoundOptions()
    check_box_region(prob64, "bab")
    return _Search(g, prob64, Bounder(g, prob64, A, b, opts, bopts, known), bopts, deadline, evaluate, confirm,
                   log, stop).run()


class _Search:
    """One :func:`bab` run: the priority queue of open sub-domains and the loop over batches."""

    def __init__(self, g: Graph, prob64: Any, bd: Bounder, bopts: BoundOptions, deadline: float | None,
                 evaluate: Any, confirm: Any, log: Callable[[str], None] | None,
                 stop: Callable[[], bool] | None = None) -> None:
        self.g, self.prob64, self.bd, self.bopts, self.deadline, self.stop = g, prob64, bd, bopts, deadline, stop
        bd.deadline = deadline
        self.evaluate, self.confirm = evaluate, confirm
        self.say = log or (lambda _m: None)
        self.t_start = time.perf_counter()
        self.res = BabResult("unknown")
        self.queue: list[_Domain] = []
        self.counter = itertools.count()
        self.found: list[Any] = []  # a counterexample from a leaf's LP

    def done(self, verdict: str, x: Any = None, lower: float = -math.inf) -> BabResult:
        return _done(self.res, verdict, self.t_start, self.bd, x=x, lower=lower)

    def bound(self, sign: dict[int, Tensor], iterations: int, **kw: Any) -> dict[str, Any]:
        t = time.perf_counter()
        out = self.bd.bound(sign, iterations, **kw)
        self.res.bound_s += time.perf_counter() - t
        self.res.batches += 1
        return out

    def run(self) -> BabResult:
        bd, opts, res = self.bd, self.bd.opts, self.res
        root_sign = {v: torch.zeros(1, self.g.n(v), dtype=torch.int8) for v in bd.relus}
        out = self.bound(root_sign, opts.root_iterations)
        res.domains = 1
        xc = _check_points(out, bd, self.evaluate, self.confirm)
        if xc is not None:
            return self.done("sat", x=xc)
        ok = self.push(out, root_sign, 0, [-math.inf])
        if self.found:
            return self.done("sat", x=self.found[0])
        if not ok:
            return self.done("unknown", lower=float(out["value"].min()))
        half = max(1, opts.batch // 2)
        while self.queue:
            res.max_open = max(res.max_open, len(self.queue))
            if self.deadline is not None and time.perf_counter() > self.deadline:
                return self.done("timeout", lower=self.queue[0].value)
            if self.stop is not None and self.stop():
                return self.done("stopped", lower=self.queue[0].value)
            if len(self.queue) > opts.max_domains:
                return self.done("unknown", lower=self.queue[0].value)
            parents = [heapq.heappop(self.queue) for _ in range(min(half, len(self.queue)))]
            if any(p.branch is None for p in parents):
                return self.done("unknown", lower=min(p.value for p in parents))
            sign, alpha0, beta0 = _children(parents, bd, opts.dtype)
            out = self.bound(sign, opts.iterations, first=min(p.branch[0] for p in parents),  # type: ignore[index]
                             alpha0=alpha0, beta0=beta0)
            res.domains += 2 * len(parents)
            xc = _check_points(out, bd, self.evaluate, self.confirm)
            if xc is not None:
                return self.done("sat", x=xc)
            ok = self.push(out, sign, max(p.depth for p in parents) + 1, [p.value for p in parents] * 2)
            if self.found:
                return self.done("sat", x=self.found[0])
            lower = self.queue[0].value if self.queue else math.inf
            res.log.append({"batch": res.batches, "domains": res.domains, "open": len(self.queue), "lower": lower,
                            "t": time.perf_counter() - self.t_start})
            self.say(f"bab: batch {res.batches}, {res.domains} domains bounded, {len(self.queue)} open, "
                     f"lower {lower:.4g}")
            if not ok:
                return self.done("unknown", lower=lower)
        return self.done("unsat", lower=math.inf)

    def push(self, out: dict[str, Any], sign: dict[int, Tensor], depth: int, floor: list[float]) -> bool:
        """Queue the open sub-domains (each never below its parent's bound ``floor``: a child is a subset of
        its parent); fully split ones go to their LP (:func:`_leaf`). False when a leaf stays open."""
        ok = True
        for i in range(out["value"].shape[0]):
            val = max(float(out["value"][i]), floor[i])
            if val > 0:
                continue
            nd_, nr = int(out["node"][i]), int(out["neuron"][i])
            if nd_ < 0:  # every unstable neuron split: the leaf's LP
                self.res.leaves += 1
                closed, xc = _leaf(self.g, self.prob64, self.bd, self.bopts, {v: s[i] for v, s in sign.items()},
                                   {w: (lu[0][i], lu[1][i]) for w, lu in out["boxes"].items()}, self.evaluate,
                                   self.confirm)
                if xc is not None:
                    self.found.append(xc)
                    return True
                ok = ok and closed
                continue
            heapq.heappush(self.queue, _Domain(val, next(self.counter), {v: s[i] for v, s in sign.items()},
                                               (nd_, nr), depth, {v: a[i] for v, a in out["alpha"].items()},
                                               {v: t[i] for v, t in out["beta"].items()}))
        return ok


def check_box_region(prob64: Any, who: str) -> None:
    """Branch and bound's region: one float64 sample, a box (L-inf); ValueError naming ``who`` otherwise."""
    if prob64.x0.dtype != torch.float64 or prob64.x0.shape[0] != 1:
        raise ValueError(f"{who}: the region must be one float64 sample")
    if prob64.p != 0:
        raise ValueError(f"{who}: branch and bound takes a box (L-inf) region")


def prove_candidates(points: Tensor, A: Tensor, b: Tensor, evaluate: Any, confirm: Any) -> Any:
    """A proved counterexample among candidate points ``[N, n0]`` (float64): the first (of at most 8) whose
    evaluation has ``A f - b <= 0`` and that ``confirm`` proves; None without evaluate / confirm."""
    if evaluate is None or confirm is None:
        return None
    v = (evaluate(points) @ A.T - b).amax(1)
    for i in torch.nonzero(v <= 0).flatten().tolist()[:8]:
        xc = confirm(points[i].numpy())
        if xc is not None:
            return xc
    return None


def _check_points(out: dict[str, Any], bd: Bounder, evaluate: Any, confirm: Any) -> Any:
    """A proved counterexample among the batch's candidate points (``out["x"]``), or None."""
    x = out.get("x")
    return None if x is None else prove_candidates(x.reshape(-1, x.shape[-1]), bd.A64, bd.b, evaluate, confirm)


def _leaf(g: Graph, prob64: Any, bd: Bounder, bopts: BoundOptions, sign: dict[int, Tensor], boxes: dict,
          evaluate: Any, confirm: Any) -> tuple[bool, Any]:
    """A fully split sub-domain by its LP (:func:`solve_leaf`): (closed, a proved counterexample or None)."""
    val, xl = solve_leaf(g, prob64, bd.A64, bd.b, sign, boxes, bd.known, bopts)
    if val > 0:
        return True, None
    if xl is not None and evaluate is not None and confirm is not None:
        xt = torch.from_numpy(np.clip(xl, prob64.l0[0].numpy(), prob64.u0[0].numpy()))[None]
        if float((evaluate(xt) @ bd.A64.T - bd.b).amax()) <= 0:
            return False, confirm(xt[0].numpy())
    return False, None


def _children(parents: list[_Domain], bd: Bounder, dtype: torch.dtype) -> tuple[dict, dict, dict]:
    """The two children of each parent ([2K, n] signs per node: first every active side, then every inactive
    one) and their starting slopes and multipliers (the parents'; 0 for a new split)."""
    K = len(parents)
    sign = {v: torch.stack([p.sign[v] for p in parents] * 2) for v in bd.relus}
    for i, p in enumerate(parents):
        assert p.branch is not None
        v, j = p.branch
        sign[v][i, j] = 1
        sign[v][K + i, j] = -1
    alpha0 = {v: torch.stack([p.alpha[v] for p in parents] * 2) for v in parents[0].alpha or {}}  # type: ignore[index]
    beta0 = {}
    for v in bd.relus:
        if any(p.beta and v in p.beta for p in parents) or bool((sign[v] != 0).any()):
            z = torch.zeros(bd.A64.shape[0], bd.g.n(v), dtype=dtype)
            beta0[v] = torch.stack([(p.beta or {}).get(v, z) for p in parents] * 2)
    return sign, alpha0, beta0


def _done(res: BabResult, verdict: str, t_start: float, bd: Bounder, x: Any = None,
          lower: float = -math.inf) -> BabResult:
    res.verdict, res.x, res.lower = verdict, x, lower
    res.time_s = time.perf_counter() - t_start
    res.certify_s = bd.certify_s
    return res


__all__ = ["BabOptions", "BabResult", "Bounder", "bab", "check_box_region", "prove_candidates", "relu_nodes"]
