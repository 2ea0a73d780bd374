"""Floating-point facts the soundness analysis uses, in one place (see docs/architecture.md,
"Floating point: why the bounds are sound").

Model (IEEE 754, round to nearest, gradual underflow): a rounded product or quotient is
``exact * (1 + d) + e`` with ``|d| <= u`` and ``|e| <= eta / 2`` (``eta`` the smallest subnormal);
additions and subtractions have no ``e`` term. So a sum of ``n`` rounded products is within
``gamma_n * sum |a_i b_i|`` (relative, :func:`fastcert.network.gamma_n`) plus ``n * eta`` (absolute)
of the exact value. The relative term alone is not enough: products that fall into the subnormal
range lose up to ``eta / 2`` each whatever their size, and a later large weight amplifies the loss.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

_ETA = {torch.float32: 2.0**-149, torch.float64: 2.0**-1074}


def eta(dtype: torch.dtype) -> float:
    """The smallest positive subnormal number of ``dtype`` (float32: 2^-149, float64: 2^-1074)."""
    try:
        return _ETA[dtype]
    except KeyError:
        raise TypeError(f"fastcert computes in float32 or float64, not {dtype}") from None


def underflow_slack(n: int, dtype: torch.dtype) -> float:
    """Bound on the absolute (underflow) error of a sum of ``n`` rounded products in ``dtype``:
    ``2 (n + 2) eta`` (twice the model's ``n * eta``, which also covers the underflow of the
    relative term's own magnitude sums). A float64 number, exact in ``dtype`` for n < 2^22."""
    return 2.0 * (n + 2) * eta(dtype)


def round_up(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``v`` -> ``dtype``, never below ``v`` (round to nearest, then one step up where that
    fell below; a value below the smallest subnormal becomes that subnormal, not 0)."""
    r = v.to(dtype)
    return torch.where(r.double() < v, torch.nextafter(r, torch.full_like(r, torch.inf)), r).contiguous()


def round_up_array(v: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """:func:`round_up` on a float64 numpy array (the same IEEE operations, without torch's per-operation
    cost on the small [B, S] arrays of a bound's last steps); beyond the dtype's range the result is inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = v.astype(np.float32 if dtype == torch.float32 else np.float64)
        return np.where(r.astype(np.float64) < v, np.nextafter(r, r.dtype.type(np.inf)), r)


def round_down(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``v`` -> ``dtype``, never above ``v``."""
    r = v.to(dtype)
    return torch.where(r.double() > v, torch.nextafter(r, torch.full_like(r, -torch.inf)), r).contiguous()


def rounding_is_relative(v64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Elementwise: whether rounding the float64 ``v64`` to ``dtype`` has a purely relative error
    (``<= u |v|``): true unless the result is inexact *and* below ``dtype``'s normal range."""
    if dtype == torch.float64:
        return torch.ones_like(v64, dtype=torch.bool)
    r = v64.to(dtype).double()
    return (r == v64) | (v64.abs() >= torch.finfo(dtype).tiny)


@functools.lru_cache(maxsize=4096)
def gamma_n(n: int, dtype: torch.dtype) -> float:
    """Rounding factor for a sum of ``n`` rounded products in ``dtype``: 1.01 (n+2)u / (1-(n+2)u).

    A dot product of length n computed in any order with any blocking has error at most
    ``gamma_n * sum |a_i b_i|``; the +2 and the 1% margin absorb the few further roundings around it.
    """
    u = torch.finfo(dtype).eps / 2
    k = (n + 2) * u
    if k >= 0.5:
        raise ValueError(f"a sum of {n} terms is too long for a sound rounding analysis in {dtype}")
    return 1.01 * k / (1.0 - k)


def gamma_for(layers: list[Any], dtype: torch.dtype) -> float:
    """The largest per-operation factor of the network (``gamma_n`` of its longest sum), doubled.

    Used for the bound on the rounding error of a standard (float64) evaluation of the network.
    """
    return 2.0 * gamma_n(10 + max(max(L.n_in, L.n_out) for L in layers), dtype)


def next_up(t: torch.Tensor) -> torch.Tensor:
    """Each entry moved one float up (``nextafter(t, +inf)``): a sound upper bound of a value that one rounding
    to nearest produced (also in the subnormal range, where one step is at least the rounding error)."""
    return torch.nextafter(t, torch.full_like(t, float("inf")))


def next_down(t: torch.Tensor) -> torch.Tensor:
    """Each entry moved one float down (``nextafter(t, -inf)``)."""
    return torch.nextafter(t, torch.full_like(t, -float("inf")))
