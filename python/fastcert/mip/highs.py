"""Running HiGHS on an :class:`~fastcert.mip.lp_refine.Encoding`: :func:`run_mip`, its options
(:class:`HighsOptions`) and the margin of a MIP lower bound (:func:`margin_of`; its sensitivity term is
:func:`fastcert.mip.encoding.sensitivity`), shared by :func:`fastcert.verify` and
:func:`fastcert.mip.solve_property`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastcert.mip.lp_refine import Encoding, highs_lp

__all__ = ["HighsOptions", "MipRun", "margin_of", "run_mip"]

#: HiGHS's heuristic switches turned off for a pure proof search (``heuristic_effort=0``).
_SUB_MIP_HEURISTICS = ("mip_heuristic_run_rins", "mip_heuristic_run_rens", "mip_heuristic_run_root_reduced_cost",
                       "mip_heuristic_run_feasibility_jump")


@dataclass(frozen=True)
class HighsOptions:
    """feasibility_tol: HiGHS's primal / dual / MIP feasibility tolerances (they enter the margin of
    every MIP lower bound, see :mod:`fastcert.mip`). rel_margin: the relative part of that margin
    (``rel_margin (1 + |d|)``)."""

    feasibility_tol: float = 1e-9
    rel_margin: float = 1e-6


@dataclass(frozen=True)
class MipRun:
    status: str
    optimal: bool
    dual: float  # HiGHS's dual bound (-inf when none)
    raw_lower: float  # min(dual, cutoff): what the run shows about the minimum, before the margin
    objective: float | None  # the incumbent's objective (None without one)
    solution: np.ndarray | None  # the incumbent's column values
    stopped: Any  # what the callback returned when it interrupted the solve (None otherwise)
    nodes: int
    time_s: float


def margin_of(raw: float, sens: float, opts: HighsOptions) -> float:
    """The margin subtracted from a MIP's ``raw_lower`` (module docstring of :mod:`fastcert.mip`);
    ``sens`` is ``10 tol S``, ``S`` from :func:`fastcert.mip.encoding.sensitivity`."""
    return opts.rel_margin * (1.0 + abs(raw) if math.isfinite(raw) else 1.0) + sens


def _configure(hs: Any, opts: HighsOptions, exact: bool, heuristic_effort: float | None, cutoff: float | None,
               n_bin: int) -> None:
    if exact:
        hs.setOptionValue("mip_rel_gap", 0.0)
        hs.setOptionValue("mip_abs_gap", 1e-10)
    for name in ("primal_feasibility_tolerance", "dual_feasibility_tolerance", "mip_feasibility_tolerance"):
        hs.setOptionValue(name, float(opts.feasibility_tol))
    if heuristic_effort is not None:
        hs.setOptionValue("mip_heuristic_effort", float(heuristic_effort))
        if heuristic_effort == 0:  # no sub-MIP heuristics either: a pure proof search
            for name in _SUB_MIP_HEURISTICS:
                hs.setOptionValue(name, False)
    if cutoff is not None and n_bin:
        hs.setOptionValue("objective_bound", float(cutoff))


def _subscribe(hs: Any, ncol: int, on_solution: Callable[[np.ndarray, float], Any] | None, stopped: list,
               interrupt: Callable[[], bool] | None) -> None:
    """Call ``on_solution`` on every improving solution (a non-None return interrupts the solve); poll
    ``interrupt`` in HiGHS's interrupt callbacks (True interrupts the solve)."""
    def cb(e: Any) -> None:
        if stopped[0] is not None:
            return
        v = np.asarray(e.data_out.mip_solution, dtype=np.float64)
        if v.shape[0] != ncol:  # pragma: no cover - defensive
            return
        r = on_solution(v, float(e.data_out.objective_function_value))  # type: ignore[misc]
        if r is not None:
            stopped[0] = r
            e.interrupt()

    def stop(e: Any) -> None:  # HiGHS honours user_interrupt in the interrupt callbacks
        if stopped[0] is not None or interrupt is not None and interrupt():
            e.interrupt()

    if on_solution is not None:
        hs.cbMipImprovingSolution.subscribe(cb)
    hs.cbMipInterrupt.subscribe(stop)


def run_mip(enc: Encoding, cost: np.ndarray, offset: float, time_limit: float, *, cutoff: float | None = None,
            on_solution: Callable[[np.ndarray, float], Any] | None = None, exact: bool = True,
            heuristic_effort: float | None = None, opts: HighsOptions = HighsOptions(),
            interrupt: Callable[[], bool] | None = None) -> MipRun:
    """Minimise ``cost . v + offset`` over the encoding with HiGHS (one passModel).

    cutoff: HiGHS ``objective_bound``: nodes that cannot go below it are pruned (the run then says
    nothing about the minimum above ``cutoff``: ``raw_lower = min(dual, cutoff)``).
    on_solution(v, objective): called on every improving solution; a non-None return interrupts the
    solve and is kept in ``stopped``.
    exact: ``mip_rel_gap = 0`` (solve to optimality) instead of HiGHS's default gap.
    interrupt: polled in HiGHS's MIP interrupt callback; True stops the solve (its dual bound so far stands).
    """
    import highspy

    t0 = time.perf_counter()
    n_bin = enc.n_binaries
    hs = highs_lp(enc, cost, time_limit, offset=offset, integer=True)
    _configure(hs, opts, exact, heuristic_effort, cutoff, n_bin)
    stopped: list[Any] = [None]
    if (on_solution is not None or interrupt is not None) and n_bin:
        _subscribe(hs, enc.ncol, on_solution, stopped, interrupt)
    hs.run()
    ms = hs.getModelStatus()
    info = hs.getInfo()
    optimal = ms == highspy.HighsModelStatus.kOptimal
    infeasible = ms == highspy.HighsModelStatus.kInfeasible
    if n_bin:
        dual = float(info.mip_dual_bound)
    else:
        dual = float(info.objective_function_value) if optimal else -math.inf
    if not math.isfinite(dual) or abs(dual) >= highspy.kHighsInf:
        dual = math.inf if infeasible else -math.inf
    if infeasible and cutoff is None:  # pragma: no cover - the region is never empty
        dual = -math.inf
    raw = dual if cutoff is None or not n_bin else min(dual, float(cutoff))
    sol = obj = None
    if info.primal_solution_status == 2:
        sol = np.asarray(hs.getSolution().col_value, dtype=np.float64)
        obj = float(info.objective_function_value)
    if on_solution is not None and sol is not None and not n_bin and stopped[0] is None:
        stopped[0] = on_solution(sol, obj)
    nodes = int(info.mip_node_count) if n_bin else 0
    return MipRun(hs.modelStatusToString(ms), optimal, dual, raw, obj, sol, stopped[0], nodes,
                  time.perf_counter() - t0)
