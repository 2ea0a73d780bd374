"""The fused interval kernels of issue #10 point 5b: the convolution interval step (``_C.interval_conv``),
the float64-evaluation step (``_C.eval_err_max``), the overflow check (``_C.all_finite``) and the
``up_pos`` rounding step they use, each against an exact float64 twin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastcert._ext import _C
from fastcert.layers.base import Box, interval_affine
from fastcert.primitives.conv2d import Conv2d
from fastcert.rounding import gamma_n, underflow_slack

GEOMETRIES = [
    dict(C=1, H=28, W=28, OC=16, k=4, s=2, p=1, B=7),  # the bench CNN's first layer
    dict(C=16, H=14, W=14, OC=32, k=4, s=2, p=1, B=5),  # ... and its second
    dict(C=2, H=8, W=7, OC=3, k=3, s=2, p=1, B=3),  # non-square input
    dict(C=3, H=9, W=9, OC=4, k=4, s=2, p=2, B=4),  # padding wider than the stride
    dict(C=2, H=3, W=3, OC=3, k=3, s=1, p=0, B=5),  # 1x1 output: one-column products
    dict(C=3, H=6, W=5, OC=1, k=3, s=1, p=1, B=2),  # one output channel: one-row products
    dict(C=2, H=5, W=5, OC=2, k=1, s=1, p=0, B=1),  # 1x1 kernel, one sample
    dict(C=2, H=11, W=10, OC=3, k=2, s=3, p=1, B=3),  # stride beyond the kernel: inputs no window reads
]


def _layer(cfg: dict, bias: bool, seed: int) -> tuple[Conv2d, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(cfg["OC"], cfg["C"], cfg["k"], cfg["k"], generator=g, dtype=torch.float64)
    b = torch.randn(cfg["OC"], generator=g, dtype=torch.float64) if bias else None
    return Conv2d(W, b, (cfg["s"], cfg["s"]), (cfg["p"], cfg["p"]), (cfg["C"], cfg["H"], cfg["W"])), W, b


def _box(n: int, B: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, n, generator=g, dtype=torch.float64)
    width = torch.rand(B, n, generator=g, dtype=torch.float64)
    width[:, ::3] = 0  # degenerate entries (a dead ReLU's l = u = 0 among them)
    base[:, ::5] = 0
    l, u = base.to(dtype), (base + width).to(dtype)
    return l.contiguous(), torch.maximum(l, u).contiguous()


def _exact(L: Conv2d, W: torch.Tensor, b: torch.Tensor | None, l: torch.Tensor, u: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (mc - mr, mc + mr, |W| max(|l|,|u|) + |b|) of the box: [B, n_out] each."""
    B = l.shape[0]
    l64, u64 = l.double(), u.double()
    c, r, h = (u64 + l64) / 2, (u64 - l64) / 2, torch.maximum(l64.abs(), u64.abs())

    def cv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x.reshape(B, *L.in_shape), w, bias, L.stride, L.padding).reshape(B, -1)

    mc, mr = cv(c, W, b), cv(r, W.abs(), None)
    mg = cv(h, W.abs(), None if b is None else b.abs())
    return mc - mr, mc + mr, mg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [0, 1, 2, 3])
def test_interval_conv_contains_the_exact_box_image(dtype: torch.dtype, cfg: dict, bias: bool, chunk: int) -> None:
    """Every chunking (0: automatic; 3 leaves a short last chunk) gives bounds that contain the exact
    float64 image of the box, a g that bounds |W| max(|l|,|u|) + |b|, and both within rounding level."""
    L, W, b = _layer(cfg, bias, seed=cfg["H"] + cfg["OC"])
    l, u = _box(L.n_in, cfg["B"], dtype, seed=3)
    p = L.params(dtype)
    lo, hi, g = (torch.empty(cfg["B"], L.n_out, dtype=dtype) for _ in range(3))
    bc = torch.empty(0, dtype=dtype) if b is None else b.to(dtype)
    gamma = 2.0 * (L.fan_in + 2) * torch.finfo(dtype).eps
    tiny = float(torch.finfo(dtype).tiny)
    _C.interval_conv(l, u, p.W, p.absW, bc, gamma, tiny, lo, hi,
                     g, cfg["H"], cfg["W"], cfg["s"], cfg["s"], cfg["p"], cfg["p"], chunk)
    el, eu, eg = _exact(L, W, b, l, u)
    # the float64 reference is itself within ~1e-13 (relative) of exact: inside the kernel's gamma slack
    assert (lo.double() <= el).all() and (hi.double() >= eu).all()
    assert (g.double() >= eg * (1 - 1e-12)).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    scale = 1.0 + float(eg.max())
    assert float((lo.double() - el).abs().max()) <= tol * scale
    assert float((hi.double() - eu).abs().max()) <= tol * scale
    assert float((g.double() - eg).abs().max()) <= tol * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interval_affine_uses_the_fused_conv_step_and_it_equals_the_unfused_one(dtype: torch.dtype) -> None:
    """interval_affine of a Conv2d (fused kernel) against the unfused kernels (interval_prep, two
    convolutions, interval_finish): the same bounds up to the GEMMs' summation order."""
    cfg = GEOMETRIES[1]
    L, _, _ = _layer(cfg, True, seed=1)
    l, u = _box(L.n_in, 9, dtype, seed=4)
    got, g = interval_affine(L, Box(l, u))
    c, r, h = (torch.empty_like(l) for _ in range(3))
    _C.interval_prep(l, u, c, r, h)
    mc, mr, mg = L.forward(c), L.forward_abs(r), L.forward_abs(h)
    lo, hi = torch.empty_like(mc), torch.empty_like(mc)
    gamma = gamma_n(L.fan_in, dtype)
    tiny = max(underflow_slack(L.fan_in, dtype), torch.finfo(dtype).tiny)
    _C.interval_finish(mc, mr, mg, L.params(dtype).absbias, gamma, tiny,
                       lo, hi)
    eps = torch.finfo(dtype).eps
    scale = 1.0 + float(mg.abs().max())
    for a, bb in ((got.l, lo), (got.u, hi), (g, mg)):
        assert float((a.double() - bb.double()).abs().max()) <= 64 * eps * scale


