"""VNN-LIB specifications (the VNN-COMP 2021/2022 dialect) and counterexample files.

``load_vnnlib(path, n_inputs, n_outputs) -> Spec``: a list of :class:`Property` disjuncts. Each has an
input box ``lo, hi: [n_inputs]`` (float64) and a list of conjunctions ``(A [m, n_outputs], b [m])``.

**Convention (as in VNN-COMP): a spec describes the *violation* region.** The instance is **sat** (a
counterexample exists, the network is NOT robust) when some disjunct has a point ``x`` in its box and
one of its conjunctions holds at ``y = f(x)``: every row of ``A y <= b``. It is **unsat** (verified)
when no such point exists. Strict comparisons (``<``, ``>``) are read as ``<=`` / ``>=``: the
violation region only grows, so an unsat proof stays sound (a counterexample exactly on the boundary
of a strict constraint would be a false alarm).

Supported syntax: ``(declare-const X_i Real)`` / ``Y_j``; ``(assert F)`` where F is built from
``and``, ``or`` and comparisons ``<= >= < > =`` of linear expressions (numbers, ``X_i`` / ``Y_j``,
``+``, ``-`` (unary and n-ary), ``*`` by a constant, ``/`` by a constant); comments after ``;``;
plain or gzipped files (detected by content). The asserts are conjoined and brought to disjunctive
normal form; each term's comparisons on a single ``X_i`` against a constant form its box (several
bounds on one input intersect), those over ``Y`` only its output conjunction, and terms with the
same box are grouped into one :class:`Property` (``(or (and box1 out1) (and box1 out2))`` and
``box1 /\\ (or out1 out2)`` give the same result). Constraints that mix X and Y, or relate two inputs,
are rejected with a clear error, as is any input left unbounded.

**Limits and strictness (every violation is a** :class:`VnnlibError` **naming it).** Nesting depth is
limited by memory only: s-expressions, formulas and arithmetic are read with explicit stacks. Variables
are ``X_<i>`` / ``Y_<j>`` with a decimal index without leading zeros below ``10**18``, each declared
once; without ``n_inputs`` / ``n_outputs`` the sizes are counted from the declarations, which must then
be ``X_0 .. X_{n-1}`` without gaps (so no box is larger than the file), and with them every index must
be below the size. Numbers are ASCII decimals (``[+-]digits[.digits][e[+-]digits]``; no ``inf``,
``nan``, underscores or non-ASCII digits), finite in float64, and every coefficient and constant the
arithmetic produces must stay finite (an overflowed box bound would shrink the region). The
disjunctive normal form may have at most 1,000,000 terms and 20,000,000 comparisons in all its terms
(nested ``or`` inside ``and`` multiplies out; :class:`VnnlibLimits` changes these limits). Counterexample files follow the same rules for names and
values, and their indices must be ``0..n-1`` without gaps.

**Decision on the ``vnnlib`` package from PyPI (evaluated, not used).** Its current line (1.0.x, a
pybind11 wrapper of a BNFC-generated C++ parser) implements VNN-LIB *2.0* syntax and fails on the
VNN-LIB 1.0 files VNN-COMP 2021/2022 ship (``Parse error: syntax error at line 1, column 1`` on
``test_tiny.vnnlib``); it also requires pybind11 at run time and ships platform wheels. The previous
0.0.1.post1 (pure Python, "alpha", superseded) does read these files (0.17 s for a 330 KB oval21 spec)
but returns integer arrays for integer constraints, warns on SMT-LIB negative literals, has no input
validation and would pin an abandoned release. The dialect needed here is small, so this module
carries its own tokenizer + recursive reader (35-55 ms for that spec, the largest shared one; the
228 shared files take about 4 s) with the validation and the error messages fastcert wants, and no
new dependency.

Counterexamples: :func:`read_counterexample` reads VNN-COMP counterexample files
(``((X_0 v) ... (Y_0 v) ...)``, optionally after a ``sat`` line; gzipped or plain) and
:func:`check_counterexample` re-checks one against a network in float64.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from fastcert.io.vnnlib_syntax import (
    NUM,
    VAR,
    Lin,
    Reader,
    Sexp,
    VnnlibError,
    VnnlibLimits,
    dnf_and,
    no_gc,
    parse_sexps,
    read_text,
    show,
)

__all__ = ["BOX_TOL", "Property", "Spec", "VnnlibError", "VnnlibLimits", "check_counterexample", "load_vnnlib",
           "parse_vnnlib", "read_counterexample"]

#: VNN-COMP's tolerance on the input box of a counterexample (the competition's rule, the default of
#: ``check_counterexample(box_tol=...)``; not a tuning knob)
BOX_TOL = 1e-6


@dataclass
class Property:
    """One disjunct: the box ``lo <= x <= hi`` and a disjunction of output conjunctions.

    ``constraints[k] = (A, b)`` with ``A: [m, n_outputs]``, ``b: [m]``: the violation region of this
    disjunct is ``{x in box : exists k, A_k f(x) <= b_k (every row)}``.
    """

    lo: np.ndarray
    hi: np.ndarray
    constraints: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def holds_at(self, y: np.ndarray, tol: float = 0.0) -> tuple[int, float]:
        """Whether output ``y`` lies in this disjunct's violation region: ``(k, r)`` with ``r`` the best
        residual ``min_k max_rows (A_k y - b_k)`` and ``k`` its conjunction when ``r <= tol``, else -1."""
        best, which = np.inf, -1
        for k, (A, b) in enumerate(self.constraints):
            r = float(np.max(A @ y - b)) if A.shape[0] else -np.inf
            if r < best:
                best, which = r, k
        return (which if best <= tol else -1), best


@dataclass
class Spec:
    """A parsed VNN-LIB file: ``properties`` is a disjunction (sat iff some disjunct is sat)."""

    properties: list[Property]
    n_inputs: int
    n_outputs: int
    source: str = ""

    def __iter__(self) -> Iterator[Property]:
        return iter(self.properties)

    def __len__(self) -> int:
        return len(self.properties)

    def __getitem__(self, i: int) -> Property:
        return self.properties[i]



# --------------------------------------------------------------------------- spec


@no_gc
def parse_vnnlib(text: str, n_inputs: int | None = None, n_outputs: int | None = None,
                 name: str = "<string>", *, limits: VnnlibLimits | None = None) -> Spec:
    """Parse VNN-LIB ``text``; see :func:`load_vnnlib`."""
    if not isinstance(text, str):
        raise TypeError(f"parse_vnnlib expects the text as str, got {type(text).__name__}; use load_vnnlib for "
                        f"a path or the file's bytes")
    rd = Reader(name, limits)
    asserts: list[Sexp] = []
    for e in parse_sexps(text, name):
        if not isinstance(e, list) or not e or not isinstance(e[0], str):
            raise rd.err(f"unexpected top-level {show(e)!r}")
        if e[0] == "declare-const":
            rd.declare(e)
        elif e[0] == "assert":
            if len(e) != 2:
                raise rd.err("assert takes one formula", e)
            asserts.append(e[1])
        elif e[0] in ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"):
            continue
        else:
            raise rd.err(f"unsupported command {e[0]!r}", e)
    n_in = _n_vars(rd, "X", n_inputs)
    n_out = _n_vars(rd, "Y", n_outputs)
    if n_in <= 0:
        raise rd.err("no input variables (X_i)")
    if not asserts:
        raise rd.err("no assert")

    # the conjunction of all asserts: plain atoms (usually the whole box) are shared by every DNF term
    # and processed once; only the disjunctive asserts are multiplied out
    common: list[Lin] = []
    terms: list[list[Lin]] = [[]]
    for a in asserts:
        f = rd.formula(a)
        if len(f) == 1:
            common.extend(f[0])
        else:
            terms = dnf_and(terms, f, name, rd.limits)
    lo0, hi0, rows0, ok0 = _split(rd, common, n_in)
    if not ok0:
        raise rd.err("a constant-false comparison outside any disjunction: the specification is empty")

    groups: dict[bytes, Property] = {}
    order: list[bytes] = []
    for t, term in enumerate(terms):
        lo, hi, rows, ok = _split(rd, term, n_in, lo0, hi0)
        if not ok:
            continue  # a constant-false atom: this term is empty
        rows = rows0 + rows
        unb = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
        if unb.size:
            side = "lower" if not np.isfinite(lo[unb[0]]) else "upper"
            raise rd.err(f"input X_{unb[0]} has no {side} bound"
                         + (f" ({unb.size} inputs are unbounded)" if unb.size > 1 else "")
                         + (f" in disjunct {t} of the disjunctive normal form" if len(terms) > 1 else ""))
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = bad[0]
            raise rd.err(f"input X_{i} has an empty range: lower bound {lo[i]!r} > upper bound {hi[i]!r}")
        A = np.zeros((len(rows), n_out))
        bvec = np.empty(len(rows))
        for r, (coefs, rhs) in enumerate(rows):
            for (_, j), v in coefs.items():
                A[r, j] += v
            bvec[r] = rhs
        key = lo.tobytes() + hi.tobytes()
        p = groups.get(key)
        if p is None:
            p = groups[key] = Property(lo, hi, [])
            order.append(key)
        p.constraints.append((A, bvec))
    if not order:
        raise rd.err("every disjunct contains a constant-false comparison: the specification is empty")
    return Spec([groups[k] for k in order], n_in, n_out, name)


def _n_vars(rd: Reader, kind: str, given: Any) -> int:
    """The number of inputs (``kind`` "X") or outputs ("Y"): ``given`` (the network's size; every declared
    index must be below it), or, when None, counted from the declarations, which must then be
    ``X_0 .. X_{n-1}`` without gaps (so the boxes are as large as the file, never more)."""
    what, arg = ("inputs", "n_inputs") if kind == "X" else ("outputs", "n_outputs")
    idx = rd.idx[kind]
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
            raise VnnlibError(f"{rd.name}: {arg} must be a non-negative int, got {given!r}")
        n = int(given)
        top = max(idx, default=-1)
        if top >= n:
            raise rd.err(f"declares {kind}_{top} but the network has {n} {what} ({kind}_0..{kind}_{n - 1})")
        return n
    n = max(idx, default=-1) + 1
    if len(idx) != n:
        gap = next(i for i, v in enumerate(sorted(idx)) if i != v)
        raise rd.err(f"declares {kind}_{n - 1} but not {kind}_{gap}: without {arg} the number of {what} is "
                     f"counted from the declarations, which must be {kind}_0..{kind}_<n-1>; pass {arg} (the "
                     f"network's size)")
    return n


def _split(rd: Reader, atoms: list[Lin], n_in: int, lo0: np.ndarray | None = None,
           hi0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[dict, float]], bool]:
    """Atoms ``coefs . v + const <= 0`` -> (box lo, hi (intersected with lo0/hi0), output rows
    ``(coefs, rhs)`` meaning ``coefs . y <= rhs``, feasible)."""
    lo = np.full(n_in, -np.inf) if lo0 is None else lo0.copy()
    hi = np.full(n_in, np.inf) if hi0 is None else hi0.copy()
    rows: list[tuple[dict, float]] = []
    ui: list[int] = []
    uv: list[float] = []
    li: list[int] = []
    lv: list[float] = []
    ok = True
    for coefs, const in atoms:
        if len(coefs) == 1:
            (k, c), = coefs.items()
            if k[0] == "X" and c != 0.0:
                if k[1] >= n_in:
                    raise rd.err(f"X_{k[1]} is out of range: the network has {n_in} inputs")
                if c > 0:
                    ui.append(k[1])
                    uv.append(-const / c)
                else:
                    li.append(k[1])
                    lv.append(-const / c)
                continue
        coefs = {k: v for k, v in coefs.items() if v != 0.0}
        kinds = {k[0] for k in coefs}
        if not coefs:
            ok = ok and const <= 0
        elif kinds == {"Y"}:
            rows.append((coefs, -const))
        elif kinds == {"X"}:
            raise rd.err("a constraint relating several inputs (only bounds X_i <= c / X_i >= c are "
                         "supported): " + _fmt_lin(coefs, const))
        else:
            raise rd.err("a constraint mixing inputs and outputs is not supported: " + _fmt_lin(coefs, const))
    if ui:
        np.minimum.at(hi, np.array(ui), np.array(uv))
    if li:
        np.maximum.at(lo, np.array(li), np.array(lv))
    return lo, hi, rows, ok


def _fmt_lin(coefs: dict, const: float) -> str:
    s = " + ".join(f"{v:g}*{k[0]}_{k[1]}" for k, v in coefs.items())
    return f"{s} + {const:g} <= 0"


def load_vnnlib(path: Union[str, os.PathLike, bytes], n_inputs: int | None = None,
                n_outputs: int | None = None, *, limits: VnnlibLimits | None = None) -> Spec:
    """Parse a VNN-LIB file (plain or gzipped; ``bytes`` are read as file contents).

    ``n_inputs`` / ``n_outputs``: the network's sizes (every box then has ``n_inputs`` entries, and a
    variable beyond them is an error); when omitted they are taken from the declarations.
    ``limits``: the size limits of the disjunctive normal form (:class:`VnnlibLimits`, default values).
    Raises :class:`VnnlibError` (a ``ValueError``) for malformed or unsupported content.
    """
    text, name = read_text(path)
    return parse_vnnlib(text, n_inputs, n_outputs, name, limits=limits)



# --------------------------------------------------------------------------- counterexamples


@no_gc
def read_counterexample(path: Union[str, os.PathLike, bytes]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a VNN-COMP counterexample file ``((X_0 v) (X_1 v) ... (Y_0 v) ...)`` (an optional leading
    ``sat`` / ``violated`` is skipped). Returns ``(x, y)``: float64 arrays; ``y`` is None when the
    file has no ``Y_j`` entries."""
    text, name = read_text(path)
    items = parse_sexps(text, name)
    while items and isinstance(items[0], str):
        if items[0].lower() not in ("sat", "violated"):
            raise VnnlibError(f"{name}: unexpected {items[0]!r} before the assignment")
        items = items[1:]
    if len(items) != 1 or not isinstance(items[0], list):
        raise VnnlibError(f"{name}: expected one list of (X_i value) pairs")
    vals: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for pair in items[0]:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise VnnlibError(f"{name}: expected (X_i value), got {show(pair)}")
        m = VAR.fullmatch(pair[0])
        if not m:
            raise VnnlibError(f"{name}: unknown variable {show(pair[0])!r} (expected X_<i> or Y_<j>, i and j "
                              f"decimal indices without leading zeros below 10**18)")
        if not NUM.fullmatch(pair[1]):
            raise VnnlibError(f"{name}: bad value {show(pair[1])!r} for {pair[0]} (expected a decimal number)")
        v = float(pair[1])
        if not math.isfinite(v):
            raise VnnlibError(f"{name}: value {show(pair[1])!r} for {pair[0]} is out of the float64 range")
        d = vals[m.group(1)]
        i = int(m.group(2))
        if i in d:
            raise VnnlibError(f"{name}: {pair[0]} given twice")
        d[i] = v

    def dense(d: dict[int, float], what: str) -> np.ndarray:
        n = max(d) + 1
        if len(d) != n:  # (never materializes range(n): n may be huge)
            missing = next(i for i, v in enumerate(sorted(d)) if i != v)
            raise VnnlibError(f"{name}: {what}_{missing} is missing (the file gives {what}_{n - 1}; the values "
                              f"must be {what}_0..{what}_<n-1> without gaps)")
        out = np.empty(n)
        for i, v in d.items():
            out[i] = v
        return out

    if not vals["X"]:
        raise VnnlibError(f"{name}: no X_i values")
    return dense(vals["X"], "X"), (dense(vals["Y"], "Y") if vals["Y"] else None)


