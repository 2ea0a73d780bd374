"""Rigorous confirmation of counterexamples: the one place that decides "sat" / "falsified".

A counterexample is reported only for a point ``x`` (float64) that

1. lies in the input region **exactly**: box bounds are compared as floats (exact); the L-inf / L1 /
   L2 distance to the centre is evaluated without rounding (TwoSum for the differences, rational
   arithmetic for the sums) -- :func:`in_region`; a solver or attack point that misses the region by
   rounding is first moved inwards (towards the centre, :func:`into_region`); and
2. whose violation is **proved**: fastcert's rigorous interval bounds at ``eps = 0`` on that exact
   point (``fastcert.bounds(net, x, 0.0, method="ibp", C=A)``, which contain the exact real output of
   the network and its float64 evaluation) satisfy the violated constraints for *every* value inside
   them -- :func:`proved_rows`. A float64 forward pass that happens to round onto the wrong side of a
   constraint (outputs near 6.6e5 with an exact margin of +1.8e-10, ``Y_0 = Y_1`` satisfied only by
   rounding) is not a counterexample.

Constraints are ``A y <= b`` per row (``A y < b`` for strict rows). VNN-LIB conjunctions are checked
strict unless the :class:`~fastcert.io.vnnlib.Property` says otherwise (an optional ``strict``
attribute: one bool array per conjunction), because the parser reads ``<`` as ``<=``: a point on the
boundary of a non-strict row is then left unconfirmed (an incomplete answer, never a wrong one).

Used by :func:`fastcert.mip.verify`, :func:`fastcert.mip.solve_property` and
:func:`fastcert.vnncomp.solve_instance`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch

__all__ = ["confirm_point", "confirm_property", "in_region", "into_region", "output_upper", "proved_rows"]


def _two_diff(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a - b == s + e`` exactly (Knuth's TwoSum on float64 arrays; a, b finite, no overflow)."""
    s = a - b
    bb = s - a
    e = (a - (s - bb)) + (-b - bb)
    return s, e


