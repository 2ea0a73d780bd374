"""VNN-COMP instances: one ONNX network + one VNN-LIB specification -> ``sat`` / ``unsat`` / ``timeout`` /
``unknown``, with the competition's result file.

Strategy inside the time limit (:func:`solve_instance`): the property pipeline of
:func:`fastcert.mip.decide` (shared with :func:`fastcert.mip.solve_property`), each stage run once on
what the earlier ones left open, with the options of :class:`VnnOptions`:

1. **Attack.** Batched PGD (:func:`fastcert.attacks.minimize_spec`: sign steps scaled by each input's box
   width, random restarts) on every conjunction of every disjunct at once, minimising
   ``max_rows (A y - b)`` in float64 with an autograd twin of the network (a quick phase before the
   bounds, a longer one after them on the conjunctions left open). ``sat`` is answered only for a *proved* counterexample
   (:func:`fastcert.confirm.confirm_point`): the point lies in a disjunct's box exactly and fastcert's
   rigorous bounds at that point satisfy every row of one of its conjunctions (a violation by rounding
   of the float64 forward pass is none); the point is first moved onto float32-representable inputs
   inside the box when that keeps it a proved counterexample, so that a float32 checker reads the same
   input. Every ``sat`` of the later stages goes through the same check.
2. **Incomplete bounds.** alpha-CROWN bounds every row ``A_i y`` over each disjunct's box; a conjunction
   is infeasible when one of its rows has ``lower > b_i``; ``unsat`` when every conjunction is.
3. **Branch and bound**, one conjunction after another, the easiest first, every closed sub-domain certified
   in float64: input splitting with CROWN bounds on networks with at most 16 inputs
   (:mod:`fastcert.algorithms.input_bab`; any activation with a linear relaxation; ``VnnOptions.bab_fraction``
   of the time left, 0.7 by default), otherwise activation splits bounded by alpha/beta-CROWN in batches (ReLU
   networks, :mod:`fastcert.algorithms.bab`) with the LP / MIP of step 4 on a second thread beside it
   (``VnnOptions.mip_beside_bab``): both get the whole time left, the first answer wins, and a conjunction
   either closes is dropped by the other. Which of the two is faster depends on the instance (on
   ``mnist_fc`` 256x4 some fall to BaB in seconds and some only to the MIP), so both run rather than a guess.
4. **LP, then MIP** (ReLU networks only) on the conjunctions left open: per box one LP per conjunction
   on the triangle relaxation (rigorous dual bounds, LP points as attack starts), per-neuron LP refinement
   of the pre-activation bounds, then one early-stopping MIP per conjunction (:mod:`fastcert.mip`).

Package layout: ``instance.py`` (loading, results, the result file), ``pipeline.py``
(:func:`solve_instance`), ``server.py`` (the warm server), ``suite.py`` (``fastcert bench-suite``).

A network that fastcert cannot import (max pooling, residual graphs, ...) or a specification it cannot
read is answered ``unknown`` with the reason; nothing is guessed. ``timeout`` means the time limit ran out
with conjunctions still open and something left to try; ``unknown`` means every applicable method ran
and none decided (e.g. a sigmoid network that IBP cannot verify and the attack cannot break).

Result file (VNN-COMP 2022): the verdict on the first line; for ``sat`` the assignment follows as
``((X_0 v)`` / ``(X_1 v)`` / ... / ``(Y_0 v)`` / ... ``)``, values written with ``repr`` (exact float64),
which :func:`fastcert.io.read_counterexample` reads back.
"""

from __future__ import annotations

from fastcert.attacks import TorchTwin
from fastcert.vnncomp.instance import (
    VERDICTS,
    Instance,
    VnnResult,
    format_result,
    load_instance,
    load_network,
    resolve_path,
    result_record,
    write_result,
)
from fastcert.vnncomp.pipeline import VnnOptions, solve_instance
from fastcert.vnncomp.server import handle_request, serve

__all__ = ["VERDICTS", "Instance", "TorchTwin", "VnnOptions", "VnnResult", "format_result", "handle_request",
           "load_instance", "load_network", "resolve_path", "result_record", "serve", "solve_instance", "write_result"]
