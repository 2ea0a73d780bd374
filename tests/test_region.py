"""The input region (fastcert.api.make_region, one pass of the core's ``region_box``): the same bits as the
torch passes it replaced, and its errors in the same order."""

from __future__ import annotations

import pytest
import torch

from fastcert.api import make_region
from fastcert.checks import real_numbers
from fastcert.rounding import round_down, round_up


def _torch_region(x: torch.Tensor, eps, x_min, x_max) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch passes make_region ran before (commit ad4ee87): (e, lo, hi)."""
    B, dt = x.shape[0], x.dtype
    flat = x.reshape(B, -1)
    e = real_numbers(eps, "eps", "").expand(B)
    e = round_up(e, dt)
    lo = torch.nextafter(flat - e[:, None], torch.full_like(flat, -torch.inf))
    hi = torch.nextafter(flat + e[:, None], torch.full_like(flat, torch.inf))
    for name, bnd in (("x_min", x_min), ("x_max", x_max)):
        if bnd is None:
            continue
        t = real_numbers(bnd, name, "")
        t = (round_up if name == "x_max" else round_down)(t, dt)
        t = torch.broadcast_to(t.reshape(t.shape if t.dim() else ()), x.shape[1:]).reshape(1, -1)
        lo = torch.maximum(lo, t) if name == "x_min" else lo
        hi = torch.minimum(hi, t) if name == "x_max" else hi
    return e, lo, hi


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_region_same_bits_as_torch(dt: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, shape = 5, (3, 7, 5)  # 105 entries a sample: vector bodies and a remainder
    x = (torch.rand(B, *shape, generator=g, dtype=torch.float64) * 2 - 0.5).to(dt)
    x[0, 0, 0, 0] = 0.0
    x[1, 0, 0, 1] = -0.0
    x[2, 1, 1, 1] = 1e-40 if dt == torch.float64 else 1e-42  # subnormal in float32
    eps_cases = [0.1, 0.0, 1 / 3, torch.rand(B, generator=g, dtype=torch.float64) * 0.2, [0.01] * B]
    lim_cases = [(None, None), (0.0, 1.0), (-0.5, None), (None, torch.full((7, 5), 1.5, dtype=torch.float64)),
                 (torch.linspace(-1, 0, 3).reshape(3, 1, 1), 2.0)]
    for eps in eps_cases:
        for x_min, x_max in lim_cases:
            xs = x
            if x_min is not None or x_max is not None:  # inside the domain
                lo_d = -1.0 if x_min is None else real_numbers(x_min, "", "").max().item()
                hi_d = 2.0 if x_max is None else real_numbers(x_max, "", "").min().item()
                xs = x.clamp(lo_d, hi_d)
            p = make_region(xs, eps, "inf", x_min, x_max)
            e, lo, hi = _torch_region(xs, eps, x_min, x_max)
            assert p.eps.dtype == dt and p.l0.dtype == dt
            assert torch.equal(p.eps, e)
            # bitwise: the same values and the same signs of zero
            assert torch.equal(p.l0.view(torch.int32 if dt == torch.float32 else torch.int64),
                               lo.contiguous().view(torch.int32 if dt == torch.float32 else torch.int64))
            assert torch.equal(p.u0.view(torch.int32 if dt == torch.float32 else torch.int64),
                               hi.contiguous().view(torch.int32 if dt == torch.float32 else torch.int64))
            assert torch.equal(p.x0, xs.reshape(B, -1))


def test_region_float32_eps_rounds_up() -> None:
    x = torch.zeros(1, 3)
    p = make_region(x, 0.1, "inf", None, None)  # 0.1 is not a float32: the next float32 above it
    assert float(p.eps[0]) >= 0.1 and float(torch.nextafter(p.eps, torch.zeros(1))[0]) < 0.1
    assert (p.l0 <= -0.1).all() and (p.u0 >= 0.1).all()


def _msg(**kw) -> str:
    args = dict(x=torch.zeros(2, 3), eps=0.1, norm="inf", x_min=None, x_max=None)
    args.update(kw)
    with pytest.raises((ValueError, TypeError)) as ei:
        make_region(**args)
    return str(ei.value)


def test_region_errors_in_order() -> None:
    nan_x = torch.zeros(2, 3)
    nan_x[1, 2] = float("nan")
    inf_x = torch.zeros(2, 3, dtype=torch.float64)
    inf_x[0, 0] = float("inf")
    # x is checked first, whatever else is wrong
    assert "x contains NaN" in _msg(x=nan_x)
    assert "x contains NaN" in _msg(x=inf_x)
    assert "x contains NaN" in _msg(x=nan_x, eps=-1.0)
    assert "x contains NaN" in _msg(x=nan_x, eps="a")
    assert "x contains NaN" in _msg(x=nan_x, x_min=float("nan"))
    # then eps
    assert "eps must be >= 0, got min -1.0" in _msg(eps=-1.0)
    assert "eps must be >= 0, got min -2.0" in _msg(eps=torch.tensor([0.1, -2.0]))
    assert "eps must be finite" in _msg(eps=float("nan"))
    assert "eps must be finite" in _msg(eps=float("inf"))
    assert "one entry per sample" in _msg(eps=torch.ones(3))
    assert "eps must be" in _msg(eps="0.1")
    assert "eps must be >= 0" in _msg(eps=-1.0, x_min=float("nan"))
    # then the overflow of x +- eps (before x_min / x_max)
    assert "eps is too large" in _msg(eps=1e39)  # beyond float32
    assert "eps is too large" in _msg(x=torch.full((2, 3), 3e38), eps=1e38)
    assert "eps is too large" in _msg(x=torch.full((2, 3), 3e38), eps=1e38, x_min=float("nan"))
    # then x_min (validity, then x inside it), then x_max
    assert "x_min must be finite" in _msg(x_min=float("nan"))
    assert "does not broadcast" in _msg(x_min=torch.zeros(4))
    assert "x lies below x_min" in _msg(x_min=0.5)
    assert "x lies below x_min" in _msg(x_min=0.5, x_max=float("nan"))
    assert "x lies below x_min" in _msg(x_min=0.5, x_max=-1.0)
    assert "x_max must be finite" in _msg(x_max=float("inf"))
    assert "does not broadcast" in _msg(x_max=torch.zeros(2, 2))
    assert "x lies above x_max" in _msg(x_max=-0.5)
    assert "x lies above x_max" in _msg(x=torch.zeros(2, 3, dtype=torch.float64), x_min=-1.0, x_max=-0.5)
