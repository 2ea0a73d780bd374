"""The dense interval step's row preparation (``_C.interval_prep_rows``): c, r, max |c| and the upper bound on
||c||_2, whose float64 sum of squares runs in 8 fixed lanes (the same bits on every machine and vector width)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from fastcert._ext import _C


def _lane_norm(c: np.ndarray) -> float:
    """The kernel's bound, in its own order: entry k in lane k % 8, lanes added in the fixed tree."""
    m = c.size
    acc = [0.0] * 8
    for k in range(m):
        acc[k % 8] += float(c[k]) * float(c[k])
    ss = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
    infl = 1.0 + 2.0 * (m + 2) * 2.0 ** -53
    t = math.nextafter(ss + (m + 2) * 2.0 ** -1074, math.inf) if ss + (m + 2) * 2.0 ** -1074 != 0 else 2.0 ** -1074
    t = math.nextafter(t * infl, math.inf)
    return math.nextafter(math.sqrt(t), math.inf)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 7, 8, 9, 30, 1568])
def test_prep_rows_sound_and_in_fixed_order(dt: type, m: int) -> None:
    rng = np.random.default_rng(m)
    B = 3
    l = (rng.standard_normal((B, m)) * 10.0 ** rng.integers(-30, 3, size=(B, m))).astype(dt)
    u = (l + np.abs(rng.standard_normal((B, m))).astype(dt) * (np.arange(m) % 3 != 0)).astype(dt)
    u = np.maximum(l, u)
    c, r = np.empty_like(l), np.empty_like(l)
    cm, c2 = np.empty(B, dtype=dt), np.empty(B, dtype=dt)
    _C.interval_prep_rows(l, u, c, r, cm, c2)
    for b in range(B):
        cb = c[b]
        # c is the rounded midpoint (inside [l, u]), r covers it exactly (rationals: no rounding here)
        assert np.array_equal(cb, l[b] + (u[b] - l[b]) / dt(2))
        for k in range(m):
            ck, lk, uk, rk = (Fraction(float(v)) for v in (cb[k], l[b, k], u[b, k], r[b, k]))
            assert lk <= ck <= uk and rk >= max(uk - ck, ck - lk)
        assert cm[b] == np.abs(cb).max()
        # c2 >= ||c||_2 exactly: c2^2 >= sum of the exact squares
        exact_ss = sum(Fraction(float(v)) ** 2 for v in cb)
        assert Fraction(float(c2[b])) ** 2 >= exact_ss
        # the fixed lane order: the same bits as this file's Python twin of it (then rounded up to dt)
        want = _lane_norm(cb)
        got = float(c2[b])
        if dt == np.float64:
            assert got == want
        else:
            w32 = np.float32(want)
            w32 = np.nextafter(w32, np.float32(np.inf)) if float(w32) < want else w32
            assert got == float(w32)
        # and tight: within a few float32 ulps of the true norm
        assert got <= math.sqrt(float(exact_ss)) * (1 + 1e-6) + 1e-300
