"""Bounds against the EXACT network: rational arithmetic (``fractions.Fraction``) for piecewise-linear
networks, 80-digit ``mpmath`` for tanh / sigmoid / BatchNorm (whose square root is irrational).

The sampling and PGD tests of test_soundness.py compare against torch's float64 evaluation, which the
bounds must contain too, but which at extreme magnitudes is itself far from the real function (a
product below 4.9e-324 is 0 in float64). Here every float is taken as the exact rational it denotes
and the network is evaluated without any rounding, so ``lower <= C f(x') <= upper`` is checked for the
real function the bounds are about: float32 and float64 bounds, every method, L-inf / L2 / L1 balls,
per-layer weight scales that drive the values into (and below) the subnormal range and out again.
The points (x itself, random points, box / ball vertices, PGD iterates) lie in the region exactly
(strategies.make_feasible).
"""

from __future__ import annotations

import math

import dataclasses
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

import fastcert
from exact import exact_forward, exact_num, needs_mp
from strategies import (
    RELU_METHODS,
    NetSpec,
    RegionSpec,
    build_network,
    build_region,
    fc_settings,
    one_torch_thread,
    pgd_points,
    random_C,
    region_specs,
    sample_points,
    scaled_specs,
)

@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with one_torch_thread():
        yield


def _check_exact(net: NetSpec, reg_spec: RegionSpec, dtype: torch.dtype) -> int:
    """Every method's bounds contain the exact C f at every point; returns the number of checks."""
    model = build_network(net)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # float32 rounding overflowed
        with pytest.raises(ValueError, match="NaN or inf"):
            fastcert.bounds(model, torch.zeros(1, *net.input_shape, dtype=dtype), 0.0)
        return 0
    mp = needs_mp(model)
    in_shape = net.input_shape
    reg = build_region(reg_spec, in_shape, dtype)
    B, n, K = reg.x.shape[0], reg.x[0].numel(), net.n_out
    xf = reg.x.reshape(B, n)
    lo, hi = reg.lo.reshape(B, n).double(), reg.hi.reshape(B, n).double()
    g = torch.Generator().manual_seed(reg_spec.seed ^ net.seed)
    C = random_C(K, B, g)
    Cf = C.expand(B, *C.shape) if C.dim() == 2 else C
    if float(reg.eps.max()) == 0.0:  # the region is the point x
        pts = xf[:, None, :]
    else:
        pts = torch.cat([sample_points(xf, reg.eps, reg.norm, lo, hi, g, n_random=6, n_vertices=6),
                         pgd_points(model, in_shape, xf, reg.eps, reg.norm, lo, hi, Cf, g, steps=8, restarts=1)], 1)
    cvals = [[[exact_num(v, mp) for v in row] for row in Cf[b].tolist()] for b in range(B)]
    exact = [[[sum((c * f for c, f in zip(row, exact_forward(model, pts[b, p], in_shape, mp))), 0 * cvals[b][0][0])
               for row in cvals[b]] for p in range(pts.shape[1])] for b in range(B)]
    methods = RELU_METHODS if net.relu_only else tuple(m for m in RELU_METHODS if m != "kw")
    checks = 0
    for method in methods:
        res = fastcert.bounds(model, reg.x, reg.eps_arg, norm=reg.norm, method=method, C=C.to(dtype),
                              x_min=reg.x_min, x_max=reg.x_max)
        # an overflowed (infinite) bound is sound in its own direction only
        assert not (res.lower == torch.inf).any() and not (res.upper == -torch.inf).any(), method
        for b in range(B):
            for s in range(Cf.shape[1]):
                fl, fu = float(res.lower[b, s]), float(res.upper[b, s])
                lo_b = exact_num(fl, mp) if math.isfinite(fl) else None
                up_b = exact_num(fu, mp) if math.isfinite(fu) else None
                for p in range(pts.shape[1]):
                    v = exact[b][p][s]
                    assert (lo_b is None or lo_b <= v) and (up_b is None or v <= up_b), (
                        f"UNSOUND vs exact arithmetic: method={method} dtype={dtype} norm={reg.norm} sample={b} "
                        f"row={s} point={p}: C f(x') = {float(v)!r} (exactly) but bounds = "
                        f"[{float(res.lower[b, s])!r}, {float(res.upper[b, s])!r}]; x' = {pts[b, p].tolist()}")
                    checks += 1
    if not net.relu_only:
        with pytest.raises(fastcert.UnsupportedError, match="Kolter-Wong"):
            fastcert.bounds(model, reg.x, reg.eps_arg, norm=reg.norm, method="kw", C=C.to(dtype),
                            x_min=reg.x_min, x_max=reg.x_max)
    return checks


