"""Input checks shared by the public entry points (bounds / certify / verify in api.py, the attacks):
each refuses what would otherwise crash deep inside torch or silently drop information, with a
message that names the argument and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def dense_values(t: torch.Tensor, name: str) -> None:
    """Refuse sparse tensors and tensors on the meta device (which hold no values)."""
    if t.layout != torch.strided:
        raise TypeError(f"{name} is a sparse tensor ({t.layout}); fastcert needs a dense one: pass {name}.to_dense()")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values: pass a CPU tensor of real values")


def real_numbers(v: Any, name: str, what: str) -> torch.Tensor:
    """A number, sequence or array of real numbers (eps, x_min, x_max) as a float64 CPU tensor,
    detached: never through torch's default dtype, never dropping an imaginary part."""
    if isinstance(v, (str, bytes, bool)) or v is None:
        raise TypeError(f"{name} must be {what}, got {type(v).__name__}")
    if isinstance(v, torch.Tensor):
        dense_values(v, name)
        t = v.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(v))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be {what}, got {type(v).__name__}") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be {what} (real, not bool or complex), got dtype {t.dtype}")
    return t.to(torch.float64)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` (torch or numpy) as a dense float32/float64 CPU tensor, detached (bounds carry no gradient)."""
    if isinstance(x, np.ndarray):
        try:
            x = torch.from_numpy(x)
        except TypeError as exc:
            raise TypeError(f"{name} is a numpy array of dtype {x.dtype}; fastcert computes in float32 or float64: "
                            f"convert it with {name}.astype(np.float64)") from exc
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.layout != torch.strided:
        dense_values(x, name)
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} has dtype {x.dtype}; fastcert computes in float32 or float64: convert it with "
                        f"{name}.float() or {name}.double()")
    dense_values(x, name)
    if x.device.type != "cpu":
        raise ValueError(f"{name} is on {x.device}, but this build of fastcert bounds on the CPU only: pass {name}.cpu()")
    return x.detach()


_NORM_ALIASES = {"inf": "inf", "linf": "inf", "l_inf": "inf", "infinity": "inf", "2": "2", "l2": "2", "1": "1",
                 "l1": "1"}


def norm_key(norm: Any) -> str:
    """'inf' | '2' | '1' from 'inf', 'Linf', 'l2', 2, 2.0, float('inf'), ..."""
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        key = "inf" if norm == float("inf") else ("2" if norm == 2 else "1" if norm == 1 else None)
    elif isinstance(norm, str):
        key = _NORM_ALIASES.get(norm.strip().lower())
    else:
        key = None
    if key is None:
        raise ValueError(f"norm must be 'inf', '2' or '1' (L-inf, L2, L1 ball), got {norm!r}")
    return key


def class_indices(v: Any, B: int, K: int, name: str, what: str = "network") -> torch.Tensor:
    """``v`` as [B] int64 class indices in [0, K) (CPU), or a TypeError / ValueError saying what to fix."""
    try:
        t = v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a [B] sequence of integer class indices, got {v!r:.60}") from exc
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64).reshape(-1)
    if t.shape != (B,):
        raise ValueError(f"{name} must have one entry per sample ([{B}]), got shape {tuple(t.shape)}")
    if ((t < 0) | (t >= K)).any():
        raise ValueError(f"{name} must lie in [0, {K}) for a {what} with {K} outputs")
    return t
