"""Helpers shared by the training losses (:mod:`fastcert.training`, :mod:`fastcert.regularizers`,
:mod:`fastcert.kw_proj`): label and weight checks, PGD points, and the layer walk / layer maps of the losses that
work on an ``nn.Sequential`` directly."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcert.errors import UnsupportedError

__all__ = ["adjoint_map", "adversarial_points", "check_labels", "check_weight", "linear_map", "sequential_layers"]


def sequential_layers(model: nn.Module, acts: tuple[type, ...], who: str) -> list[nn.Module]:
    """The leaf modules of a (nested) ``nn.Sequential`` in order, Identity / eval Dropout dropped; anything but
    Linear, Conv2d, Flatten and ``acts`` refused by name."""
    out: list[nn.Module] = []

    def walk(m: nn.Module, name: str) -> None:
        if type(m) is nn.Sequential:
            for n, c in m.named_children():
                walk(c, f"{name}.{n}" if name else n)
            return
        if isinstance(m, (nn.Identity,)) or (isinstance(m, nn.Dropout) and not m.training):
            return
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros"
                                         or isinstance(m.padding, str)):
            raise UnsupportedError(f"{who}: layer {name!r} is a Conv2d with groups / dilation / padding mode "
                                   f"{m.groups} / {m.dilation} / {m.padding_mode!r}: only groups=1, dilation=1 and "
                                   f"numeric zero padding are supported")
        if not isinstance(m, (nn.Linear, nn.Conv2d, nn.Flatten) + acts) or \
                (isinstance(m, nn.Hardtanh) and not (m.min_val == 0 and m.max_val > 0)):
            names = ", ".join(a.__name__ for a in acts)
            raise UnsupportedError(f"{who}: layer {name!r} ({type(m).__name__}) is not supported; {who} takes an "
                                   f"nn.Sequential of Linear, Conv2d, Flatten and {names}")
        out.append(m)

    if not isinstance(model, nn.Sequential):
        raise UnsupportedError(f"{who} takes an nn.Sequential (its layers are read in order), got "
                               f"{type(model).__name__}")
    walk(model, "")
    if not out or not isinstance(out[-1], nn.Linear):
        raise UnsupportedError(f"{who}: the last layer must be the nn.Linear that computes the logits")
    return out


def check_labels(y: Tensor, B: int | None, K: int) -> Tensor:
    """``y`` as int64 after checking it is a [B] integer tensor (any length when B is None) of classes < K."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"y must be a [B] integer tensor of class indices, got "
                        f"{type(y).__name__} {getattr(y, 'dtype', '')} {tuple(getattr(y, 'shape', ()))}")
    if B is not None and y.shape[0] != B:
        raise ValueError(f"y has {y.shape[0]} labels for a batch of {B} inputs")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= K):
        raise ValueError(f"y holds class indices outside [0, {K}) (the model has {K} outputs)")
    return y.long()


def linear_map(m: nn.Module, v: Tensor) -> Tensor:
    """The layer's linear part (no bias) on a stack of vectors ``v`` [N, *in_shape]."""
    if isinstance(m, nn.Linear):
        return F.linear(v, m.weight)
    return F.conv2d(v, m.weight, None, m.stride, m.padding)


def adjoint_map(m: nn.Module, v: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    if isinstance(m, nn.Linear):
        return v @ m.weight
    H, W = in_shape[-2:]
    k, s, p = m.kernel_size, m.stride, m.padding
    op = (H + 2 * p[0] - k[0]) % s[0], (W + 2 * p[1] - k[1]) % s[1]
    return F.conv_transpose2d(v, m.weight, None, s, p, output_padding=op)


def check_weight(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {v}")
    return v


def adversarial_points(model: nn.Module, x: Tensor, y: Tensor, eps: Any, norm: str, steps: int, restarts: int,
                 step_size: Any, x_min: Any, x_max: Any, seed: int) -> Tensor:
    """PGD points (cross-entropy ascent, the model in eval mode: batch statistics are not touched),
    detached."""
    from fastcert.attacks import pgd

    was = model.training
    model.eval()
    try:
        res = pgd(model, x.detach(), eps, norm, labels=y, steps=steps, restarts=restarts, step_size=step_size,
                  x_min=x_min, x_max=x_max, seed=seed, loss="ce")
    finally:
        model.train(was)
    return res.x_adv.detach().to(x.dtype)
