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
(nested ``or`` inside ``and`` multiplies out). Counterexample files follow the same rules for names and
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

import functools
import gc
import gzip
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import numpy as np

__all__ = ["Property", "Spec", "VnnlibError", "check_counterexample", "load_vnnlib", "parse_vnnlib",
           "read_counterexample"]

BOX_TOL = 1e-6  # VNN-COMP's tolerance on the input box of a counterexample


class VnnlibError(ValueError):
    """A malformed or unsupported VNN-LIB file (or counterexample file)."""


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


# --------------------------------------------------------------------------- reading and tokenizing
def _no_gc(fn):
    """Run ``fn`` with the cyclic garbage collector paused: parsing allocates many small lists (no
    cycles) and generation-0 collections otherwise dominate the time (5x on a 300 KB spec)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return wrapper



_TOKEN = re.compile(r"[()]|[^\s();]+|;[^\n]*")


def _read_text(src: Union[str, os.PathLike, bytes]) -> tuple[str, str]:
    if isinstance(src, (bytes, bytearray)):
        data, name = bytes(src), "<bytes>"
    else:
        name = os.fspath(src)
        with open(name, "rb") as f:
            data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise VnnlibError(f"{name}: corrupt gzip data ({e})") from e
    try:
        return data.decode("utf-8"), name
    except UnicodeDecodeError as e:
        raise VnnlibError(f"{name}: not a text file ({e})") from e


Sexp = Union[str, list]


def _parse_sexps(text: str, name: str) -> list[Sexp]:
    """All top-level s-expressions of ``text`` (comments dropped): atoms are strings, lists lists."""
    toks = _TOKEN.findall(text)
    stack: list[list] = []
    cur: list = []
    for tok in toks:
        if tok == "(":
            stack.append(cur)
            cur = []
        elif tok == ")":
            if not stack:
                raise VnnlibError(f"{name}: unbalanced ')'" + _where_unbalanced(text))
            done = cur
            cur = stack.pop()
            cur.append(done)
        elif tok[0] != ";":
            cur.append(tok)
    if stack:
        raise VnnlibError(f"{name}: unbalanced parentheses: {len(stack)} '(' never closed (truncated file?)")
    return cur


def _where_unbalanced(text: str) -> str:
    depth = 0
    for m in _TOKEN.finditer(text):
        t = m.group()
        depth += (t == "(") - (t == ")")
        if depth < 0:
            return f" at line {text.count(chr(10), 0, m.start()) + 1}"
    return ""


def _show(e: Sexp, limit: int = 80) -> str:
    """``e`` written back as text, cut to ``limit`` characters (iterative: any nesting depth)."""
    parts: list[str] = []
    size = 0
    todo: list = [e]
    while todo and size <= limit:
        x = todo.pop()
        if x is _CLOSE:
            s = ")"
        elif isinstance(x, str):
            s = x
        else:
            s = "("
            todo.append(_CLOSE)
            todo.extend(reversed(x))
        if parts and parts[-1] != "(" and s != ")":
            parts.append(" ")
            size += 1
        parts.append(s)
        size += len(s)
    out = "".join(parts)
    return out if not todo and len(out) <= limit else out[: limit - 3] + "..."


_CLOSE = object()  # _show's marker for the end of a list


# --------------------------------------------------------------------------- formulas

# a variable: X_<i> / Y_<j>, the index in decimal without leading zeros and below 10**18
_VAR = re.compile(r"([XY])_(0|[1-9][0-9]{0,17})")
# a numeral or decimal (ASCII only, optional sign and exponent; no inf / nan / underscores)
_NUM = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ARITH = ("+", "-", "*", "/")
_CMP = ("<=", ">=", "<", ">", "=")

# a linear expression: ({(kind, index): coef}, constant); kind "X" or "Y"
Lin = tuple[dict, float]


class _Reader:
    """Reads declarations, linear expressions and formulas. Both readers walk the s-expression with an
    explicit stack, so nesting depth is limited by memory only (no RecursionError)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.declared: dict[str, str] = {}
        self.idx: dict[str, set[int]] = {"X": set(), "Y": set()}
        self._cache: dict[str, Lin] = {}  # variables (their dicts are never mutated)

    def err(self, msg: str, e: Sexp | None = None) -> VnnlibError:
        return VnnlibError(f"{self.name}: {msg}" + (f" in {_show(e)}" if e is not None else ""))

    def declare(self, e: list) -> None:
        if len(e) != 3 or not isinstance(e[1], str) or not isinstance(e[2], str):
            raise self.err("malformed declare-const", e)
        v, sort = e[1], e[2]
        if sort not in ("Real", "Int"):
            raise self.err(f"variable {v} has sort {sort}; only Real is supported", e)
        m = _VAR.fullmatch(v)
        if not m:
            raise self.err(f"variable {_show(v)!r} is neither X_<i> (input) nor Y_<j> (output) with i, j decimal "
                           f"indices without leading zeros below 10**18", e)
        if v in self.declared:
            raise self.err(f"variable {v} is declared twice", e)
        self.declared[v] = sort
        self.idx[m.group(1)].add(int(m.group(2)))

    def _atom(self, e: str) -> Lin:
        hit = self._cache.get(e)
        if hit is not None:
            return hit
        m = _VAR.fullmatch(e)
        if m:
            if e not in self.declared:
                raise self.err(f"variable {e} is used but not declared (declare-const)")
            out = {(m.group(1), int(m.group(2))): 1.0}, 0.0
            self._cache[e] = out
            return out
        if not _NUM.fullmatch(e):
            raise self.err(f"unknown symbol {_show(e)!r}")
        v = float(e)
        if not math.isfinite(v):
            raise self.err(f"constant {_show(e)!r} is out of the float64 range")
        return {}, v

    def lin(self, root: Sexp) -> Lin:
        """A linear expression (iterative post-order walk over the nested arithmetic)."""
        stack: list[list] = []  # frames [expression, next argument, evaluated arguments]
        node = root
        while True:
            while True:  # descend to the first atom
                if isinstance(node, str):
                    res = self._atom(node)
                    break
                if not node:
                    raise self.err("empty expression ()")
                if not (isinstance(node[0], str) and node[0] in _ARITH):
                    raise self.err(f"unsupported arithmetic {_show(node[0])!r}", node)
                if len(node) == 1:
                    res = self._apply(node, [])
                    break
                stack.append([node, 2, []])
                node = node[1]
            while stack:  # ascend: apply every operator whose arguments are all evaluated
                fr = stack[-1]
                fr[2].append(res)
                if fr[1] < len(fr[0]):
                    node = fr[0][fr[1]]
                    fr[1] += 1
                    break
                stack.pop()
                res = self._apply(fr[0], fr[2])
            else:
                return res

    def _apply(self, e: list, args: list[Lin]) -> Lin:
        op = e[0]
        if op == "+" and args:
            out = _lin_sum(args, [1.0] * len(args))
        elif op == "-" and len(args) == 1:
            out = _lin_scale(args[0], -1.0)
        elif op == "-" and len(args) >= 2:
            out = _lin_sum(args, [1.0] + [-1.0] * (len(args) - 1))
        elif op == "*" and args:
            out = args[0]
            for a in args[1:]:
                if not out[0]:
                    out = _lin_scale(a, out[1])
                elif not a[0]:
                    out = _lin_scale(out, a[1])
                else:
                    raise self.err("nonlinear product of variables", e)
        elif op == "/" and len(args) == 2:
            if args[1][0] or args[1][1] == 0:
                raise self.err("division by a variable or by zero", e)
            out = _lin_scale(args[0], 1.0 / args[1][1])
        else:
            raise self.err(f"wrong number of arguments for {op!r}", e)
        if not (math.isfinite(out[1]) and all(math.isfinite(v) for v in out[0].values())):
            raise self.err("a coefficient or constant overflows float64", e)
        return out

    def formula(self, root: Sexp) -> list[list[Lin]]:
        """The disjunctive normal form of a boolean formula: a list of terms (conjunctions), each a list
        of atoms ``(coefs, const)`` meaning ``coefs . v + const <= 0``. Iterative post-order walk over
        nested ``and`` / ``or``; the size of the result is bounded (:func:`_check_size`)."""
        stack: list[list] = []  # frames [expression, next argument, DNF so far, its number of atoms]
        node = root
        while True:
            while True:  # descend to the first comparison
                op = node[0] if isinstance(node, list) and node else None
                if op in _CMP and len(node) > 3:  # chained (<= a b c) = (and (<= a b) (<= b c))
                    node = ["and"] + [[op, node[i], node[i + 1]] for i in range(1, len(node) - 1)]
                    continue
                if op == "and" or op == "or":
                    if len(node) < 2:
                        if op == "or":
                            raise self.err("empty (or)", node)
                        res: list[list] = [[]]
                        break
                    stack.append([node, 2, [[]] if op == "and" else [], 0])
                    node = node[1]
                    continue
                res = self._comparison(node)
                break
            while stack:  # ascend: combine with the enclosing and / or
                fr = stack[-1]
                acc = fr[2]
                if fr[0][0] == "or":
                    acc.extend(res)
                    fr[3] += sum(map(len, res))
                    _check_size(self.name, len(acc), fr[3])
                elif len(acc) == 1 and len(res) == 1:
                    acc[0].extend(res[0])  # acc's terms are fresh lists owned by this frame
                    fr[3] += len(res[0])
                    _check_size(self.name, 1, fr[3])
                else:
                    fr[2] = _dnf_and(acc, res, self.name)
                    fr[3] = sum(map(len, fr[2]))
                if fr[1] < len(fr[0]):
                    node = fr[0][fr[1]]
                    fr[1] += 1
                    break
                res = stack.pop()[2]
            else:
                return res

    def _comparison(self, e: Sexp) -> list[list[Lin]]:
        """The DNF of a leaf of a formula: a comparison of two expressions, ``true`` or ``false``."""
        if isinstance(e, str) or not e:
            if e == "true":
                return [[]]
            if e == "false":
                return []
            raise self.err(f"expected a formula, got {_show(e)!r}")
        op = e[0]
        if len(e) == 3 and (op == "<=" or op == ">=") and type(e[1]) is str and type(e[2]) is str:
            # fast path for the bulk of every spec: (<= X_i 0.5), (>= Y_0 Y_1)
            a, b = self.lin(e[1]), self.lin(e[2])
            if not b[0]:
                return [[(a[0], a[1] - b[1])]] if op == "<=" else [[({k: -v for k, v in a[0].items()}, b[1] - a[1])]]
        if op in _CMP:
            if len(e) != 3:
                raise self.err(f"comparison {op} needs two operands", e)
            a, b = self.lin(e[1]), self.lin(e[2])
            if not b[0]:  # the usual "X_i <= c" / "Y_j >= c": no merging needed
                d = a[0], a[1] - b[1]
            else:
                d = _lin_sum([a, b], [1.0, -1.0])  # a - b
            if not (math.isfinite(d[1]) and all(math.isfinite(v) for v in d[0].values())):
                raise self.err("the difference of the two sides overflows float64", e)
            if op in ("<=", "<"):
                return [[d]]
            if op in (">=", ">"):
                return [[_lin_scale(d, -1.0)]]
            return [[d, _lin_scale(d, -1.0)]]
        if op == "not":
            raise self.err("'not' is not supported (rewrite the comparison)", e)
        raise self.err(f"unsupported formula {_show(op)!r}", e)


