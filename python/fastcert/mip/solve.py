"""``fastcert.mip.solve_property`` / ``verify_box``: decide VNN-LIB style properties (the pipeline of
:mod:`fastcert.mip.property`, with :func:`solve_property`'s defaults)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from fastcert.mip.encoding import check_graph
from fastcert.mip.property import AttackPhase, PropertyOptions, as_properties, decide
from fastcert.network import Network

__all__ = ["solve_property", "verify_box"]


def solve_property(net: Network | nn.Module, prop: Any, time_limit: float, *, input_shape: tuple | None = None,
                   bounds_method: str = "alpha-crown", attack: bool = True, attack_restarts: int = 8, attack_steps: int = 100,
                   lp_refine: bool = True, refine_fraction: float = 0.25, seed: int = 0,
                   heuristic_effort: float | None = None,
                   log: Callable[[str], None] | None = None,
                   options: PropertyOptions | None = None) -> tuple[str, np.ndarray | None, dict]:
    """Decide a VNN-LIB property: does some ``x`` in a disjunct's box satisfy one of its output
    conjunctions (every row of ``A f(x) <= b``)?

    net: a :class:`fastcert.Network` (e.g. from :func:`fastcert.io.load_onnx`; its ``input_shape`` is
    used) or a torch ReLU model (``input_shape`` then defaults to ``(n_inputs,)``). prop: a
    :class:`fastcert.io.vnnlib.Spec` (disjunction of properties), one ``Property`` or a list of them.
    time_limit: seconds for the whole call (bounds, attacks, LPs and MIPs share one deadline).

    Stages, each conjunction ("job") closed or the call answered as soon as possible:

    1. CROWN bounds every row over each box: a conjunction with a row ``lower > b`` is closed.
    2. PGD (``attack_restarts`` x ``attack_steps``, every open conjunction at once,
       :func:`fastcert.attacks.minimize_spec`).
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
    "unknown" (a network with nodes that have no MIP encoding, e.g. sigmoid / tanh, or nothing left to try). info: ``stage``, ``time_s``, ``reason``,
    ``best_lower`` (lower bound of ``min max_i (A_i f - b_i)`` over the open conjunctions: the instance
    is unsat iff it is > 0), ``best_upper`` (the lowest re-executed value found), ``conjunctions`` (per
    conjunction: bounds, status, time, binaries), ``refine`` (LP refinement counts) and stage times.

    options: a :class:`fastcert.mip.PropertyOptions` used as it is (the keywords above are then ignored);
    this is the pipeline :func:`fastcert.vnncomp.solve_instance` runs with its own options.
    """
    t_start = time.perf_counter()
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    props = as_properties(prop)
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
    g = ir.graph_for(shape)
    _check_shapes(props, n_in, g.n(g.output))
    if options is None:
        phase = AttackPhase(attack_restarts, attack_steps, 0.1, 10.0)
        options = PropertyOptions(bounds_method=bounds_method, attack=phase if attack else None,
                                  polish=AttackPhase(1, attack_steps // 2, 0.05, 5.0) if attack else None,
                                  lp_refine=lp_refine, refine_fraction=refine_fraction,
                                  heuristic_effort=heuristic_effort, seed=seed)
    try:
        check_graph(g)
    except ValueError as e:
        info = {"stage": "load", "reason": str(e), "conjunctions": [], "refine": [], "best_lower": math.inf,
                "best_upper": math.inf, "verdict": "unknown", "time_s": time.perf_counter() - t_start}
        (log or (lambda _m: None))(f"unknown (load): {e}")
        return "unknown", None, info
    return decide(ir, shape, props, time_limit, options, log=log, t_start=t_start)


def _check_shapes(props: list, n_in: int, K: int) -> None:
    for p in props:
        lo_, hi_ = np.asarray(p.lo), np.asarray(p.hi)
        if lo_.shape != (n_in,) or hi_.shape != (n_in,) or not (np.isfinite(lo_).all() and np.isfinite(hi_).all()):
            raise ValueError("every disjunct needs a finite box of the same size")
        for A, b in p.constraints:
            if np.ndim(A) != 2 or np.shape(A)[1] != K or np.shape(b) != (np.shape(A)[0],):
                raise ValueError(f"output constraints must be A [m, {K}], b [m]")


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
