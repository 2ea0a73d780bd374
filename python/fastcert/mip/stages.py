"""The LP and MIP stages of the property pipeline (:func:`fastcert.mip.property.decide`). Both take the
pipeline's run (:class:`fastcert.mip.property.PropertyRun`: jobs, deadline, options) and return a decision
``(verdict, counterexample, info)`` or None (nothing decided)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from fastcert.mip.common import conj_model, node_bounds
from fastcert.mip.encoding import encode_graph, sensitivity
from fastcert.mip.highs import margin_of, run_mip
from fastcert.mip.lp_refine import certified_lower, highs_lp, refine_bounds

__all__ = ["lp_stage", "mip_stage"]


def _lp_jobs(run: Any, dj: list, enc_lp: Any) -> tuple[list, tuple | None]:
    """One LP per open job of a disjunct: its certificate may close the job, its optimal point is a
    candidate. Returns (LP points per job, (counterexample, job) or None)."""
    starts: list = []
    for j in dj:
        if j["closed"] or run.left() <= 0:
            starts.append(None)
            continue
        menc, cost, offset = conj_model(enc_lp, j["A"], j["b"], j["crown_lower"], j["crown_upper"])
        hs = highs_lp(menc, cost, run.left())
        hs.run()
        sol = hs.getSolution()
        x_lp = None
        if sol.dual_valid:
            lb = certified_lower(menc, cost, np.asarray(sol.row_dual)) + offset
            lb = float(np.nextafter(lb, -np.inf))  # the rounding of "+ offset"
            j["lp_lower"] = max(j.get("lp_lower", -math.inf), lb)
            j["lower"] = max(j["lower"], lb)
            if lb > 0:
                j["closed"], j["status"] = True, "closed: LP"
        if sol.value_valid and not j["closed"]:
            x_lp = np.asarray(sol.col_value)[menc.x]
            xc = run.candidate(j, x_lp, "lp_value")
            if xc is not None:
                return starts, (xc, j)
        starts.append(x_lp)
    return starts, None


def _lp_round(run: Any, dj: list, pre: dict, tag: str) -> tuple[np.ndarray, str] | None:
    """LPs of one disjunct's open jobs with the pre-activation bounds ``pre``, then PGD from the LP
    points (``run.opts.polish``). Returns (counterexample, reason) or None."""
    enc_lp = encode_graph(run.graph, pre, dj[0]["lo"], dj[0]["hi"], mode="lp")
    starts, hit = _lp_jobs(run, dj, enc_lp)
    if hit is not None:
        return hit[0], f"LP-relaxation point ({tag} bounds) is a counterexample (value {hit[1]['lp_value']:.3g})"
    todo = [(j, x) for j, x in zip(dj, starts) if x is not None and not j["closed"]]
    if run.opts.polish is not None and todo:
        found = run.attack_stage(run.opts.polish, run.opts.seed + 2, "polish_s", [j for j, _ in todo],
                                 [x for _, x in todo], "lp_value")
        if found is not None:
            return found[0], (f"PGD from an LP point ({tag} bounds; value {found[1]['lp_value']:.3g}, proved by "
                              "rigorous bounds at the point)")
    run.say(f"LP stage ({tag}): " + ", ".join(f"{j['conj']}:[{j['lower']:.3g}, {j['upper']:.3g}]" for j in dj))
    return None


def lp_stage(run: Any) -> tuple | None:
    """Per box, one LP per open job on the triangle relaxation (a rigorous dual bound may close it; its
    optimal point, polished by PGD, is a candidate), first with the incomplete pre-activation bounds,
    then after per-neuron LP refinement. Prepares the MIP encodings (``run.prepared``)."""
    t0 = time.perf_counter()
    run.prepared = {}
    for d in sorted({j["disjunct"] for j in run.open_jobs()}):
        dj = [j for j in run.open_jobs() if j["disjunct"] == d]
        if run.left() <= 0:
            return run.finish("timeout", "time limit reached during the LP stage", "lp")
        nb = run.pre.get(d)
        if nb is None:  # alpha-CROWN skipped (CROWN closed the disjunct's jobs, or no time): CROWN's
            nb = node_bounds(run.ir, run.shape, run.probs[d], "crown" if run.method == "alpha-crown" else run.method)
        pre = {i: (v[0][0].copy(), v[1][0].copy()) for i, v in nb.items()}
        lo, hi = dj[0]["lo"], dj[0]["hi"]
        hit = _lp_round(run, dj, pre, run.method)
        if hit is None and run.opts.lp_refine and not all(j["closed"] for j in dj) and run.left() > 0:
            pre, rinfo = refine_bounds(run.graph, pre, lo, hi, time_budget=run.opts.refine_fraction * run.left(),
                                       halt=run.halted)
            rinfo["disjunct"] = d
            run.info["refine"].append(rinfo)
            run.say(f"LP refinement (disjunct {d}): {rinfo['lps']} LPs, {rinfo['stabilised']} neurons stabilised, "
                    f"{rinfo['time_s']:.2f}s")
            hit = _lp_round(run, dj, pre, "refined")
        if hit is not None:
            run.info["lp_s"] = time.perf_counter() - t0
            return run.finish("sat", hit[1], "lp", hit[0])
        run.prepared[d] = {"mip": encode_graph(run.graph, pre, lo, hi, mode="mip"), "pre": pre}
    run.info["lp_s"] = time.perf_counter() - t0
    if not run.open_jobs():
        return run.finish("unsat", "every conjunction closed by bounds or LP certificates", "lp")
    if run.left() <= 0:
        return run.finish("timeout", "time limit reached during the LP stage", "lp")
    return None


def _mip_job(run: Any, j: dict, budget: float, effort: float | None, found: list) -> None:
    """One early-stopping MIP for job j (cutoff just above 0, a callback that stops on a proved
    violation); updates the job's bounds and status, appends a counterexample to ``found``."""
    enc, pre = run.prepared[j["disjunct"]]["mip"], run.prepared[j["disjunct"]]["pre"]
    A, b, hopts = j["A"], j["b"], run.opts.highs
    sens = 10.0 * hopts.feasibility_tol * sensitivity(run.graph, pre, j["lo"], j["hi"], np.abs(A).sum(axis=0))
    cutoff = 2.0 * (hopts.rel_margin + sens)
    menc, cost, offset = conj_model(enc, A, b, j["crown_lower"], j["crown_upper"])

    def on_sol(v: np.ndarray, _obj: float) -> Any:
        xc = run.candidate(j, v[enc.x], "mip_value")
        if xc is not None:
            found.append(xc)
            return True
        return None

    res = run_mip(menc, cost, offset, max(1e-3, min(budget, run.left())), cutoff=cutoff, on_solution=on_sol,
                  exact=False, heuristic_effort=effort, opts=hopts,
                  interrupt=lambda: run.halted() or j["closed"])  # j closed meanwhile: by BaB on the other thread
    if res.solution is not None and res.stopped is None:
        on_sol(res.solution, res.objective or 0.0)
    j["lower"] = max(j["lower"], res.raw_lower - margin_of(res.raw_lower, sens, hopts))
    if not j["closed"]:  # (closed meanwhile by BaB on the other thread: its status stands)
        j["status"] = "mip: " + ("counterexample" if found else res.status)
    j["time_s"] += res.time_s
    j["n_binaries"] = enc.n_binaries
    j["nodes"] = j.get("nodes", 0) + res.nodes
    if j["lower"] > 0 and not found:
        j["closed"], j["status"] = True, "closed: MIP"
    run.say(f"MIP disjunct {j['disjunct']} conj {j['conj']}: {res.status}, lower {j['lower']:.4g}, upper "
            f"{j['upper']:.4g}, {enc.n_binaries} binaries, {res.nodes} nodes, {res.time_s:.2f}s")


