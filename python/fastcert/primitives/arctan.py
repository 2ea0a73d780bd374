"""Arctan (``torch.atan``, :class:`fastcert.nn.Arctan`, ONNX ``Atan``): an S-shaped primitive."""

from __future__ import annotations

import math

import torch

from fastcert.primitives.sshape import SShaped


class Arctan(SShaped):
    """``f(x) = atan x``; odd, ``f' = 1 / (1 + x^2) <= 1``, range ``(-pi/2, pi/2)``.

    Enclosure: ``torch.atan`` (assumed within 4 ulps = 8u) and ``1 / (1 + x*x)`` (3 roundings; an
    overflowed ``x*x`` gives 0 where the true value is below 2^-1020, inside ``ABS``).
    ``value_rel`` = 64u and ``deriv_rel`` = 128u are far above those."""

    kind = "arctan"
    lipschitz = 1.0
    center = 0.0
    range_lo = -math.nextafter(math.pi / 2, math.inf)  # the double pi/2 is below pi/2
    range_hi = math.nextafter(math.pi / 2, math.inf)

    def __init__(self, shape: tuple[int, ...], name: str = "") -> None:
        super().__init__(shape, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> torch.atan(x)."""
        return torch.atan(x)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(x)

    def deriv(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 / (1.0 + x * x)
