"""Exact verification of ReLU networks by mixed-integer programming (HiGHS).

For every sample and every spec row ``c`` (default: the margins ``f_y - f_j``, ``j != y``) we solve

    minimise  c . f(x')   over   ||x' - x||_p <= eps,  x_min <= x' <= x_max       (p = inf or 1)

exactly, with the big-M encoding of Tjeng, Xiao & Tedrake (ICLR 2019):

* the pre-activation box ``[l, u]`` of every ReLU comes from fastcert's sound linear bounds
  (``bounds_method``, CROWN by default) on the prefix of the network in front of it;
* a stable neuron needs no binary (``u <= 0``: ``y = 0``; ``l >= 0``: ``y = z``); an unstable one
  gets a binary ``a`` and ``y >= z, y >= 0, y <= z - l (1 - a), y <= u a``;
* affine layers (Dense, Conv2d expanded to one sparse row per output, Diag) are equality rows;
* the L-inf ball is the column box of the input variables (intersected with the domain box); the
  L1 ball adds ``t >= |x' - x|`` and ``sum t <= eps``. L2 would need a second-order-cone solver and
  is refused.

The whole model (sparse CSR matrix + integrality) is passed to HiGHS in one ``passModel`` call per
(sample, row), single-threaded, output off, with ``time_limit`` seconds.

Soundness. HiGHS works in floating point with feasibility / integrality tolerances, so its optimum
is not a certificate by itself:

* ``lower_bound = max(crown_lower, mip_dual_bound - margin)`` where ``crown_lower`` is fastcert's
  rigorous bound and ``margin = 1e-6 (1 + |d|) + 10 tol S``: ``tol`` is the largest of HiGHS's
  primal / MIP feasibility tolerances (set to 1e-9) and ``S`` bounds how far tolerance-sized
  violations can move the objective: each variable counts its sensitivity ``|c|^T |W_L| ... |W_k|``
  (ReLU 1-Lipschitz) once per equality row, plus ``max(-l, u)`` times it for an unstable ReLU whose
  binary may be fractional by ``tol``. A conservative, documented heuristic, not a proof;
  ``verified`` requires ``lower_bound > 0``.
* ``falsified`` is declared only when the solver's point, projected exactly into the region, is
  re-executed on the torch model in float64 and really gives a row value ``< 0``; ``upper_bound``
  is the best re-executed value (a true upper bound on the minimum, up to float64 evaluation).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fastcert.algorithms.linear_bounds import METHODS, linear_bounds
from fastcert.api import _as_tensor, _norm_key, _region
from fastcert.layers import Activation, Conv2d, Dense, Diag
from fastcert.network import Network, as_network

__all__ = ["MIPResult", "verify"]

_FEAS_TOL = 1e-9


@dataclass(frozen=True)
class MIPResult:
    """Result for one (sample, spec row).

    verdict: "verified" (row > 0 on the whole region), "falsified" (a re-executed counterexample has
    row value < 0) or "unknown".
    min_value: the solver's optimum of the row over the region when solved to optimality, else None.
    lower_bound / upper_bound: best bounds on the minimum (see the module docstring).
    counterexample: for "falsified", the input x' (float64, per-sample shape), else None.
    counterexample_value: the re-executed row value at the solver's point (None without one).
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


