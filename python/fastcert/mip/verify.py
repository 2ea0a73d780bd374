"""``fastcert.verify``: exact (MIP) verification of ``C f(x') > 0`` over a ball intersected with a box, per
sample and spec row (see :mod:`fastcert.mip` for the encoding and the soundness argument)."""

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

from fastcert.algorithms.linear_bounds import METHODS
from fastcert.api import make_region
from fastcert.checks import as_tensor, norm_key
from fastcert.confirm import into_region, output_upper
from fastcert.graph.ir import Graph
from fastcert.mip.common import augment, incomplete_bounds
from fastcert.mip.encoding import check_graph, encode_graph, sensitivity
from fastcert.mip.highs import HighsOptions, margin_of, run_mip
from fastcert.mip.lp_refine import Encoding, refine_bounds
from fastcert.network import Network, as_network

__all__ = ["MIPResult", "verify"]


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


@dataclass(frozen=True)
class _Problem:
    """What every (sample, row) MIP of one :func:`verify` call shares."""

    net: Network
    ref_model: Any  # the model re-executed in float64 (a float64 copy of an nn.Module, or the Network)
    g: Graph  # the network's graph at ``shape`` (a chain's graph has its layers as nodes)
    shape: tuple[int, ...]
    norm: str
    C: torch.Tensor  # [B, S, K] float64
    crown_lo: torch.Tensor  # [B, S]
    crown_up: torch.Tensor  # [B, S]
    dlo: np.ndarray  # the input domain, flat (-inf / inf where none)
    dhi: np.ndarray
    early_stop: bool
    opts: HighsOptions


