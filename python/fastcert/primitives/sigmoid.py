"""Sigmoid ``1 / (1 + e^-x)`` (``torch.sigmoid``, ``nn.Sigmoid``): an S-shaped primitive."""

from __future__ import annotations

import torch

from fastcert.primitives.sshape import SShaped


class Sigmoid(SShaped):
    """``f(x) = 1 / (1 + e^-x)``; ``f(-x) = 1 - f(x)``, ``f' = f(x) f(-x) <= 1/4``.

    Enclosure: with ``E = exp(-|x|)`` (libm-class, assumed within 4 ulps = 8u relative plus its own
    underflow), ``p = 1 / (1 + E)`` is within ~11u of ``f(|x|)``, ``E p`` within ~20u of ``f(-|x|)``
    and ``f' = E p^2`` within ~33u; ``value_rel`` = 64u and ``deriv_rel`` = 128u double those (the
    extra covers the roundings of the widening itself); ``exp`` underflowing to 0 (``|x| > 745``) is
    an absolute error below 2^-1074, inside ``ABS``."""

    kind = "sigmoid"
    lipschitz = 0.25
    center = 1.0
    range_lo = 0.0
    range_hi = 1.0

    def __init__(self, shape: tuple[int, ...], name: str = "") -> None:
        super().__init__(shape, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> torch.sigmoid(x)."""
        return torch.sigmoid(x)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(-x.abs())
        p = 1.0 / (1.0 + e)
        return torch.where(x >= 0, p, e * p)

    def deriv(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(-x.abs())
        p = 1.0 / (1.0 + e)
        return e * p * p

    def value_deriv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.exp(-x.abs())
        p = 1.0 / (1.0 + e)
        ep = e * p
        return torch.where(x >= 0, p, ep), ep * p

    def eval_error(self, y: torch.Tensor) -> torch.Tensor:
        """4 ulps + 8 subnormals, plus 2.2e-308: torch's float64 sigmoid is ``1 / (1 + e^-x)``, 0 once
        ``e^-x`` overflows (x < -709.78) where the true value is up to 2.2e-308."""
        return super().eval_error(y) + torch.finfo(torch.float64).tiny
