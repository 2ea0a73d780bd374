"""Soundness of ``fastcert.bounds`` / ``fastcert.certify`` against an adversary, with NO tolerance.

For random small MLPs / CNNs (strategies.py) and random input regions (L-inf / L2 / L1 balls, eps
0 / 1e-12 / small / large, with and without an [x_min, x_max] box), every method the network's
activations allow must give ``lower <= C f(x') <= upper`` exactly, where f is the torch model
itself, at: x; random points (uniform in the L-inf box, on / inside the L2 and L1 spheres, the
vertices of the box and of the L1 ball); and points found by a float64 PGD attack that minimises
and maximises every row of C f. Every such point is checked to lie *exactly* in the region
(strategies.in_region), so any miss is a real soundness bug.

Also: float32 inputs (bounds must contain the exact network's float64 evaluation; a float32
evaluation is out of contract, see docs/architecture.md "Deliberate limit"), certify()
(a certified sample has no sampled/attacked point where another class wins), non-ReLU activations
(IBP only; the other methods must raise fastcert.UnsupportedError), and hand-made degenerate cases.

A failing hypothesis example prints ``net=NetSpec(...)`` and ``reg=RegionSpec(...)``: rebuild
it with ``strategies.build_network`` / ``strategies.build_region``.
"""

from __future__ import annotations

import dataclasses

import fastcert
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from strategies import (
    RELU_METHODS,
    NetSpec,
    RegionSpec,
    build_network,
    build_region,
    cnn_specs,
    deep_mlp_specs,
    fc_settings,
    mlp_specs,
    net_specs,
    one_torch_thread,
    pgd_points,
    random_C,
    region_specs,
    sample_points,
    scaled_specs,
)
from torch import nn

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with one_torch_thread():
        yield


