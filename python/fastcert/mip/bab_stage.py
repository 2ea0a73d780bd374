"""The branch-and-bound stage of the property pipeline (:func:`fastcert.mip.property.decide`), before the LP /
MIP, on every open job: input splitting with CROWN bounds (:mod:`fastcert.algorithms.input_bab`) when the
network has at most ``PropertyOptions.input_split_dims`` inputs (ACAS Xu: 5), otherwise activation-split BaB
with alpha/beta-CROWN bounds (:mod:`fastcert.algorithms.bab`; ReLU networks)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from fastcert.algorithms.bab import bab, relu_nodes
from fastcert.algorithms.input_bab import input_bab

__all__ = ["bab_stage", "bab_applicable", "bab_strategy"]


def bab_applicable(run: Any) -> bool:
    """BaB splits ReLUs of affine / ReLU graphs over box regions (the pipeline's regions are boxes)."""
    try:
        return bool(relu_nodes(run.graph))  # no ReLU: nothing to split (the bounds stage's bounds are exact)
    except ValueError:
        return False


def bab_strategy(run: Any) -> str | None:
    """"input" (input splitting: at most ``input_split_dims`` inputs, any activation with CROWN bounds),
    "activation" (ReLU splits) or None (no branch and bound applies, e.g. an affine network)."""
    if not run.acts:
        return None
    if int(np.prod(run.shape)) <= run.opts.input_split_dims:
        return "input"
    return "activation" if bab_applicable(run) else None


def bab_stage(run: Any) -> tuple | None:
    """Per open job (in order), BaB with an equal share of ``run.opts.bab_fraction`` of the time left (all of it
    when the network has no MIP encoding: nothing comes after): "unsat" closes the job, "sat" answers the
    instance; jobs BaB leaves open go on to the LP / MIP. A network the bounds refuse (an error naming the
    node) ends the stage with that reason in ``info["bab_error"]``."""
    strategy = bab_strategy(run) if run.opts.bab_fraction > 0 else None
    if strategy is None or not run.open_jobs():
        return None
    run.info["bab_strategy"] = strategy
    t0 = time.perf_counter()
    stop = time.perf_counter() + (run.opts.bab_fraction if run.encodable else 1.0) * run.left()
    jobs = sorted(run.open_jobs(), key=lambda j: j["lower"], reverse=True)  # the easiest first
    stats = run.info.setdefault("bab", [])

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run.evaluate(x.numpy()))

    for k, j in enumerate(jobs):
        left = stop - time.perf_counter()
        if left <= 0:
            break
        deadline = time.perf_counter() + left / (len(jobs) - k)
        A, b = torch.from_numpy(j["A"]), torch.from_numpy(j["b"])
        if strategy == "input":
            try:
                res = input_bab(run.graph, run.probs[j["disjunct"]], A, b, deadline=deadline,
                                opts=run.opts.input_split, evaluate=evaluate, confirm=run.confirm)
            except ValueError as exc:  # e.g. overflow on a sub-box: reported, the later stages go on
                run.info["bab_error"] = str(exc)
                run.say(f"BaB stopped: {exc}")
                break
        else:
            pre = run.pre.get(j["disjunct"])
            known = None if pre is None else {v: (torch.from_numpy(lo), torch.from_numpy(hi))
                                              for v, (lo, hi) in pre.items()}
            res = bab(run.graph, run.probs[j["disjunct"]], A, b, deadline=deadline, opts=run.opts.bab,
                      evaluate=evaluate, confirm=run.confirm, log=None, known=known)
        stats.append({"conj": j["conj"], "verdict": res.verdict, "domains": res.domains, "batches": res.batches,
                      "max_open": res.max_open, "time_s": res.time_s, "domains_per_s": res.domains_per_s,
                      "lower": res.lower})
        run.say(f"BaB, {strategy} split (job {j['conj']}): {res.verdict}, {res.domains} sub-domains in "
                f"{res.time_s:.2f}s, lower {res.lower:.4g}")
        if res.verdict == "sat":
            run.info["bab_s"] = time.perf_counter() - t0
            val = float(np.max(run.evaluate(np.asarray(res.x).reshape(1, -1)) @ j["A"].T - j["b"]))
            return run.finish("sat", f"branch and bound found a counterexample (value {val:.3g}, proved by "
                              "rigorous bounds at the point)", "bab", res.x)
        if res.verdict == "unsat":
            j["closed"], j["status"] = True, "closed: bab"
            j["lower"] = max(j["lower"], 0.0)
        elif res.lower > -math.inf:
            j["lower"] = max(j["lower"], min(res.lower, 0.0))
    run.info["bab_s"] = time.perf_counter() - t0
    if not run.open_jobs():
        return run.finish("unsat", "branch and bound closed every conjunction", "bab")
    if run.left() <= 0:
        return run.finish("timeout", "time limit reached during branch and bound", "bab")
    return None

