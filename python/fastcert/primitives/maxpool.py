"""2-D max pooling (``nn.MaxPool2d`` / ``F.max_pool2d`` / ONNX ``MaxPool``), dilation 1.

Interval: ``[max l, max u]`` over each window (exact: a max is a comparison). Relaxation (as auto_LiRPA's
``BoundMaxPool``, generalised to overlapping windows and padding): the lower line of output ``o`` is the
input ``x_a`` with the largest lower bound in its window (``max >= x_a``); the upper line is ``x_a`` too
when ``x_a`` dominates (``l_a >= u_j`` for every other ``j`` of the window, so ``max == x_a``), else the
constant ``max_j u_j``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastcert.layers.base import Box, Layer


@dataclass(frozen=True)
class PoolRelaxation:
    """idx: [B, n_out] int64, the flat input index of each window's lower line; dom: [B, n_out] bool,
    whether the upper line is that input too; U: [B, n_out] the constant upper bound otherwise."""

    idx: torch.Tensor
    dom: torch.Tensor
    U: torch.Tensor


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class MaxPool2d(Layer):
    """Max pooling of a [C, H, W] input with kernel ``k``, stride ``s``, zero-free padding ``p`` (torch
    pads with -inf: padding never wins)."""

    kind = "maxpool"
    is_affine = False

    def __init__(self, in_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], name: str = "") -> None:
        if len(in_shape) != 3:
            raise ValueError(f"{name}: MaxPool2d needs a [C, H, W] input, got per-sample shape {tuple(in_shape)}")
        self.k, self.s, self.p = _pair(kernel), _pair(stride), _pair(padding)
        if min(self.k) < 1 or min(self.s) < 1 or min(self.p) < 0 or self.p[0] > self.k[0] // 2 or \
                self.p[1] > self.k[1] // 2:
            raise ValueError(f"{name}: MaxPool2d kernel {self.k}, stride {self.s}, padding {self.p}: torch needs kernel "
                             f"and stride >= 1 and 0 <= padding <= kernel // 2")
        C, H, W = (int(d) for d in in_shape)
        OH = (H + 2 * self.p[0] - self.k[0]) // self.s[0] + 1
        OW = (W + 2 * self.p[1] - self.k[1]) // self.s[1] + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"{name}: MaxPool2d kernel {self.k} does not fit the padded input {tuple(in_shape)}")
        self.in_shape = (C, H, W)
        self.out_shape = (C, OH, OW)
        self.name = name
        # the most windows one input lies in (the length of the sums of the transpose)
        self.overlap = math.ceil(self.k[0] / self.s[0]) * math.ceil(self.k[1] / self.s[1])

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        y = F.max_pool2d(x.reshape(B, *self.in_shape), self.k, self.s, self.p)
        return y.reshape(B, -1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C*H*W] -> [B, C*OH*OW]."""
        return self._pool(x)

    def interval(self, box: Box) -> Box:
        return Box(self._pool(box.l), self._pool(box.u))

    def _windows(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """[B, C*H*W] -> [B, C, kh*kw, OH*OW] windows (``fill`` in the padding)."""
        B = t.shape[0]
        C, H, W = self.in_shape
        x = t.reshape(B, C, H, W)
        if self.p != (0, 0):
            x = F.pad(x, (self.p[1], self.p[1], self.p[0], self.p[0]), value=fill)
        cols = F.unfold(x, self.k, stride=self.s)  # [B, C*kh*kw, L]
        return cols.view(B, C, self.k[0] * self.k[1], -1)

    def relax(self, box: Box) -> PoolRelaxation:
        B = box.l.shape[0]
        C, H, W = self.in_shape
        _, OH, OW = self.out_shape
        lw = self._windows(box.l, -torch.inf)
        uw = self._windows(box.u, -torch.inf)
        lmax, a = lw.max(dim=2, keepdim=True)  # the window position of the largest lower bound
        U = uw.max(dim=2).values
        others = uw.scatter(2, a, -torch.inf).max(dim=2).values
        dom = lmax.squeeze(2) >= others
        a = a.squeeze(2)  # [B, C, L]
        oy = torch.arange(OH).repeat_interleave(OW) * self.s[0] - self.p[0]
        ox = torch.arange(OW).repeat(OH) * self.s[1] - self.p[1]
        y, x = oy + a // self.k[1], ox + a % self.k[1]
        idx = torch.arange(C).view(1, C, 1) * (H * W) + y * W + x
        return PoolRelaxation(idx.reshape(B, -1).contiguous(), dom.reshape(B, -1).contiguous(),
                              U.reshape(B, -1).contiguous())

    def describe(self) -> str:
        return f"maxpool k{self.k} s{self.s} p{self.p} {self.in_shape}->{self.out_shape}"
