"""Concatenation of tensors along one per-sample dimension (``torch.cat`` / ONNX ``Concat``).

Linear: its transpose splits the coefficient rows into the inputs' parts (exact); its interval is the
concatenation of the boxes (exact)."""

from __future__ import annotations

import math

import numpy as np
import torch

from fastcert.layers.base import Box, Layer
from fastcert.primitives.mip_rows import RowBuilder


class Concat(Layer):
    """Concatenate inputs of per-sample shapes ``shapes`` along per-sample dimension ``dim`` (0-based,
    without the batch dimension)."""

    kind = "concat"
    is_affine = False

    def __init__(self, shapes: list[tuple[int, ...]], dim: int, name: str = "") -> None:
        r = len(shapes[0])
        if not 0 <= dim < r:
            raise ValueError(f"{name}: concatenation dimension {dim} is outside the per-sample rank {r}")
        for s in shapes:
            if len(s) != r or any(a != b for k, (a, b) in enumerate(zip(s, shapes[0])) if k != dim):
                raise ValueError(f"{name}: cannot concatenate per-sample shapes {shapes} along dimension {dim}: the "
                                 f"other dimensions must agree")
        self.shapes = [tuple(s) for s in shapes]
        self.dim = dim
        self.n_inputs = len(shapes)
        out = list(shapes[0])
        out[dim] = sum(s[dim] for s in shapes)
        self.out_shape = tuple(out)
        self.in_shape = self.out_shape
        self.name = name

    def _cat(self, xs: tuple[torch.Tensor, ...], lead: tuple[int, ...]) -> torch.Tensor:
        parts = [x.reshape(*lead, *s) for x, s in zip(xs, self.shapes)]
        return torch.cat(parts, dim=len(lead) + self.dim).reshape(*lead, -1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """xs: [B, n_k] each -> [B, sum n_k]."""
        return self._cat(xs, (xs[0].shape[0],)).contiguous()

    def interval(self, *boxes: Box) -> Box:
        B = boxes[0].l.shape[0]
        return Box(self._cat(tuple(b.l for b in boxes), (B,)).contiguous(),
                   self._cat(tuple(b.u for b in boxes), (B,)).contiguous())

    def transpose(self, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """lam: [Bc, S, n_out] -> one [Bc, S, n_k] per input (exact)."""
        Bc, S = lam.shape[:2]
        v = lam.reshape(Bc, S, *self.out_shape)
        parts = torch.split(v, [s[self.dim] for s in self.shapes], dim=2 + self.dim)
        return tuple(p.reshape(Bc, S, math.prod(s)).contiguous() for p, s in zip(parts, self.shapes))

    def describe(self) -> str:
        return f"concat dim {self.dim} {self.shapes}->{self.out_shape}"

    # ---------------------------------------------------------------- MIP encoding (see mip_rows.py)

    def mip_bounds(self, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Exact: the concatenated bounds."""
        lo = self.forward(*(torch.from_numpy(b[0])[None] for b in ins))[0].numpy()
        hi = self.forward(*(torch.from_numpy(b[1])[None] for b in ins))[0].numpy()
        return lo, hi

    def mip_need(self, need: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [part[0, 0].numpy() for part in self.transpose(torch.from_numpy(need)[None, None])]

    def mip_encode(self, bld: RowBuilder, hs: list[np.ndarray], ins: list[tuple[np.ndarray, np.ndarray]],
                   out: tuple[np.ndarray, np.ndarray], keep: np.ndarray, mode: str) -> tuple[np.ndarray, None]:
        """No rows: the inputs' columns in the concatenated layout."""
        return self.forward(*(torch.from_numpy(h)[None] for h in hs))[0].numpy().copy(), None

    def mip_sensitivity(self, s: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[float, list[np.ndarray]]:
        return 0.0, [t[0, 0].numpy() for t in self.transpose(torch.from_numpy(s)[None, None])]
