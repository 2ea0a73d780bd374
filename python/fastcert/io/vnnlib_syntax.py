"""The VNN-LIB syntax layer of :mod:`fastcert.io.vnnlib`: reading (plain or gzipped) text, the
s-expression tokenizer, the reader of declarations, linear expressions and formulas (explicit stacks: any
nesting depth), and the disjunctive normal form with its size limits (:class:`VnnlibLimits`)."""

from __future__ import annotations

import functools
import gc
import gzip
import math
import os
import re
from dataclasses import dataclass
from typing import Union

__all__ = ["NUM", "VAR", "Lin", "Reader", "Sexp", "VnnlibError", "VnnlibLimits", "check_size", "dnf_and", "no_gc",
           "parse_sexps", "read_text", "show"]


class VnnlibError(ValueError):
    """A malformed or unsupported VNN-LIB file (or counterexample file)."""


# --------------------------------------------------------------------------- reading and tokenizing
def no_gc(fn):
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


def read_text(src: Union[str, os.PathLike, bytes]) -> tuple[str, str]:
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


def parse_sexps(text: str, name: str) -> list[Sexp]:
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


def show(e: Sexp, limit: int = 80) -> str:
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


_CLOSE = object()  # show's marker for the end of a list


# --------------------------------------------------------------------------- formulas

# a variable: X_<i> / Y_<j>, the index in decimal without leading zeros and below 10**18
VAR = re.compile(r"([XY])_(0|[1-9][0-9]{0,17})")
# a numeral or decimal (ASCII only, optional sign and exponent; no inf / nan / underscores)
NUM = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ARITH = ("+", "-", "*", "/")
_CMP = ("<=", ">=", "<", ">", "=")

# a linear expression: ({(kind, index): coef}, constant); kind "X" or "Y"
Lin = tuple[dict, float]


class Reader:
    """Reads declarations, linear expressions and formulas. Both readers walk the s-expression with an
    explicit stack, so nesting depth is limited by memory only (no RecursionError)."""

    def __init__(self, name: str, limits: VnnlibLimits | None = None) -> None:
        self.name = name
        self.limits = limits or VnnlibLimits()
        self.declared: dict[str, str] = {}
        self.idx: dict[str, set[int]] = {"X": set(), "Y": set()}
        self._cache: dict[str, Lin] = {}  # variables (their dicts are never mutated)

    def err(self, msg: str, e: Sexp | None = None) -> VnnlibError:
        return VnnlibError(f"{self.name}: {msg}" + (f" in {show(e)}" if e is not None else ""))

    def declare(self, e: list) -> None:
        if len(e) != 3 or not isinstance(e[1], str) or not isinstance(e[2], str):
            raise self.err("malformed declare-const", e)
        v, sort = e[1], e[2]
        if sort not in ("Real", "Int"):
            raise self.err(f"variable {v} has sort {sort}; only Real is supported", e)
        m = VAR.fullmatch(v)
        if not m:
            raise self.err(f"variable {show(v)!r} is neither X_<i> (input) nor Y_<j> (output) with i, j decimal "
                           f"indices without leading zeros below 10**18", e)
        if v in self.declared:
            raise self.err(f"variable {v} is declared twice", e)
        self.declared[v] = sort
        self.idx[m.group(1)].add(int(m.group(2)))

    def _atom(self, e: str) -> Lin:
        hit = self._cache.get(e)
        if hit is not None:
            return hit
        m = VAR.fullmatch(e)
        if m:
            if e not in self.declared:
                raise self.err(f"variable {e} is used but not declared (declare-const)")
            out = {(m.group(1), int(m.group(2))): 1.0}, 0.0
            self._cache[e] = out
            return out
        if not NUM.fullmatch(e):
            raise self.err(f"unknown symbol {show(e)!r}")
        v = float(e)
        if not math.isfinite(v):
            raise self.err(f"constant {show(e)!r} is out of the float64 range")
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
                    raise self.err(f"unsupported arithmetic {show(node[0])!r}", node)
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
        nested ``and`` / ``or``; the size of the result is bounded (:func:`check_size`)."""
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
                    check_size(self.name, len(acc), fr[3], self.limits)
                elif len(acc) == 1 and len(res) == 1:
                    acc[0].extend(res[0])  # acc's terms are fresh lists owned by this frame
                    fr[3] += len(res[0])
                    check_size(self.name, 1, fr[3], self.limits)
                else:
                    fr[2] = dnf_and(acc, res, self.name, self.limits)
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
            raise self.err(f"expected a formula, got {show(e)!r}")
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
        raise self.err(f"unsupported formula {show(op)!r}", e)


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


@dataclass(frozen=True)
class VnnlibLimits:
    """Limits on the disjunctive normal form (nested and/or can multiply out exponentially): at most
    ``max_terms`` terms and ``max_atoms`` comparisons in all its terms together."""

    max_terms: int = 1_000_000
    max_atoms: int = 20_000_000


def check_size(name: str, n_terms: int, n_atoms: int, limits: VnnlibLimits) -> None:
    """Raise :class:`VnnlibError` when a normal form of that size exceeds ``limits``."""
    if n_terms > limits.max_terms:
        raise VnnlibError(f"{name}: the disjunctive normal form has more than {limits.max_terms} terms (nested or/and "
                          f"multiply out); split the specification into several files")
    if n_atoms > limits.max_atoms:
        raise VnnlibError(f"{name}: the disjunctive normal form has more than {limits.max_atoms} comparisons in all its "
                          f"terms (nested or/and multiply out); split the specification into several files")


def dnf_and(t1: list[list], t2: list[list], name: str, limits: VnnlibLimits) -> list[list]:
    """The DNF of the conjunction of two DNFs (new term lists)."""
    a1, a2 = sum(map(len, t1)), sum(map(len, t2))
    check_size(name, len(t1) * len(t2), len(t2) * a1 + len(t1) * a2, limits)
    if len(t1) == 1:
        return [t1[0] + b for b in t2]
    if len(t2) == 1:
        return [a + t2[0] for a in t1]
    return [a + b for a in t1 for b in t2]
