"""Leaves of branch and bound: sub-domains where every unstable ReLU is split, so the network is affine on them.

The bound of such a leaf is a linear program: ``min_i A_i f(x)`` over the input box and the split constraints
``s_j z_j(x) >= 0`` (z_j affine in x there). HiGHS solves it in float64; its row duals are then the exact
beta multipliers of beta-CROWN (strong duality: the Lagrangian bound with those betas equals the LP optimum),
and an infeasible leaf gets the duals of the phase-one LP ``max t: s_j z_j(x) >= t``, scaled up, which make
the Lagrangian bound as large as needed. Either way the certificate is the certify engine's rigorous bound
with those multipliers (:func:`fastcert.algorithms.graph_bounds.graph_bounds` with
:class:`~fastcert.algorithms.splits.Splits`); the LP itself proves nothing. Its optimal point is a
counterexample candidate.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastcert.algorithms.graph_bounds import graph_bounds
from fastcert.algorithms.splits import Splits
from fastcert.graph.ir import Graph
from fastcert.primitives.relu import ReLU


def affine_pieces(g: Graph, x0: Tensor, masks: dict[int, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The network with ReLU node v replaced by ``z * masks[v]`` ([n_v] 0 / 1) is affine: per node, its output
    as ``J x + c`` from evaluations at x0 and x0 + e_i (float64). Returns (J [n_v, n0], c [n_v]) lists."""
    n0 = x0.numel()
    pts = x0.reshape(1, -1).double().repeat(n0 + 1, 1)
    pts[1:] += torch.eye(n0, dtype=torch.float64)
    vals: list[Tensor] = [pts]
    for nd in g.nodes[1:]:
        if isinstance(nd.prim, ReLU):
            vals.append(vals[nd.inputs[0]] * masks[nd.id].to(torch.float64))
        else:
            vals.append(nd.prim.forward(*(vals[i] for i in nd.inputs)))  # type: ignore[union-attr]
    Js, cs = [], []
    for v in vals:
        J = (v[1:] - v[:1]).T  # [n_v, n0]
        Js.append(J)
        cs.append(v[0] - J @ x0.reshape(-1).double())
    return Js, cs