def check_counterexample(network: Any, spec: Spec, x: Any, *, box_tol: float = BOX_TOL,
                         out_tol: float = 0.0) -> tuple[bool, str]:
    """Check that ``x`` (flat, the ONNX input's row-major order, ``spec.n_inputs`` values) violates
    ``spec``: it lies in some disjunct's box (within ``box_tol``, as VNN-COMP) and the network's
    float64 output satisfies every row of one of that disjunct's conjunctions (``A y <= b + out_tol``).

    ``network``: a :class:`fastcert.Network` (built for its input shape, e.g. by ``load_onnx``), or any
    callable mapping a float64 torch tensor ``[1, n_inputs]`` to ``[1, n_outputs]``.
    Returns ``(ok, reason)``.

    This is the competition's check (a float64 forward pass, VNN-COMP's box tolerance), not a proof:
    an output that violates the spec only by rounding passes it. fastcert's own ``sat`` verdicts are
    decided by :func:`fastcert.confirm.confirm_point` (exact box, violation proved by rigorous bounds).
    """
    import torch

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != spec.n_inputs:
        return False, f"x has {x.size} values but the specification has {spec.n_inputs} inputs"
    if not np.isfinite(x).all():
        return False, "x contains NaN or inf"
    shape = getattr(network, "input_shape", None)
    xt = torch.from_numpy(x.copy()).reshape(1, *(shape if shape is not None else (x.size,)))
    with torch.no_grad():
        y = network(xt)
    y = np.asarray(y.detach().double().cpu().numpy() if isinstance(y, torch.Tensor) else y,
                   dtype=np.float64).reshape(-1)
    if y.size != spec.n_outputs:
        return False, f"the network has {y.size} outputs but the specification has {spec.n_outputs}"
    best_box, best_out = (np.inf, -1), (np.inf, -1)
    for d, p in enumerate(spec.properties):
        viol = float(max(np.max(p.lo - x), np.max(x - p.hi), 0.0))
        if viol > box_tol:
            best_box = min(best_box, (viol, d))
            continue
        k, r = p.holds_at(y, out_tol)
        if k >= 0:
            where = f"disjunct {d}, " if len(spec.properties) > 1 else ""
            return True, (f"counterexample confirmed: x in the box of {where}conjunction {k} holds "
                          f"(max over its rows of A y - b = {r:.3g}; box violation {viol:.3g})")
        best_out = min(best_out, (r, d))
    if best_out[1] < 0:
        return False, (f"x is outside every input box (smallest violation {best_box[0]:.3g} > tolerance "
                       f"{box_tol:g}, disjunct {best_box[1]})")
    return False, (f"x is in the box of disjunct {best_out[1]} but the output constraint does not hold at "
                   f"f(x) (best conjunction: max row of A y - b = {best_out[0]:.3g} > {out_tol:g})")