def _lin_scale(a: Lin, s: float) -> Lin:
    return {k: v * s for k, v in a[0].items()}, a[1] * s


def _lin_sum(args: list[Lin], signs: list[float]) -> Lin:
    coefs: dict = {}
    const = 0.0
    for (c, k), s in zip(args, signs):
        for var, v in c.items():
            coefs[var] = coefs.get(var, 0.0) + s * v
        const += s * k
    return coefs, const


# Limits on the disjunctive normal form (nested and/or can multiply out exponentially): at most
# _MAX_TERMS terms and _MAX_ATOMS comparisons in all its terms together.
_MAX_TERMS = 1_000_000
_MAX_ATOMS = 20_000_000


def _check_size(name: str, n_terms: int, n_atoms: int) -> None:
    if n_terms > _MAX_TERMS:
        raise VnnlibError(f"{name}: the disjunctive normal form has more than {_MAX_TERMS} terms (nested or/and "
                          f"multiply out); split the specification into several files")
    if n_atoms > _MAX_ATOMS:
        raise VnnlibError(f"{name}: the disjunctive normal form has more than {_MAX_ATOMS} comparisons in all its "
                          f"terms (nested or/and multiply out); split the specification into several files")


def _dnf_and(t1: list[list], t2: list[list], name: str) -> list[list]:
    """The DNF of the conjunction of two DNFs (new term lists)."""
    a1, a2 = sum(map(len, t1)), sum(map(len, t2))
    _check_size(name, len(t1) * len(t2), len(t2) * a1 + len(t1) * a2)
    if len(t1) == 1:
        return [t1[0] + b for b in t2]
    if len(t2) == 1:
        return [a + t2[0] for a in t1]
    return [a + b for a in t1 for b in t2]