@fc_settings(60)
@given(net=scaled_specs(torch.float64, cnn=False), reg=region_specs())
def test_exact_rational_mlp_float64(net: NetSpec, reg: RegionSpec) -> None:
    _check_exact(net, dataclasses.replace(reg, scale=net.input_scale), torch.float64)


@fc_settings(60)
@given(net=scaled_specs(torch.float32, cnn=False), reg=region_specs())
def test_exact_rational_mlp_float32(net: NetSpec, reg: RegionSpec) -> None:
    _check_exact(net, dataclasses.replace(reg, scale=net.input_scale), torch.float32)


@fc_settings(12)
@given(net=scaled_specs(torch.float64), reg=region_specs(), f32=st.booleans())
def test_exact_rational_any_network(net: NetSpec, reg: RegionSpec, f32: bool) -> None:
    """MLPs and CNNs (Conv2d, AvgPool2d, BatchNorm, Normalize), every activation."""
    dtype = torch.float32 if f32 else torch.float64
    if f32:  # float32 inputs: keep the magnitudes float32 can hold
        net = dataclasses.replace(net, input_scale=min(max(net.input_scale, 1e-20), 1e20), f32_weights=True,
                                  layer_scales=tuple(min(max(s, 1e-20), 1e20) for s in net.layer_scales))
    _check_exact(net, dataclasses.replace(reg, scale=net.input_scale), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_forward_matches_torch_at_ordinary_magnitudes(dtype: torch.dtype) -> None:
    """The exact evaluator itself: equal to torch's float64 forward up to float64 rounding."""
    torch.manual_seed(0)
    model = nn.Sequential(fastcert.Normalize([0.1], [0.5]), nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Tanh(),
                          nn.AvgPool2d(2, 1), nn.Flatten(), nn.Linear(8, 3), nn.LeakyReLU(0.1), nn.Sigmoid(),
                          nn.Linear(3, 2), nn.ReLU()).double().eval()
    with torch.no_grad():
        model[2].running_mean.uniform_(-1, 1)
        model[2].running_var.uniform_(0.5, 2)
    x = torch.rand(1, 4, 4, dtype=torch.float64).to(dtype)
    ref = model(x.double()[None])[0]
    ex = exact_forward(model, x.flatten(), (1, 4, 4), True)
    for a, b in zip(ex, ref.tolist()):
        assert abs(float(a) - b) <= 1e-12 * (1 + abs(b))


def test_exact_forward_softplus_elu_match_torch() -> None:
    """The exact evaluator on Softplus (beta, threshold: both branches taken) and ELU (alpha <= 1, > 1)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Softplus(2.0, 1.0), nn.Linear(6, 5), nn.ELU(0.5), nn.Linear(5, 3),
                          nn.ELU(2.5), nn.Softplus()).double().eval()
    hits = set()
    for _ in range(5):
        x = torch.randn(4, dtype=torch.float64) * 3
        z = model[0](x[None])[0]
        hits |= {bool(v) for v in (2.0 * z > 1.0)}
        ref = model(x[None])[0]
        ex = exact_forward(model, x, (4,), needs_mp(model))
        for a, b in zip(ex, ref.tolist()):
            assert abs(float(a) - b) <= 1e-12 * (1 + abs(b))
    assert hits == {True, False}  # both Softplus branches were taken