def _lp(cost: np.ndarray, A: np.ndarray, lo_row: np.ndarray, l0: np.ndarray, u0: np.ndarray,
        time_limit: float) -> tuple[str, np.ndarray | None, np.ndarray | None, float]:
    """min cost . x s.t. A x >= lo_row, l0 <= x <= u0 (dense, HiGHS) -> (status, x, row duals, objective)."""
    import highspy

    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    m, n = A.shape
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = cost.astype(np.float64)
    lp.col_lower_, lp.col_upper_ = l0.astype(np.float64), u0.astype(np.float64)
    lp.row_lower_ = lo_row.astype(np.float64)
    lp.row_upper_ = np.full(m, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
    lp.a_matrix_.start_ = (np.arange(m + 1) * n).astype(np.int32)
    lp.a_matrix_.index_ = np.tile(np.arange(n), m).astype(np.int32)
    lp.a_matrix_.value_ = A.reshape(-1).astype(np.float64)
    hs = highspy.Highs()
    hs.setOptionValue("output_flag", False)
    hs.setOptionValue("threads", 1)
    hs.setOptionValue("time_limit", float(max(1e-3, time_limit)))
    hs.passModel(lp)
    hs.run()
    status = hs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return "infeasible", None, None, math.inf
    if status != highspy.HighsModelStatus.kOptimal:
        return "unknown", None, None, -math.inf
    sol = hs.getSolution()
    return "optimal", np.asarray(sol.col_value), np.asarray(sol.row_dual), float(hs.getInfo().objective_function_value)


def solve_leaf(g: Graph, prob64: Any, A: Tensor, b: Tensor, sign: dict[int, Tensor], boxes: dict[int, Any],
               known: dict[int, tuple[Tensor, Tensor]], opts: Any, time_limit: float = 10.0) -> tuple[float, Any]:
    """One leaf (``sign``: node -> [n] its splits; ``boxes``: node -> (l, u) [n] the boxes that made its other
    neurons stable): (a certified lower bound of ``lam . (A f - b)`` for multipliers lam >= 0 from the LP, > 0
    when no point of the leaf has every ``A_i f <= b_i``; +inf when proved empty; and the LP point [n0] or None)."""
    relus = [nd.id for nd in g.nodes[1:] if isinstance(nd.prim, ReLU)]
    masks, cons_J, cons_c, where = {}, [], [], []
    for v in relus:
        w = g.nodes[v].inputs[0]
        l, u = boxes[w]
        s = sign[v].to(torch.float64)
        masks[v] = ((s > 0) | ((s == 0) & (l >= 0))).double()
    x0 = prob64.x0[0]
    Js, cs = affine_pieces(g, x0, masks)
    for v in relus:
        w = g.nodes[v].inputs[0]
        s = sign[v].to(torch.float64)
        idx = torch.nonzero(s != 0).flatten()
        cons_J.append(s[idx, None] * Js[w][idx])
        cons_c.append(s[idx] * cs[w][idx])
        where.append((v, idx))
    M = torch.cat(cons_J).numpy() if cons_J else np.zeros((0, x0.numel()))
    mc = torch.cat(cons_c).numpy() if cons_c else np.zeros(0)
    l0, u0 = prob64.l0[0].numpy(), prob64.u0[0].numpy()
    Jf, cf = Js[g.output].numpy(), cs[g.output].numpy()
    An, bn = A.double().numpy(), b.double().numpy()
    R, n0, m = An.shape[0], x0.numel(), M.shape[0]
    # min t  s.t.  t - (A_i Jf) x >= A_i cf - b_i  (every row i),  M x >= -mc  (the splits),  x in the box
    rows = np.vstack([np.hstack([-(An @ Jf), np.ones((R, 1))]), np.hstack([M, np.zeros((m, 1))])])
    rhs = np.r_[An @ cf - bn, -mc]
    big = 1e30
    st, xt, y, obj = _lp(np.r_[np.zeros(n0), 1.0], rows, rhs, np.r_[l0, -big], np.r_[u0, big], time_limit)
    x_best = None if xt is None else xt[:n0]
    if st == "optimal" and y is not None:
        lam, beta = np.abs(y[:R]), np.abs(y[R:])
        if lam.sum() <= 0:  # the splits alone are infeasible: any row works, the multipliers carry it
            lam = np.zeros(R)
            lam[0] = 1.0
        lam = lam / lam.sum()
    elif st == "infeasible":  # the splits are infeasible: phase one, max s s.t. M x + mc >= s
        Mt = np.hstack([M, -np.ones((m, 1))])
        st1, _, y1, obj1 = _lp(np.r_[np.zeros(n0), -1.0], Mt, -mc, np.r_[l0, -big], np.r_[u0, 1.0], time_limit)
        if st1 != "optimal" or y1 is None or -obj1 >= 0:
            return -math.inf, None
        lam = np.zeros(R)
        lam[0] = 1.0
        span = float(np.abs(An[0] @ Jf).sum() * (u0 - l0).max() + abs(An[0] @ cf) + abs(bn[0]) + 1.0)
        beta = np.abs(y1) * (4 * span / max(-obj1, 1e-300))
    else:
        return -math.inf, x_best
    return _certify_combination(g, prob64, An, bn, lam, beta, sign, where, known, opts), x_best


def _certify_combination(g: Graph, prob64: Any, A: np.ndarray, b: np.ndarray, lam: np.ndarray, beta: np.ndarray,
                         sign: dict[int, Tensor], where: list, known: dict, opts: Any) -> float:
    """A rigorous lower bound of ``lam . (A f - b)`` on the leaf (> 0 closes it: no point has every
    ``A_i f <= b_i``), from the certify engine's bound of the float row ``c = fl(lam A)`` with the split
    multipliers beta: ``lam A f - lam b >= lb(c f) - |c - lam A| |f| - lam b``, the last two terms exact
    (fractions) and |f| bounded by the output's certified box."""
    R = A.shape[0]
    c = lam @ A
    bt: dict[int, Tensor] = {}
    r = 0
    for v, idx in where:
        t = torch.zeros(1, 1, g.n(v), dtype=torch.float64)
        t[0, 0, idx] = torch.from_numpy(beta[r:r + idx.numel()])
        r += idx.numel()
        bt[v] = t
    sp = Splits({v: s[None] for v, s in sign.items()}, bt, boxes=known)
    got: list[Any] = []
    lb, _ = graph_bounds(g, prob64, torch.from_numpy(c)[None, None].contiguous(), "crown", opts=opts, splits=sp,
                         upper=False, boxes_out=got)
    if sp.empty is not None and bool(sp.empty.any()):
        return math.inf
    lo = float(lb[0, 0])
    if not math.isfinite(lo):
        return lo
    fbox = got[g.output]
    fmag = torch.maximum(fbox.l.abs(), fbox.u.abs())[0].numpy()
    F = [Fraction(float(x)) for x in lam]
    exact = Fraction(lo) - sum((Fraction(float(lam[i])) * Fraction(float(b[i])) for i in range(R)), Fraction(0))
    for k in range(A.shape[1]):
        err = Fraction(float(c[k])) - sum((F[i] * Fraction(float(A[i, k])) for i in range(R)), Fraction(0))
        exact -= abs(err) * Fraction(float(fmag[k]))
    return float(exact) if exact <= 0 else max(float(exact) * (1 - 2**-50), 5e-324)


__all__ = ["affine_pieces", "solve_leaf"]
