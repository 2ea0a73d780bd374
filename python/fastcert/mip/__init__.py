"""Exact verification of piecewise-linear networks (chains or graphs of affine, ReLU, Add / Sub, Concat
and MaxPool nodes) by mixed-integer programming (HiGHS).

Two entry points (package layout: ``verify.py`` :func:`verify`; ``solve.py`` :func:`solve_property`;
``property.py`` the property pipeline shared with :func:`fastcert.vnncomp.solve_instance` and ``stages.py``
its LP / MIP stages; ``encoding.py`` the encoding (per graph node); ``lp_refine.py`` the per-neuron LPs and
their certificates; ``highs.py`` running HiGHS;
``common.py`` shared pieces):

* :func:`verify` (``fastcert.verify``): per sample and spec row ``c`` (default: the margins ``f_y - f_j``)
  ``min c . f(x')`` over ``||x' - x||_p <= eps``, ``x_min <= x' <= x_max`` (p = inf or 1), solved exactly
  (or, with ``early_stop=True``, only until its sign is decided).
* :func:`solve_property` (VNN-COMP style): does some ``x`` in a VNN-LIB disjunct's box satisfy one of its
  output conjunctions ``A f(x) <= b``? -> ``"sat"`` (with a proved counterexample) / ``"unsat"`` /
  ``"timeout"`` / ``"unknown"``; :func:`verify_box` is the one-box, one-conjunction shortcut.

Encoding (Tjeng, Xiao & Tedrake, ICLR 2019; per graph node, :mod:`fastcert.mip.encoding`): the box
``[l, u]`` read by every ReLU / max pool comes from fastcert's sound linear bounds (CROWN by default; the
prefix bounds of a chain, the graph engine's boxes of a graph), optionally
tightened by per-neuron LPs (:mod:`fastcert.lp_refine`, rigorous dual certificates); a stable ReLU is
exact and costs nothing (``y = z`` or the constant 0, and affine outputs feeding only dead ReLUs are
dropped); an unstable one gets a binary ``a`` and ``y >= z, y >= 0, y <= z - l (1 - a), y <= u a``;
affine layers (Dense, Conv2d expanded to sparse rows, Diag) and residual sums are equality rows, a
concatenation reuses its inputs' columns, a max pool is ``y >= x_j``, ``y <= x_j + M_j (1 - d_j)``,
``sum d_j = 1`` over the window's possible maxima (binaries ``d``; a dominated window is its input); the input box / L-inf
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
  rigorous bound and ``margin = 1e-6 (1 + |d|) + 10 tol S`` (:class:`HighsOptions`): ``tol`` is the largest of HiGHS's primal /
  MIP feasibility tolerances (set to 1e-9) and ``S`` bounds how far tolerance-sized violations can move
  the objective: each variable counts its sensitivity ``|c|^T |W_L| ... |W_k|`` (ReLU and max 1-Lipschitz, a
  dead ReLU passes nothing: it is a constant in the model) once per equality row, plus ``max(-l, u)``
  times it for an unstable ReLU (the largest big-M for an undecided max-pool window) whose binaries may be
  fractional by ``tol``. A conservative, documented
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

from fastcert.mip.common import node_bounds, prefix_bounds
from fastcert.mip.highs import HighsOptions
from fastcert.mip.property import AttackPhase, PropertyOptions, decide
from fastcert.mip.solve import solve_property, verify_box
from fastcert.mip.verify import MIPResult, verify

__all__ = ["AttackPhase", "HighsOptions", "MIPResult", "PropertyOptions", "decide", "node_bounds", "prefix_bounds", "solve_property",
           "verify", "verify_box"]
