"""Exact verification of ReLU networks by mixed-integer programming (HiGHS).

Two entry points:

* :func:`verify` (``fastcert.verify``): per sample and spec row ``c`` (default: the margins ``f_y - f_j``)
  ``min c . f(x')`` over ``||x' - x||_p <= eps``, ``x_min <= x' <= x_max`` (p = inf or 1), solved exactly
  (or, with ``early_stop=True``, only until its sign is decided).
* :func:`solve_property` (VNN-COMP style): does some ``x`` in a VNN-LIB disjunct's box satisfy one of its
  output conjunctions ``A f(x) <= b``? -> ``"sat"`` (with a proved counterexample) / ``"unsat"`` /
  ``"timeout"`` / ``"unknown"``; :func:`verify_box` is the one-box, one-conjunction shortcut.

Encoding (Tjeng, Xiao & Tedrake, ICLR 2019): the pre-activation box ``[l, u]`` of every ReLU comes from
fastcert's sound linear bounds (CROWN by default) on the prefix of the network in front of it, optionally
tightened by per-neuron LPs (:mod:`fastcert.lp_refine`, rigorous dual certificates); a stable ReLU is
exact and costs nothing (``y = z`` or the constant 0, and affine outputs feeding only dead ReLUs are
dropped); an unstable one gets a binary ``a`` and ``y >= z, y >= 0, y <= z - l (1 - a), y <= u a``;
affine layers (Dense, Conv2d expanded to sparse rows, Diag) are equality rows; the input box / L-inf
ball are column bounds, the L1 ball adds ``t >= |x' - x|``, ``sum t <= eps`` (L2 is refused: it needs a
second-order-cone solver). The model goes to HiGHS in one ``passModel`` call from sparse arrays,
single-threaded, output off.

Early decisions (``early_stop`` in :func:`verify`, always in :func:`solve_property`): the HiGHS option
``objective_bound = B`` (a small positive cutoff, below) prunes every node whose relaxation cannot
reach below ``B``: if the search ends without a point below ``B``, the minimum is ``>= B``; and an
improving-solution callback checks every incumbent (below) and interrupts the solve as soon as one is
a proved violation.

Soundness. HiGHS works in floating point with feasibility / integrality tolerances, so its dual bound
is not a certificate by itself (a MIP proof is a tree of LPs HiGHS does not hand out):

* ``lower_bound = max(crown_lower, min(mip_dual_bound, B) - margin)`` where ``crown_lower`` is fastcert's
  rigorous bound and ``margin = 1e-6 (1 + |d|) + 10 tol S``: ``tol`` is the largest of HiGHS's primal /
  MIP feasibility tolerances (set to 1e-9) and ``S`` bounds how far tolerance-sized violations can move
  the objective: each variable counts its sensitivity ``|c|^T |W_L| ... |W_k|`` (ReLU 1-Lipschitz, a
  dead ReLU passes nothing: it is a constant in the model) once per equality row, plus ``max(-l, u)``
  times it for an unstable ReLU whose binary may be fractional by ``tol``. A conservative, documented
  heuristic (the usual standing of MIP-based verifiers), not a proof; ``verified`` / ``unsat`` requires
  ``lower_bound > 0``. With the cutoff, ``B = 2 margin`` so that a search that ends with nothing below
  ``B`` gives ``lower_bound = B - margin > 0``; the dual bound HiGHS reports above ``B`` is never used
  (nodes pruned by the cutoff are not bounded by it). The pre-activation bounds the encoding relies on
  are rigorous (CROWN; the LP refinement evaluates weak duality with a bound on every rounding error,
  see :mod:`fastcert.lp_refine`).
* A conjunction closed by the LP stage of :func:`solve_property` (no MIP) is closed *rigorously*: the
  same weak-duality certificate, from HiGHS's row duals, on the triangle relaxation, which contains
  every true point.
* ``falsified`` / ``sat`` is declared only for a *proved* counterexample (:mod:`fastcert.confirm`): a
  point moved into the region and checked there in exact arithmetic, whose violation fastcert's
  rigorous IBP bounds at that point prove (``c . f(x') < 0``, resp. every row of a conjunction);
  a float64 evaluation that violates the spec only by rounding is not one. ``upper_bound`` is the
  least of the CROWN upper bound and those rigorous point bounds (a true upper bound of the minimum).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fastcert.algorithms.linear_bounds import METHODS, linear_bounds
from fastcert.api import make_region
from fastcert.checks import as_tensor, norm_key
from fastcert.confirm import confirm_point, into_region, output_upper
from fastcert.layers import Activation, Conv2d, Dense, Diag
from fastcert.lp_refine import Encoding, affine_matrix, encode, refine_bounds
from fastcert.network import Network, as_network

__all__ = ["MIPResult", "solve_property", "verify", "verify_box"]

_FEAS_TOL = 1e-9


@dataclass(frozen=True)
class MIPResult:
    """Result for one (sample, spec row).

    verdict: "verified" (row > 0 on the whole region), "falsified" (a counterexample in the region whose
    row value < 0 is proved by rigorous bounds at that point, :mod:`fastcert.confirm`) or "unknown".
    min_value: the solver's optimum of the row over the region when solved to optimality (never with
    ``early_stop``), else None.
    lower_bound / upper_bound: best bounds on the minimum (see the module docstring).
    counterexample: for "falsified", the input x' (float64, per-sample shape; in the region exactly),
    else None.
    counterexample_value: the row value re-executed in float64 at the best point checked (the one with
    the lowest rigorous upper bound; None without one).
    target: the class j of the margin row f_y - f_j (None when C was given).
    """

    sample: int
    row: int
    target: int | None
    verdict: str
    min_value: float | None
    lower_bound: float
    upper_bound: float
    counterexample: torch.Tensor | None
    counterexample_value: float | None
    status: str
    n_binaries: int
    time_s: float


# --------------------------------------------------------------------------- shared pieces


def _check_layers(layers: list) -> None:
    for i, L in enumerate(layers):
        if isinstance(L, (Dense, Conv2d, Diag)):
            continue
        if isinstance(L, Activation) and L.kind == "relu":
            continue
        what = f"activation {L.kind!r}" if isinstance(L, Activation) else type(L).__name__
        raise ValueError(f"fastcert.mip encodes ReLU networks only (Linear, Conv2d, AvgPool2d, BatchNorm, "
                         f"Normalize, ReLU); layer {i} ({L.name or what}) is {what}")


def _reexec(model: Any, net: Network, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the model in float64 on x [B, *shape]."""
    with torch.no_grad():
        if isinstance(model, nn.Module):
            return model(x.double())
        return net.forward(x.double())


