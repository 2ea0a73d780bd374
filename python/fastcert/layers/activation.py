"""Activation layers: ReLU (with linear relaxations), LeakyReLU / Tanh / Sigmoid (interval only for
now; their linear relaxations come in a later issue)."""

from __future__ import annotations

import torch

from fastcert._ext import _C
from fastcert.layers.base import Box, Layer, np_view
from fastcert.rounding import rounding_is_relative

_KIND = {"relu": 0, "leaky_relu": 1, "tanh": 2, "sigmoid": 3}
LOWER_SLOPE_MODES = {"adaptive": 0, "parallel": 1, "zero": 2, "one": 3}


class UnsupportedError(ValueError, NotImplementedError):
    """A layer or method combination that fastcert does not (yet) bound; never silently replaced.

    The one exception type for "not supported", whether found at conversion (an unsupported layer) or
    by a method (CROWN on a sigmoid): a ``ValueError`` like every other refusal of an input (and a
    ``NotImplementedError``, as it was first defined)."""


class Activation(Layer):
    is_affine = False

    def __init__(self, act: str, shape: tuple[int, ...], alpha: float = 0.0, name: str = "") -> None:
        if act not in _KIND:
            raise ValueError(f"unknown activation {act!r}")
        self.kind = act
        self.alpha = float(alpha)
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape)
        self.name = name

    @property
    def lipschitz(self) -> float:
        return {"relu": 1.0, "leaky_relu": max(1.0, abs(self.alpha)), "tanh": 1.0, "sigmoid": 0.25}[self.kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "leaky_relu":
            return torch.nn.functional.leaky_relu(x, self.alpha)
        if self.kind == "tanh":
            return torch.tanh(x)
        return torch.sigmoid(x)

    def interval(self, box: Box) -> Box:
        if self.kind == "leaky_relu" and box.l.dtype != torch.float64:
            a = torch.tensor([self.alpha], dtype=torch.float64)
            if not bool(rounding_is_relative(a, box.l.dtype).all()):
                raise ValueError(f"{self.name or self.kind}: negative_slope {self.alpha!r} lies below the normal range "
                                 f"of {box.l.dtype} and does not round exactly to it; pass x as float64 (x.double())")
        lo = torch.empty_like(box.l)
        hi = torch.empty_like(box.u)
        _C.act_interval(_KIND[self.kind], self.alpha, np_view(box.l), np_view(box.u), np_view(lo), np_view(hi))
        return Box(lo, hi)

    def unstable(self, box: Box) -> torch.Tensor:
        """[B, n] bool: the neurons whose relaxation depends on their bounds (ReLU: those crossing 0)."""
        return (box.l < 0) & (box.u > 0)

    def relax(self, box: Box, lower_slope: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Linear relaxation on the pre-activation box: ``lo_s*z <= act(z) <= up_s*z + up_b``.

        Returns ``(lo_s, up_s, up_b)``, each [B, n]. Only ReLU for now.
        """
        if self.kind != "relu":
            raise UnsupportedError(
                f"{self.name or self.kind}: linear relaxations of {self.kind} are not yet supported, so "
                f"fastcert cannot run CROWN / Fast-Lin / KW on this network; use method='ibp' "
                f"(interval bounds support {self.kind})")
        if lower_slope not in LOWER_SLOPE_MODES:
            raise ValueError(f"lower_slope must be one of {sorted(LOWER_SLOPE_MODES)}, got {lower_slope!r}")
        lo_s = torch.empty_like(box.l)
        up_s = torch.empty_like(box.l)
        up_b = torch.empty_like(box.l)
        _C.relu_relax(np_view(box.l), np_view(box.u), LOWER_SLOPE_MODES[lower_slope], np_view(lo_s), np_view(up_s),
                      np_view(up_b))
        return lo_s, up_s, up_b