def _affine_matrix(L) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse W [n_out, n_in] and bias [n_out] (float64) of an affine IR layer."""
    b = L.bias_flat64()
    bias = np.zeros(L.n_out) if b is None else b.detach().double().numpy().reshape(-1).copy()
    if isinstance(L, Dense):
        W = sp.csr_matrix(L.W64.detach().double().numpy())
    elif isinstance(L, Diag):
        W = sp.diags(L.W64.detach().double().numpy().reshape(-1)).tocsr()
    elif isinstance(L, Conv2d):
        n_in = L.n_in
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *L.in_shape)
        cols = []
        for s in range(0, n_in, 512):  # image of each basis vector = one column (exact: single products)
            out = torch.nn.functional.conv2d(eye[s:s + 512], L.W64, None, stride=L.stride, padding=L.padding)
            cols.append(sp.csr_matrix(out.reshape(out.shape[0], -1).numpy()))
        W = sp.vstack(cols).T.tocsr()
        if W.shape != (L.n_out, n_in):  # pragma: no cover - shape bookkeeping
            raise ValueError(f"conv expansion of {L.name} gave shape {W.shape}, expected {(L.n_out, n_in)}")
    else:  # pragma: no cover - caller checks
        raise ValueError(f"unsupported layer {type(L).__name__}")
    W.eliminate_zeros()
    return W, bias


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


def _project(xp: np.ndarray, x0: np.ndarray, eps: float, nk: str, dlo: np.ndarray, dhi: np.ndarray) -> np.ndarray:
    """Move a solver point (which may violate constraints by the tolerances) exactly into the region."""
    if nk == "inf":
        lo, hi = x0 - eps, x0 + eps
        lo = np.where(x0 - lo > eps, np.nextafter(lo, np.inf), lo)
        hi = np.where(hi - x0 > eps, np.nextafter(hi, -np.inf), hi)
        xp = np.clip(xp, lo, hi)
    else:
        d = xp - x0
        n1 = float(np.abs(d).sum())
        if n1 > eps:
            d = d * (eps / n1) * (1.0 - 1e-12)
        xp = x0 + d
        while float(np.abs(xp - x0).sum()) > eps and eps > 0:  # pragma: no cover - rounding corner
            xp = x0 + (xp - x0) * 0.999999
        if eps == 0:
            xp = x0.copy()
    return np.clip(xp, dlo, dhi)  # towards x coordinate-wise: stays in the ball


def _sensitivity(layers: list, absW: list, bigM: dict, s: np.ndarray) -> float:
    """sum over the variables v of (how much |c . f| can move per unit change of v) * (how much a
    tolerance-sized violation can move v, in units of tol): 1 per equality row, plus the big-M of an
    unstable ReLU whose binary may be fractional by tol. ReLU is 1-Lipschitz; affine layers by |W|."""
    total = float(s.sum())
    for i in range(len(layers) - 1, -1, -1):
        if absW[i] is not None:
            total += float(s.sum())
            s = absW[i] @ s
        else:
            total += float(s.sum()) + float(s @ bigM.get(i, 0.0 * s))
    return total + float(s.sum())


def _opt(hs: Any, name: str) -> float:
    v = hs.getOptionValue(name)
    return float(v[-1] if isinstance(v, tuple) else v)


def _domain(bnd: Any, shape: tuple, default: float) -> np.ndarray:
    if bnd is None:
        return np.full(int(np.prod(shape)), default)
    t = torch.as_tensor(bnd, dtype=torch.float64)
    return torch.broadcast_to(t, shape).reshape(-1).numpy().copy()


def verify(model: nn.Module | Network, x: Any, eps: Any, norm: Any = "inf", labels: Any = None, C: Any = None,
           x_min: Any = None, x_max: Any = None, time_limit: float = 60.0,
           bounds_method: str = "crown") -> list[list[MIPResult]]:
    """Exact (MIP) verification of ``C f(x') > 0`` over the ball ∩ box, per sample and per row.

    x: [B, *input_shape]; eps scalar or [B]; norm "inf" or "1" ("2" raises ValueError).
    C: [S, K] or [B, S, K]; default rows ``e_y - e_j`` for ``j != y`` with ``y = labels`` (or the
    prediction at x). time_limit: seconds per (sample, row). Returns ``results[b][s]``
    (:class:`MIPResult`).
    """
    import highspy

    nk = _norm_key(norm)
    if nk == "2":
        raise ValueError("norm='2': an L2 ball is not linear-representable; exact verification over it needs a "
                         "second-order-cone (MISOCP) solver, which fastcert.mip (HiGHS, MILP) does not have. "
                         "Use norm='inf' or '1', or fastcert.bounds for sound L2 bounds.")
    if bounds_method not in METHODS:
        raise ValueError(f"unknown bounds_method {bounds_method!r}; choose one of {sorted(METHODS)}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if isinstance(model, nn.Module) and model.training and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("the model is in training mode and has BatchNorm layers: call model.eval() first")
    net = as_network(model)
    x = _as_tensor(x, "x")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [B, *input_shape], got shape {tuple(x.shape)}")
    xd = x.detach().double()
    shape = tuple(xd.shape[1:])
    layers = net.layers_for(shape)
    _check_layers(layers)
    B, K = xd.shape[0], layers[-1].n_out
    prob = _region(xd, eps, nk, x_min, x_max)
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
            if y.dtype.is_floating_point or y.dtype == torch.bool:
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
        Ct = _as_tensor(C, "C").detach().double()
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
    pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, L in enumerate(layers):
        if isinstance(L, Activation):
            if i == 0:
                pre[i] = (prob.l0.numpy().copy(), prob.u0.numpy().copy())
            else:
                n = layers[i - 1].n_out
                eye = torch.eye(n, dtype=torch.float64).expand(B, n, n).contiguous()
                lo, up = linear_bounds(layers[:i], prob, eye, bounds_method)
                pre[i] = (lo.numpy().copy(), up.numpy().copy())
    crown_lo, crown_up = linear_bounds(layers, prob, Ct, bounds_method)

    mats = [_affine_matrix(L) if not isinstance(L, Activation) else None for L in layers]
    absW = [None if m is None else abs(m[0]).T.tocsr() for m in mats]

    dlo = _domain(x_min, shape, -np.inf)
    dhi = _domain(x_max, shape, np.inf)
    inf = highspy.kHighsInf
    results: list[list[MIPResult]] = []
    for b in range(B):
        t_b = time.perf_counter()
        x0 = xd[b].reshape(-1).numpy()
        e_b = float(prob.eps[b])
        rows_r: list[int] = []
        rows_c: list[int] = []
        rows_v: list[float] = []
        rlo: list[float] = []
        rhi: list[float] = []
        clo: list[np.ndarray] = []
        chi: list[np.ndarray] = []
        integ: list[np.ndarray] = []
        ncol = 0
        nrow = 0

        def new_cols(lo_: np.ndarray, hi_: np.ndarray, binary: bool = False) -> np.ndarray:
            nonlocal ncol
            k = len(lo_)
            clo.append(np.asarray(lo_, dtype=np.float64))
            chi.append(np.asarray(hi_, dtype=np.float64))
            integ.append(np.full(k, 1 if binary else 0, dtype=np.int64))
            idx = np.arange(ncol, ncol + k)
            ncol += k
            return idx

        def add_rows(M: sp.coo_matrix, cols_map: list[np.ndarray], lo_: np.ndarray, hi_: np.ndarray) -> None:
            """Rows sum_k M_k[r, :] @ vars(cols_map[k]) in [lo_, hi_]; M is a list of (coo, colidx)."""
            nonlocal nrow
            for m, cm in zip(M, cols_map):
                m = m.tocoo()
                rows_r.append(m.row + nrow)
                rows_c.append(cm[m.col])
                rows_v.append(m.data)
            rlo.append(np.asarray(lo_, dtype=np.float64))
            rhi.append(np.asarray(hi_, dtype=np.float64))
            nrow += len(lo_)

        n0 = len(x0)
        xv = new_cols(prob.l0[b].numpy(), prob.u0[b].numpy())
        if nk == "1":
            tv = new_cols(np.zeros(n0), np.full(n0, e_b))
            I = sp.identity(n0, format="coo")
            add_rows([I, -I], [tv, xv], -x0, np.full(n0, inf))  # t - x' >= -x0
            add_rows([I, I], [tv, xv], x0, np.full(n0, inf))  # t + x' >= x0
            add_rows([sp.coo_matrix(np.ones((1, n0)))], [tv], [-inf], [e_b])
        h = xv
        n_bin = 0
        bigM: dict[int, np.ndarray] = {}  # activation layer -> max(-l, u) on unstable neurons, 0 elsewhere
        for i, L in enumerate(layers):
            if isinstance(L, Activation):
                lo, up = pre[i][0][b], pre[i][1][b]
                n = len(lo)
                act = lo >= 0
                dead = up <= 0
                uns = ~(act | dead)
                yv = new_cols(np.where(dead, 0.0, np.maximum(lo, 0.0)), np.where(dead, 0.0, np.maximum(up, 0.0)))
                ia = np.nonzero(act)[0]
                if len(ia):  # y - z = 0
                    k = len(ia)
                    Ik = sp.identity(k, format="coo")
                    add_rows([Ik, -Ik], [yv[ia], h[ia]], np.zeros(k), np.zeros(k))
                iu = np.nonzero(uns)[0]
                if len(iu):
                    k = len(iu)
                    av = new_cols(np.zeros(k), np.ones(k), binary=True)
                    n_bin += k
                    Mk = np.zeros(n)
                    Mk[iu] = np.maximum(-lo[iu], up[iu])
                    bigM[i] = Mk
                    Ik = sp.identity(k, format="coo")
                    add_rows([Ik, -Ik], [yv[iu], h[iu]], np.zeros(k), np.full(k, inf))  # y >= z
                    add_rows([Ik, -Ik, sp.diags(-lo[iu]).tocoo()], [yv[iu], h[iu], av],
                             np.full(k, -inf), -lo[iu])  # y - z - l a <= -l
                    add_rows([Ik, sp.diags(-up[iu]).tocoo()], [yv[iu], av], np.full(k, -inf), np.zeros(k))  # y <= u a
                h = yv
            else:
                W, bias = mats[i]
                nxt = pre.get(i + 1)
                if nxt is not None:
                    zlo, zhi = nxt[0][b], nxt[1][b]
                else:
                    zlo, zhi = np.full(L.n_out, -inf), np.full(L.n_out, inf)
                zv = new_cols(zlo, zhi)
                Io = sp.identity(L.n_out, format="coo")
                add_rows([Io, -W.tocoo()], [zv, h], bias, bias)  # z - W h = b
                h = zv
        out = h
        col_lo = np.concatenate(clo)
        col_hi = np.concatenate(chi)
        col_int = np.concatenate(integ)
        A = sp.csr_matrix((np.concatenate(rows_v), (np.concatenate(rows_r), np.concatenate(rows_c))),
                          shape=(nrow, ncol))
        A.sum_duplicates()
        A.eliminate_zeros()
        row_lo = np.concatenate(rlo)
        row_hi = np.concatenate(rhi)
        row_lo[row_lo == -np.inf] = -inf
        row_hi[row_hi == np.inf] = inf
        col_lo[col_lo == -np.inf] = -inf
        col_hi[col_hi == np.inf] = inf
        build_s = time.perf_counter() - t_b

        res_b: list[MIPResult] = []
        for s in range(S):
            t0 = time.perf_counter()
            c = Ct[b, s].numpy()
            cost = np.zeros(ncol)
            cost[out] = c
            lp = highspy.HighsLp()
            lp.num_col_ = ncol
            lp.num_row_ = nrow
            lp.col_cost_ = cost
            lp.col_lower_ = col_lo
            lp.col_upper_ = col_hi
            lp.row_lower_ = row_lo
            lp.row_upper_ = row_hi
            lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
            lp.a_matrix_.num_col_ = ncol
            lp.a_matrix_.num_row_ = nrow
            lp.a_matrix_.start_ = A.indptr.astype(np.int32)
            lp.a_matrix_.index_ = A.indices.astype(np.int32)
            lp.a_matrix_.value_ = A.data
            if n_bin:
                lp.integrality_ = [highspy.HighsVarType.kInteger if v else highspy.HighsVarType.kContinuous
                                   for v in col_int]
            hs = highspy.Highs()
            hs.setOptionValue("output_flag", False)
            hs.setOptionValue("threads", 1)
            hs.setOptionValue("random_seed", 0)
            hs.setOptionValue("time_limit", float(max(1e-3, time_limit - (build_s if s == 0 else 0.0))))
            hs.setOptionValue("mip_rel_gap", 0.0)
            hs.setOptionValue("mip_abs_gap", 1e-10)
            hs.setOptionValue("primal_feasibility_tolerance", _FEAS_TOL)
            hs.setOptionValue("dual_feasibility_tolerance", _FEAS_TOL)
            hs.setOptionValue("mip_feasibility_tolerance", _FEAS_TOL)
            st = hs.passModel(lp)
            if st == highspy.HighsStatus.kError:  # pragma: no cover
                raise RuntimeError("HiGHS rejected the MIP model (passModel returned an error)")
            hs.run()
            status = hs.modelStatusToString(hs.getModelStatus())
            info = hs.getInfo()
            optimal = hs.getModelStatus() == highspy.HighsModelStatus.kOptimal
            if n_bin:
                dual = float(info.mip_dual_bound)
            else:
                dual = float(info.objective_function_value) if optimal else -math.inf
            if not math.isfinite(dual) or abs(dual) >= inf:
                dual = -math.inf
            tol = max(_FEAS_TOL, _opt(hs, "mip_feasibility_tolerance"), _opt(hs, "primal_feasibility_tolerance"))
            margin = 1e-6 * (1.0 + abs(dual) if math.isfinite(dual) else 1.0) + \
                10.0 * tol * _sensitivity(layers, absW, bigM, np.abs(c))
            lower = max(float(crown_lo[b, s]), dual - margin)
            min_value = float(info.objective_function_value) if optimal else None
            cex = None
            cex_val = None
            upper = float(crown_up[b, s])
            if info.primal_solution_status == 2:  # feasible point available
                xs = np.asarray(hs.getSolution().col_value)[xv]
                xp = _project(xs, x0, e_b, nk, dlo, dhi)
                xt = torch.from_numpy(xp).reshape(1, *shape)
                val = float(_reexec(ref_model, net, xt)[0].double() @ Ct[b, s])
                cex_val = val
                upper = min(upper, val)
                if val < 0:
                    cex = xt[0].clone()
            if lower > 0 and cex is None:
                verdict = "verified"
            elif cex is not None and lower <= 0:
                verdict = "falsified"
            else:
                verdict = "unknown"
                cex = None
            res_b.append(MIPResult(b, s, targets[b][s], verdict, min_value, lower, upper, cex, cex_val, status,
                                   n_bin, time.perf_counter() - t0 + (build_s if s == 0 else 0.0)))
        results.append(res_b)
    return results