def _sensitivity(layers: list, absW: list, pre: dict, s: np.ndarray) -> float:
    """sum over the variables v of (how much |c . f| can move per unit change of v) * (how much a
    tolerance-sized violation can move v, in units of tol): 1 per equality row, plus the big-M of an
    unstable ReLU whose binary may be fractional by tol. ReLU is 1-Lipschitz; affine layers by |W|;
    a dead ReLU (``u <= 0``) is the constant 0 in the encoding (no variable), so nothing reaches its input."""
    total = float(s.sum())
    for i in range(len(layers) - 1, -1, -1):
        if absW[i] is not None:
            total += float(s.sum())
            s = absW[i] @ s
        else:
            l, u = pre[i]
            uns = (l < 0) & (u > 0)
            total += float(s.sum()) + float(s[uns] @ np.maximum(-l[uns], u[uns]))
            s = np.where(u > 0, s, 0.0)
    return total + float(s.sum())


def _domain(bnd: Any, shape: tuple, default: float) -> np.ndarray:
    if bnd is None:
        return np.full(int(np.prod(shape)), default)
    t = torch.as_tensor(bnd, dtype=torch.float64)
    return torch.broadcast_to(t, shape).reshape(-1).numpy().copy()


def _prefix_bounds(layers: list, prob: Any, method: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sound bounds [B, n] of the input of every activation layer (``method`` on the prefix in front)."""
    pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    B = prob.x0.shape[0]
    for i, L in enumerate(layers):
        if isinstance(L, Activation):
            if i == 0:
                pre[i] = (prob.l0.numpy().copy(), prob.u0.numpy().copy())
            else:
                n = layers[i - 1].n_out
                eye = torch.eye(n, dtype=torch.float64).expand(B, n, n).contiguous()
                lo, up = linear_bounds(layers[:i], prob, eye, method)
                pre[i] = (lo.numpy().copy(), up.numpy().copy())
    return pre


def _augment(enc: Encoding, lo: np.ndarray, hi: np.ndarray, rows: sp.spmatrix, rlo: np.ndarray,
             rhi: np.ndarray) -> tuple[Encoding, np.ndarray]:
    """The encoding with ``len(lo)`` more (continuous) columns and the rows ``rlo <= rows @ v <= rhi``
    (``rows`` over all columns, old and new). Returns (encoding, indices of the new columns)."""
    k = len(lo)
    new = np.arange(enc.ncol, enc.ncol + k)
    A = sp.vstack([sp.hstack([enc.A, sp.csr_matrix((enc.A.shape[0], k))]), sp.csr_matrix(rows)]).tocsr()
    A.sum_duplicates()
    A.eliminate_zeros()
    out = Encoding(enc.ncol + k, np.concatenate([enc.col_lo, lo]), np.concatenate([enc.col_hi, hi]),
                   np.concatenate([enc.integer, np.zeros(k, dtype=bool)]), A,
                   np.concatenate([enc.row_lo, rlo]), np.concatenate([enc.row_hi, rhi]), enc.x, enc.out, enc.binary)
    return out, new


@dataclass
class _MipRun:
    status: str
    optimal: bool
    dual: float  # HiGHS's dual bound (-inf when none)
    raw_lower: float  # min(dual, cutoff): what the run shows about the minimum, before the margin
    objective: float | None  # the incumbent's objective (None without one)
    solution: np.ndarray | None  # the incumbent's column values
    stopped: Any  # what the callback returned when it interrupted the solve (None otherwise)
    nodes: int
    time_s: float


def _run_mip(enc: Encoding, cost: np.ndarray, offset: float, time_limit: float, *, cutoff: float | None = None,
             on_solution: Callable[[np.ndarray, float], Any] | None = None, exact: bool = True,
             heuristic_effort: float | None = None) -> _MipRun:
    """Minimise ``cost . v + offset`` over the encoding with HiGHS (one passModel).

    cutoff: HiGHS ``objective_bound``: nodes that cannot go below it are pruned (the run then says
    nothing about the minimum above ``cutoff``: ``raw_lower = min(dual, cutoff)``).
    on_solution(v, objective): called on every improving solution; a non-None return interrupts the
    solve and is kept in ``stopped``.
    exact: ``mip_rel_gap = 0`` (solve to optimality) instead of HiGHS's default gap.
    """
    import highspy

    t0 = time.perf_counter()
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    ncol, nrow = enc.ncol, enc.A.shape[0]
    lp.num_col_ = ncol
    lp.num_row_ = nrow
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.offset_ = float(offset)
    lp.col_lower_ = np.where(np.isfinite(enc.col_lo), enc.col_lo, -inf)
    lp.col_upper_ = np.where(np.isfinite(enc.col_hi), enc.col_hi, inf)
    lp.row_lower_ = np.where(np.isfinite(enc.row_lo), enc.row_lo, -inf)
    lp.row_upper_ = np.where(np.isfinite(enc.row_hi), enc.row_hi, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = ncol
    lp.a_matrix_.num_row_ = nrow
    lp.a_matrix_.start_ = enc.A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = enc.A.indices.astype(np.int32)
    lp.a_matrix_.value_ = enc.A.data
    n_bin = int(enc.integer.sum())
    if n_bin:
        lp.integrality_ = [highspy.HighsVarType.kInteger if v else highspy.HighsVarType.kContinuous
                           for v in enc.integer]
    hs = highspy.Highs()
    hs.setOptionValue("output_flag", False)
    hs.setOptionValue("threads", 1)
    hs.setOptionValue("random_seed", 0)
    hs.setOptionValue("time_limit", float(max(1e-3, time_limit)))
    if exact:
        hs.setOptionValue("mip_rel_gap", 0.0)
        hs.setOptionValue("mip_abs_gap", 1e-10)
    hs.setOptionValue("primal_feasibility_tolerance", _FEAS_TOL)
    hs.setOptionValue("dual_feasibility_tolerance", _FEAS_TOL)
    hs.setOptionValue("mip_feasibility_tolerance", _FEAS_TOL)
    if heuristic_effort is not None:
        hs.setOptionValue("mip_heuristic_effort", float(heuristic_effort))
        if heuristic_effort == 0:  # no sub-MIP heuristics either: a pure proof search
            for opt in ("mip_heuristic_run_rins", "mip_heuristic_run_rens", "mip_heuristic_run_root_reduced_cost",
                        "mip_heuristic_run_feasibility_jump"):
                hs.setOptionValue(opt, False)
    if cutoff is not None and n_bin:
        hs.setOptionValue("objective_bound", float(cutoff))
    stopped: list[Any] = [None]
    if on_solution is not None and n_bin:
        def cb(e: Any) -> None:
            if stopped[0] is not None:
                return
            v = np.asarray(e.data_out.mip_solution, dtype=np.float64)
            if v.shape[0] != ncol:  # pragma: no cover - defensive
                return
            r = on_solution(v, float(e.data_out.objective_function_value))
            if r is not None:
                stopped[0] = r
                e.interrupt()

        def stop(e: Any) -> None:  # HiGHS honours user_interrupt in the interrupt callbacks
            if stopped[0] is not None:
                e.interrupt()

        hs.cbMipImprovingSolution.subscribe(cb)
        hs.cbMipInterrupt.subscribe(stop)
    if hs.passModel(lp) == highspy.HighsStatus.kError:  # pragma: no cover
        raise RuntimeError("HiGHS rejected the MIP model (passModel returned an error)")
    hs.run()
    ms = hs.getModelStatus()
    status = hs.modelStatusToString(ms)
    info = hs.getInfo()
    optimal = ms == highspy.HighsModelStatus.kOptimal
    infeasible = ms == highspy.HighsModelStatus.kInfeasible
    if n_bin:
        dual = float(info.mip_dual_bound)
    else:
        dual = float(info.objective_function_value) if optimal else -math.inf
    if not math.isfinite(dual) or abs(dual) >= inf:
        dual = math.inf if infeasible else -math.inf
    if infeasible and cutoff is None:  # pragma: no cover - the region is never empty
        dual = -math.inf
    raw = dual if cutoff is None or not n_bin else min(dual, float(cutoff))
    sol = None
    obj = None
    if info.primal_solution_status == 2:
        sol = np.asarray(hs.getSolution().col_value, dtype=np.float64)
        obj = float(info.objective_function_value)
    if on_solution is not None and sol is not None and not n_bin and stopped[0] is None:
        stopped[0] = on_solution(sol, obj)
    nodes = int(info.mip_node_count) if n_bin else 0
    return _MipRun(status, optimal, dual, raw, obj, sol, stopped[0], nodes, time.perf_counter() - t0)


# --------------------------------------------------------------------------- fastcert.verify


def verify(model: nn.Module | Network, x: Any, eps: Any, norm: Any = "inf", labels: Any = None, C: Any = None,
           x_min: Any = None, x_max: Any = None, time_limit: float = 60.0,
           bounds_method: str = "crown", *, early_stop: bool = True, lp_refine: float = 0.0) -> list[list[MIPResult]]:
    """Exact (MIP) verification of ``C f(x') > 0`` over the ball ∩ box, per sample and per row.

    x: [B, *input_shape]; eps scalar or [B]; norm "inf" or "1" ("2" raises ValueError).
    C: [S, K] or [B, S, K]; default rows ``e_y - e_j`` for ``j != y`` with ``y = labels`` (or the
    prediction at x). time_limit: seconds per (sample, row). Returns ``results[b][s]``
    (:class:`MIPResult`).
    early_stop: stop each row as soon as its sign is decided (verified / falsified), the default (the
    verdicts are the same, often many times sooner); ``early_stop=False`` solves to optimality and
    reports the optimum in ``min_value`` (None with early stopping).
    lp_refine: seconds per sample for tightening the pre-activation bounds by per-neuron LPs
    (:func:`fastcert.lp_refine.refine_bounds`; 0 = off, CROWN bounds only).
    """
    nk = norm_key(norm)
    # bounds carry no gradient: a box that requires grad is used detached (as x is); make_region checks it
    x_min, x_max = (b.detach() if isinstance(b, torch.Tensor) else b for b in (x_min, x_max))
    if nk == "2":
        raise ValueError("norm='2': an L2 ball is not linear-representable; exact verification over it needs a "
                         "second-order-cone (MISOCP) solver, which fastcert.mip (HiGHS, MILP) does not have. "
                         "Use norm='inf' or '1', or fastcert.bounds for sound L2 bounds.")
    if bounds_method not in METHODS:
        raise ValueError(f"unknown bounds_method {bounds_method!r}; choose one of {sorted(METHODS)}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if isinstance(lp_refine, bool) or not isinstance(lp_refine, (int, float)) or not lp_refine >= 0:
        raise ValueError(f"lp_refine must be a number of seconds >= 0, got {lp_refine!r}")
    if isinstance(model, nn.Module) and model.training and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("the model is in training mode and has BatchNorm layers: call model.eval() first")
    net = as_network(model)
    x = as_tensor(x, "x")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [B, *input_shape], got shape {tuple(x.shape)}")
    xd = x.detach().double()
    shape = tuple(xd.shape[1:])
    layers = net.layers_for(shape)
    _check_layers(layers)
    B, K = xd.shape[0], layers[-1].n_out
    prob = make_region(xd, eps, nk, x_min, x_max)
    ref_model = model
    if isinstance(model, nn.Module):
        ref_model = copy.deepcopy(model).double().eval()

    # ---- spec rows
    targets: list[list[int | None]]
    if C is None:
        logits = _reexec(ref_model, net, xd)
        if labels is None:
            y = logits.argmax(1)
        else:
            y = torch.as_tensor(labels)
            if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise TypeError(f"labels must be integers, got dtype {y.dtype}")
            y = y.to(torch.int64).reshape(-1)
            if y.shape != (B,) or ((y < 0) | (y >= K)).any():
                raise ValueError(f"labels must be [{B}] integers in [0, {K})")
        if K < 2:
            raise ValueError("margin rows need a network with at least 2 outputs; pass C for other specs")
        Ct = torch.zeros(B, K - 1, K, dtype=torch.float64)
        targets = []
        for b in range(B):
            js = [j for j in range(K) if j != int(y[b])]
            targets.append(js)
            for s, j in enumerate(js):
                Ct[b, s, int(y[b])] += 1.0
                Ct[b, s, j] -= 1.0
    else:
        Ct = as_tensor(C, "C").detach().double()
        if Ct.dim() == 2:
            Ct = Ct.unsqueeze(0).expand(B, *Ct.shape)
        if Ct.dim() != 3 or Ct.shape[0] != B or Ct.shape[2] != K or Ct.shape[1] == 0:
            raise ValueError(f"C must be [S, {K}] or [{B}, S, {K}], got shape {tuple(Ct.shape)}")
        if not torch.isfinite(Ct).all():
            raise ValueError("C contains NaN or inf")
        targets = [[None] * Ct.shape[1] for _ in range(B)]
    Ct = Ct.contiguous()
    S = Ct.shape[1]

    # ---- sound pre-activation boxes (prefix bounds) and rigorous output bounds
    pre_all = _prefix_bounds(layers, prob, bounds_method)
    crown_lo, crown_up = linear_bounds(layers, prob, Ct, bounds_method)
    mats = [affine_matrix(L) if not isinstance(L, Activation) else None for L in layers]
    absW = [None if m is None else abs(m[0]).T.tocsr() for m in mats]

    dlo = _domain(x_min, shape, -np.inf)
    dhi = _domain(x_max, shape, np.inf)
    results: list[list[MIPResult]] = []
    for b in range(B):
        t_b = time.perf_counter()
        x0 = xd[b].reshape(-1).numpy()
        e_b = float(prob.eps[b])
        l0, u0 = prob.l0[b].numpy().copy(), prob.u0[b].numpy().copy()
        pre = {i: (v[0][b].copy(), v[1][b].copy()) for i, v in pre_all.items()}
        if lp_refine > 0 and nk == "inf":
            pre, _ = refine_bounds(layers, mats, pre, l0, u0, time_budget=float(lp_refine))
        enc = encode(layers, mats, pre, l0, u0, mode="mip")
        xv = enc.x
        n0 = len(x0)
        if nk == "1":
            I = sp.identity(n0, format="csr")
            Xs = sp.csr_matrix((np.ones(n0), (np.arange(n0), xv)), shape=(n0, enc.ncol))
            rows = sp.vstack([sp.hstack([-Xs, I]), sp.hstack([Xs, I]),
                              sp.hstack([sp.csr_matrix((1, enc.ncol)), sp.csr_matrix(np.ones((1, n0)))])])
            enc, _ = _augment(enc, np.zeros(n0), np.full(n0, e_b), rows,
                              np.concatenate([-x0, x0, [-np.inf]]), np.concatenate([np.full(2 * n0, np.inf), [e_b]]))
        out = enc.out[-1]
        n_bin = enc.n_binaries
        build_s = time.perf_counter() - t_b

        res_b: list[MIPResult] = []
        for s in range(S):
            t0 = time.perf_counter()
            c = Ct[b, s].numpy()
            cost = np.zeros(enc.ncol)
            cost[out] = c
            tol = _FEAS_TOL
            sens = 10.0 * tol * _sensitivity(layers, absW, pre, np.abs(c))
            cutoff = None
            if early_stop:
                cutoff = 2.0 * (1e-6 + sens)
            best: dict[str, Any] = {"up": math.inf, "x": None, "val": None}

            def on_sol(v: np.ndarray, obj: float, b=b, s=s, best=best, xv=xv, x0=x0, e_b=e_b) -> Any:
                xp = into_region(v[xv], x0, e_b, nk, dlo, dhi)  # exactly in the region
                if xp is None:  # pragma: no cover - x0 itself is in the region
                    return None
                c = Ct[b, s].numpy()[None]
                up = float(output_upper(net, shape, xp, c)[0])  # rigorous: c . f(xp) <= up
                if up < best["up"]:
                    xt = torch.from_numpy(xp).reshape(shape)
                    val = float(_reexec(ref_model, net, xt[None])[0].double() @ Ct[b, s])
                    best.update(up=up, x=xt.clone(), val=val)
                return True if (early_stop and up < 0) else None

            run = _run_mip(enc, cost, 0.0, max(1e-3, time_limit - (build_s if s == 0 else 0.0)), cutoff=cutoff,
                           on_solution=on_sol, exact=not early_stop)
            if run.solution is not None:
                on_sol(run.solution, run.objective if run.objective is not None else math.nan)
            raw = run.raw_lower
            margin = 1e-6 * (1.0 + abs(raw) if math.isfinite(raw) else 1.0) + sens
            lower = max(float(crown_lo[b, s]), raw - margin)
            min_value = run.objective if (run.optimal and cutoff is None) else None
            upper = min(float(crown_up[b, s]), best["up"])
            cex = best["x"] if best["up"] < 0 else None  # proved: c . f(x') < 0 at a point of the region
            cex_val = best["val"]
            if lower > 0 and cex is None:
                verdict = "verified"
            elif cex is not None and lower <= 0:
                verdict = "falsified"
            else:
                verdict = "unknown"
                cex = None
            status = run.status
            if run.stopped is not None:
                status = "Interrupted: counterexample found"
            elif cutoff is not None and run.status in ("Infeasible", "Optimal") and lower > 0:
                status = "Cutoff: verified"
            res_b.append(MIPResult(b, s, targets[b][s], verdict, min_value, lower, upper, cex, cex_val, status,
                                   n_bin, time.perf_counter() - t0 + (build_s if s == 0 else 0.0)))
        results.append(res_b)
    return results


# --------------------------------------------------------------------------- VNN-COMP style properties


def _torch_forward(layers: list, h: torch.Tensor) -> torch.Tensor:
    """Autograd float64 evaluation of IR layers on flat inputs [N, n] (for the attack only: every
    reported value is re-executed with ``Network.forward``)."""
    for L in layers:
        if isinstance(L, Dense):
            h = nn.functional.linear(h, L.W64, L.b64)
        elif isinstance(L, Conv2d):
            h = nn.functional.conv2d(h.reshape(h.shape[0], *L.in_shape), L.W64, L.b64, stride=L.stride,
                                     padding=L.padding).reshape(h.shape[0], -1)
        elif isinstance(L, Diag):
            h = torch.addcmul(L.b64, h, L.W64)
        else:
            h = torch.relu(h)
    return h


def _conj_value(y: np.ndarray, A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max over the rows of ``A y - b`` for outputs y [N, K] (<= 0: the conjunction holds)."""
    return (y @ A.T - b).max(axis=1)


def _pgd(layers: list, jobs: list, restarts: int, steps: int, seed: int, deadline: float,
         starts: list | None = None) -> list[tuple[float, np.ndarray]]:
    """Sign-gradient PGD on every job ``(lo, hi, A, b)``: minimise ``max_i (A_i f(x) - b_i)`` over the box
    (steps scaled by each input's box width, a linearly decaying step; restart 0 at ``starts[j]`` or the
    centre, the others uniform in the box). Returns per job the best (value by the torch twin, x)."""
    g = torch.Generator().manual_seed(seed)
    X, LO, HI, Am, bm, owner = [], [], [], [], [], []
    m = max(A.shape[0] for _, _, A, _ in jobs)
    for j, (lo, hi, A, b) in enumerate(jobs):
        lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
        Ap = np.repeat(A[:1], m, axis=0)  # padding repeats row 0 (same max)
        bp = np.repeat(b[:1], m)
        Ap[:A.shape[0]] = A
        bp[:A.shape[0]] = b
        for r in range(restarts):
            if r == 0:
                x = (lo_t + hi_t) / 2 if starts is None or starts[j] is None else \
                    torch.minimum(torch.maximum(torch.from_numpy(np.asarray(starts[j], dtype=np.float64)), lo_t), hi_t)
            else:
                x = lo_t + (hi_t - lo_t) * torch.rand(lo_t.shape, generator=g, dtype=torch.float64)
            X.append(x)
            LO.append(lo_t)
            HI.append(hi_t)
            Am.append(torch.from_numpy(Ap))
            bm.append(torch.from_numpy(bp))
            owner.append(j)
    x = torch.stack(X)
    lo_b, hi_b = torch.stack(LO), torch.stack(HI)
    A_b, b_b = torch.stack(Am), torch.stack(bm)
    width = hi_b - lo_b
    best_v = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    best_x = x.clone()
    for t in range(steps + 1):
        x = x.detach().requires_grad_(True)
        y = _torch_forward(layers, x)
        v = (torch.einsum("nmk,nk->nm", A_b, y) - b_b).max(dim=1).values
        with torch.no_grad():
            better = v < best_v
            best_v = torch.where(better, v, best_v)
            best_x[better] = x[better]
        if t == steps or time.perf_counter() > deadline or bool((best_v < 0).any()):
            break
        (grad,) = torch.autograd.grad(v.sum(), x)
        alpha = 0.2 * (1.0 - t / steps) + 0.01
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - alpha * width * grad.sign(), lo_b), hi_b)
    out: list[tuple[float, np.ndarray]] = [(math.inf, (jobs[j][0] + jobs[j][1]) / 2) for j in range(len(jobs))]
    for n, j in enumerate(owner):
        if float(best_v[n]) < out[j][0]:
            out[j] = (float(best_v[n]), best_x[n].detach().numpy().copy())
    return out


