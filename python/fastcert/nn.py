"""torch modules that fastcert understands beyond torch.nn."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel input normalization ``(x - mean[c]) / std[c]``.

    x: ``[B, C, ...]`` (channel is dim 1). Put it first in an ``nn.Sequential`` so that eps stays in
    pixel space; fastcert folds it into the next affine layer when that is exact.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean_t.shape != std_t.shape:
            raise ValueError(f"Normalize: mean has {mean_t.numel()} entries but std has {std_t.numel()}")
        if not torch.all(std_t > 0):
            raise ValueError("Normalize: every std must be > 0")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.to(x.dtype).reshape(shape)) / self.std.to(x.dtype).reshape(shape)


class Arctan(nn.Module):
    """Elementwise ``torch.atan(x)`` as a module (torch has no ``nn.Arctan``); any shape.

    fastcert bounds it as an S-shaped activation (:class:`fastcert.primitives.arctan.Arctan`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(x)
