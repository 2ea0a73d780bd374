"""Branch and bound over input splits, for networks with few inputs (ACAS Xu has 5): the input box is bisected
along one dimension at a time (ReluVal / Neurify; alpha-beta-CROWN's input split), every sub-box bounded by
CROWN with its own intermediate bounds, which tighten as the boxes shrink.

The question is :func:`fastcert.algorithms.bab.bab`'s: does ``A f(x) <= b`` (R rows) hold for some x in the
box? A sub-box is closed when ``max_i (lb_i - b_i) > 0`` for the certified float64 CROWN bounds
(:func:`graph_bounds`, rigorous rounding) on it; the two halves ``[l_d, m]`` and ``[m, u_d]`` of a split
(``m`` a float) cover their parent, so "unsat" (every sub-box closed) is sound; a side is split only where
``m`` lies strictly inside it. Batches: the ``batch // (2 C)`` open sub-boxes with the lowest bounds are
split along their C candidate sides each and the children bounded in one call (at most ``batch`` boxes).

Branching: "lookahead" tries every side of a parent that can be split, its children bounded for each, and keeps the
pair whose open values ``min(v, 0)`` sum highest (``D`` times the bounding per split, and the best split);
"pair" (the default) does the same with two candidates, smear's and the widest side. "smear" (as
ReluVal's: gradient times width): the dimension j with the largest
``sum_i |lambda_ij| (u_j - l_j)``, lambda_i the input coefficients of row i's linear lower bound on the
sub-box; "widest": the largest width relative to the root box's. Measured on ACAS Xu (BENCHMARKS.md): 1_1
prop_3: 3,613 boxes to "unsat" with "smear", 14,451 with "widest", 10,570 with "lookahead", none in 30 s
(41,000 boxes) when smear scored only the row nearest to closing; 2_2 prop_1: 930 boxes with "lookahead",
none in 15 s (17,000 boxes) with "smear" (it kept halving one steep side).

Counterexamples: each child's center and its nearest row's lower-bound minimizer (a vertex) are evaluated
on the network; a point with ``A f - b <= 0`` is handed to ``confirm`` (which proves it with rigorous
arithmetic) and answers "sat".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from fastcert.algorithms.bab import BabResult, check_box_region, prove_candidates
from fastcert.algorithms.graph_bounds import graph_bounds
from fastcert.algorithms.state import Problem
from fastcert.graph.ir import Graph
from fastcert.options import BoundOptions

__all__ = ["InputSplitOptions", "Lookahead", "bisect_boxes", "input_bab", "splittable"]

BRANCHING = ("pair", "lookahead", "smear", "widest")


@dataclass(frozen=True)
class InputSplitOptions:
    """batch: sub-boxes bounded per call, at most (the children of ``batch // (2 C)`` parents, C candidate
    sides each: 1 for "smear" / "widest", 2 for "pair", the input's sides for "lookahead"); max_domains: the cap on
    open sub-boxes (reached: "unknown"); branching: "pair", "lookahead", "smear" or "widest" (see the
    module)."""

    batch: int = 1024
    max_domains: int = 1_000_000
    branching: str = "pair"


class _Boxes:
    """The open sub-boxes: lower / upper corners ``[N, n0]``, certified values ``[N]`` (``max_i lb_i - b_i``)
    and the two candidate dimensions of each (smear's, the widest) ``[N, 2]``."""

    def __init__(self, n0: int) -> None:
        self.L = torch.empty(0, n0, dtype=torch.float64)
        self.U = torch.empty(0, n0, dtype=torch.float64)
        self.val = torch.empty(0, dtype=torch.float64)
        self.dim = torch.empty(0, 2, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.val.shape[0])

    def add(self, L: Tensor, U: Tensor, val: Tensor, dim: Tensor) -> None:
        self.L, self.U = torch.cat([self.L, L]), torch.cat([self.U, U])
        self.val, self.dim = torch.cat([self.val, val]), torch.cat([self.dim, dim])

    def pop_lowest(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Remove and return the k sub-boxes with the lowest values."""
        if k >= len(self):
            idx = torch.arange(len(self))
        else:
            idx = torch.topk(self.val, k, largest=False).indices
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[idx] = False
        out = self.L[idx], self.U[idx], self.val[idx], self.dim[idx]
        self.L, self.U, self.val, self.dim = self.L[keep], self.U[keep], self.val[keep], self.dim[keep]
        return out

    def lowest(self) -> float:
        return float(self.val.min()) if len(self) else math.inf


def bisect_boxes(L: Tensor, U: Tensor, dim: Tensor) -> tuple[Tensor, Tensor]:
    """The two halves of each box along ``dim`` ([2K, n0]: every lower half, then every upper half); the
    float midpoint is shared, so the halves cover the box."""
    K = L.shape[0]
    r = torch.arange(K)
    mid = (L[r, dim] + U[r, dim]) / 2
    mid = torch.minimum(torch.maximum(mid, L[r, dim]), U[r, dim])
    L2, U2 = torch.cat([L, L]), torch.cat([U, U])
    U2[r, dim] = mid
    L2[K + r, dim] = mid
    return L2, U2


def splittable(L: Tensor, U: Tensor) -> Tensor:
    """[B, n0] the sides whose float midpoint lies strictly inside (bisecting them makes progress)."""
    mid = (L + U) / 2
    return (mid > L) & (mid < U)


class _Bounder:
    def __init__(self, g: Graph, A: Tensor, b: Tensor, width0: Tensor, bopts: BoundOptions) -> None:
        self.g, self.A, self.b, self.bopts = g, A.double(), b.double(), bopts
        self.width0 = width0.clamp_min(1e-300)

    def bound(self, L: Tensor, U: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Certified values [B], split candidates [B, 2] (smear's, the widest; -1: every side has width 0)
        and candidate points [2B, n0] of the boxes ``[L, U]``."""
        B, R = L.shape[0], self.A.shape[0]
        x0 = torch.minimum(torch.maximum((L + U) / 2, L), U)
        prob = Problem(x0, ((U - L) / 2).amax(1), 0, L, U)
        lam: list[Tensor] = []
        lb, _ = graph_bounds(self.g, prob, self.A[None].expand(B, R, -1).contiguous(), "crown", opts=self.bopts,
                             upper=False, input_rows=lam)
        margin = lb - self.b
        val = margin.amax(1)
        near = margin.argmax(1)
        width = U - L
        can = splittable(L, U)
        rows = lam[0][torch.arange(B), near] if lam else torch.zeros_like(L)
        wide = torch.where(can, width / self.width0, -1.0)
        smear = lam[0].abs().sum(1) * width if lam else wide
        smear = torch.where(can, smear, -1.0)
        smear = torch.where(smear.amax(1, keepdim=True) > 0, smear, wide)
        dim = torch.stack([smear.argmax(1), wide.argmax(1)], 1)
        dim = torch.where(can.any(1, keepdim=True), dim, -1)
        vertex = torch.where(rows >= 0, L, U)
        return val, dim, torch.cat([x0, vertex])


def input_bab(g: Graph, prob64: Any, A: Tensor, b: Tensor, *, deadline: float | None = None,
              opts: InputSplitOptions | None = None, bopts: BoundOptions | None = None,
              evaluate: Callable[[Tensor], Tensor] | None = None,
              confirm: Callable[[Any], Any] | None = None, log: Callable[[str], None] | None = None) -> BabResult:
    """Decide whether ``A f(x) <= b`` (A [R, K], b [R]) holds for some x in ``prob64``'s box (one float64
    sample; an L-inf region) by input splitting. ``evaluate``: x [N, n0] float64 -> f(x) [N, K];
    ``confirm``: a flat point with ``A f - b <= 0`` -> the proved counterexample or None. Returns a
    :class:`BabResult` (``leaves``: boxes that could not be split further, "unknown")."""
    opts = opts or InputSplitOptions()
    bopts = bopts or BoundOptions()
    if opts.branching not in BRANCHING:
        raise ValueError(f"input_bab: unknown branching {opts.branching!r}; choose one of {list(BRANCHING)}")
    if opts.batch < 2:
        raise ValueError(f"input_bab: batch must be at least 2 (the two children of a split), got {opts.batch}")
    check_box_region(prob64, "input_bab")
    t_start = time.perf_counter()
    A64, b64 = A.double(), b.double()
    L0, U0 = prob64.l0.reshape(1, -1).double(), prob64.u0.reshape(1, -1).double()
    bd = _Bounder(g, A64, b64, (U0 - L0)[0], bopts)
    res = BabResult("unknown")
    say = log or (lambda _m: None)

    def finish(verdict: str, lower: float, x: Any = None) -> BabResult:
        res.verdict, res.lower, res.x = verdict, lower, x
        res.time_s = time.perf_counter() - t_start
        res.certify_s = res.bound_s
        return res

    open_ = _Boxes(L0.shape[1])
    dims = torch.nonzero((U0 - L0)[0] > 0).flatten()  # the sides that can be split
    L, U, floor = L0, U0, torch.full((1,), -math.inf, dtype=torch.float64)
    plan: Lookahead | None = None  # the last batch's candidate splits (None: one per parent)
    cands = {"smear": [0], "widest": [1], "pair": [0, 1]}.get(opts.branching)  # None: every side
    C = len(cands) if cands else dims.numel()
    while True:
        t = time.perf_counter()
        val, dim, points = bd.bound(L, U)
        res.bound_s += time.perf_counter() - t
        res.domains += L.shape[0]
        res.batches += 1
        xc = prove_candidates(points, A64, b64, evaluate, confirm)
        if xc is not None:
            return finish("sat", -math.inf, xc)
        val = torch.maximum(val, floor)  # a child is a subset of its parent
        if plan is not None:  # per parent, the pair of children of its best candidate
            L, U, val, dim = plan.pick(L, U, val, dim)
        keep = ~(val > 0)
        stuck = keep & (dim[:, 0] < 0)
        if bool(stuck.any()):  # a box too small to split that its bound does not close (no counterexample)
            res.leaves += int(stuck.sum())
            return finish("unknown", min(open_.lowest(), float(val[keep].min())))
        open_.add(L[keep], U[keep], val[keep], dim[keep])
        lower = open_.lowest()
        res.max_open = max(res.max_open, len(open_))
        res.log.append({"batch": res.batches, "domains": res.domains, "open": len(open_), "lower": lower,
                        "t": time.perf_counter() - t_start})
        say(f"input split: batch {res.batches}, {res.domains} boxes bounded, {len(open_)} open, lower {lower:.4g}")
        if not len(open_):
            return finish("unsat", math.inf)
        if deadline is not None and time.perf_counter() > deadline:
            return finish("timeout", lower)
        if len(open_) > opts.max_domains:
            return finish("unknown", lower)
        Lp, Up, vp, dp = open_.pop_lowest(max(1, opts.batch // (2 * C)))
        plan = Lookahead(dp[:, cands] if cands else dims[None].expand(Lp.shape[0], C),
                         None if cands else splittable(Lp, Up)[:, dims])
        L, U, floor = plan.children(Lp, Up, vp)
        if C == 1:
            plan = None


class Lookahead:
    """The children of K parents, each split along its candidate sides ``cand`` [K, C] (a side repeated
    among a parent's candidates is split once; ``ok`` [K, C]: False skips a candidate): blocks per
    candidate c, every lower half then every upper half of the parents for which c is new; :meth:`pick`
    keeps per parent the pair whose summed open values ``min(v, 0)`` are the highest (the split that closes
    most)."""

    def __init__(self, cand: Tensor, ok: Tensor | None = None) -> None:
        K, C = cand.shape
        self.cand = cand
        self.idx = []
        for c in range(C):
            new = (cand[:, c:c + 1] != cand[:, :c]).all(1) if c else torch.ones(K, dtype=torch.bool)
            if ok is not None:
                new &= ok[:, c]
            self.idx.append(torch.nonzero(new).flatten())

    def children(self, L: Tensor, U: Tensor, val: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        parts = [bisect_boxes(L[i], U[i], self.cand[i, c]) for c, i in enumerate(self.idx)]
        floor = torch.cat([val[i].repeat(2) for i in self.idx])
        return torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts]), floor

    def pick(self, L: Tensor, U: Tensor, val: Tensor, dim: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per parent, its best candidate's two children (every parent has a candidate)."""
        K, C = self.cand.shape
        score = torch.full((C, K), -math.inf, dtype=val.dtype)
        first = torch.zeros(C, K, dtype=torch.long)
        off = 0
        for c, i in enumerate(self.idx):
            n = i.numel()
            v = val[off:off + 2 * n].clamp(max=0).reshape(2, n)
            score[c, i] = v.sum(0)
            first[c, i] = off + torch.arange(n)
            off += 2 * n
        best = score.argmax(0)
        lo = first[best, torch.arange(K)]
        n_best = torch.tensor([i.numel() for i in self.idx])[best]
        sel = torch.cat([lo, lo + n_best])
        return L[sel], U[sel], val[sel], dim[sel]