def mip_stage(run: Any) -> tuple:
    """One MIP per open job, most promising first (lowest value seen, then lowest incomplete bound), under
    the shared deadline: round 1 gives each job 1.5x its share of the time left with HiGHS's primal
    heuristics off (a pure proof search), round 2 splits what is left with them on."""
    found: list[np.ndarray] = []
    order = sorted(run.open_jobs(), key=lambda j: (j["upper"], j["crown_lower"]))
    t0 = time.perf_counter()
    for rnd in (1, 2):
        todo = [j for j in order if not j["closed"]]
        for n, j in enumerate(todo):
            left = run.left()
            if left <= 0.05:
                break
            if j["closed"]:  # by branch and bound on the other thread (bab_stage's portfolio)
                continue
            share = left / (len(todo) - n)
            effort = run.opts.heuristic_effort
            if effort is None:  # round 1: a pure proof search (3x faster on unsat rows), round 2: heuristics too
                effort = 0.0 if rnd == 1 else None
            _mip_job(run, j, 1.5 * share if rnd == 1 else share, effort, found)
            if found:
                run.info["mip_s"] = time.perf_counter() - t0
                return run.finish("sat", f"MIP counterexample (disjunct {j['disjunct']}, conjunction {j['conj']}, "
                                  "proved by rigorous bounds at the point)", "mip", found[0])
        if not run.open_jobs() or run.left() <= 0.05:
            break
    run.info["mip_s"] = time.perf_counter() - t0
    if not run.open_jobs():
        return run.finish("unsat", "every conjunction closed (bounds, LP or MIP)", "mip")
    if run.left() <= 0.05:
        return run.finish("timeout", "time limit reached with conjunctions open", "mip")
    return run.finish("unknown", "the MIPs stopped undecided before the time limit", "mip")
