"""IBP of a chain in one core call (``_C.ibp_chain``, fastcert/algorithms/ibp_chain.py) against the
Python-driven IBP path it replaces for plain dense / conv2d / ReLU chains: the same kernels in the same
order, so the same bounds on random networks and regions (float32 and float64, extreme magnitudes included),
to within 2 units in the last place: two float64 sums of rounding-error terms (the magnitude sum of the last
step's underflow term, the ``|C| E`` product of the evaluation slack) are summed in another order than
numpy's, which moves those terms (each ~1e-16 of the bound or less) by an ulp of their own; both orders are
covered by the analysis (csrc/ibp/chain.cpp). The benches' networks give identical bits. Soundness of the fused path itself is tested by sampling and PGD in
test_soundness.py (its IBP calls on such chains now take this path)."""

from __future__ import annotations

import contextlib
import dataclasses

import fastcert
import fastcert.algorithms.linear_bounds as lb
import hypothesis.strategies as st
import pytest
import torch
from fastcert.algorithms.ibp_chain import qualifies
from hypothesis import given
from strategies import (
    NetSpec,
    RegionSpec,
    build_network,
    build_region,
    cnn_specs,
    fc_settings,
    mlp_specs,
    one_torch_thread,
    random_C,
    region_specs,
    scaled_specs,
)
from test_soundness import _check_network
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with one_torch_thread():
        yield


def _python_path(monkeypatch_ctx, fn):
    """fn() with the one-call path switched off (linear_bounds then runs its Python-driven IBP)."""
    with monkeypatch_ctx.context() as m:
        m.setattr(lb, "ibp_chain", lambda *a, **k: None)
        return fn()


def _compare(net: NetSpec, reg_spec: RegionSpec, dtype: torch.dtype) -> bool:
    """Both paths on the same call; returns whether the network took the one-call path."""
    model = build_network(net)
    reg = build_region(reg_spec, net.input_shape, dtype)
    B = reg.x.shape[0]
    g = torch.Generator().manual_seed(reg_spec.seed ^ net.seed)
    fc = fastcert.Network.from_torch(model, input_shape=net.input_shape)
    used = qualifies(fc.layers_for(tuple(net.input_shape))) if fc.chain else False
    for C in (None, random_C(net.n_out, B, g, dtype)):
        def run():
            return fastcert.bounds(fc, reg.x, reg.eps_arg, norm=reg.norm, method="ibp", C=C, x_min=reg.x_min,
                                   x_max=reg.x_max)
        try:
            a = run()
        except ValueError as e:  # e.g. an overflow: the Python path must refuse it with the same message
            with pytest.raises(ValueError) as info:
                _python_path(pytest.MonkeyPatch(), run)
            assert str(info.value) == str(e)
            continue
        b = _python_path(pytest.MonkeyPatch(), run)
        assert _ulps(a.lower, b.lower) <= 2, (a.lower, b.lower)
        assert _ulps(a.upper, b.upper) <= 2, (a.upper, b.upper)
    return used


def _plain(spec: NetSpec) -> NetSpec:
    """The spec without what keeps a chain off the one-call path (BatchNorm / Normalize / pooling / nesting, an
    activation first, last or after another): most draws then qualify. Layer scales follow the affine layers,
    which stay."""
    out: list[tuple] = []
    for L in spec.layers:
        if L[0] in ("bn", "normalize", "nest", "avgpool", "identity"):
            continue
        if L[0] == "act" and (not out or out[-1][0] in ("act", "flatten")):
            continue
        out.append(L)
    while out and out[-1][0] == "act":
        out.pop()
    return dataclasses.replace(spec, layers=tuple(out))


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """A monotone map of the floats onto the integers (adjacent floats: adjacent integers; -0 == +0)."""
    i = t.view(torch.int64 if t.dtype == torch.float64 else torch.int32).long()
    top = 1 << (63 if t.dtype == torch.float64 else 31)
    return torch.where(i < 0, -(i + top), i)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance between corresponding entries in units in the last place (inf == inf: 0)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.numel() == 0:
        return 0
    return int((_ordered(a) - _ordered(b)).abs().max())


@fc_settings(120)
@given(net=mlp_specs("relu"), reg=region_specs(), f32=st.booleans())
def test_mlp_same_bounds_as_the_python_path(net: NetSpec, reg: RegionSpec, f32: bool) -> None:
    assert _compare(_plain(net), reg, torch.float32 if f32 else torch.float64)


@fc_settings(80)
@given(net=cnn_specs("relu"), reg=region_specs(), f32=st.booleans())
def test_cnn_same_bounds_as_the_python_path(net: NetSpec, reg: RegionSpec, f32: bool) -> None:
    assert _compare(_plain(net), reg, torch.float32 if f32 else torch.float64)


