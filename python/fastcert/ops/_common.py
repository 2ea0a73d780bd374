"""Input checks and small helpers shared by the op registrations (:mod:`fastcert.ops`)."""

from __future__ import annotations

import torch

FLOATS = (torch.float32, torch.float64)


def check(op: str, *named: tuple[str, torch.Tensor | None]) -> torch.dtype:
    """The common dtype of the given tensors, after checking that each is a float32/float64 CPU tensor of
    finite shape and that they share one dtype; the error names the op, the argument and the fix."""
    dt = None
    for name, t in named:
        if t is None:
            continue
        if t.device.type != "cpu":
            raise NotImplementedError(f"fastcert::{op}: argument {name!r} is on {t.device}; only a CPU kernel is "
                                      f"built for this op so far (move the model and inputs with .cpu())")
        if t.dtype not in FLOATS:
            raise TypeError(f"fastcert::{op}: argument {name!r} has dtype {t.dtype}; use float32 or float64")
        if dt is None:
            dt = t.dtype
        elif t.dtype != dt:
            raise TypeError(f"fastcert::{op}: argument {name!r} has dtype {t.dtype} but earlier arguments are {dt}; "
                            f"cast them to one dtype")
    assert dt is not None
    return dt


def c(t: torch.Tensor | None) -> torch.Tensor:
    """A contiguous tensor for a kernel (an empty one for a missing optional argument)."""
    if t is None:
        return torch.empty(0)
    return t.detach().contiguous()


def none_if_empty(t: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    return t if wanted else None