def _as_properties(prop: Any) -> list:
    from fastcert.io.vnnlib import Property, Spec

    if isinstance(prop, Spec):
        return list(prop.properties)
    if isinstance(prop, Property):
        return [prop]
    if isinstance(prop, (list, tuple)) and all(isinstance(p, Property) for p in prop):
        return list(prop)
    raise TypeError(f"prop must be a fastcert.io.vnnlib Spec, Property or list of Property, got {type(prop).__name__}")


def _conj_model(enc: Encoding, A: np.ndarray, b: np.ndarray, t_lo: float, t_hi: float
                ) -> tuple[Encoding, np.ndarray, float]:
    """(model, cost, offset) whose minimum is ``min max_i (A_i f - b_i)`` over the encoding: the row itself
    for one row, else a column ``t`` with rows ``A_i y - t <= b_i`` (t in [t_lo, t_hi], CROWN's range)."""
    out = enc.out[-1]
    m = A.shape[0]
    if m == 1:
        cost = np.zeros(enc.ncol)
        cost[out] = A[0]
        return enc, cost, -float(b[0])
    rows = sp.lil_matrix((m, enc.ncol + 1))
    for i in range(m):
        rows[i, out] = A[i]
        rows[i, enc.ncol] = -1.0
    menc, tcol = _augment(enc, np.array([t_lo]), np.array([max(t_hi, t_lo)]), rows.tocsr(), np.full(m, -np.inf),
                          b.astype(np.float64))
    cost = np.zeros(menc.ncol)
    cost[tcol] = 1.0
    return menc, cost, 0.0