@fc_settings(80)
@given(net=scaled_specs(torch.float32, "relu"), reg=region_specs())
def test_extreme_scales_float32_same_bounds(net: NetSpec, reg: RegionSpec) -> None:
    assert _compare(_plain(net), dataclasses.replace(reg, scale=net.input_scale), torch.float32)


@fc_settings(60)
@given(net=scaled_specs(torch.float64, "relu"), reg=region_specs())
def test_extreme_scales_float64_same_bounds(net: NetSpec, reg: RegionSpec) -> None:
    assert _compare(_plain(net), dataclasses.replace(reg, scale=net.input_scale), torch.float64)


@fc_settings(40)
@given(net=st.one_of(mlp_specs("relu"), cnn_specs("relu")), reg=region_specs(), f32=st.booleans())
def test_one_call_path_sound_by_sampling_and_pgd(net: NetSpec, reg: RegionSpec, f32: bool) -> None:
    """Containment of sampled and PGD points, no tolerance, on chains that take the one-call path (the
    soundness tests' random networks mostly do not: BatchNorm, pooling, ...), degenerate boxes included."""
    plain = _plain(net)
    fc = fastcert.Network.from_torch(build_network(plain), input_shape=plain.input_shape)
    assert fc.chain and qualifies(fc.layers_for(tuple(plain.input_shape)))
    _check_network(plain, reg, torch.float32 if f32 else torch.float64)


@contextlib.contextmanager
def _spying(calls: list[bool]):
    """Record, per call of the one-call path, whether it computed the bounds (True) or declined (False)."""
    orig = lb.ibp_chain

    def spy(*a, **k):
        r = orig(*a, **k)
        calls.append(r is not None)
        return r

    with pytest.MonkeyPatch().context() as m:
        m.setattr(lb, "ibp_chain", spy)
        yield


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bench_like_cnn_takes_the_one_call_path_with_the_same_bounds(dtype) -> None:
    """A chain the benches use (conv, conv, dense, dense with ReLUs) qualifies, and the bounds are those of
    the Python path (the hypothesis tests above would pass vacuously if nothing qualified)."""
    model = _cnn()
    x = torch.rand(5, 1, 8, 8, dtype=dtype)
    net = fastcert.Network.from_torch(model, input_shape=(1, 8, 8))
    assert qualifies(net.layers_for((1, 8, 8)))
    calls: list[bool] = []
    with _spying(calls):
        a = fastcert.bounds(net, x, 0.05, method="ibp")
    assert calls == [True]
    b = _python_path(pytest.MonkeyPatch(), lambda: fastcert.bounds(net, x, 0.05, method="ibp"))
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    with torch.no_grad():
        y = model.double()(x.double())
    assert (a.lower.double() <= y).all() and (y <= a.upper.double()).all()


@pytest.mark.parametrize("model, shape", [
    (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2)), (3,)),  # another activation
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)), (3,)),  # diagonal
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)), (3,)),  # two activations in a row
    (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), (3,)),  # an activation first
    (nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1)), (1, 1, 3)),  # a convolution last
])
def test_other_chains_take_the_python_path(model: nn.Module, shape: tuple) -> None:
    model = model.double().eval()
    net = fastcert.Network.from_torch(model, input_shape=shape)
    if net.chain:
        assert not qualifies(net.layers_for(shape))
    x = torch.rand(2, *shape, dtype=torch.float64)
    r = fastcert.bounds(net, x, 0.1, method="ibp")
    with torch.no_grad():
        y = model(x).reshape(2, -1)
    assert (r.lower <= y).all() and (y <= r.upper).all()


def test_memory_budget_and_rounded_spec_take_the_python_path() -> None:
    """Rows beyond the memory budget (the Python path splits the batch) and a float64 C used by a float32
    computation (widened by |C_exact - C| on the Python path) are not computed in one call."""
    model = _cnn()
    net = fastcert.Network.from_torch(model, input_shape=(1, 8, 8))
    x = torch.rand(6, 1, 8, 8)
    calls: list[bool] = []
    with _spying(calls):
        tight = fastcert.BoundOptions(lambda_bytes=4 * 3 * 16)  # one sample's rows, not six
        a = fastcert.bounds(net, x, 0.05, method="ibp", options=tight)
        C64 = torch.randn(2, 3, dtype=torch.float64)
        fastcert.bounds(net, x, 0.05, method="ibp", C=C64)
    assert calls == [False]  # the budget: declined; the float64 C: not asked
    b = fastcert.bounds(net, x, 0.05, method="ibp")
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