def _flat_box(reg, B: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return reg.lo.reshape(B, n).double(), reg.hi.reshape(B, n).double()


def _full_C(C: torch.Tensor | None, B: int, K: int, dtype: torch.dtype) -> torch.Tensor:
    if C is None:
        return torch.eye(K, dtype=dtype).expand(B, K, K)
    return C.expand(B, *C.shape) if C.dim() == 2 else C


def _eval(model: nn.Module, pts: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """model on pts [B, P, n] -> [B, P, K] in the dtype of pts (the model is converted to match)."""
    B, P, n = pts.shape
    m = model if pts.dtype == torch.float64 else _as_dtype(model, pts.dtype)
    with torch.no_grad():
        out = m(pts.reshape(B * P, *in_shape))
    return out.reshape(B, P, -1)


_COPY: list = []  # [(model, dtype, copy)]: the last conversion (holding the model keeps its id unique)


def _as_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    if _COPY and _COPY[0][0] is model and _COPY[0][1] == dtype:
        return _COPY[0][2]
    m = copy.deepcopy(model).to(dtype)
    m.eval()
    _COPY[:] = [(model, dtype, m)]
    return m


def _assert_contains(res, CF: torch.Tensor, pts: torch.Tensor, what: str, ctx: str) -> None:
    """CF: [B, P, S] values of C f at pts [B, P, n]; res.lower/upper [B, S]."""
    lo = res.lower[:, None, :].to(CF.dtype)
    up = res.upper[:, None, :].to(CF.dtype)
    below = CF < lo
    above = CF > up
    if below.any() or above.any():
        bad = below | above
        b, p, s = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(
            f"UNSOUND ({what}) {ctx}: at sample {b}, point {p}, spec row {s}: C f(x') = {float(CF[b, p, s])!r} "
            f"but bounds = [{float(res.lower[b, s])!r}, {float(res.upper[b, s])!r}]; "
            f"{int(bad.sum())} violations in total; x' = {pts[b, p].tolist()}")


def _methods_for(net: NetSpec) -> tuple[str, ...]:
    """Every method; the Kolter-Wong dual is defined for ReLU networks only."""
    return RELU_METHODS if net.relu_only else tuple(m for m in RELU_METHODS if m != "kw")


def _check_network(net: NetSpec, reg_spec: RegionSpec, dtype: torch.dtype = torch.float64,
                   C_seed: int = 0, options: fastcert.BoundOptions | None = None) -> None:
    model = build_network(net)
    in_shape = net.input_shape
    reg = build_region(reg_spec, in_shape, dtype)
    B = reg.x.shape[0]
    n = reg.x[0].numel()
    K = net.n_out
    xf = reg.x.reshape(B, n)
    lo, hi = _flat_box(reg, B, n)
    g = torch.Generator().manual_seed(reg_spec.seed ^ C_seed ^ net.seed)
    base = sample_points(xf, reg.eps, reg.norm, lo, hi, g)
    ctx = f"norm={reg.norm} eps={reg.eps.tolist()} box={reg_spec.box} dtype={dtype}"

    if not net.relu_only:
        with pytest.raises(fastcert.UnsupportedError, match="Kolter-Wong"):
            fastcert.bounds(model, reg.x, reg.eps_arg, norm=reg.norm, method="kw", x_min=reg.x_min, x_max=reg.x_max)

    for C in (None, random_C(K, B, g)):
        # the bounds are of the C passed (rounded to the compute dtype), so check that C
        Cf = _full_C(None if C is None else C.to(dtype).double(), B, K, torch.float64)
        pts = torch.cat([base, pgd_points(model, in_shape, xf, reg.eps, reg.norm, lo, hi, Cf, g)], 1)
        F64 = _eval(model, pts.double(), in_shape)
        CF64 = torch.einsum("bsk,bpk->bps", Cf, F64)
        for method in _methods_for(net):
            res = fastcert.bounds(model, reg.x, reg.eps_arg, norm=reg.norm, method=method,
                                  C=None if C is None else C.to(dtype), x_min=reg.x_min, x_max=reg.x_max,
                                  options=options)
            S = Cf.shape[1]
            assert res.lower.shape == (B, S) and res.upper.shape == (B, S)
            assert res.lower.dtype == dtype and res.upper.dtype == dtype
            assert not torch.isnan(res.lower).any() and not torch.isnan(res.upper).any()
            mctx = f"method={method} C={'identity' if C is None else 'random'} {ctx}"
            assert (res.lower <= res.upper).all(), f"lower > upper: {mctx}\n{res.lower}\n{res.upper}"
            _assert_contains(res, CF64, pts, "float64 evaluation", mctx)


# ------------------------------------------------------------------------------------------------
# random networks, float64
# ------------------------------------------------------------------------------------------------


@fc_settings(200)
@given(net=mlp_specs("relu"), reg=region_specs())
def test_relu_mlp_sound(net: NetSpec, reg: RegionSpec) -> None:
    _check_network(net, reg)


@fc_settings(150)
@given(net=cnn_specs("relu"), reg=region_specs())
def test_relu_cnn_sound(net: NetSpec, reg: RegionSpec) -> None:
    _check_network(net, reg)


@fc_settings(120)
@given(net=net_specs(), reg=region_specs())
def test_any_activation_sound(net: NetSpec, reg: RegionSpec) -> None:
    """Tanh / Sigmoid / LeakyReLU (slope >= 0) / mixed: IBP sound, the linear methods raise."""
    _check_network(net, reg)


_DEGENERATE_BIAS = st.sampled_from(("pos", "neg", "mixed"))


@fc_settings(100)
@given(net=st.tuples(net_specs("relu"), _DEGENERATE_BIAS).map(lambda t: dataclasses.replace(t[0], bias_mode=t[1])),
       reg=region_specs(eps_kinds=("zero", "tiny", "small", "large")))
def test_degenerate_stable_networks(net: NetSpec, reg: RegionSpec) -> None:
    """Every ReLU stably active ("pos"), stably inactive ("neg"), or a per-neuron mix."""
    _check_network(net, reg)


@fc_settings(80)
@given(net=net_specs(), reg=region_specs(eps_kinds=("zero",)))
def test_zero_eps_contains_f_x(net: NetSpec, reg: RegionSpec) -> None:
    """eps = 0: the box is the single point x (l == u) and every bound must contain f(x)."""
    _check_network(net, reg)


@fc_settings(30)
@given(net=deep_mlp_specs(), reg=region_specs(), f32=st.booleans())
def test_deep_narrow_relu_sound(net: NetSpec, reg: RegionSpec, f32: bool) -> None:
    """10-30 layers of width 1-3: the floating-point slack must survive long chains of roundings."""
    if f32:
        _check_network(dataclasses.replace(net, f32_weights=True), reg, dtype=torch.float32)
    else:
        _check_network(net, reg)


@fc_settings(40)
@given(net=cnn_specs("relu", bn_after_flatten=True), reg=region_specs())
def test_cnn_batchnorm1d_after_flatten(net: NetSpec, reg: RegionSpec) -> None:
    """Conv2d -> (ReLU ->) Flatten -> BatchNorm1d(n_features): a valid model of supported layers."""
    _check_network(net, reg)


# one sample per chunk in the backward pass, one row per block in the fused kernels, one sample per
# im2col workspace in the convolution kernels
TINY = fastcert.BoundOptions(lambda_bytes=1, block_elems=1, conv_work_elems=1)


@fc_settings(50)
@given(net=net_specs("relu"), reg=region_specs(eps_kinds=("small", "large", "mixed")))
def test_chunked_paths_sound_and_consistent(net: NetSpec, reg: RegionSpec) -> None:
    """With one-sample chunks the bounds must stay sound, and agree with the unchunked ones up to
    rounding (CROWN may refine a different set of neurons per chunk, so not bit-identical)."""
    _check_network(net, reg, options=TINY)
    model = build_network(net)
    r = build_region(reg, net.input_shape)
    for method in RELU_METHODS:
        a = fastcert.bounds(model, r.x, r.eps_arg, norm=r.norm, method=method, x_min=r.x_min, x_max=r.x_max)
        b = fastcert.bounds(model, r.x, r.eps_arg, norm=r.norm, method=method, x_min=r.x_min, x_max=r.x_max,
                            options=TINY)
        scale = 1 + a.lower.abs() + a.upper.abs()
        assert ((a.lower - b.lower).abs() <= 1e-8 * scale).all(), method
        assert ((a.upper - b.upper).abs() <= 1e-8 * scale).all(), method


# ------------------------------------------------------------------------------------------------
# float32
# ------------------------------------------------------------------------------------------------


@fc_settings(150)
@given(net=net_specs().map(lambda s: dataclasses.replace(s, f32_weights=True)), reg=region_specs())
def test_float32_bounds_contain_f64_evaluation(net: NetSpec, reg: RegionSpec) -> None:
    """float32 x, float32-representable weights: bounds hold for the exact network (evaluated in
    float64). A float32 evaluation is out of contract (docs/architecture.md)."""
    _check_network(net, reg, dtype=torch.float32)


@fc_settings(60)
@given(net=net_specs("relu").map(lambda s: dataclasses.replace(s, f32_weights=False)), reg=region_specs())
def test_float32_input_float64_model(net: NetSpec, reg: RegionSpec) -> None:
    """float32 x with a float64 model whose weights float32 cannot represent: the bounds must still
    hold for the model as given (evaluated in float64)."""
    _check_network(net, reg, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# extreme magnitudes: per-layer weight scales 1e-12..1e12 (float64 also 1e-170..1e300), inputs too,
# so that products fall into the subnormal range and later layers amplify what they lost
# ------------------------------------------------------------------------------------------------


@fc_settings(150)
@given(net=scaled_specs(torch.float64), reg=region_specs())
def test_extreme_scales_float64_sound(net: NetSpec, reg: RegionSpec) -> None:
    _check_network(net, dataclasses.replace(reg, scale=net.input_scale))


@fc_settings(500)
@given(net=scaled_specs(torch.float32), reg=region_specs())
def test_extreme_scales_float32_sound(net: NetSpec, reg: RegionSpec) -> None:
    _check_network(net, dataclasses.replace(reg, scale=net.input_scale), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# certify
# ------------------------------------------------------------------------------------------------


def _check_certify(net: NetSpec, reg_spec: RegionSpec, dtype: torch.dtype, use_labels: bool) -> int:
    model = build_network(net)
    in_shape = net.input_shape
    reg = build_region(reg_spec, in_shape, dtype)
    B = reg.x.shape[0]
    n = reg.x[0].numel()
    K = net.n_out
    xf = reg.x.reshape(B, n)
    lo, hi = _flat_box(reg, B, n)
    g = torch.Generator().manual_seed(reg_spec.seed + 7)
    labels = torch.randint(0, K, (B,), generator=g) if use_labels else None
    pts0 = sample_points(xf, reg.eps, reg.norm, lo, hi, g)
    n_cert = 0
    for method in _methods_for(net):
        res = fastcert.certify(model, reg.x, reg.eps_arg, norm=reg.norm, labels=labels, method=method,
                               x_min=reg.x_min, x_max=reg.x_max)
        assert res.certified.shape == (B,) and res.certified.dtype == torch.bool
        assert res.margins.shape == (B, K)
        y = res.labels
        with torch.no_grad():
            pred = model(reg.x.double()).argmax(1)
        if labels is not None:
            assert torch.equal(y, labels)
        # the j = y entry is +inf, the others finite lower bounds
        assert torch.isinf(res.margins[torch.arange(B), y]).all()
        if not res.certified.any():
            continue
        # margin rows e_y - e_j
        Cm = -torch.eye(K, dtype=torch.float64).unsqueeze(0).repeat(B, 1, 1)
        Cm[torch.arange(B), :, y] += 1
        pts = torch.cat([pts0, pgd_points(model, in_shape, xf, reg.eps, reg.norm, lo, hi, Cm, g)], 1)
        F = _eval(model, pts.double(), in_shape)  # [B, P, K]
        for b in res.certified.nonzero().flatten().tolist():
            n_cert += 1
            yb = int(y[b])
            ctx = f"method={method} sample={b} label={yb} norm={reg.norm} eps={reg.eps[b].item()} dtype={dtype}"
            assert int(pred[b]) == yb or labels is None, f"certified a misclassified sample: {ctx}"
            others = torch.cat([F[b, :, :yb], F[b, :, yb + 1:]], 1)
            if others.numel():
                diff = F[b, :, yb:yb + 1] - others  # [P, K-1]
                worst = int(diff.min(1).values.argmin())
                assert (diff > 0).all(), (f"UNSOUND certify: another class wins at a point of the region: {ctx}; "
                                          f"x'={pts[b, worst].tolist()} f(x')={F[b, worst].tolist()}")
                m = torch.cat([res.margins[b, :yb], res.margins[b, yb + 1:]]).double()
                assert (diff >= m[None, :]).all(), f"UNSOUND margins: {ctx}"
            if dtype == torch.float32:
                F32 = _eval(model, pts[b:b + 1].float(), in_shape)[0]
                assert (F32.argmax(1) == yb).all(), f"float32 evaluation changes class although certified: {ctx}"
    return n_cert


@fc_settings(150)
@given(net=net_specs(), reg=region_specs(eps_kinds=("zero", "tiny", "small", "small", "mixed")),
       use_labels=st.booleans(), f32=st.booleans())
def test_certify_sound(net: NetSpec, reg: RegionSpec, use_labels: bool, f32: bool) -> None:
    if f32:
        net = dataclasses.replace(net, f32_weights=True)
    _check_certify(net, reg, torch.float32 if f32 else torch.float64, use_labels)


def test_certify_certifies_something() -> None:
    """Guard against a vacuous certify test: easy cases must get certified, and then be checked."""
    total = 0
    for seed in range(6):
        net = NetSpec((4,), (("linear", 8, True), ("act", "relu", 0.0), ("linear", 3, True)), 1.0, "normal", seed)
        reg = RegionSpec(3, ("inf", "2", "1")[seed % 3], "tiny", None, False, seed)
        total += _check_certify(net, reg, torch.float64, False)
    assert total > 0


# ------------------------------------------------------------------------------------------------
# hand-made degenerate / targeted cases
# ------------------------------------------------------------------------------------------------


def _lin(W, b=None) -> nn.Linear:
    W = torch.as_tensor(W, dtype=torch.float64)
    m = nn.Linear(W.shape[1], W.shape[0], bias=b is not None).double()
    with torch.no_grad():
        m.weight.copy_(W)
        if b is not None:
            m.bias.copy_(torch.as_tensor(b, dtype=torch.float64))
    return m


def _check_model(model: nn.Module, x: torch.Tensor, eps, norm: str, methods=RELU_METHODS, x_min=None, x_max=None,
                 seed: int = 0) -> None:
    model.eval()
    B = x.shape[0]
    in_shape = tuple(x.shape[1:])
    n = x[0].numel()
    xf = x.reshape(B, n)
    e = torch.as_tensor(eps, dtype=torch.float64).expand(B).clone()
    lo = torch.full((B, n), -float("inf"), dtype=torch.float64) if x_min is None else \
        torch.as_tensor(x_min, dtype=torch.float64).expand(B, *in_shape).reshape(B, n).clone()
    hi = torch.full((B, n), float("inf"), dtype=torch.float64) if x_max is None else \
        torch.as_tensor(x_max, dtype=torch.float64).expand(B, *in_shape).reshape(B, n).clone()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        K = model(x.double()).shape[1]
    for C in (None, random_C(K, B, g)):
        Cf = _full_C(None if C is None else C.to(x.dtype).double(), B, K, torch.float64)  # the C passed
        pts = torch.cat([sample_points(xf, e, norm, lo, hi, g),
                         pgd_points(model, in_shape, xf, e, norm, lo, hi, Cf, g)], 1)
        CF = torch.einsum("bsk,bpk->bps", Cf, _eval(model, pts.double(), in_shape))
        for method in methods:
            res = fastcert.bounds(model, x, eps, norm=norm, method=method, C=None if C is None else C.to(x.dtype),
                                  x_min=x_min, x_max=x_max)
            ctx = f"method={method} norm={norm} eps={eps}"
            assert (res.lower <= res.upper).all(), ctx
            _assert_contains(res, CF, pts, "float64 evaluation", ctx)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 0.3])
def test_preactivation_exactly_zero_at_x(norm: str, eps: float) -> None:
    """x sits exactly on every ReLU's kink (pre-activation 0 at x), with eps = 0 (l == u == 0)."""
    model = nn.Sequential(_lin([[1.0, -1.0], [-2.0, 2.0], [0.5, -0.5]], [0.0, 0.0, 0.0]), nn.ReLU(),
                          _lin([[1.0, 1.0, -1.0], [-3.0, 0.0, 2.0]], [0.0, 1.0]), nn.ReLU(),
                          _lin([[1.0, -1.0]], [0.0]))
    x = torch.tensor([[0.5, 0.5], [0.25, 0.25]], dtype=torch.float64)
    _check_model(model, x, eps, norm)


@pytest.mark.parametrize("method", RELU_METHODS)
def test_eps_zero_is_exact_point(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 9), nn.ReLU(), nn.Linear(9, 3)).double().eval()
    x = torch.rand(4, 5, dtype=torch.float64)
    res = fastcert.bounds(model, x, 0.0, method=method)
    with torch.no_grad():
        f = model(x)
    assert (res.lower <= f).all() and (f <= res.upper).all()
    # and tight: the width is pure floating-point slack
    assert float((res.upper - res.lower).max()) < 1e-10


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_degenerate_box_x_min_equals_x_max(norm: str) -> None:
    """eps > 0 but x_min == x_max == x in some coordinates and x_min == x in others."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    x = torch.tensor([[0.0, 1.0, 0.5, 0.25]], dtype=torch.float64)
    x_min = torch.tensor([0.0, 0.0, 0.5, 0.25], dtype=torch.float64)
    x_max = torch.tensor([1.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    _check_model(model, x, 0.4, norm, x_min=x_min, x_max=x_max)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_activation_first_and_consecutive_activations(norm: str) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.ReLU(), nn.Linear(3, 7), nn.ReLU(), nn.ReLU(), nn.Sequential(nn.Linear(7, 5), nn.ReLU()),
                          nn.Linear(5, 3), nn.ReLU()).double()
    x = torch.rand(3, 3, dtype=torch.float64) - 0.5
    _check_model(model, x, 0.6, norm)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_huge_magnitudes(norm: str) -> None:
    """Weights ~30 per layer with unstable neurons: pre-activations ~1e5, rounding matters."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 4)).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(30.0)
                m.bias.mul_(30.0)
    x = torch.rand(2, 6, dtype=torch.float64)
    for eps in (0.0, 1e-12, 1e-3):
        _check_model(model, x, eps, norm)


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid, lambda: nn.LeakyReLU(0.1), nn.ReLU6, fastcert.nn.Arctan])
def test_non_relu_networks_all_methods_but_kw(act) -> None:
    """General activations run under every linear method (sound); only the KW dual refuses them by name."""
    model = nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2)).double()
    x = torch.rand(2, 3, dtype=torch.float64)
    with pytest.raises(fastcert.UnsupportedError, match="Kolter-Wong.*ReLU"):
        fastcert.bounds(model, x, 0.1, method="kw")
    with pytest.raises(NotImplementedError):
        fastcert.certify(model, x, 0.1, method="kw")
    _check_model(model, x, 0.1, "inf", methods=("ibp", "fastlin", "crown", "crown-ibp"))


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saturated_sigmoid_tanh(act, dtype) -> None:
    """Pre-activations far in the saturated tails (|z| ~ 50 .. 800) and around 0."""
    model = nn.Sequential(_lin([[40.0], [-40.0], [1.0], [700.0]], [0.0, 0.0, -0.5, -300.0]), act(),
                          _lin([[1.0, -1.0, 1.0, 1.0]], [0.0])).double()
    x = torch.tensor([[0.5], [1.0], [0.0]], dtype=dtype)
    for eps in (0.0, 1e-12, 0.01, 1.0):
        _check_model(model, x, eps, "inf", methods=("ibp", "crown", "crown-ibp", "fastlin"))