def _reexec(model: Any, net: Network, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the model in float64 on x [B, *shape]."""
    with torch.no_grad():
        if isinstance(model, nn.Module):
            return model(x.double())
        return net.forward(x.double())


def _domain(bnd: Any, shape: tuple, default: float) -> np.ndarray:
    if bnd is None:
        return np.full(int(np.prod(shape)), default)
    t = torch.as_tensor(bnd, dtype=torch.float64)
    return torch.broadcast_to(t, shape).reshape(-1).numpy().copy()


def _check_args(model: Any, nk: str, bounds_method: str, time_limit: Any, lp_refine: Any) -> None:
    if nk == "2":
        raise ValueError("norm='2': an L2 ball is not linear-representable; exact verification over it needs a "
                         "second-order-cone (MISOCP) solver, which fastcert.mip (HiGHS, MILP) does not have. "
                         "Use norm='inf' or '1', or fastcert.bounds for sound L2 bounds.")
    if bounds_method not in METHODS and bounds_method != "alpha-crown":
        raise ValueError(f"unknown bounds_method {bounds_method!r}; choose one of {sorted([*METHODS, 'alpha-crown'])}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if isinstance(lp_refine, bool) or not isinstance(lp_refine, (int, float)) or not lp_refine >= 0:
        raise ValueError(f"lp_refine must be a number of seconds >= 0, got {lp_refine!r}")
    if isinstance(model, nn.Module) and model.training and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("the model is in training mode and has BatchNorm layers: call model.eval() first")


def _spec_rows(logits: torch.Tensor | None, labels: Any, C: Any, B: int,
               K: int) -> tuple[torch.Tensor, list[list[int | None]]]:
    """(C [B, S, K] float64, targets[b][s]): the given C, or the margins ``e_y - e_j`` (j != y) with
    ``y = labels`` or the prediction ``logits.argmax(1)``."""
    if C is not None:
        Ct = as_tensor(C, "C").detach().double()
        if Ct.dim() == 2:
            Ct = Ct.unsqueeze(0).expand(B, *Ct.shape)
        if Ct.dim() != 3 or Ct.shape[0] != B or Ct.shape[2] != K or Ct.shape[1] == 0:
            raise ValueError(f"C must be [S, {K}] or [{B}, S, {K}], got shape {tuple(Ct.shape)}")
        if not torch.isfinite(Ct).all():
            raise ValueError("C contains NaN or inf")
        return Ct.contiguous(), [[None] * Ct.shape[1] for _ in range(B)]
    if labels is None:
        y = logits.argmax(1)  # type: ignore[union-attr]
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
    targets: list[list[int | None]] = []
    for b in range(B):
        js = [j for j in range(K) if j != int(y[b])]
        targets.append(list(js))
        for s, j in enumerate(js):
            Ct[b, s, int(y[b])] += 1.0
            Ct[b, s, j] -= 1.0
    return Ct.contiguous(), targets


def _l1_ball(enc: Encoding, x0: np.ndarray, e_b: float) -> Encoding:
    """The encoding with ``t >= |x' - x0|``, ``sum t <= e_b`` (the L1 ball around x0 [n])."""
    n0 = len(x0)
    I = sp.identity(n0, format="csr")
    Xs = sp.csr_matrix((np.ones(n0), (np.arange(n0), enc.x)), shape=(n0, enc.ncol))
    rows = sp.vstack([sp.hstack([-Xs, I]), sp.hstack([Xs, I]),
                      sp.hstack([sp.csr_matrix((1, enc.ncol)), sp.csr_matrix(np.ones((1, n0)))])])
    enc, _ = augment(enc, np.zeros(n0), np.full(n0, e_b), rows, np.concatenate([-x0, x0, [-np.inf]]),
                     np.concatenate([np.full(2 * n0, np.inf), [e_b]]))
    return enc


def _solve_row(P: _Problem, b: int, s: int, target: int | None, enc: Encoding, pre: dict, box: tuple,
               x0: np.ndarray, e_b: float, time_limit: float, extra_s: float) -> MIPResult:
    """The MIP of sample b, spec row s (see :func:`verify`); box: the sample's input box (l0, u0);
    ``extra_s``: model-building time charged to it."""
    t0 = time.perf_counter()
    c = P.C[b, s].numpy()
    cost = np.zeros(enc.ncol)
    cost[enc.out[-1]] = c
    sens = 10.0 * P.opts.feasibility_tol * sensitivity(P.g, pre, box[0], box[1], np.abs(c))
    cutoff = 2.0 * (P.opts.rel_margin + sens) if P.early_stop else None
    best: dict[str, Any] = {"up": math.inf, "x": None, "val": None}

    def on_sol(v: np.ndarray, obj: float) -> Any:
        xp = into_region(v[enc.x], x0, e_b, P.norm, P.dlo, P.dhi)  # exactly in the region
        if xp is None:  # pragma: no cover - x0 itself is in the region
            return None
        up = float(output_upper(P.net, P.shape, xp, c[None])[0])  # rigorous: c . f(xp) <= up
        if up < best["up"]:
            xt = torch.from_numpy(xp).reshape(P.shape)
            val = float(_reexec(P.ref_model, P.net, xt[None])[0].double() @ P.C[b, s])
            best.update(up=up, x=xt.clone(), val=val)
        return True if (P.early_stop and up < 0) else None

    run = run_mip(enc, cost, 0.0, max(1e-3, time_limit - extra_s), cutoff=cutoff, on_solution=on_sol,
                  exact=not P.early_stop, opts=P.opts)
    if run.solution is not None:
        on_sol(run.solution, run.objective if run.objective is not None else math.nan)
    raw = run.raw_lower
    lower = max(float(P.crown_lo[b, s]), raw - margin_of(raw, sens, P.opts))
    min_value = run.objective if (run.optimal and cutoff is None) else None
    upper = min(float(P.crown_up[b, s]), best["up"])
    cex = best["x"] if best["up"] < 0 else None  # proved: c . f(x') < 0 at a point of the region
    if lower > 0 and cex is None:
        verdict = "verified"
    elif cex is not None and lower <= 0:
        verdict = "falsified"
    else:
        verdict, cex = "unknown", None
    status = run.status
    if run.stopped is not None:
        status = "Interrupted: counterexample found"
    elif cutoff is not None and run.status in ("Infeasible", "Optimal") and lower > 0:
        status = "Cutoff: verified"
    return MIPResult(b, s, target, verdict, min_value, lower, upper, cex, best["val"], status, enc.n_binaries,
                     time.perf_counter() - t0 + extra_s)


def verify(model: nn.Module | Network, x: Any, eps: Any, norm: Any = "inf", labels: Any = None, C: Any = None,
           x_min: Any = None, x_max: Any = None, time_limit: float = 60.0,
           bounds_method: str = "alpha-crown", *, early_stop: bool = True, lp_refine: float = 0.0,
           options: HighsOptions | None = None) -> list[list[MIPResult]]:
    """Exact (MIP) verification of ``C f(x') > 0`` over the ball ∩ box, per sample and per row.

    x: [B, *input_shape]; eps scalar or [B]; norm "inf" or "1" ("2" raises ValueError).
    C: [S, K] or [B, S, K]; default rows ``e_y - e_j`` for ``j != y`` with ``y = labels`` (or the
    prediction at x). time_limit: seconds per (sample, row). Returns ``results[b][s]``
    (:class:`MIPResult`).
    early_stop: stop each row as soon as its sign is decided (verified / falsified), the default (the
    verdicts are the same, often many times sooner); ``early_stop=False`` solves to optimality and
    reports the optimum in ``min_value`` (None with early stopping).
    lp_refine: seconds per sample for tightening the pre-activation bounds by per-neuron LPs
    (:func:`fastcert.lp_refine.refine_bounds`; 0 = off, the incomplete bounds only).
    bounds_method: the incomplete bounds (output and pre-activation) the MIP starts from: "alpha-crown"
    (default: CROWN with optimized slopes, :class:`fastcert.AlphaOptions` defaults), or any method of
    :func:`fastcert.bounds`.
    options: HiGHS tolerances and the margin (:class:`fastcert.mip.HighsOptions`; default values).
    """
    nk = norm_key(norm)
    # bounds carry no gradient: a box that requires grad is used detached (as x is); make_region checks it
    x_min, x_max = (b.detach() if isinstance(b, torch.Tensor) else b for b in (x_min, x_max))
    _check_args(model, nk, bounds_method, time_limit, lp_refine)
    net = as_network(model)
    x = as_tensor(x, "x")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [B, *input_shape], got shape {tuple(x.shape)}")
    xd = x.detach().double()
    shape = tuple(xd.shape[1:])
    g = net.graph_for(shape)
    check_graph(g)
    B, K = xd.shape[0], g.n(g.output)
    prob = make_region(xd, eps, nk, x_min, x_max)
    ref_model = copy.deepcopy(model).double().eval() if isinstance(model, nn.Module) else model
    Ct, targets = _spec_rows(_reexec(ref_model, net, xd) if C is None else None, labels, C, B, K)

    # sound pre-activation boxes (prefix bounds) and rigorous output bounds
    crown_lo, crown_up, pre_all = incomplete_bounds(net, shape, prob, Ct, bounds_method)
    P = _Problem(net, ref_model, g, shape, nk, Ct, crown_lo, crown_up, _domain(x_min, shape, -np.inf),
                 _domain(x_max, shape, np.inf), early_stop, options or HighsOptions())
    results: list[list[MIPResult]] = []
    for b in range(B):
        t_b = time.perf_counter()
        x0 = xd[b].reshape(-1).numpy()
        e_b = float(prob.eps[b])
        l0, u0 = prob.l0[b].numpy().copy(), prob.u0[b].numpy().copy()
        pre = {i: (v[0][b].copy(), v[1][b].copy()) for i, v in pre_all.items()}
        if lp_refine > 0 and nk == "inf":
            pre, _ = refine_bounds(g, pre, l0, u0, time_budget=float(lp_refine))
        enc = encode_graph(g, pre, l0, u0, mode="mip")
        if nk == "1":
            enc = _l1_ball(enc, x0, e_b)
        build_s = time.perf_counter() - t_b
        results.append([_solve_row(P, b, s, targets[b][s], enc, pre, (l0, u0), x0, e_b, time_limit,
                                   build_s if s == 0 else 0.0)
                        for s in range(Ct.shape[1])])
    return results
