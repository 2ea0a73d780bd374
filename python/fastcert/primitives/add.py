"""Add / Sub of two tensors of the same shape: ``y = a + b`` or ``y = a - b`` (a residual connection).

Linear with two inputs: its transpose sends the coefficient rows to both inputs (``(lam, sign*lam)``,
exact copies); its interval is the sum of the boxes rounded outward."""

from __future__ import annotations

import numpy as np
import torch

from fastcert.layers.base import Box, Layer
from fastcert.primitives.mip_rows import ABSENT, RowBuilder


class Add(Layer):
    """``y = a + sign * b`` for flat ``a, b: [B, n]`` (sign +1: Add, -1: Sub)."""

    kind = "add"
    is_affine = False
    n_inputs = 2

    def __init__(self, shape: tuple[int, ...], sign: int = 1, name: str = "") -> None:
        if sign not in (1, -1):
            raise ValueError(f"{name}: sign must be +1 or -1")
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape)
        self.sign = sign
        self.name = name

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: [B, n] -> [B, n]."""
        return a + b if self.sign > 0 else a - b

    def interval(self, a: Box, b: Box) -> Box:
        """The exact sum's interval, each end rounded outward (a sum of two floats is off by at most
        one rounding, so one ulp outward covers it)."""
        lo = a.l + b.l if self.sign > 0 else a.l - b.u
        hi = a.u + b.u if self.sign > 0 else a.u - b.l
        lo = torch.nextafter(lo, torch.full_like(lo, -torch.inf))
        hi = torch.nextafter(hi, torch.full_like(hi, torch.inf))
        return Box(lo.contiguous(), hi.contiguous())

    def transpose(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lam: [Bc, S, n] -> the rows on a and on b (exact)."""
        return lam, (lam if self.sign > 0 else -lam)

    def describe(self) -> str:
        return f"{'add' if self.sign > 0 else 'sub'} {self.in_shape}"

    # ---------------------------------------------------------------- MIP encoding (see mip_rows.py)

    def mip_bounds(self, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The sum of the boxes, widened by 1e-9 of the magnitudes (one rounding per sum, far inside)."""
        (al, au), (bl, bu) = ins
        sl, su = (al + bl, au + bu) if self.sign > 0 else (al - bu, au - bl)
        slack = 1e-9 * (np.maximum(np.abs(al), np.abs(au)) + np.maximum(np.abs(bl), np.abs(bu))) + 1e-300
        return sl - slack, su + slack

    def mip_need(self, need: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [need, need]

    def mip_encode(self, bld: RowBuilder, hs: list[np.ndarray], ins: list[tuple[np.ndarray, np.ndarray]],
                   out: tuple[np.ndarray, np.ndarray], keep: np.ndarray, mode: str) -> tuple[np.ndarray, None]:
        """One equality row per kept neuron, ``z - h_a -+ h_b = 0``."""
        ha, hb = hs
        rk = np.nonzero(keep)[0]
        if (ha[rk] == ABSENT).any() or (hb[rk] == ABSENT).any():  # pragma: no cover - internal
            raise RuntimeError(f"internal error: {self.name} reads a neuron the encoding dropped")
        z = np.full(len(keep), ABSENT, dtype=np.int64)
        k = len(rk)
        z[rk] = bld.cols(out[0][rk], out[1][rk])
        ar = np.arange(k)
        bld.rows([(ar, z[rk], np.ones(k)), (ar, ha[rk], -np.ones(k)), (ar, hb[rk], -float(self.sign) * np.ones(k))],
                 np.zeros(k), np.zeros(k))
        return z, None

    def mip_sensitivity(self, s: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[float, list[np.ndarray]]:
        return float(s.sum()), [s, s]
