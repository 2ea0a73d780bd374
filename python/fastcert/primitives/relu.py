"""ReLU (``nn.ReLU`` / ``F.relu`` / ``torch.relu`` / ONNX ``Relu``).

Interval: ``[max(l, 0), max(u, 0)]``, exact in floating point (``_C.relu_interval``). Relaxation
(``_C.relu_relax``): the upper line is the chord ``s z + t`` with ``s = u / (u - l)`` and the intercept
``t`` rounded up so the line stays above relu at both ends; the lower line ``lo_s z`` has zero intercept,
so every slope in ``[0, 1]`` is sound: "adaptive" (CROWN: 1 if ``u >= -l`` else 0), "parallel" (Fast-Lin /
KW: ``s``), "zero", "one". ReLU keeps its own fused backward kernels in the engines (zero lower
intercepts), which is why it is not an :class:`fastcert.primitives.base.Elementwise`."""

from __future__ import annotations

import numpy as np
import torch

from fastcert._ext import _C
from fastcert.layers.base import Box, Layer
from fastcert.primitives.base import LOWER_SLOPE_MODES
from fastcert.primitives.mip_rows import ABSENT, CONST0, INF, RowBuilder, triangle_offset


class ReLU(Layer):
    """ReLU on a flat ``[B, n]`` tensor of per-sample shape ``shape``."""

    kind = "relu"
    is_affine = False
    lipschitz = 1.0

    def __init__(self, shape: tuple[int, ...], name: str = "") -> None:
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n] -> relu(x): [B, n]."""
        return torch.relu(x)

    def interval(self, box: Box) -> Box:
        """``[max(l, 0), max(u, 0)]`` (exact)."""
        lo = torch.empty_like(box.l)
        hi = torch.empty_like(box.u)
        _C.relu_interval(box.l, box.u, lo, hi)
        return Box(lo, hi)

    def unstable(self, box: Box) -> torch.Tensor:
        """[B, n] bool: the neurons whose relaxation depends on their bounds (those crossing 0)."""
        return (box.l < 0) & (box.u > 0)

    def relax(self, box: Box, lower_slope: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Linear relaxation on the pre-activation box: ``lo_s*z <= relu(z) <= up_s*z + up_b``.

        Returns ``(lo_s, up_s, up_b)``, each [B, n]; ``lower_slope`` is one of ``LOWER_SLOPE_MODES``."""
        if lower_slope not in LOWER_SLOPE_MODES:
            raise ValueError(f"lower_slope must be one of {LOWER_SLOPE_MODES}, got {lower_slope!r}")
        lo_s = torch.empty_like(box.l)
        up_s = torch.empty_like(box.l)
        up_b = torch.empty_like(box.l)
        _C.relu_relax(box.l, box.u, getattr(_C.LowerSlope, lower_slope), lo_s,
                      up_s, up_b)
        return lo_s, up_s, up_b

    # ---------------------------------------------------------------- MIP encoding (see mip_rows.py)

    def mip_bounds(self, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        il, iu = ins[0]
        return np.maximum(il, 0.0), np.maximum(iu, 0.0)

    def mip_need(self, need: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [need & (ins[0][1] > 0)]  # a dead neuron is the constant 0

    def mip_relevant(self, l: np.ndarray, u: np.ndarray) -> np.ndarray:
        return (l < 0) & (u > 0)

    def mip_encode(self, bld: RowBuilder, hs: list[np.ndarray], ins: list[tuple[np.ndarray, np.ndarray]],
                   out: tuple[np.ndarray, np.ndarray], keep: np.ndarray, mode: str
                   ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """A stable neuron is exact and costs nothing (an active one reuses its input column, a dead one is
        the constant 0); an unstable one gets ``y >= z, y >= 0`` and, in "mip" mode, a binary ``a`` with
        ``y <= z - l (1 - a), y <= u a`` (Tjeng et al.), in "lp" mode the triangle ``y - s z <= t``.
        Returns the columns and ``(unstable neurons, their binaries)`` in "mip" mode."""
        h, (l, u) = hs[0], ins[0]
        y = np.where(l >= 0, h, CONST0)
        y = np.where(keep | (u <= 0), y, ABSENT)
        iu = np.nonzero((l < 0) & (u > 0) & keep & (h >= 0))[0]
        if not len(iu):
            return y, None
        li, ui = l[iu], u[iu]
        k = len(iu)
        yc = bld.cols(np.zeros(k), ui)
        y[iu] = yc
        ar = np.arange(k)
        bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -np.ones(k))], np.zeros(k), np.full(k, INF))  # y >= z
        if mode != "mip":
            s = ui / (ui - li)
            bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -s)], np.full(k, -INF), triangle_offset(li, ui, s))
            return y, None
        ac = bld.cols(np.zeros(k), np.ones(k), integer=True)
        # y - z - l a <= -l  (a = 0 forces y <= z - l ... with y >= z: y = z when active)
        bld.rows([(ar, yc, np.ones(k)), (ar, h[iu], -np.ones(k)), (ar, ac, -li)], np.full(k, -INF), -li)
        bld.rows([(ar, yc, np.ones(k)), (ar, ac, -ui)], np.full(k, -INF), np.zeros(k))  # y <= u a
        return y, (iu, ac)

    def mip_sensitivity(self, s: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[float, list[np.ndarray]]:
        """1-Lipschitz, plus the big-M of an unstable neuron whose binary may be fractional by the
        tolerance; a dead neuron (``u <= 0``) is the constant 0, so nothing reaches its input."""
        l, u = ins[0]
        uns = (l < 0) & (u > 0)
        return float(s.sum()) + float(s[uns] @ np.maximum(-l[uns], u[uns])), [np.where(u > 0, s, 0.0)]