def solve_property(net: Network | nn.Module, prop: Any, time_limit: float, *, input_shape: tuple | None = None,
                   bounds_method: str = "crown", attack: bool = True, attack_restarts: int = 8, attack_steps: int = 100,
                   lp_refine: bool = True, refine_fraction: float = 0.25, seed: int = 0,
                   heuristic_effort: float | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[str, np.ndarray | None, dict]:
    """Decide a VNN-LIB property: does some ``x`` in a disjunct's box satisfy one of its output
    conjunctions (every row of ``A f(x) <= b``)?

    net: a :class:`fastcert.Network` (e.g. from :func:`fastcert.io.load_onnx`; its ``input_shape`` is
    used) or a torch ReLU model (``input_shape`` then defaults to ``(n_inputs,)``). prop: a
    :class:`fastcert.io.vnnlib.Spec` (disjunction of properties), one ``Property`` or a list of them.
    time_limit: seconds for the whole call (bounds, attacks, LPs and MIPs share one deadline).

    Stages, each conjunction ("job") closed or the call answered as soon as possible:

    1. CROWN bounds every row over each box: a conjunction with a row ``lower > b`` is closed.
    2. PGD (``attack_restarts`` x ``attack_steps``, every open conjunction at once).
    3. Per box, one LP per open conjunction on the triangle relaxation: its rigorous dual bound may
       close the conjunction, and its optimal point (re-executed, then polished by a short PGD) is a
       counterexample candidate; first with the CROWN pre-activation bounds, then again after the
       bounds are tightened by per-neuron LPs (``lp_refine``, at most ``refine_fraction`` of the
       remaining time; :mod:`fastcert.lp_refine`).
    4. One MIP per open conjunction, most promising first (lowest value seen so far, then lowest CROWN
       bound), stopped as soon as it is decided (cutoff just above 0, an improving-solution callback
       that stops it on a proved violation), under the shared deadline: a first round gives each
       conjunction 1.5x its share of the remaining time with HiGHS's primal heuristics off (a pure proof
       search: about 3x faster on rows that hold; branching still finds incumbents), a second round
       splits what is left with the heuristics on (``heuristic_effort`` fixes one effort for both).

    Returns ``(verdict, counterexample, info)``: verdict "sat" (counterexample: flat float64 input in
    ONNX row-major order, in a disjunct's box exactly, one of whose conjunctions rigorous bounds at the
    point prove (:func:`fastcert.confirm.confirm_point`; rows strict unless the property says not);
    float32-rounded when it stays a proved counterexample), "unsat"
    (every conjunction of every disjunct closed), "timeout" (time ran out with conjunctions open) or
    "unknown" (a non-ReLU network, or nothing left to try). info: ``stage``, ``time_s``, ``reason``,
    ``best_lower`` (lower bound of ``min max_i (A_i f - b_i)`` over the open conjunctions: the instance
    is unsat iff it is > 0), ``best_upper`` (the lowest re-executed value found), ``conjunctions`` (per
    conjunction: bounds, status, time, binaries), ``refine`` (LP refinement counts) and stage times.
    """
    from fastcert.lp_refine import certified_lower, highs_lp

    t_start = time.perf_counter()
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    deadline = t_start + float(time_limit)
    props = _as_properties(prop)
    if not props:
        raise ValueError("the property has no disjunct")
    n_in = int(np.asarray(props[0].lo).size)
    if isinstance(net, Network):
        ir = net
        shape = tuple(input_shape or net.input_shape or (n_in,))
    elif isinstance(net, nn.Module):
        shape = tuple(input_shape or (n_in,))
        ir = Network.from_torch(copy.deepcopy(net).double().eval(), shape)
    else:
        raise TypeError(f"net must be a fastcert.Network or a torch nn.Module, got {type(net).__name__}")
    layers = ir.layers_for(shape)
    K = layers[-1].n_out
    info: dict[str, Any] = {"stage": "", "reason": "", "conjunctions": [], "refine": [], "best_lower": -math.inf,
                            "best_upper": math.inf}
    say = log or (lambda _m: None)
    jobs: list[dict[str, Any]] = []

    def finish(verdict: str, reason: str, stage: str, x: np.ndarray | None = None) -> tuple[str, np.ndarray | None, dict]:
        for j in jobs:
            for key in ("A", "b", "lo", "hi", "prob"):
                j.pop(key, None)
        info.update(verdict=verdict, reason=reason, stage=stage, time_s=time.perf_counter() - t_start)
        info["best_lower"] = min((c["lower"] for c in jobs if not c["closed"]), default=math.inf)
        info["best_upper"] = min((c["upper"] for c in jobs), default=math.inf)
        say(f"{verdict} ({stage}): {reason}")
        return verdict, x, info

    try:
        _check_layers(layers)
    except ValueError as e:
        return finish("unknown", str(e), "load")
    for p in props:
        lo_, hi_ = np.asarray(p.lo), np.asarray(p.hi)
        if lo_.shape != (n_in,) or hi_.shape != (n_in,) or not (np.isfinite(lo_).all() and np.isfinite(hi_).all()):
            raise ValueError("every disjunct needs a finite box of the same size")
        for A, b in p.constraints:
            if np.ndim(A) != 2 or np.shape(A)[1] != K or np.shape(b) != (np.shape(A)[0],):
                raise ValueError(f"output constraints must be A [m, {K}], b [m]")

    def evaluate(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ir.forward(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(-1, *shape)).numpy()

    def confirm(x: np.ndarray) -> np.ndarray | None:
        """A proved counterexample at x (its float32 rounding when that is one, else x), or None."""
        return confirm_point(ir, shape, props, x)

    def candidate(j: dict, x: np.ndarray, what: str) -> np.ndarray | None:
        """Re-execute x (clipped into j's box) for job j: update its upper bound; a confirmed
        counterexample or None."""
        x = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), j["lo"], j["hi"])
        val = float(_conj_value(evaluate(x), j["A"], j["b"])[0])
        j[what] = min(j.get(what, math.inf), val)
        j["upper"] = min(j["upper"], val)
        return confirm(x) if val <= 0 else None

    # ---- 1. CROWN on every row of every disjunct
    for d, p in enumerate(props):
        lo, hi = np.asarray(p.lo, dtype=np.float64), np.asarray(p.hi, dtype=np.float64)
        if not p.constraints or (lo > hi).any():  # nothing to satisfy / an empty box
            continue
        x0 = np.clip((lo + hi) / 2, lo, hi)
        eps = float(((hi - lo) / 2).max()) * (1 + 1e-9) + 1e-300  # the ball contains the box: region == box
        prob = make_region(torch.from_numpy(x0).reshape(1, *shape), eps, "inf", torch.from_numpy(lo).reshape(shape),
                       torch.from_numpy(hi).reshape(shape))
        if not (np.array_equal(prob.l0[0].numpy(), lo) and np.array_equal(prob.u0[0].numpy(), hi)):  # pragma: no cover
            raise RuntimeError("internal error: the bounded region differs from the disjunct's box")
        rows = np.concatenate([np.asarray(A, dtype=np.float64) for A, _ in p.constraints], axis=0)
        lb, ub = linear_bounds(layers, prob, torch.from_numpy(rows).unsqueeze(0), bounds_method)
        lb, ub = lb[0].numpy(), ub[0].numpy()
        r = 0
        for k, (A, b) in enumerate(p.constraints):
            A = np.asarray(A, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
            m = A.shape[0]
            if m == 0:  # an empty conjunction holds everywhere
                x = confirm(x0)
                if x is not None:
                    return finish("sat", "an empty output conjunction", "bounds", x)
                continue
            t_lo = float(np.nextafter(np.max(lb[r:r + m] - b), -np.inf))  # rounded outwards: the column range
            t_hi = float(np.nextafter(np.max(ub[r:r + m] - b), np.inf))   # of t must contain every true value
            r += m
            closed = bool(np.any(lb[r - m:r] > b))  # some row can never hold
            jobs.append({"disjunct": d, "conj": k, "rows": m, "crown_lower": t_lo, "crown_upper": t_hi,
                         "lower": t_lo, "upper": math.inf, "closed": closed,
                         "status": "closed: " + bounds_method if closed else "open", "time_s": 0.0,
                         "n_binaries": None, "A": A, "b": b, "lo": lo, "hi": hi, "prob": prob})
    info["conjunctions"] = jobs
    info["bounds_s"] = time.perf_counter() - t_start
    if all(j["closed"] for j in jobs):
        return finish("unsat", f"{bounds_method} bounds close every conjunction", f"bounds:{bounds_method}")
    for j in jobs:  # CROWN shows the conjunction holds on the whole box: the centre is a counterexample
        if not j["closed"] and j["crown_upper"] <= 0:
            x = candidate(j, (j["lo"] + j["hi"]) / 2, "attack_value")
            if x is not None:
                return finish("sat", "the conjunction holds on the whole box (CROWN upper bound <= 0)",
                              f"bounds:{bounds_method}", x)

    # ---- 2. PGD
    if attack:
        t_a = time.perf_counter()
        todo = [j for j in jobs if not j["closed"]]
        stop = min(deadline, t_a + min(0.1 * time_limit, 10.0))
        res = _pgd(layers, [(j["lo"], j["hi"], j["A"], j["b"]) for j in todo], attack_restarts, attack_steps, seed, stop)
        for j, (_, x) in zip(todo, res):
            xc = candidate(j, x, "attack_value")
            if xc is not None:
                info["attack_s"] = time.perf_counter() - t_a
                return finish("sat", f"PGD counterexample (value {j['attack_value']:.3g}, proved)", "attack", xc)
        info["attack_s"] = time.perf_counter() - t_a
        say("PGD values: " + ", ".join(f"{j['conj']}:{j['attack_value']:.3g}" for j in todo))
    if time.perf_counter() >= deadline:
        return finish("timeout", "time limit reached after the attack", "attack")

    # ---- 3. one LP per open conjunction (CROWN bounds, then refined bounds)
    mats = [affine_matrix(L) if not isinstance(L, Activation) else None for L in layers]
    absW = [None if m is None else abs(m[0]).T.tocsr() for m in mats]
    prepared: dict[int, dict] = {}
    t_lp = time.perf_counter()

    def lp_stage(dj: list, pre: dict, tag: str) -> tuple[np.ndarray, str] | None:
        """LP per open job of one disjunct: certificate (may close it), optimal point and its PGD polish
        (counterexample candidates). Returns (counterexample, reason) or None."""
        enc_lp = encode(layers, mats, pre, dj[0]["lo"], dj[0]["hi"], mode="lp")
        starts = []
        for j in dj:
            if j["closed"] or time.perf_counter() >= deadline:
                starts.append(None)
                continue
            menc, cost, offset = _conj_model(enc_lp, j["A"], j["b"], j["crown_lower"], j["crown_upper"])
            hs = highs_lp(menc, cost, deadline - time.perf_counter())
            hs.run()
            sol = hs.getSolution()
            x_lp = None
            if sol.dual_valid:
                lb = certified_lower(menc, cost, np.asarray(sol.row_dual)) + offset
                lb = float(np.nextafter(lb, -np.inf))  # the rounding of "+ offset"
                j["lp_lower"] = max(j.get("lp_lower", -math.inf), lb)
                j["lower"] = max(j["lower"], lb)
                if lb > 0:
                    j["closed"] = True
                    j["status"] = "closed: LP"
            if sol.value_valid and not j["closed"]:
                x_lp = np.asarray(sol.col_value)[menc.x]
                xc = candidate(j, x_lp, "lp_value")
                if xc is not None:
                    return xc, f"LP-relaxation point ({tag} bounds) is a counterexample (value {j['lp_value']:.3g})"
            starts.append(x_lp)
        if attack:  # polish the LP points by PGD
            todo = [(j, x) for j, x in zip(dj, starts) if x is not None and not j["closed"]]
            if todo:
                stop = min(deadline, time.perf_counter() + min(0.05 * time_limit, 5.0))
                res = _pgd(layers, [(j["lo"], j["hi"], j["A"], j["b"]) for j, _ in todo], 1, attack_steps // 2,
                           seed + 1, stop, starts=[x for _, x in todo])
                for (j, _), (_, x) in zip(todo, res):
                    xc = candidate(j, x, "lp_value")
                    if xc is not None:
                        return xc, f"PGD from an LP point ({tag} bounds; value {j['lp_value']:.3g}, re-checked)"
        say(f"LP stage ({tag}): " + ", ".join(f"{j['conj']}:[{j['lower']:.3g}, {j['upper']:.3g}]" for j in dj))
        return None

    for d in sorted({j["disjunct"] for j in jobs if not j["closed"]}):
        dj = [j for j in jobs if j["disjunct"] == d and not j["closed"]]
        if time.perf_counter() >= deadline:
            return finish("timeout", "time limit reached during the LP stage", "lp")
        pre = {i: (v[0][0].copy(), v[1][0].copy()) for i, v in _prefix_bounds(layers, dj[0]["prob"], bounds_method).items()}
        lo, hi = dj[0]["lo"], dj[0]["hi"]
        hit = lp_stage(dj, pre, bounds_method)
        if hit is None and lp_refine and not all(j["closed"] for j in dj) and time.perf_counter() < deadline:
            left = deadline - time.perf_counter()
            pre, rinfo = refine_bounds(layers, mats, pre, lo, hi, time_budget=refine_fraction * left)
            rinfo["disjunct"] = d
            info["refine"].append(rinfo)
            say(f"LP refinement (disjunct {d}): {rinfo['lps']} LPs, {rinfo['stabilised']} neurons stabilised, "
                f"{rinfo['time_s']:.2f}s")
            hit = lp_stage(dj, pre, "refined")
        if hit is not None:
            info["lp_s"] = time.perf_counter() - t_lp
            return finish("sat", hit[1], "lp", hit[0])
        prepared[d] = {"mip": encode(layers, mats, pre, lo, hi, mode="mip"), "pre": pre}
    info["lp_s"] = time.perf_counter() - t_lp
    if all(j["closed"] for j in jobs):
        return finish("unsat", "every conjunction closed by bounds or LP certificates", "lp")
    if time.perf_counter() >= deadline:
        return finish("timeout", "time limit reached during the LP stage", "lp")

    # ---- 4. MIP per open conjunction
    found: list[np.ndarray] = []

    def run_job(j: dict, budget: float, effort: float | None) -> None:
        enc, pre = prepared[j["disjunct"]]["mip"], prepared[j["disjunct"]]["pre"]
        A, b = j["A"], j["b"]
        sens = 10.0 * _FEAS_TOL * _sensitivity(layers, absW, pre, np.abs(A).sum(axis=0))
        cutoff = 2.0 * (1e-6 + sens)
        menc, cost, offset = _conj_model(enc, A, b, j["crown_lower"], j["crown_upper"])
        xv = enc.x

        def on_sol(v: np.ndarray, _obj: float) -> Any:
            xc = candidate(j, v[xv], "mip_value")
            if xc is not None:
                found.append(xc)
                return True
            return None

        left = deadline - time.perf_counter()
        run = _run_mip(menc, cost, offset, max(1e-3, min(budget, left)), cutoff=cutoff, on_solution=on_sol, exact=False,
                       heuristic_effort=effort)
        if run.solution is not None and run.stopped is None:
            on_sol(run.solution, run.objective or 0.0)
        raw = run.raw_lower
        margin = 1e-6 * (1.0 + abs(raw) if math.isfinite(raw) else 1.0) + sens
        j["lower"] = max(j["lower"], raw - margin)
        j["status"] = "mip: " + ("counterexample" if found else run.status)
        j["time_s"] += run.time_s
        j["n_binaries"] = enc.n_binaries
        j["nodes"] = j.get("nodes", 0) + run.nodes
        if j["lower"] > 0 and not found:
            j["closed"] = True
            j["status"] = "closed: MIP"
        say(f"MIP disjunct {j['disjunct']} conj {j['conj']}: {run.status}, lower {j['lower']:.4g}, upper "
            f"{j['upper']:.4g}, {enc.n_binaries} binaries, {run.nodes} nodes, {run.time_s:.2f}s")

    order = sorted((j for j in jobs if not j["closed"]), key=lambda j: (j["upper"], j["crown_lower"]))
    t_m = time.perf_counter()
    for rnd in (1, 2):
        todo = [j for j in order if not j["closed"]]
        for n, j in enumerate(todo):
            left = deadline - time.perf_counter()
            if left <= 0.05:
                break
            share = left / (len(todo) - n)
            if heuristic_effort is not None:
                effort = heuristic_effort
            else:  # round 1: a pure proof search (3x faster on unsat rows), round 2: HiGHS's heuristics too
                effort = 0.0 if rnd == 1 else None
            run_job(j, 1.5 * share if rnd == 1 else share, effort)
            if found:
                info["mip_s"] = time.perf_counter() - t_m
                return finish("sat", f"MIP counterexample (disjunct {j['disjunct']}, conjunction {j['conj']}, "
                              "proved by rigorous bounds at the point)", "mip", found[0])
        if all(j["closed"] for j in jobs) or time.perf_counter() >= deadline - 0.05:
            break
    info["mip_s"] = time.perf_counter() - t_m
    if all(j["closed"] for j in jobs):
        return finish("unsat", "every conjunction closed (bounds, LP or MIP)", "mip")
    if time.perf_counter() >= deadline - 0.05:
        return finish("timeout", "time limit reached with conjunctions open", "mip")
    return finish("unknown", "the MIPs stopped undecided before the time limit", "mip")


def verify_box(net: Network | nn.Module, lo: Any, hi: Any, A: Any, b: Any, time_limit: float,
               **kwargs: Any) -> tuple[str, np.ndarray | None, dict]:
    """Is there an ``x`` in ``[lo, hi]`` (flat, ONNX row-major order) with ``A f(x) <= b`` (every row)?
    :func:`solve_property` on that one box and conjunction (same keywords and return value)."""
    from fastcert.io.vnnlib import Property

    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    return solve_property(net, Property(lo, hi, [(A, b)]), time_limit, **kwargs)
