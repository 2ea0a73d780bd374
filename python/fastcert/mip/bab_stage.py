"""The branch-and-bound stage of the property pipeline (:func:`fastcert.mip.property.decide`), before the LP /
MIP, on every open job: input splitting with CROWN bounds (:mod:`fastcert.algorithms.input_bab`) when the
network has at most ``PropertyOptions.input_split_dims`` inputs (ACAS Xu: 5), otherwise activation-split BaB
with alpha/beta-CROWN bounds (:mod:`fastcert.algorithms.bab`; ReLU networks)."""

from __future__ import annotations

import copy
import math
import threading
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


class _MipBeside:
    """The LP and MIP stages (:mod:`fastcert.mip.stages`) on a thread beside activation-split BaB, on the same
    jobs (shared dicts: a job either closes is skipped or interrupted by the other; a view of the run with its
    own ``info`` and a ``halt`` event). HiGHS releases the GIL while it solves, so the two use both cores."""

    def __init__(self, run: Any) -> None:
        self.view = copy.copy(run)
        self.view.halt, self.view.shared = threading.Event(), True
        self.view.info = {"refine": [], "attack_best": run.info["attack_best"]}
        self.decision: tuple | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="fastcert-mip", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        from fastcert.mip.stages import lp_stage, mip_stage

        try:
            self.decision = lp_stage(self.view) or mip_stage(self.view)
        except BaseException as exc:  # re-raised on the caller's thread (finish)
            self.error = exc

    def decided(self) -> bool:
        """The thread answered sat / unsat (a counterexample, or every job closed)."""
        return self.decision is not None and self.decision[0] in ("sat", "unsat")

    def finish(self, run: Any, wait: bool) -> tuple | None:
        """Stop the thread (``wait``: first let it run until it ends or the time is up), merge its info into
        ``run.info`` and return its sat decision, if any."""
        if wait:
            self.thread.join(timeout=max(0.0, run.left()))
        self.view.halt.set()
        self.thread.join()
        if self.error is not None:
            raise self.error
        info = self.view.info
        for key in ("lp_s", "mip_s", "polish_s"):
            if key in info:
                run.info[key] = info[key]
        run.info["refine"].extend(info["refine"])
        run.info["attack_best"] = min(run.info["attack_best"], info["attack_best"])
        if self.decision is not None:
            run.info["mip_beside"] = {k: info.get(k) for k in ("verdict", "stage", "reason")}
        return self.decision if self.decision is not None and self.decision[0] == "sat" else None


