"""Solver-neutral MIP / LP rows and columns, written by the piecewise-linear primitives.

Each primitive that has an exact MIP encoding (the affine ones, ReLU, Add / Sub, Concat, MaxPool2d)
implements, over flat float64 numpy bounds of one sample:

- ``mip_bounds(ins) -> (l, u)``: sound bounds of its output given its inputs' bounds ``ins``;
- ``mip_need(need, ins) -> [mask per input]``: which input neurons the encoding of the outputs marked in
  ``need`` reads;
- ``mip_relevant(l, u) -> mask | None`` (nonlinear ones): the input neurons whose bounds the encoding
  depends on (tighter bounds there tighten the encoding);
- ``mip_encode(bld, hs, ins, out, keep, mode) -> (cols, binary)``: columns of its outputs (``CONST0``: the
  constant 0, ``ABSENT``: not encoded) given its inputs' columns ``hs``, rows written into ``bld``
  (a :class:`RowBuilder`), and its binaries (or None);
- ``mip_sensitivity(s, ins) -> (total, [per input])``: how far a tolerance-sized violation of its rows can
  move the objective (see :func:`fastcert.mip.encoding.sensitivity`).

Every row holds for every true point of the network in real arithmetic; :mod:`fastcert.mip` builds the
HiGHS model from the builder (no solver is imported here)."""

from __future__ import annotations

import numpy as np

INF = float("inf")
CONST0, ABSENT = -1, -2  # column markers: the constant 0 (a dead ReLU), not encoded (no later node needs it)


def triangle_offset(l: np.ndarray, u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A float64 ``t >= max(-s l, u - s u, 0)`` (rounded up with margin): ``y - s z <= t`` is then valid for
    every ``z`` in ``[l, u]``, ``y = relu(z)``, whatever rounding ``s`` suffered."""
    t = np.maximum(np.maximum(-s * l, u - s * u), 0.0)
    return t * (1.0 + 8.0 * np.finfo(np.float64).eps) + 1e-300


class RowBuilder:
    """Columns ``col_lo <= v <= col_hi`` (``integer`` marks binaries) and rows ``lo <= sum <= hi`` of a
    sparse model, appended block by block."""

    def __init__(self) -> None:
        self.ncol = 0
        self.nrow = 0
        self.clo: list[np.ndarray] = []
        self.chi: list[np.ndarray] = []
        self.cint: list[np.ndarray] = []
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.rlo: list[np.ndarray] = []
        self.rhi: list[np.ndarray] = []

    def cols(self, lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
        """New columns with bounds ``[lo, hi]``; returns their indices."""
        k = len(lo)
        self.clo.append(np.asarray(lo, dtype=np.float64))
        self.chi.append(np.asarray(hi, dtype=np.float64))
        self.cint.append(np.full(k, integer))
        idx = np.arange(self.ncol, self.ncol + k)
        self.ncol += k
        return idx

    def rows(self, terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray) -> None:
        """terms: (local row, column, value) triplets (columns < 0, constants 0, are skipped); rows
        lo <= sum <= hi."""
        for rr, cc, vv in terms:
            rr, cc = np.asarray(rr), np.asarray(cc)
            vv = np.broadcast_to(np.asarray(vv, dtype=np.float64), cc.shape)
            ok = cc >= 0
            self.r.append(rr[ok] + self.nrow)
            self.c.append(cc[ok])
            self.v.append(vv[ok])
        self.rlo.append(np.asarray(lo, dtype=np.float64))
        self.rhi.append(np.asarray(hi, dtype=np.float64))
        self.nrow += len(lo)