@pytest.mark.parametrize("slope", [-0.5, -1.0, -2.0])
def test_leaky_relu_negative_slope(slope: float) -> None:
    """torch accepts LeakyReLU(negative_slope < 0), which is not monotone. fastcert must either
    reject it (a clear ValueError / UnsupportedError) or bound it soundly."""
    model = nn.Sequential(_lin([[1.0, 1.0, 1.0], [1.0, -1.0, 0.5]], [0.0, 0.0]), nn.LeakyReLU(slope),
                          _lin([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])).double()
    x = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    try:
        fastcert.bounds(model, x, 0.5, method="ibp")
    except (ValueError, fastcert.UnsupportedError) as exc:
        assert "LeakyReLU" in str(exc) or "slope" in str(exc)
        return
    _check_model(model, x, 0.5, "inf", methods=("ibp", "crown", "crown-ibp", "fastlin"))


def _cancellation_model(case: str, mean: float) -> nn.Sequential:
    """A per-channel affine map with a large shift that the next Linear cancels (rows summing to 0).

    fastcert folds the map into the Linear, where ``W @ shift`` cancels exactly, but torch evaluates
    ``(h - mean) / std`` first, whose rounding (~ulp(mean)) survives the cancellation."""
    if case == "normalize":  # Normalize first, folded into the next Linear
        return nn.Sequential(fastcert.Normalize([mean, mean], [0.3081, 0.3081]), _lin([[1.0, -1.0]], [0.0])).eval()
    # BatchNorm1d after a ReLU, folded into the next Linear
    model = nn.Sequential(_lin([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), nn.ReLU(), nn.BatchNorm1d(2).double(),
                          _lin([[1.0, -1.0]], [0.0]))
    with torch.no_grad():
        model[2].running_mean.fill_(mean)
        model[2].running_var.fill_(0.09)
    return model.eval()


def _check_eval_at_x(model: nn.Module, x: torch.Tensor, method: str, evaluate_in: torch.dtype) -> None:
    """Bounds from x (eps 0 and 1e-3) must contain the model's evaluation in ``evaluate_in`` at x."""
    m = _as_dtype(model, evaluate_in)
    for eps in (0.0, 1e-3):
        res = fastcert.bounds(model, x, eps, method=method)
        with torch.no_grad():
            f = m(x.to(evaluate_in))
        bad = ((res.lower.to(f.dtype) > f) | (f > res.upper.to(f.dtype))).any(1)
        i = int(bad.nonzero()[0, 0]) if bad.any() else 0
        assert not bad.any(), (
            f"UNSOUND for the {evaluate_in} evaluation: {int(bad.sum())} of {len(x)} samples, e.g. "
            f"f(x)={f[i].tolist()} at x={x[i].tolist()} (x dtype {x.dtype}, eps={eps}, method={method}) outside "
            f"[{res.lower[i].tolist()}, {res.upper[i].tolist()}]")


@pytest.mark.parametrize("method", RELU_METHODS)
@pytest.mark.parametrize("case", ["normalize", "batchnorm"])
def test_float64_evaluation_with_folded_shift_cancellation(case: str, method: str) -> None:
    """Within the documented contract (docs/architecture.md: bounds contain the exact function *and
    its float64 evaluation*, folding "covered"): mean 10, std 0.3 (a ratio of ~32)."""
    x = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _check_eval_at_x(_cancellation_model(case, 10.0), x, method, torch.float64)


@pytest.mark.parametrize("method", RELU_METHODS)
def test_float32_x_float64_evaluation_with_folded_shift_cancellation(method: str) -> None:
    x = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0)).float()
    _check_eval_at_x(_cancellation_model("normalize", 1000.0), x, method, torch.float64)


