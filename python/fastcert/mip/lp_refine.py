"""Tighter pre-activation bounds by per-neuron LPs (HiGHS), with rigorous certificates.

For a node ``v`` read by a ReLU or a max pool, whose outputs ``z`` have sound bounds ``[l, u]`` (CROWN),
every neuron those bounds matter for (an unstable ReLU input, ``l < 0 < u``; a possible maximum of an
undecided max-pool window) gets two LPs, ``min z_n`` and ``max z_n``, over the **LP relaxation** of the
nodes in front of it (:mod:`fastcert.mip.encoding`): each earlier unstable ReLU as the triangle (its convex
hull on its box)

    y >= 0,  y >= z,  y - s z <= t   with  s = u / (u - l)  and  t >= max(-s l, u (1 - s), 0),

stable neurons exactly (``y = z`` or ``y = 0``), each max pool's selectors relaxed to ``[0, 1]``, affine
nodes and sums as equality rows (``z - W h = b``), the input box as column bounds. One HiGHS model per layer is built from sparse arrays (one ``passModel``)
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
float64 values fastcert evaluates; the boxes come from fastcert's sound bounds; the max-pool rows'
big-Ms and cut are rounded up (:mod:`fastcert.mip.encoding`); the triangle rows are
valid for every ``(z, relu(z))`` with ``z`` in ``[l, u]`` because ``t`` is an upper bound (rounded up) of
``max over z in {l, 0, u} of relu(z) - s z``, which is where the piecewise linear ``relu(z) - s z``
attains its maximum on ``[l, u]`` (so ``s`` itself needs no exact value). A neuron's new bound is
``max(l, certified min)`` / ``min(u, certified max)``: never looser than the input bounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from fastcert.graph.ir import Graph, is_nonlinear
from fastcert.mip.encoding import Encoding, affine_matrix, encode_graph, layer_graph, relevant_neurons, triangle_offset
from fastcert.primitives.concat import Concat
from fastcert.primitives.relu import ReLU
from fastcert.rounding import gamma_n

__all__ = ["Encoding", "affine_matrix", "certified_lower", "encode", "highs_lp", "refine_bounds", "triangle_offset"]

INF = math.inf


def _per_layer(enc: Encoding) -> Encoding:
    """A graph encoding of a chain in the per-layer interface: ``out[i]`` / ``binary[i]`` of layer i."""
    return Encoding(enc.ncol, enc.col_lo, enc.col_hi, enc.integer, enc.A, enc.row_lo, enc.row_hi, enc.x, enc.out[1:],
                    {k - 1: v for k, v in enc.binary.items()})


def encode(net: list | Graph, pre: dict, lo: np.ndarray, hi: np.ndarray, upto: int | None = None,
           mode: str = "mip", last_keep: np.ndarray | None = None) -> Encoding:
    """Encode a network on the input box ``[lo, hi]`` (:func:`fastcert.mip.encoding.encode_graph`).

    net: a :class:`~fastcert.graph.ir.Graph` (pre, upto, ``out`` and ``binary`` per node, ``pre[v]``
    the bounds of node v's output) or a chain of IR layers (the per-layer interface:
    pre[i] the bounds of the input of activation layer i, i.e. of layer i-1's output, ``upto`` layers
    encoded, ``out[i]`` / ``binary[i]`` per layer; encoded as the chain's graph).
    mode "mip": big-M with a binary per unstable ReLU (Tjeng et al.) and per max-pool candidate; "lp": the
    LP relaxation. ``last_keep`` restricts the outputs of the last encoded node / layer."""
    if isinstance(net, Graph):
        return encode_graph(net, pre, lo, hi, upto, mode, last_keep)
    g = layer_graph(net, len(lo))
    enc = encode_graph(g, pre, lo, hi, upto, mode, last_keep)
    return _per_layer(enc)


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


def _refine_order(g: Graph, pre: dict) -> list[int]:
    """The nodes whose bounds are refined, in topological order: every key of ``pre`` except the input,
    affine maps of it (interval bounds are exact there) and ReLU / concatenation nodes (their bounds are
    the exact image of their inputs' bounds, which the encoding derives from the refined ones)."""
    out = []
    for v in sorted(pre):
        p = g.nodes[v].prim
        if v == 0 or (p is not None and p.is_affine and g.nodes[v].inputs == (0,)) or isinstance(p, (ReLU, Concat)):
            continue
        out.append(v)
    return out


def _refine_node(g: Graph, new: dict, v: int, lo: np.ndarray, hi: np.ndarray, stop: float,
                 info: dict, halt: Callable[[], bool] | None = None) -> bool:
    """Per-neuron LPs for node v's relevant neurons (most ambiguous first) until ``stop`` (or ``halt()``); updates
    ``new[v]`` in place. Returns whether every neuron was done."""
    import highspy

    l, u = new[v]
    rel = relevant_neurons(g, v, l, u)
    todo = np.nonzero(rel)[0]
    if len(todo) == 0:
        return True
    enc = encode_graph(g, new, lo, hi, upto=v, mode="lp", last_keep=rel)
    zc = enc.out[v]
    hs = highs_lp(enc, np.zeros(enc.ncol), max(1e-3, stop - time.perf_counter()))
    absAT = abs(enc.A.T.tocsr())
    nnz = np.diff(enc.A.tocsc().indptr)
    gcol = 2.0 * gamma_n(int(nnz.max(initial=0)) + 2, torch.float64)
    order = todo[np.argsort(-np.minimum(-l[todo], u[todo]))]  # most ambiguous first: largest min(-l, u)
    relu_only = all(isinstance(g.nodes[w].prim, ReLU) for w in g.consumers[v] if is_nonlinear(g.nodes[w].prim))
    n_done = 0
    for nrn in order:
        col = int(zc[nrn])
        for sign in (1.0, -1.0):
            if time.perf_counter() >= stop or halt is not None and halt():
                break
            if col < 0 or relu_only and (sign > 0 and l[nrn] >= 0 or sign < 0 and u[nrn] <= 0):
                continue  # a constant, or a ReLU input the first LP proved stable
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
        break
    info["neurons"] += n_done
    after = int(relevant_neurons(g, v, l, u).sum())
    info["stabilised"] += len(todo) - after
    info["layers"].append({"layer": v, "unstable_before": len(todo), "unstable_after": after, "refined": n_done})
    return n_done == len(order)


def refine_bounds(net: list | Graph, pre: dict, lo: np.ndarray, hi: np.ndarray, *,
                  time_budget: float = 10.0, max_layers: int | None = None,
                  deadline: float | None = None, halt: Callable[[], bool] | None = None) -> tuple[dict, dict]:
    """Tighten the bounds ``pre[v] = (l, u)`` of the neurons the ReLU / max-pool encodings depend on, node
    by node in topological order (the inputs of the first, exact on a box already, are skipped), with
    per-neuron LPs on the LP relaxation (module docstring); each node uses the bounds just refined in front
    of it. Stops when ``time_budget`` seconds are spent (the neurons not reached keep their bounds).
    ``max_layers``: refine at most this many nodes (the earliest ones). ``halt``: polled before every LP, True
    stops the refinement as the time budget does.

    net: a :class:`~fastcert.graph.ir.Graph` (pre per node, as :func:`encode`) or a chain of IR
    layers (pre keyed by activation layer: the same numbers, since activation layer i
    reads node i of the chain's graph).

    Returns ``(new_pre, info)``: new_pre has the same keys and shapes, every entry at least as tight
    as in ``pre``; info counts LPs, neurons tightened, stable neurons gained and time.
    """
    if not isinstance(net, Graph):
        return refine_bounds(layer_graph(net, len(lo)), pre, lo, hi, time_budget=time_budget, max_layers=max_layers,
                             deadline=deadline, halt=halt)
    t0 = time.perf_counter()
    stop = t0 + time_budget if deadline is None else min(deadline, t0 + time_budget)
    new = {k: (v[0].copy(), v[1].copy()) for k, v in pre.items()}
    info: dict[str, Any] = {"lps": 0, "neurons": 0, "stabilised": 0, "layers": [], "complete": True}
    todo = _refine_order(net, new)
    if max_layers is not None:
        todo = todo[:max_layers]
    for v in todo:
        if not relevant_neurons(net, v, *new[v]).any():
            continue
        if time.perf_counter() >= stop or not _refine_node(net, new, v, lo, hi, stop, info, halt):
            info["complete"] = False
            break
    info["time_s"] = time.perf_counter() - t0
    return new, info
