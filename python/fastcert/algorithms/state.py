"""State shared by the bound engines: the method table, the per-call problem and pass state, the
reusable scratch buffers of the backward pass, and small helpers both engines use."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from fastcert._ext import _C
from fastcert.algorithms.slack import raise_overflow
from fastcert.layers.base import Box, Centre, Layer
from fastcert.options import BoundOptions
from fastcert.primitives.base import Elementwise, RelaxOptions
from fastcert.primitives.relu import ReLU

# method -> (lower slope, intermediate bounds, intersect intermediate bounds with IBP)
METHODS: dict[str, tuple[str, str, bool] | None] = {
    "ibp": None,
    "fastlin": ("parallel", "backsub", False),
    "kw": ("parallel", "backsub", False),
    "crown": ("adaptive", "backsub", True),
    "crown-ibp": ("adaptive", "ibp", True),
}



class Workspace(threading.local):
    """Per-thread scratch buffers of the backward pass, kept between calls.

    The coefficient matrices of a back-substitution are tens to hundreds of MiB; allocating them
    fresh every step makes the C library map new pages and the kernel zero them (page faults cost
    as much as the arithmetic on small networks). Buffers grow to the largest size asked for and are
    reused; :func:`empty_cache` frees them. Nothing returned to a caller ever lives in them."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= int(d)
        buf = self.bufs.get((name, dtype))
        if buf is None or buf.numel() < numel:
            self.bufs.pop((name, dtype), None)  # free the old one before allocating the larger one
            buf = torch.empty(max(numel, 1), dtype=dtype)
            self.bufs[(name, dtype)] = buf
        return buf[:numel].view(shape)


WS = Workspace()
E64 = np.empty(0, dtype=np.float64)  # "no centre form" for the kernels' float64 arguments


def empty_cache() -> int:
    """Free this thread's scratch buffers of the backward pass; returns the bytes released."""
    freed = sum(b.numel() * b.element_size() for b in WS.bufs.values())
    WS.bufs.clear()
    return freed


@dataclass
class Problem:
    """Per-call input region. x0, l0, u0: [B, n0]; eps: [B]; p: 0 = box (L-inf), 1 = L1, 2 = L2."""

    x0: torch.Tensor
    eps: torch.Tensor
    p: int
    l0: torch.Tensor
    u0: torch.Tensor


@dataclass
class Pass:
    """State of one bound computation (explicit, never stored on layers)."""

    layers: list[Layer]
    prob: Problem
    boxes_in: list[Box | None]
    G: list[torch.Tensor | None]
    relax: list[tuple[torch.Tensor, ...] | None]  # (lo_s, up_s, up_b, zmag, lo_b or None) per activation
    opts: BoundOptions = field(default_factory=BoundOptions)
    uf: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B] float64 underflow units
    # dense layer -> the centre form of its backward step (None: the magnitude form with G)
    centre: dict[int, Centre] = field(default_factory=dict)


def chunk(B: int, rows: int, width: int, itemsize: int, budget: int) -> int:
    return max(1, min(B, budget // max(1, rows * width * itemsize)))


def uncrossed(lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """The box [lo, hi]; a bound that crosses (lo > hi) can only come from rounding on a degenerate
    box, and swapping the two keeps it sound."""
    bad = lo > hi
    if bad.any():
        lo, hi = torch.where(bad, torch.minimum(lo, hi), lo), torch.where(bad, torch.maximum(lo, hi), hi)
    return Box(lo.contiguous(), hi.contiguous())


def check_fp_env() -> None:
    """Refuse a floating-point environment the rounding analysis does not cover."""
    if not _C.fp_env_ok():
        raise ValueError("the floating-point environment flushes subnormal numbers to zero or does not round to "
                         "nearest, on this thread or on an OpenMP worker thread (e.g. after "
                         "torch.set_flush_denormal(True): workers started meanwhile keep that mode); fastcert's "
                         "rounding analysis needs IEEE round-to-nearest with gradual underflow: call "
                         "torch.set_flush_denormal(False), or restart the process without setting it")


def relax_tuple(L: Layer, box: Box, slope: str, tangent: str) -> tuple[torch.Tensor | None, ...]:
    """The relaxation of an elementwise layer on its input box as the engines store it:
    ``(lo_s, up_s, up_b, zmag, lo_b or None)``, each [B, n] contiguous (zmag = max(|l|, |u|))."""
    if isinstance(L, ReLU):
        lo_s, up_s, up_b = L.relax(box, slope)
        return (lo_s, up_s, up_b, box.mag().contiguous(), None)
    assert isinstance(L, Elementwise)
    r = L.relax(box, RelaxOptions(lower_slope=slope, tangent=tangent))
    return (r.lo_s.contiguous(), r.up_s.contiguous(), r.up_b.contiguous(), box.mag().contiguous(),
            None if r.lo_b is None else r.lo_b.contiguous())


def finish(lower: torch.Tensor, upper: torch.Tensor, slack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen the bounds by the evaluation slack, refuse NaN (overflow), round the subtraction outward."""
    dt = lower.dtype
    # numpy: the same IEEE operations as torch's, without its per-operation cost on these [B, S] arrays
    with np.errstate(over="ignore", invalid="ignore"):
        lo = lower.numpy() - slack.numpy()
        hi = upper.numpy() + slack.numpy()
        if np.isnan(lo).any() or np.isnan(hi).any():
            raise_overflow([], -2, dt)
        inf = lo.dtype.type(np.inf)
        return torch.from_numpy(np.nextafter(lo, -inf)), torch.from_numpy(np.nextafter(hi, inf))
