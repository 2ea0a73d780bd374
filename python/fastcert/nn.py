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


class ClippedReLU(nn.Module):
    """Clipped ReLU ``min(max(x, 0), t)`` with one threshold ``t > 0`` for the layer (any shape), learnable by
    default: the activation of the Local-Lipschitz networks (Huang et al., NeurIPS 2021, Sec. 4.2), whose
    neurons above ``t`` are constant in a ball as those below 0 are.

    fastcert bounds it as ``Hardtanh(0, t)`` with ``t`` read when the model is converted (a constant of the
    bound: its gradient comes from losses that use the module itself, such as
    :func:`fastcert.training.local_lip_loss`). Unlike the paper's per-neuron thresholds, ``t`` is one number
    per layer (what fastcert's Hardtanh primitive takes). Keep ``t > 0``: :func:`fastcert.training.
    project_thresholds` after each optimizer step."""

    def __init__(self, threshold: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        t = float(threshold)
        if not t > 0 or t != t or t == float("inf"):
            raise ValueError(f"ClippedReLU: threshold must be a finite number > 0, got {threshold}")
        if learnable:
            self.threshold = nn.Parameter(torch.tensor(t, dtype=torch.float32))
        else:
            self.register_buffer("threshold", torch.tensor(t, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.clamp(x, min=0.0), max=self.threshold.to(x.dtype))

    def conversion_key(self) -> float:
        """The value fastcert's converted network holds (a changed threshold means converting again)."""
        return float(self.threshold.detach())

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold.detach()):.4g}"