def bab_stage(run: Any) -> tuple | None:
    """Per open job (in order), BaB with an equal share of ``run.opts.bab_fraction`` of the time left (all of it
    when the network has no MIP encoding: nothing comes after): "unsat" closes the job, "sat" answers the
    instance; jobs BaB leaves open go on to the LP / MIP. With ``run.opts.mip_beside_bab`` (activation splits on
    a network the MIP encodes), the LP / MIP stages run at once on a second thread instead (:class:`_MipBeside`),
    both with all the time left, until either answers or every job is closed by one of them. A network the
    bounds refuse (an error naming the node) ends the stage with that reason in ``info["bab_error"]``."""
    strategy = bab_strategy(run) if run.opts.bab_fraction > 0 else None
    if strategy is None or not run.open_jobs():
        return None
    run.info["bab_strategy"] = strategy
    t0 = time.perf_counter()
    beside = None
    if strategy == "activation" and run.encodable and run.opts.use_mip and run.opts.mip_beside_bab \
            and run.left() >= run.opts.min_mip_s:
        beside = _MipBeside(run)
        run.info["bab_strategy"] = "activation + MIP beside"
    share = 1.0 if beside is not None or not run.encodable else run.opts.bab_fraction
    stop = time.perf_counter() + share * run.left()
    jobs = sorted(run.open_jobs(), key=lambda j: j["lower"], reverse=True)  # the easiest first
    stats = run.info.setdefault("bab", [])
    try:
        found = _bab_jobs(run, strategy, jobs, stop, beside, stats)
    except BaseException:  # an unexpected error: stop the MIP thread before it propagates
        if beside is not None:
            beside.view.halt.set()
        raise
    run.info["bab_s"] = time.perf_counter() - t0
    if found is not None:
        if beside is not None:
            beside.finish(run, wait=False)
        x, j = found
        val = float(np.max(run.evaluate(np.asarray(x).reshape(1, -1)) @ j["A"].T - j["b"]))
        return run.finish("sat", f"branch and bound found a counterexample (value {val:.3g}, proved by rigorous "
                          "bounds at the point)", "bab", x)
    if beside is not None:  # BaB is done with every job it could take: the MIP goes on with the time left
        sat = beside.finish(run, wait=bool(run.open_jobs()))
        if sat is not None:
            return run.finish("sat", sat[2]["reason"], sat[2]["stage"], sat[1])
    if not run.open_jobs():
        if beside is not None and beside.decided():  # the LP / MIP closed the last job
            return run.finish("unsat", beside.view.info["reason"] + " (beside branch and bound)",
                              beside.view.info["stage"])
        return run.finish("unsat", "branch and bound closed every conjunction", "bab")
    if run.left() <= 0:
        return run.finish("timeout", "time limit reached during branch and bound" +
                          (" and the LP / MIP beside it" if beside else ""), "bab")
    if beside is not None:
        return run.finish("unknown", "branch and bound and the LP / MIP beside it stopped undecided", "bab")
    return None


def _bab_jobs(run: Any, strategy: str, jobs: list, stop: float, beside: _MipBeside | None, stats: list) -> Any:
    """BaB on each job in turn (an equal share of the time to ``stop`` each); (counterexample, job) or None."""
    def evaluate(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run.evaluate(x.numpy()))

    found = None
    for k, j in enumerate(jobs):
        left = stop - time.perf_counter()
        if left <= 0 or beside is not None and beside.decided():
            break
        if j["closed"]:  # by the MIP beside
            continue
        deadline = time.perf_counter() + left / (len(jobs) - k)
        halt = None if beside is None else (lambda j=j: j["closed"] or beside.decided())
        A, b = torch.from_numpy(j["A"]), torch.from_numpy(j["b"])
        try:
            if strategy == "input":
                res = input_bab(run.graph, run.probs[j["disjunct"]], A, b, deadline=deadline,
                                opts=run.opts.input_split, evaluate=evaluate, confirm=run.confirm)
            else:
                pre = run.pre.get(j["disjunct"])
                known = None if pre is None else {v: (torch.from_numpy(lo), torch.from_numpy(hi))
                                                  for v, (lo, hi) in pre.items()}
                res = bab(run.graph, run.probs[j["disjunct"]], A, b, deadline=deadline, opts=run.opts.bab,
                          evaluate=evaluate, confirm=run.confirm, log=None, known=known, stop=halt)
        except ValueError as exc:  # e.g. overflow on a sub-box: reported, the later stages go on
            run.info["bab_error"] = str(exc)
            run.say(f"BaB stopped: {exc}")
            break
        stats.append({"conj": j["conj"], "verdict": res.verdict, "domains": res.domains, "batches": res.batches,
                      "max_open": res.max_open, "time_s": res.time_s, "domains_per_s": res.domains_per_s,
                      "lower": res.lower})
        run.say(f"BaB, {strategy} split (job {j['conj']}): {res.verdict}, {res.domains} sub-domains in "
                f"{res.time_s:.2f}s, lower {res.lower:.4g}")
        if res.verdict == "sat":
            found = (res.x, j)
            break
        if res.verdict == "unsat":
            j["closed"], j["status"] = True, "closed: bab"
            j["lower"] = max(j["lower"], 0.0)
        elif res.lower > -math.inf:
            j["lower"] = max(j["lower"], min(res.lower, 0.0))
    return found