def test_interval_conv_rejects_bad_arguments() -> None:
    W = np.ones((2, 1, 3, 3))
    x = np.zeros(2 * 25)
    out = [np.zeros(2 * 2 * 9) for _ in range(3)]
    args = (x, x, W, W, np.zeros(2))
    with pytest.raises(ValueError, match="tiny must be > 0"):
        _C.interval_conv(*args, 1e-10, 0.0, *out, 5, 5, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        _C.interval_conv(*args, -1e-10, 1e-300, *out, 5, 5, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="out_g"):
        _C.interval_conv(*args, 1e-10, 1e-300, out[0], out[1], np.zeros(5), 5, 5, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="bias"):
        _C.interval_conv(x, x, W, W, np.zeros(3), 1e-10, 1e-300, *out, 5, 5, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="absW"):
        _C.interval_conv(x, x, W, np.ones((2, 1, 3, 2)), np.zeros(2), 1e-10, 1e-300, *out, 5, 5, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="chunk"):
        _C.interval_conv(*args, 1e-10, 1e-300, *out, 5, 5, 1, 1, 0, 0, -1)
    with pytest.raises(ValueError, match="wsum"):
        _C.interval_conv(*args, 1e-10, 1e-300, *out, 5, 5, 1, 1, 0, 0, 0, np.ones(3))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_up_pos_equals_nextafter_on_its_domain(dt: type) -> None:
    """up_pos (the finishing loops' step for +0, positive numbers, +inf and NaN) is nextafter(x, inf)."""
    fi = np.finfo(dt)
    specials = [0.0, fi.smallest_subnormal, 2 * fi.smallest_subnormal, fi.tiny, fi.max, 1.0, np.inf, 3.5e-30, 7.25e12]
    x = np.concatenate([np.array(specials, dtype=dt),
                        np.abs(np.random.default_rng(0).standard_normal(1000)).astype(dt) * dt(1e3)])
    out = np.empty_like(x)
    _C._step_up_pos(x, out)
    np.testing.assert_array_equal(out, np.nextafter(x, dt(np.inf)))
    nan = np.array([np.nan, -np.nan], dtype=dt)
    _C._step_up_pos(nan, out[:2])
    assert np.isnan(out[:2]).all()


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_all_finite(dt: type) -> None:
    x = np.random.default_rng(1).standard_normal(1001).astype(dt)
    assert _C.all_finite(x) and _C.all_finite(np.zeros(0, dtype=dt))
    for bad in (np.inf, -np.inf, np.nan):
        for at in (0, 500, 1000):  # the vectorized body and the scalar tail
            y = x.copy()
            y[at] = bad
            assert not _C.all_finite(y)


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_eval_err_max_equals_the_torch_steps(dt: torch.dtype) -> None:
    """The fused step is the same float64 operations as the torch code of slack.eval_slack: equal."""
    g = torch.Generator().manual_seed(2)
    B, n = 5, 1031
    G = (torch.rand(B, n, generator=g, dtype=torch.float64) * 10).to(dt)
    rowabs = torch.rand(n, generator=g, dtype=torch.float64) * 7
    emax = torch.rand(B, generator=g, dtype=torch.float64) * 1e-14
    pl = torch.randn(B, n, generator=g, dtype=torch.float64).to(dt)
    pu = (pl.double() + torch.rand(B, n, generator=g, dtype=torch.float64)).to(dt)
    gamma64, uf, lip, rel, ab = 3.1e-14, 2.2e-308, 1.5, 4.4e-16, 4.1e-308
    out = torch.empty(B, dtype=torch.float64)
    _C.eval_err_max(G, rowabs, emax, gamma64, uf, lip, pl, pu, rel, ab,
                    out)
    E = gamma64 * G.double() + rowabs * emax[:, None] + uf
    E = lip * E + rel * torch.maximum(pl.abs(), pu.abs()).double() + ab
    assert torch.equal(out, E.amax(1))
    G[3, 17] = float("nan")
    _C.eval_err_max(G, rowabs, emax, gamma64, uf, lip, pl, pu, rel, ab,
                    out)
    assert torch.isnan(out[3]) and torch.isfinite(out[[0, 1, 2, 4]]).all()


def test_eval_slack_fused_steps_equal_the_unfused_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval_slack with its fused (affine, activation) steps equals the torch-only computation exactly."""
    import fastcert
    from fastcert.algorithms import linear_bounds, slack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, 2, 1),
                                torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(54, 20), torch.nn.ReLU(),
                                torch.nn.Linear(20, 3)).eval()
    x = torch.rand(4, 1, 12, 12)
    got: list[torch.Tensor] = []
    real = slack.eval_slack

    def spy(*a: object, **k: object) -> torch.Tensor:
        got.append(real(*a, **k))  # type: ignore[arg-type]
        return got[-1]

    monkeypatch.setattr(linear_bounds, "eval_slack", spy)
    for dtype in (torch.float32, torch.float64):
        fastcert.bounds(model, x.to(dtype), 0.02, method="ibp")
        with monkeypatch.context() as m:
            m.setattr(slack, "_fusable", lambda layers, j: False)
            fastcert.bounds(model, x.to(dtype), 0.02, method="ibp")
        assert torch.equal(got[-2], got[-1]) and (got[-1] > 0).all()


def _extreme_layer(cfg: dict, seed: int) -> tuple[Conv2d, torch.Tensor, torch.Tensor]:
    """Weights and bias spread over 2^-60 .. 2^40 (products down to float32's underflow range)."""
    g = torch.Generator().manual_seed(seed)
    shape = (cfg["OC"], cfg["C"], cfg["k"], cfg["k"])
    W = torch.randn(*shape, generator=g, dtype=torch.float64)
    W = W * torch.exp2(torch.randint(-60, 41, shape, generator=g).double())
    W = W.float().double()  # exact in float32: the float64 reference then sees the kernel's weights
    b = torch.randn(cfg["OC"], generator=g, dtype=torch.float64).float().double()
    return Conv2d(W, b, (cfg["s"], cfg["s"]), (cfg["p"], cfg["p"]), (cfg["C"], cfg["H"], cfg["W"])), W, b


def _window_step(L: Conv2d, l: torch.Tensor, u: torch.Tensor, wsum: torch.Tensor, chunk: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dt = l.dtype
    p = L.params(dt)
    lo, hi, g = (torch.empty(l.shape[0], L.n_out, dtype=dt) for _ in range(3))
    gamma = gamma_n(L.fan_in, dt)
    tiny = max(underflow_slack(L.fan_in, dt), torch.finfo(dt).tiny)
    _, H, W = L.in_shape
    _C.interval_conv(l, u, p.W, p.absW, L.params(dt).bias[:0] if L.b64 is None
                     else L.b64.to(dt), gamma, tiny, lo, hi, g, H, W, L.stride[0],
                     L.stride[1], L.padding[0], L.padding[1], chunk, wsum)
    return lo, hi, g


def _bounds_hold(L: Conv2d, W: torch.Tensor, b: torch.Tensor, l: torch.Tensor, u: torch.Tensor,
                 out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> bool:
    """lo <= the exact image <= hi and g >= |W| max(|l|,|u|) + |b|, the exact values bounded from the
    sound side: the float64 reference (float32 operands: exact products; sums of <= 300 nonnegative terms
    off by < 1e-13 relative) is widened by 1e-12 of its magnitude before the comparison."""
    el, eu, eg = _exact(L, W, b, l, u)
    slack = 1e-12 * eg
    lo, hi, g = (t.double() for t in out)
    return bool((lo <= el - slack).all() and (hi >= eu + slack).all() and (g >= eg + slack).all())


@pytest.mark.parametrize("cfg", GEOMETRIES)
@pytest.mark.parametrize("chunk", [0, 2])
def test_window_magnitude_bounds_the_exact_product(cfg: dict, chunk: int) -> None:
    """The window-max magnitude (wsum given: kernel sums times the window max of |c|, plus |W| r) is a g
    >= |W| max(|l|,|u|) + |b| and keeps the box sound, on every geometry (padding, stride, 1x1 output,
    1x1 kernel), with weights and inputs of extreme magnitudes; and the same check catches a kernel-sum
    table made too small (so the test can fail)."""
    L, W, b = _extreme_layer(cfg, seed=cfg["H"] * 7 + cfg["C"])
    g = torch.Generator().manual_seed(11)
    for dt in (torch.float32,):
        S = L.kernel_sums(dt)
        assert (S.double() >= W.abs().reshape(*S.shape, -1).sum(2)).all()
        base = torch.randn(cfg["B"], L.n_in, generator=g, dtype=torch.float64)
        base = base * torch.exp2(torch.randint(-60, 41, base.shape, generator=g).double())
        width = torch.rand(cfg["B"], L.n_in, generator=g, dtype=torch.float64) * base.abs()
        width[:, ::3] = 0
        base[:, ::7] = 0
        l = base.to(dt).contiguous()
        u = torch.maximum(l, (base + width).to(dt)).contiguous()
        assert _bounds_hold(L, W, b, l, u, _window_step(L, l, u, S, chunk))
        # a point box of constant inputs: every window's max is its values, so the bound is the exact
        # |W| |x| + |b| up to the gamma factor, and halving the kernel sums must be caught
        x = torch.full((cfg["B"], L.n_in), 3.0, dtype=dt)
        assert _bounds_hold(L, W, b, x, x, _window_step(L, x, x, S, chunk))
        half = (S / 2).contiguous()
        assert not _bounds_hold(L, W, b, x, x, _window_step(L, x, x, half, chunk))


def test_window_magnitude_only_in_float32_ibp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The IBP pass in float32 asks convolutions (but the last layer) for the window-max magnitude; other
    methods and float64 keep the exact product (their float32 gammas read g; float64 bounds stay those of
    the exact path)."""
    import fastcert

    seen: list[tuple[torch.dtype, bool]] = []
    orig = Conv2d.interval_step

    def spy(self: Conv2d, l: torch.Tensor, u: torch.Tensor, gamma: float, tiny: float, exact: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append((l.dtype, exact))
        return orig(self, l, u, gamma, tiny, exact)

    import fastcert.algorithms.linear_bounds as lb
    from fastcert.algorithms.ibp_chain import chain_step

    monkeypatch.setattr(Conv2d, "interval_step", spy)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, 1, 1),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 16, 3))
    x = torch.rand(2, 2, 8, 8)
    # the one-call IBP path (algorithms/ibp_chain.py) passes the kernel sums to its convolutions in float32 only
    fc = fastcert.Network.from_torch(net, input_shape=(2, 8, 8))
    for dt, want in ((torch.float32, False), (torch.float64, True)):
        convs = [L for L in fc.layers_for((2, 8, 8)) if isinstance(L, Conv2d)]
        assert len(convs) == 2 and all((chain_step(L, dt)[12].numel() == 0) == want for L in convs)
    with monkeypatch.context() as m:  # the Python-driven path
        m.setattr(lb, "ibp_chain", lambda *a: None)
        for dt, method, want in ((torch.float32, "ibp", False), (torch.float64, "ibp", True),
                                 (torch.float32, "crown-ibp", True), (torch.float32, "crown", True)):
            seen.clear()
            fastcert.bounds(net.to(dt), x.to(dt), 0.01, method=method)
            assert seen and all(ex == want for _, ex in seen), (dt, method, seen)


def test_window_magnitude_falls_back_when_a_kernel_sum_overflows() -> None:
    """A kernel slice whose sum of |W| exceeds float32's range makes S infinite, and inf times a zero
    window max is NaN: float32 IBP then takes the exact product (finite bounds, as CROWN's), instead of
    refusing the network as overflowing (found in review)."""
    import fastcert

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, 1, 1), torch.nn.Conv2d(1, 1, 3, 1, 1))
    with torch.no_grad():
        net[0].weight.fill_(1e38)
        net[0].bias.zero_()
    x = torch.zeros(1, 1, 4, 4)
    L = Conv2d(net[0].weight.detach(), None, (1, 1), (1, 1), (1, 4, 4))
    assert not bool(torch.isfinite(L.kernel_sums(torch.float32)).all())
    r = fastcert.bounds(net, x, 0.0, method="ibp")
    assert torch.isfinite(r.lower).all() and torch.isfinite(r.upper).all()
    with torch.no_grad():
        y = net.double()(x.double())  # the exact network (float32 weights, exactly, in float64)
    assert (r.lower.double() <= y.flatten(1)).all() and (y.flatten(1) <= r.upper.double()).all()
