"""Tanh (``torch.tanh``, ``nn.Tanh``): an S-shaped primitive."""

from __future__ import annotations

import torch

from fastcert.primitives.sshape import SShaped


class Tanh(SShaped):
    """``f(x) = tanh x``; odd, ``f' = 1 - tanh^2 <= 1``.

    Enclosure: ``M = expm1(-2|x|)`` (assumed within 4 ulps = 8u; ``2|x|`` is exact), ``tanh|x| =
    -M / (2 + M)`` within ~18u (no cancellation: ``2 + M`` is in [1, 2]); ``f' = 4 E / (1 + E)^2``
    with ``E = exp(-2|x|)`` within ~30u. ``value_rel`` = 64u, ``deriv_rel`` = 128u; an underflowed
    ``E`` (|x| > 372) is an absolute error below 2^-1070, inside ``ABS``."""

    kind = "tanh"
    lipschitz = 1.0
    center = 0.0
    range_lo = -1.0
    range_hi = 1.0

    def __init__(self, shape: tuple[int, ...], name: str = "") -> None:
        super().__init__(shape, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> torch.tanh(x)."""
        return torch.tanh(x)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.expm1(-2.0 * x.abs())
        return torch.copysign(-m / (2.0 + m), x)

    def deriv(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(-2.0 * x.abs())
        q = 1.0 + e
        return 4.0 * e / (q * q)

    def value_deriv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.expm1(-2.0 * x.abs())
        q = 2.0 + m  # 1 + e^{-2|x|}
        return torch.copysign(-m / q, x), 4.0 * (1.0 + m) / (q * q)