@pytest.mark.parametrize("out_channels", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm1d_after_flatten_of_conv(out_channels: int, relu: bool) -> None:
    """Minimal reproducer: Conv2d(1, oc, 3) -> [ReLU] -> Flatten -> BatchNorm1d(oc*16) on 1x6x6.

    The BatchNorm is folded into the *previous* Conv2d as if it were per-channel, although its
    statistics are per flattened feature."""
    torch.manual_seed(0)
    n = out_channels * 16
    mods = [nn.Conv2d(1, out_channels, 3)] + ([nn.ReLU()] if relu else []) + [nn.Flatten(), nn.BatchNorm1d(n)]
    model = nn.Sequential(*mods).double()
    bn = model[-1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    model.eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    methods = RELU_METHODS
    for method in methods:
        res = fastcert.bounds(model, x, 0.0, method=method)
        assert res.lower.shape == (2, n), f"{method}: bounds for {tuple(res.lower.shape)} outputs, model has {n}"
    _check_model(model, x, 0.0, "inf")
    _check_model(model, x, 0.05, "inf")


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_per_sample_eps_and_batch_independence(norm: str) -> None:
    """Bounds of a batch with per-sample eps equal the bounds of each sample alone, and are sound."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4)).double()
    x = torch.rand(3, 1, 5, 5, dtype=torch.float64)
    eps = torch.tensor([0.0, 0.05, 0.3], dtype=torch.float64)
    for method in RELU_METHODS:
        res = fastcert.bounds(model, x, eps, norm=norm, method=method)
        for b in range(3):
            # bit-identical: each sample's intermediate bounds depend on that sample only
            r1 = fastcert.bounds(model, x[b:b + 1], float(eps[b]), norm=norm, method=method)
            assert torch.equal(r1.lower[0], res.lower[b]) and torch.equal(r1.upper[0], res.upper[b]), (
                method, b, (r1.lower[0] - res.lower[b]).tolist())
    _check_model(model, x, eps, norm)


def test_network_object_and_numpy_input_agree() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.rand(2, 4, dtype=torch.float64)
    net = fastcert.Network.from_torch(model)
    with torch.no_grad():
        assert torch.allclose(net.forward(x), model(x), rtol=1e-12, atol=1e-12)
    for method in RELU_METHODS:
        a = fastcert.bounds(model, x, 0.1, method=method)
        b = fastcert.bounds(net, x.numpy(), 0.1, method=method)
        assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


def test_network_object_reused_across_dtypes_and_shapes() -> None:
    """One Network, alternately float64 / float32 inputs and two spatial sizes (a fully
    convolutional model): each call is sound and equals a call on a fresh conversion."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 2, stride=2), nn.ReLU(),
                          nn.Flatten()).double().eval()
    net = fastcert.Network.from_torch(model)
    for shape in [(1, 5, 5), (1, 6, 6), (1, 5, 5)]:
        for dt in (torch.float64, torch.float32, torch.float64):
            x = torch.rand(2, *shape, dtype=torch.float64).to(dt)
            for method in RELU_METHODS:
                a = fastcert.bounds(net, x, 0.05, method=method)
                b = fastcert.bounds(model, x, 0.05, method=method)
                assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper), (shape, dt, method)
            _check_model(model, x.double(), 0.05, "inf")