# --------------------------------------------------------------------------- spec


@_no_gc
def parse_vnnlib(text: str, n_inputs: int | None = None, n_outputs: int | None = None,
                 name: str = "<string>") -> Spec:
    """Parse VNN-LIB ``text``; see :func:`load_vnnlib`."""
    if not isinstance(text, str):
        raise TypeError(f"parse_vnnlib expects the text as str, got {type(text).__name__}; use load_vnnlib for "
                        f"a path or the file's bytes")
    rd = _Reader(name)
    asserts: list[Sexp] = []
    for e in _parse_sexps(text, name):
        if not isinstance(e, list) or not e or not isinstance(e[0], str):
            raise rd.err(f"unexpected top-level {_show(e)!r}")
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
            terms = _dnf_and(terms, f, name)
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


def _n_vars(rd: _Reader, kind: str, given: Any) -> int:
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


def _split(rd: _Reader, atoms: list[Lin], n_in: int, lo0: np.ndarray | None = None,
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
                n_outputs: int | None = None) -> Spec:
    """Parse a VNN-LIB file (plain or gzipped; ``bytes`` are read as file contents).

    ``n_inputs`` / ``n_outputs``: the network's sizes (every box then has ``n_inputs`` entries, and a
    variable beyond them is an error); when omitted they are taken from the declarations.
    Raises :class:`VnnlibError` (a ``ValueError``) for malformed or unsupported content.
    """
    text, name = _read_text(path)
    return parse_vnnlib(text, n_inputs, n_outputs, name)



