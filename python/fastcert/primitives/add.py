"""Add / Sub of two tensors of the same shape: ``y = a + b`` or ``y = a - b`` (a residual connection).

Linear with two inputs: its transpose sends the coefficient rows to both inputs (``(lam, sign*lam)``,
exact copies); its interval is the sum of the boxes rounded outward."""

from __future__ import annotations

import torch

from fastcert.layers.base import Box, Layer


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
