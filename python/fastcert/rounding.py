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