# --------------------------------------------------------------------------- counterexamples


@_no_gc
def read_counterexample(path: Union[str, os.PathLike, bytes]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a VNN-COMP counterexample file ``((X_0 v) (X_1 v) ... (Y_0 v) ...)`` (an optional leading
    ``sat`` / ``violated`` is skipped). Returns ``(x, y)``: float64 arrays; ``y`` is None when the
    file has no ``Y_j`` entries."""
    text, name = _read_text(path)
    items = _parse_sexps(text, name)
    while items and isinstance(items[0], str):
        if items[0].lower() not in ("sat", "violated"):
            raise VnnlibError(f"{name}: unexpected {items[0]!r} before the assignment")
        items = items[1:]
    if len(items) != 1 or not isinstance(items[0], list):
        raise VnnlibError(f"{name}: expected one list of (X_i value) pairs")
    vals: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for pair in items[0]:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise VnnlibError(f"{name}: expected (X_i value), got {_show(pair)}")
        m = _VAR.fullmatch(pair[0])
        if not m:
            raise VnnlibError(f"{name}: unknown variable {_show(pair[0])!r} (expected X_<i> or Y_<j>, i and j "
                              f"decimal indices without leading zeros below 10**18)")
        if not _NUM.fullmatch(pair[1]):
            raise VnnlibError(f"{name}: bad value {_show(pair[1])!r} for {pair[0]} (expected a decimal number)")
        v = float(pair[1])
        if not math.isfinite(v):
            raise VnnlibError(f"{name}: value {_show(pair[1])!r} for {pair[0]} is out of the float64 range")
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
