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
