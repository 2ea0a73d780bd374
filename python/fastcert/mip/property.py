"""The one decision pipeline for VNN-LIB properties, used by :func:`solve_property` and by
:func:`fastcert.vnncomp.solve_instance`: attack -> incomplete bounds -> (attack) -> LP -> MIP, each stage
run once on the conjunctions ("jobs") the earlier stages left open, its results passed on.

Every ``sat`` is a proved counterexample (:func:`fastcert.confirm.confirm_point`); every closed
conjunction is closed by a rigorous bound (see :mod:`fastcert.mip`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastcert.algorithms.dispatch import network_bounds, nonlinear_kinds
from fastcert.api import make_region
from fastcert.attacks import TorchTwin, minimize_spec
from fastcert.confirm import confirm_point
from fastcert.mip.common import incomplete_bounds
from fastcert.algorithms.bab import BabOptions
from fastcert.algorithms.input_bab import InputSplitOptions
from fastcert.mip.bab_stage import bab_stage
from fastcert.mip.highs import HighsOptions
from fastcert.mip.stages import lp_stage, mip_stage
from fastcert.network import Network
from fastcert.options import AlphaOptions, BoundOptions

__all__ = ["AttackPhase", "PropertyOptions", "PropertyRun", "as_properties", "conj_value", "decide"]

Decision = tuple[str, "np.ndarray | None", dict]


@dataclass(frozen=True)
class AttackPhase:
    """One PGD phase (:func:`fastcert.attacks.minimize_spec`) on the open conjunctions: ``restarts`` x
    ``steps``, within ``min(time_fraction * time_limit, time_cap)`` seconds, step ``schedule``."""

    restarts: int
    steps: int
    time_fraction: float
    time_cap: float
    schedule: str = "linear"


@dataclass(frozen=True)
class PropertyOptions:
    """Options of :func:`decide` (frozen; the defaults are :func:`solve_property`'s).

    bounds_method: the incomplete bounds (None: alpha-CROWN): of the output rows, and the pre-activation
    bounds the LP / MIP start from.
    early_attack: a phase before the bounds (VNN-COMP: a quick one); attack: the phase after them;
    polish: PGD from the LP-relaxation points. None disables a phase.
    lp_refine / refine_fraction: per-neuron LP refinement of the pre-activation bounds, at most that
    fraction of the time left. heuristic_effort: HiGHS's (None: 0 in the first MIP round, HiGHS's
    default in the second). use_mip: run the LP / MIP stages. min_mip_s: they do not start with less
    time left (building the model is not covered by HiGHS's time limit). seed: of the attacks. bab_fraction:
    the share of the time left that branch and bound gets before the LP / MIP (0: none): input splitting
    (``input_split``: its options) when the network has at most ``input_split_dims`` inputs, otherwise
    activation splits (``bab``: its options; ReLU networks). mip_beside_bab: with activation splits on a network
    the MIP encodes, run the LP / MIP stages on a second thread at the same time instead of after BaB (both
    get all the time left; the first to answer wins)."""

    bounds_method: str | None = "alpha-crown"
    early_attack: AttackPhase | None = None
    attack: AttackPhase | None = AttackPhase(8, 100, 0.1, 10.0)
    polish: AttackPhase | None = AttackPhase(1, 50, 0.05, 5.0)
    lp_refine: bool = True
    refine_fraction: float = 0.25
    heuristic_effort: float | None = None
    use_mip: bool = True
    min_mip_s: float = 0.0
    seed: int = 0
    highs: HighsOptions = field(default_factory=HighsOptions)
    bab_fraction: float = 0.0
    mip_beside_bab: bool = False
    bab: BabOptions = field(default_factory=BabOptions)
    input_split_dims: int = 16
    input_split: InputSplitOptions = field(default_factory=InputSplitOptions)


def as_properties(prop: Any) -> list:
    """A Spec, one Property or a list of them -> list of Property."""
    from fastcert.io.vnnlib import Property, Spec

    if isinstance(prop, Spec):
        return list(prop.properties)
    if isinstance(prop, Property):
        return [prop]
    if isinstance(prop, (list, tuple)) and all(isinstance(p, Property) for p in prop):
        return list(prop)
    raise TypeError(f"prop must be a fastcert.io.vnnlib Spec, Property or list of Property, got {type(prop).__name__}")


def conj_value(y: np.ndarray, A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max over the rows of ``A y - b`` for outputs y [N, K] (<= 0: the conjunction holds)."""
    return (y @ A.T - b).max(axis=1)


class PropertyRun:
    """The state of one :func:`decide` call: the network, the jobs (one dict per open-able conjunction:
    bounds, values seen, status) and ``info``. Stages read and update it; :meth:`finish` ends the call."""

    def __init__(self, ir: Network, shape: tuple[int, ...], props: list, time_limit: float, opts: PropertyOptions,
                 log: Callable[[str], None] | None, t_start: float) -> None:
        self.ir, self.shape, self.props, self.opts = ir, shape, props, opts
        self.t_start, self.time_limit = t_start, float(time_limit)
        self.deadline = t_start + float(time_limit)
        self.acts = nonlinear_kinds(ir, shape)
        # the MIP / LP stages encode graphs of affine / ReLU / Add / Concat / MaxPool nodes
        self.graph = ir.graph_for(shape)
        self.encodable = set(self.acts) <= {"relu", "maxpool"}
        self.method = opts.bounds_method or "alpha-crown"  # every registered primitive has a linear relaxation
        self.jobs: list[dict[str, Any]] = []
        self.probs: dict[int, Any] = {}
        self.pre: dict[int, Any] = {}  # per disjunct: the pre-activation bounds of the bounds stage
        self.info: dict[str, Any] = {"stage": "", "reason": "", "conjunctions": self.jobs, "refine": [],
                                     "best_lower": -math.inf, "best_upper": math.inf, "activations": self.acts,
                                     "bounds_method": self.method, "attack_best": math.inf}
        self.say = log or (lambda _m: None)
        self.twin: TorchTwin | None = None
        self.prepared: dict[int, dict] = {}  # set by the LP stage: the MIP encodings per box
        self.halt: threading.Event | None = None  # set: no time left (a stage on a thread told to stop)
        self.shared = False  # the jobs are shared with a stage on another thread: finish keeps their arrays

    def left(self) -> float:
        return 0.0 if self.halted() else self.deadline - time.perf_counter()

    def halted(self) -> bool:
        return self.halt is not None and self.halt.is_set()

    def open_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if not j["closed"]]

    def finish(self, verdict: str, reason: str, stage: str, x: np.ndarray | None = None) -> Decision:
        for j in self.jobs if not self.shared else ():
            for key in ("A", "b", "lo", "hi"):
                j.pop(key, None)
        self.info.update(verdict=verdict, reason=reason, stage=stage, time_s=time.perf_counter() - self.t_start)
        self.info["best_lower"] = min((c["lower"] for c in self.open_jobs()), default=math.inf)
        self.info["best_upper"] = min((c["upper"] for c in self.jobs), default=math.inf)
        self.info["open"] = len(self.open_jobs())
        self.say(f"{verdict} ({stage}): {reason}")
        return verdict, x, self.info

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """fastcert's float64 forward pass on flat inputs -> [N, K]."""
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(-1, *self.shape)
            return self.ir.forward(t).numpy()

    def confirm(self, x: np.ndarray) -> np.ndarray | None:
        """A proved counterexample at x (its float32 rounding when that is one, else x), or None."""
        return confirm_point(self.ir, self.shape, self.props, x)

    def candidate(self, j: dict, x: np.ndarray, what: str) -> np.ndarray | None:
        """Re-execute x (clipped into j's box) for job j: update its upper bound; a confirmed
        counterexample or None."""
        x = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), j["lo"], j["hi"])
        val = float(conj_value(self.evaluate(x), j["A"], j["b"])[0])
        j[what] = min(j.get(what, math.inf), val)
        j["upper"] = min(j["upper"], val)
        return self.confirm(x) if val <= 0 else None

    def make_jobs(self) -> Decision | None:
        """One job per non-empty conjunction of a non-empty box; an empty conjunction holds everywhere."""
        for d, p in enumerate(self.props):
            lo, hi = np.asarray(p.lo, dtype=np.float64), np.asarray(p.hi, dtype=np.float64)
            if not p.constraints or (lo > hi).any():  # nothing to satisfy / an empty box
                continue
            for k, (A, b) in enumerate(p.constraints):
                A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
                if A.shape[0] == 0:  # an empty conjunction holds everywhere
                    x = self.confirm(np.clip((lo + hi) / 2, lo, hi))
                    if x is not None:
                        return self.finish("sat", "an empty output conjunction", "bounds", x)
                    continue
                self.jobs.append({"disjunct": d, "conj": k, "rows": A.shape[0], "crown_lower": -math.inf,
                                  "crown_upper": math.inf, "lower": -math.inf, "upper": math.inf, "closed": False,
                                  "status": "open", "time_s": 0.0, "n_binaries": None, "A": A, "b": b, "lo": lo,
                                  "hi": hi})
        self.info["n_disjuncts"], self.info["n_conjunctions"] = len(self.props), len(self.jobs)
        return None

    def bounds_stage(self) -> Decision | None:
        """The incomplete bounds on every row of every open job, per box: a job with a row ``lower > b``
        is closed; its ``[crown_lower, crown_upper]`` (rounded outwards) bounds ``max_i (A_i f - b_i)``."""
        t0 = time.perf_counter()
        for d in sorted({j["disjunct"] for j in self.open_jobs()}):
            dj = [j for j in self.open_jobs() if j["disjunct"] == d]
            lo, hi = dj[0]["lo"], dj[0]["hi"]
            x0 = np.clip((lo + hi) / 2, lo, hi)
            eps = float(((hi - lo) / 2).max()) * (1 + 1e-9) + 1e-300  # the ball contains the box: region == box
            prob = make_region(torch.from_numpy(x0).reshape(1, *self.shape), eps, "inf",
                               torch.from_numpy(lo).reshape(self.shape), torch.from_numpy(hi).reshape(self.shape))
            if not (np.array_equal(prob.l0[0].numpy(), lo) and np.array_equal(prob.u0[0].numpy(), hi)):
                raise RuntimeError("internal error: the bounded region differs from the disjunct's box")  # pragma: no cover
            self.probs[d] = prob
            rows = np.concatenate([j["A"] for j in dj], axis=0)
            lb, ub = self.disjunct_bounds(d, prob, rows, dj)
            r = 0
            for j in dj:
                m, b = j["rows"], j["b"]
                j["crown_lower"] = float(np.nextafter(np.max(lb[r:r + m] - b), -np.inf))  # outwards: the range
                j["crown_upper"] = float(np.nextafter(np.max(ub[r:r + m] - b), np.inf))  # of t holds every value
                j["lower"] = max(j["lower"], j["crown_lower"])
                if np.any(lb[r:r + m] > b):  # some row can never hold
                    j["closed"], j["status"] = True, "closed: " + self.method
                r += m
        self.info["bounds_s"] = time.perf_counter() - t0
        self.info["open_after_bounds"] = len(self.open_jobs())
        if not self.open_jobs():
            return self.finish("unsat", f"{self.method.upper()} bounds prove every disjunct infeasible",
                               f"bounds:{self.method}")
        for j in self.open_jobs():  # the bounds show the conjunction holds on the whole box: the centre is one
            if j["crown_upper"] <= 0:
                x = self.candidate(j, (j["lo"] + j["hi"]) / 2, "attack_value")
                if x is not None:
                    return self.finish("sat", f"the conjunction holds on the whole box ({self.method} upper "
                                       "bound <= 0)", f"bounds:{self.method}", x)
        return None

    def disjunct_bounds(self, d: int, prob: Any, rows: np.ndarray, dj: list) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the disjunct's rows ([R] lower, upper). With alpha-CROWN: CROWN first; when it leaves a
        job open, alpha-CROWN with the steps that fit a quarter of the time left (ten CROWN passes' time
        each; none when not even one fits: the info's ``alpha_skipped`` counts those), one certified slope set
        and intermediate slopes only while they are small. Its pre-activation bounds go to ``self.pre[d]``."""
        C = torch.from_numpy(rows).unsqueeze(0)
        if self.method != "alpha-crown":
            lb, ub = network_bounds(self.ir, self.shape, prob, C, self.method)
            return lb[0].numpy(), ub[0].numpy()
        t = time.perf_counter()
        lb, ub = network_bounds(self.ir, self.shape, prob, C, "crown")
        t_crown = time.perf_counter() - t
        lbn, r, open_ = lb[0].numpy(), 0, False
        for j in dj:
            open_ |= not np.any(lbn[r:r + j["rows"]] > j["b"])
            r += j["rows"]
        budget = 0.25 * self.left()
        # a step (a differentiable CROWN pass and its backward) costs up to ~10 certify CROWN passes; the
        # first pass and the certification ~4 steps
        steps = min(20, int(budget / (10 * max(t_crown, 1e-4))) - 4)
        if not open_ or steps < 1:
            self.info["alpha_skipped"] = self.info.get("alpha_skipped", 0) + int(open_)
            return lbn, ub[0].numpy()
        aopts = BoundOptions(alpha=AlphaOptions(iterations=steps, time_limit=budget, candidates=1, max_bytes=16 << 20))
        lb, ub, self.pre[d] = incomplete_bounds(self.ir, self.shape, prob, C, "alpha-crown", aopts, crown=(lb, ub))
        self.info["alpha_steps"] = self.info.get("alpha_steps", 0) + steps
        return lb[0].numpy(), ub[0].numpy()

    def attack_stage(self, phase: AttackPhase, seed: int, key: str, jobs: list | None = None,
                     starts: list | None = None, what: str = "attack_value") -> tuple[np.ndarray, dict] | None:
        """PGD (:func:`fastcert.attacks.minimize_spec`) on ``jobs`` (default: the open ones), every
        job's best point re-executed and proved; returns (counterexample, its job) or None."""
        todo = self.open_jobs() if jobs is None else jobs
        if not todo or self.left() <= 0:
            return None
        t0 = time.perf_counter()
        if self.twin is None:
            self.twin = TorchTwin(self.ir, self.shape)
        stop = min(self.deadline, t0 + min(phase.time_fraction * self.time_limit, phase.time_cap))
        res = minimize_spec(self.twin, self.shape, [(j["lo"], j["hi"], j["A"], j["b"]) for j in todo],
                            restarts=phase.restarts, steps=phase.steps, seed=seed, deadline=stop,
                            schedule=phase.schedule, starts=starts)
        self.info["attack_best"] = min(self.info["attack_best"], float(res.values.min(initial=math.inf)))
        hit = None
        for j, x in zip(todo, res.x):
            xc = self.candidate(j, x, what)
            if xc is not None:
                hit = (xc, j)
                break
        self.info[key] = self.info.get(key, 0.0) + time.perf_counter() - t0
        if hit is None:
            self.say(f"PGD ({key}): " + ", ".join(f"{j['conj']}:{j.get(what, math.inf):.3g}" for j in todo))
        return hit

    def run_attack(self, phase: AttackPhase | None, seed: int, key: str) -> Decision | None:
        if phase is None:
            return None
        hit = self.attack_stage(phase, seed, key)
        if hit is not None:
            return self.finish("sat", f"PGD found a counterexample (value {hit[1]['attack_value']:.3g}, proved by "
                               "rigorous bounds at the point)", "attack", hit[0])
        if self.left() <= 0:
            return self.finish("timeout", "time limit reached during the attack", "attack")
        return None


def decide(ir: Network, shape: tuple[int, ...], props: list, time_limit: float, opts: PropertyOptions, *,
           log: Callable[[str], None] | None = None, t_start: float | None = None) -> Decision:
    """Decide the properties ``props`` (a disjunction) on ``ir`` at input shape ``shape`` within
    ``time_limit`` seconds (from ``t_start``): attack (``opts.early_attack``) -> incomplete bounds ->
    attack (``opts.attack``) -> LP -> MIP (networks of affine / ReLU / Add / Concat / MaxPool nodes,
    ``opts.use_mip``). Returns
    ``(verdict, counterexample, info)`` as :func:`fastcert.mip.solve_property` documents."""
    run = PropertyRun(ir, shape, props, time_limit, opts,
                      log, time.perf_counter() if t_start is None else t_start)
    for step in (run.make_jobs, lambda: run.run_attack(opts.early_attack, opts.seed, "attack0_s"), run.bounds_stage,
                 lambda: run.run_attack(opts.attack, opts.seed + 1, "attack1_s"), lambda: bab_stage(run)):
        out = step()
        if out is not None:
            return out
    n, n_open = len(run.jobs), len(run.open_jobs())
    if not run.encodable:
        other = ", ".join(a for a in run.acts if a not in ("relu", "maxpool"))
        return run.finish("unknown", f"{n_open} of {n} conjunctions not decided: the network has {other} "
                          f"nodes, for which fastcert has {run.method} bounds but no MIP encoding "
                          f"(fastcert.mip encodes affine, ReLU, Add / Sub, Concat and MaxPool nodes), and the attack "
                          f"found no counterexample (best value {run.info['attack_best']:.3g})", "")
    if not opts.use_mip:
        return run.finish("unknown", f"{n_open} of {n} conjunctions not decided by attack and bounds (MIP disabled)",
                          "")
    if run.left() < opts.min_mip_s or run.left() <= 0:
        return run.finish("timeout", f"time limit reached: less than {opts.min_mip_s:g} s left for the LP / MIP, "
                          f"with {n_open} of {n} conjunctions open", "attack")
    return lp_stage(run) or mip_stage(run)
