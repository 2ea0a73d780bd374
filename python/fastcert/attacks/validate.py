"""Input validation of the attack entry points (model, x, radii, labels, the input-domain box)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcert.checks import class_indices, dense_values, norm_key, real_numbers
from fastcert.rounding import round_down, round_up

Tensor = torch.Tensor

def exact_upcast(model: Any, dt: torch.dtype) -> Any:
    """A float64 copy of a model whose floating-point parameters and buffers are all of a lower
    precision, for float64 inputs: the upcast is exact, so the attack runs on the very function that
    fastcert.certify bounds for such a model (its weights in float64). Any other model as it is."""
    if dt != torch.float64 or not isinstance(model, nn.Module):
        return model
    ts = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not ts or any(t.dtype == torch.float64 or t.is_complex() for t in ts):
        return model
    import copy

    return copy.deepcopy(model).to(torch.float64)


def check_model(model: Any, dt: torch.dtype) -> None:
    if not isinstance(model, nn.Module):
        hint = " (pass the torch model, not a fastcert.Network)" if type(model).__name__ == "Network" else ""
        raise TypeError(f"model must be a torch nn.Module{hint}, got {type(model).__name__}")
    noisy = [type(m).__name__ for m in model.modules() if m.training and isinstance(
        m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout))]
    if noisy:
        raise ValueError(f"the model has a {noisy[0]} layer in training mode, whose output is random or depends on "
                         f"the batch: call model.eval() first")
    for name, prm in model.named_parameters():
        if prm.is_floating_point() and prm.dtype != dt:
            fix = "model.double()" if dt == torch.float64 else "model.float()"
            raise TypeError(f"the model's parameter {name!r} is {prm.dtype} but x is {dt}: the attack runs in the "
                            f"dtype of x; call {fix} or convert x")


def as_input(x: Any) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor or numpy array, got {type(x).__name__}")
    dense_values(x, "x")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x has dtype {x.dtype}; fastcert attacks run in float32 or float64: convert it with "
                        f"x.float() or x.double()")
    if x.dim() < 2:
        raise ValueError(f"x must be batched: [B, *input_shape], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0): pass at least one sample")
    x = x.detach()
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf; attacks need finite inputs")
    return x


def attack_norm(norm: Any) -> str:
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        norm = {1: "1", 2: "2"}.get(norm, "inf" if norm == math.inf else repr(norm))  # type: ignore[call-overload]
    return norm_key(norm)


def per_sample(v: Any, B: int, name: str) -> Tensor:
    """A scalar or [B] tensor of finite numbers >= 0, as float64 [B] on the CPU."""
    # never through torch's default dtype: a Python float must keep all 53 bits
    t = real_numbers(v, name, "a number or a [B] tensor of numbers")
    if t.dim() == 0:
        t = t.expand(B)
    t = t.reshape(-1) if t.dim() > 1 and t.numel() == B else t
    if t.shape != (B,):
        raise ValueError(f"{name} must be a scalar or have one entry per sample ([{B}]), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    if (t < 0).any():
        raise ValueError(f"{name} must be >= 0, got min {float(t.min())}")
    return t.contiguous()


def classes(v: Any, B: int, K: int, name: str, device: torch.device) -> Tensor:
    return class_indices(v, B, K, name, "model").to(device)


def check_int(v: Any, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def domain_box(bound: Any, x: Tensor, name: str) -> Tensor | None:
    """x_min / x_max broadcast to x.shape, in x's dtype, rounded *inwards* (so that a point inside
    the rounded box lies inside the box given)."""
    if bound is None:
        return None
    t = real_numbers(bound, name, "a number or a tensor broadcastable to x")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite (leave it None for no bound)")
    try:
        t = torch.broadcast_to(t, x.shape)
    except RuntimeError as exc:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to x's shape {tuple(x.shape)} "
                         f"(per-feature {tuple(x.shape[1:])} or per-sample)") from exc
    x64 = x.detach().cpu().double()
    if name == "x_min" and (x64 < t).any():
        raise ValueError("x lies below x_min somewhere: the centre of the ball must lie in the input domain")
    if name == "x_max" and (x64 > t).any():
        raise ValueError("x lies above x_max somewhere: the centre of the ball must lie in the input domain")
    return (round_up if name == "x_min" else round_down)(t, x.dtype).to(x.device)