def in_region(x: np.ndarray, x0: np.ndarray | None = None, eps: float = 0.0, norm: str = "inf",
              lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> bool:
    """Exact membership of ``x`` [n] in ``{||x - x0||_norm <= eps} ∩ [lo, hi]`` (float64 arrays; ``x0``
    None: the box alone). No rounding anywhere: a point one ulp outside is outside."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        return False
    if lo is not None and not bool(np.all(x >= np.asarray(lo, dtype=np.float64).reshape(-1))):
        return False
    if hi is not None and not bool(np.all(x <= np.asarray(hi, dtype=np.float64).reshape(-1))):
        return False
    if x0 is None:
        return True
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    eps = float(eps)
    s, e = _two_diff(x, x0)
    if not (np.isfinite(s).all() and np.isfinite(e).all()):  # overflow: exact rationals
        d = [Fraction(float(a)) - Fraction(float(c)) for a, c in zip(x, x0)]
    elif norm == "inf":  # |s + e| <= eps, e tiny against s
        a = np.abs(s)
        return bool(np.all((a < eps) | ((a == eps) & (e * np.sign(s) <= 0))))
    else:
        d = [Fraction(float(a)) + Fraction(float(c)) for a, c in zip(s, e) if a != 0.0]
    if norm == "inf":
        return all(abs(v) <= Fraction(eps) for v in d)
    if norm == "1":
        return sum((abs(v) for v in d), Fraction(0)) <= Fraction(eps)
    if norm == "2":
        return sum((v * v for v in d), Fraction(0)) <= Fraction(eps) ** 2
    raise ValueError(f"norm must be 'inf', '1' or '2', got {norm!r}")


def _inf_box(x0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The float box of the L-inf ball, rounded inwards: ``x0 - eps <= lo``, ``hi <= x0 + eps`` exactly."""
    lo, el = _two_diff(x0, np.full_like(x0, eps))
    lo = np.where(el > 0, np.nextafter(lo, np.inf), lo)
    hi, eh = _two_diff(x0, np.full_like(x0, -eps))
    hi = np.where(eh < 0, np.nextafter(hi, -np.inf), hi)
    return np.minimum(lo, x0), np.maximum(hi, x0)


def into_region(x: np.ndarray, x0: np.ndarray, eps: float, norm: str, lo: np.ndarray | None = None,
                hi: np.ndarray | None = None) -> np.ndarray | None:
    """A point of the region near ``x`` [n]: ``x`` clipped into the box (and for L-inf the ball, rounded
    inwards), then for L1 / L2 pulled towards ``x0`` by the smallest factor found that passes
    :func:`in_region` (``x0`` itself at worst). None when not even ``x0`` is in the region."""
    x = np.asarray(x, dtype=np.float64).reshape(-1).copy()
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    blo = np.full_like(x0, -np.inf) if lo is None else np.asarray(lo, dtype=np.float64).reshape(-1)
    bhi = np.full_like(x0, np.inf) if hi is None else np.asarray(hi, dtype=np.float64).reshape(-1)
    x = np.where(np.isfinite(x), x, x0)
    if norm == "inf":
        ilo, ihi = _inf_box(x0, eps)
        blo, bhi = np.maximum(blo, ilo), np.minimum(bhi, ihi)
    x = np.minimum(np.maximum(x, blo), bhi)
    if in_region(x, x0, eps, norm, lo, hi):
        return x
    d = x - x0
    m = float(np.abs(d).max()) if d.size else 0.0
    if m > 0 and np.isfinite(m):  # the norm of d, scaled (no underflow / overflow in the squares)
        r = np.abs(d) / m
        size = m * float(r.sum() if norm == "1" else np.sqrt(np.sum(r * r)))
    else:
        size = 0.0
    f0 = min(1.0, eps / size) if size > 0 else 0.0
    lo_c, hi_c = np.minimum(x0, x), np.maximum(x0, x)  # never further from x0 than x, coordinate-wise
    u = 2.0 ** -53
    for k in range(60):
        f = f0 * max(0.0, 1.0 - 4 * u * 2.0 ** k)
        cand = np.minimum(np.maximum(x0 + d * f, lo_c), hi_c)
        if in_region(cand, x0, eps, norm, lo, hi):
            return cand
        if f == 0.0:
            break
    return x0.copy() if in_region(x0, x0, eps, norm, lo, hi) else None


def output_upper(net: Any, shape: tuple[int, ...], x: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Rigorous upper bounds [m] of ``A f(x)`` at the exact point ``x`` [n] (float64): fastcert's IBP
    bounds at ``eps = 0`` (they contain the exact real value and its float64 evaluation). net: a
    :class:`fastcert.Network` or torch model; shape: its per-sample input shape; A: [m, K]."""
    from fastcert.api import bounds

    A = np.asarray(A, dtype=np.float64)
    A = A.reshape(-1, A.shape[-1])
    if A.shape[0] == 0:
        return np.zeros(0)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(1, *shape)
    up = bounds(net, xt, 0.0, method="ibp", C=torch.from_numpy(A)).upper[0].double().numpy()
    return np.where(np.isnan(up), np.inf, up)


def _holds(up: np.ndarray, b: np.ndarray, strict: Any) -> bool:
    """Every row ``y <= b`` (``y < b`` where strict) holds for every ``y <= up`` (exact comparisons)."""
    s = np.broadcast_to(np.asarray(strict, dtype=bool), b.shape)
    return bool(np.all(np.where(s, up < b, up <= b)))


def proved_rows(net: Any, shape: tuple[int, ...], x: np.ndarray, A: np.ndarray, b: np.ndarray,
                strict: Any = True) -> tuple[bool, np.ndarray]:
    """Is ``A f(x) <= b`` (``<`` where ``strict``: bool or [m] bools) proved for every row at the exact
    point ``x`` [n]? Returns ``(proved, upper)``, ``upper`` [m] the rigorous upper bounds of ``A f(x)``
    (:func:`output_upper`; an empty ``A`` is proved trivially)."""
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    up = output_upper(net, shape, x, A)
    return _holds(up, b, strict), up


def confirm_property(net: Any, shape: tuple[int, ...], props: list, x: np.ndarray) -> tuple[int, int] | None:
    """``(disjunct, conjunction)`` of a VNN-LIB violation that ``x`` [n] provably is, else None: ``x`` lies
    in the disjunct's box exactly (no tolerance) and every row of the conjunction is proved by
    :func:`proved_rows` (strict unless ``prop.strict`` says a row is not)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    for d, p in enumerate(props):
        if not p.constraints or not in_region(x, lo=p.lo, hi=p.hi):
            continue
        strict = getattr(p, "strict", None)
        rows = [(np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1))
                for A, b in p.constraints]
        A = np.concatenate([A.reshape(-1, A.shape[-1]) for A, _ in rows])
        up = output_upper(net, shape, x, A)
        r = 0
        for k, (Ak, bk) in enumerate(rows):
            m = bk.shape[0]
            if _holds(up[r:r + m], bk, True if strict is None else strict[k]):
                return d, k
            r += m
    return None


def confirm_point(net: Any, shape: tuple[int, ...], props: list, x: np.ndarray) -> np.ndarray | None:
    """The counterexample to report for a candidate ``x`` [n] (float64) of a VNN-LIB specification
    (``props``: its disjuncts): its float32-representable neighbour (rounded into the box of a disjunct
    that contains ``x``, so that a float32 checker reads the same input) when that is a proved
    counterexample (:func:`confirm_property`), else ``x`` itself when it is one, else None."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    cands = []
    p = next((p for p in props if in_region(x, lo=p.lo, hi=p.hi)), None)
    if p is not None:
        x32 = x.astype(np.float32)
        up, down = np.nextafter(x32, np.float32(np.inf)), np.nextafter(x32, np.float32(-np.inf))
        x32 = np.where(x32.astype(np.float64) < p.lo, up, np.where(x32.astype(np.float64) > p.hi, down, x32))
        x32 = x32.astype(np.float64)
        if not np.array_equal(x32, x):
            cands.append(x32)
    cands.append(x)
    for c in cands:
        if confirm_property(net, shape, props, c) is not None:
            return c
    return None
