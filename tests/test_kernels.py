"""Every compiled kernel against a plain float64 torch twin (fastcert.reference / torch ops).

float64 kernels must match the float64 reference to rounding level; float32 kernels must stay
within 2x of the error that the same computation done by torch in float32 has against float64.
Bound kernels must round outward (never inside the exact value).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastcert._ext import _C
from fastcert.layers.base import Box, interval_affine
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.linear import Dense
from fastcert.primitives.relu import ReLU
from fastcert.reference import crown as ref

DTYPES = [torch.float32, torch.float64]


def _err32(ours32: torch.Tensor, torch32: torch.Tensor, exact64: torch.Tensor) -> None:
    e_ours = (ours32.double() - exact64).abs().max().item()
    e_torch = (torch32.double() - exact64).abs().max().item()
    assert e_ours <= 2 * e_torch + 1e-30, (e_ours, e_torch)


@pytest.mark.parametrize("B,n,m", [(1, 1, 1), (3, 7, 5), (16, 64, 33), (0, 4, 3)])
def test_dense_forward_backward(B: int, n: int, m: int) -> None:
    g = torch.Generator().manual_seed(B * 100 + n)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    x = torch.randn(B, n, generator=g, dtype=torch.float64)
    lam = torch.randn(B, m, generator=g, dtype=torch.float64)
    L = Dense(W, b, (n,))
    exact_f, exact_b = x @ W.T + b, lam @ W
    assert torch.allclose(L.forward(x), exact_f, rtol=1e-13, atol=1e-13)
    assert torch.allclose(L.backward(lam), exact_b, rtol=1e-13, atol=1e-13)
    if B:
        _err32(L.forward(x.float()), x.float() @ W.float().T + b.float(), exact_f)
        _err32(L.backward(lam.float()), lam.float() @ W.float(), exact_b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,n,m", [(1, 9, 7), (5, 9, 1), (1, 1, 6), (4, 1, 3), (1, 6, 1), (3, 4, 2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_single_row_and_column_products(dtype: type, B: int, n: int, m: int, with_bias: bool) -> None:
    """The BLAS wrapper sends one-row / one-column products to GEMV (both orientations, forward
    x W^T and backward lam W); outputs are pre-filled with NaN, which beta = 0 must ignore."""
    rng = np.random.default_rng(B * 100 + n * 10 + m)
    W = rng.standard_normal((m, n)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) if with_bias else np.zeros(0, dtype)
    x = rng.standard_normal((B, n)).astype(dtype)
    lam = rng.standard_normal((B, m)).astype(dtype)
    out_f = np.full((B, m), np.nan, dtype)
    out_b = np.full((B, n), np.nan, dtype)
    _C.dense_forward(x, W, b, out_f)
    _C.dense_backward(lam, W, out_b)
    W64, x64, l64 = W.astype(np.float64), x.astype(np.float64), lam.astype(np.float64)
    want_f = x64 @ W64.T + (b.astype(np.float64) if with_bias else 0)
    want_b = l64 @ W64
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.isfinite(out_f).all() and np.isfinite(out_b).all()
    np.testing.assert_allclose(out_f, want_f, rtol=tol, atol=tol)
    np.testing.assert_allclose(out_b, want_b, rtol=tol, atol=tol)


@pytest.mark.parametrize("cfg", [
    dict(C=1, H=5, W=5, OC=2, k=3, s=1, p=0),
    dict(C=2, H=8, W=7, OC=3, k=3, s=2, p=1),
    dict(C=3, H=9, W=9, OC=4, k=4, s=2, p=2),
    dict(C=1, H=28, W=28, OC=16, k=4, s=2, p=1),
    dict(C=2, H=6, W=6, OC=2, k=1, s=1, p=0),
    dict(C=2, H=3, W=3, OC=3, k=3, s=1, p=0),  # 1x1 output: one-column products (GEMV)
    dict(C=3, H=6, W=5, OC=1, k=3, s=1, p=1),  # one output channel: one-row products (GEMV)
])
def test_conv_forward_backward(cfg: dict) -> None:
    g = torch.Generator().manual_seed(cfg["H"] * 7 + cfg["OC"])
    Wt = torch.randn(cfg["OC"], cfg["C"], cfg["k"], cfg["k"], generator=g, dtype=torch.float64)
    b = torch.randn(cfg["OC"], generator=g, dtype=torch.float64)
    L = Conv2d(Wt, b, (cfg["s"], cfg["s"]), (cfg["p"], cfg["p"]), (cfg["C"], cfg["H"], cfg["W"]))
    x = torch.randn(5, L.n_in, generator=g, dtype=torch.float64)
    exact = F.conv2d(x.reshape(5, *L.in_shape), Wt, b, cfg["s"], cfg["p"]).reshape(5, -1)
    assert torch.allclose(L.forward(x), exact, rtol=1e-12, atol=1e-12)
    lam = torch.randn(6, L.n_out, generator=g, dtype=torch.float64)
    a = ref._Aff(torch.nn.Conv2d(cfg["C"], cfg["OC"], cfg["k"], cfg["s"], cfg["p"]).double(), L.in_shape)
    a.m.weight.data = Wt
    exact_b = a.back(lam)
    assert torch.allclose(L.backward(lam), exact_b, rtol=1e-12, atol=1e-12)
    # adjointness: <lam, conv(x)> == <conv^T(lam), x>
    assert torch.allclose((lam[:5] * (L.forward(x) - L.params(torch.float64).bias)).sum(),
                          (L.backward(lam[:5]) * x).sum(), rtol=1e-10)
    _err32(L.forward(x.float()), F.conv2d(x.float().reshape(5, *L.in_shape), Wt.float(), b.float(), cfg["s"],
                                          cfg["p"]).reshape(5, -1), exact)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 2, 8])  # 1-2: the fused one-pass product; 8: two BLAS products
@pytest.mark.parametrize("m,n,bias", [(20, 30, True), (600, 500, True), (7, 40, False)])  # 600x500: OpenMP rows
def test_interval_affine_contains_exact_and_matches_reference(dtype: torch.dtype, B: int, m: int, n: int,
                                                               bias: bool) -> None:
    g = torch.Generator().manual_seed(3)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    L = Dense(W, b if bias else None, (n,))
    l = torch.randn(B, n, generator=g, dtype=torch.float64)
    u = l + torch.rand(B, n, generator=g, dtype=torch.float64) * (torch.arange(n) % 2)  # every other l == u
    gam = 1e-6 if dtype == torch.float32 else 1e-14
    box, gmag = interval_affine(L, Box(l.to(dtype), u.to(dtype)), gam)
    c, r = (u + l) / 2, (u - l) / 2
    bb = b if bias else torch.zeros(m, dtype=torch.float64)
    exact_l = c @ W.T + bb - r @ W.abs().T
    exact_u = c @ W.T + bb + r @ W.abs().T
    assert (box.l.double() <= exact_l).all() and (box.u.double() >= exact_u).all()
    # tight: the kernel moves the bounds out by gam * g (g ~ |W| max(|l|,|u|) + |b|) and its own sums
    # round by at most (n+2) units; 1.5x that, no absolute slack
    mag = (torch.maximum(l.abs(), u.abs()) @ W.abs().T + bb.abs()).max().item()
    unit = 2.0 ** -24 if dtype == torch.float32 else 2.0 ** -53
    tol = 1.5 * (gam + (n + 2) * unit) * mag
    assert torch.allclose(box.l.double(), exact_l, rtol=0, atol=tol)
    assert torch.allclose(box.u.double(), exact_u, rtol=0, atol=tol)
    assert (gmag.double() >= (torch.maximum(l.abs(), u.abs()) @ W.abs().T) * (1 - 1e-6)).all()


def _affine_layer(kind: str, g: torch.Generator) -> tuple[object, tuple[int, ...], torch.Tensor, torch.Tensor]:
    from fastcert.primitives.diag import Diag

    if kind == "dense":
        W = torch.randn(20, 30, generator=g, dtype=torch.float64)
        b = torch.randn(20, generator=g, dtype=torch.float64)
        return Dense(W, b, (30,)), (30,), W, b
    if kind == "conv":
        W = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
        b = torch.randn(4, generator=g, dtype=torch.float64)
        return Conv2d(W, b, (2, 2), (1, 1), (2, 7, 6)), (2, 7, 6), W, b
    s = torch.randn(30, generator=g, dtype=torch.float64)
    t = torch.randn(30, generator=g, dtype=torch.float64)
    return Diag(s, t, (30,)), (30,), s, t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["dense", "conv", "diag"])
@pytest.mark.parametrize("box", ["crossing", "degenerate", "positive", "negative", "large"])
def test_interval_affine_every_layer_kind(dtype: torch.dtype, kind: str, box: str) -> None:
    """Bounds contain W x + b for the exact float64 layer on the (dtype-representable) box, and the
    returned g bounds |W| max(|l|,|u|) + |b|, for dense (fused kernel), conv (row kernels) and diag."""
    g = torch.Generator().manual_seed(11)
    L, shape, W, b = _affine_layer(kind, g)
    n = int(np.prod(shape))
    base = torch.randn(6, n, generator=g, dtype=torch.float64) * (1e3 if box == "large" else 1.0)
    width = torch.rand(6, n, generator=g, dtype=torch.float64)
    if box == "degenerate":
        width.zero_()
    if box == "positive":
        base = base.abs() + 0.1
    if box == "negative":
        base = -base.abs() - 0.1 - width
    l = base.to(dtype)
    u = (base + width).to(dtype)
    u = torch.maximum(l, u)
    res, gmag = interval_affine(L, Box(l.contiguous(), u.contiguous()))
    l64, u64 = l.double(), u.double()
    c, r = (u64 + l64) / 2, (u64 - l64) / 2
    h = torch.maximum(l64.abs(), u64.abs())
    if kind == "dense":
        mc, mr, mh, ab = c @ W.T + b, r @ W.abs().T, h @ W.abs().T, b.abs()
    elif kind == "conv":
        def cv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return F.conv2d(x.reshape(6, *shape), w, bias, 2, 1).reshape(6, -1)
        mc, mr, mh = cv(c, W, b), cv(r, W.abs(), None), cv(h, W.abs(), None)
        ab = b.abs()[:, None].expand(4, mc.shape[1] // 4).reshape(-1)
    else:
        mc, mr, mh, ab = c * W + b, r * W.abs(), h * W.abs(), b.abs()
    # the float64 products above are within ~1e-13 (relative) of exact: far inside float32's slack; in
    # float64 the kernel's gamma-slack covers the reference's own rounding
    assert (res.l.double() <= mc - mr).all() and (res.u.double() >= mc + mr).all()
    assert (gmag.double() >= (mh + ab) * (1 - 1e-12)).all()
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    scale = 1.0 + float((mh + ab).abs().max())
    assert float((res.l.double() - (mc - mr)).abs().max()) <= tol * scale
    assert float((res.u.double() - (mc + mr)).abs().max()) <= tol * scale


def test_interval_row_kernels_reject_bad_sizes() -> None:
    a = np.zeros(12)
    with pytest.raises(ValueError, match="multiple of B"):
        _C.interval_prep_rows(a, a, a.copy(), a.copy(), np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="cmax"):
        _C.interval_finish_rows(a.copy(), a.copy(), np.zeros(5), np.zeros(5), np.zeros(4), np.zeros(4), np.zeros(0),
                                1e-10, 1e-300, a.copy())
    with pytest.raises(ValueError, match="work is too small"):
        _C.interval_dense(a, a, np.zeros((4, 6)), np.zeros((4, 6)), np.zeros(4), np.zeros(4), np.zeros(4),
                          np.zeros(4), 1e-10, 1e-300, np.zeros(8), np.zeros(8), np.zeros(8), np.zeros(5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_interval_exact(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    l = (torch.randn(4, 50, generator=g, dtype=torch.float64) * 4).to(dtype)
    u = l + (torch.rand(4, 50, generator=g, dtype=torch.float64) * torch.tensor([0.0, 2.0]).repeat(25)).to(dtype)
    l[0, :3] = torch.tensor([-0.0, 2.0**-149, -(2.0**-149)], dtype=dtype)  # signed zero, subnormals
    out = ReLU((50,)).interval(Box(l, u))
    assert torch.equal(out.l, torch.relu(l)) and torch.equal(out.u, torch.relu(u))  # exact: a max


def test_relu_relax_refuses_unknown_mode() -> None:
    with pytest.raises(ValueError, match="lower_slope must be one of"):
        ReLU((3,)).relax(Box(torch.zeros(1, 3), torch.ones(1, 3)), "steep")


@pytest.mark.parametrize("mode", ["adaptive", "parallel"])
def test_relu_relax_against_reference_and_sound(mode: str) -> None:
    g = torch.Generator().manual_seed(9)
    l = torch.randn(3, 200, generator=g, dtype=torch.float64)
    u = l + torch.rand(3, 200, generator=g, dtype=torch.float64) * 2
    l[0, :5] = u[0, :5]  # degenerate l == u
    A = ReLU((200,))
    lo, up, ub = A.relax(Box(l, u), mode)
    rlo, rup, rub = ref.relu_relax(l, u, mode)
    assert torch.equal(lo, rlo) and torch.allclose(up, rup, rtol=1e-15) and (ub >= rub).all()
    assert torch.allclose(ub, rub, rtol=1e-12, atol=1e-300)
    for t in torch.linspace(0, 1, 11, dtype=torch.float64):
        z = l + t * (u - l)
        assert (lo * z <= torch.relu(z)).all() and (torch.relu(z) <= up * z + ub).all()


def test_backward_act_bias_mag_concretize_against_torch() -> None:
    g = torch.Generator().manual_seed(11)
    B, S, n = 3, 4, 25
    lam = torch.randn(B, S, n, generator=g, dtype=torch.float64)
    lo_s, up_s = torch.rand(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    up_b, zmag = torch.rand(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    out = torch.empty_like(lam)
    bias, mag = torch.zeros(B, S, dtype=torch.float64), torch.zeros(B, S, dtype=torch.float64)
    e = torch.empty(0, dtype=torch.float64)
    _C.backward_act(lam, lo_s, up_s, e, up_b, zmag, out,
                    bias, mag, 1.0, 0.0, e)
    pos, neg = lam.clamp_min(0), lam.clamp_max(0)
    assert torch.allclose(out, pos * lo_s[:, None] + neg * up_s[:, None], rtol=1e-15)
    assert torch.allclose(bias, (neg * up_b[:, None]).sum(-1), rtol=1e-13)
    assert torch.allclose(mag, (lam.abs() * zmag[:, None]).sum(-1), rtol=1e-13)
    bvec, G = torch.randn(n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    bias2, mag2 = bias.clone(), mag.clone()
    _C.bias_mag(lam, bvec, G, bias2, mag2, 1.0, 0.0, e)
    assert torch.allclose(bias2 - bias, lam @ bvec, rtol=1e-12, atol=1e-13)
    assert torch.allclose(mag2 - mag, (lam.abs() * G[:, None]).sum(-1), rtol=1e-12)
    x0 = torch.rand(B, n, generator=g, dtype=torch.float64)
    eps = torch.full((B,), 0.1, dtype=torch.float64)
    l0, u0 = (x0 - 0.1).clamp_min(0), (x0 + 0.1).clamp_max(1)
    for p in (0, 1, 2):
        res = torch.empty(B, S, dtype=torch.float64)
        z = torch.zeros(B, S, dtype=torch.float64)
        _C.concretize(lam, x0, l0, u0, eps, p, z, z,
                      1e-14, res, e, e)
        exact = ref._concretize(lam, x0, eps, p, l0, u0)
        assert (res <= exact).all() and torch.allclose(res, exact, rtol=1e-10, atol=1e-10)


def test_kernels_reject_wrong_dtype_and_layout() -> None:
    a64 = np.zeros((2, 3))
    a32 = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(TypeError):
        _C.interval_prep(a64, a32, a64, a64, a64)
    nc = np.zeros((3, 2)).T
    with pytest.raises((TypeError, ValueError)):
        _C.interval_prep(nc, nc, a64, a64, a64)
    with pytest.raises(ValueError, match="expected"):
        _C.interval_prep(a64, np.zeros(5), a64, a64, a64)


def test_two_sided_kernels_equal_the_negated_pass() -> None:
    """With a symmetric relaxation (lo_slope == up_slope) one pass with bias_hi / out_hi gives the
    same upper bound as the lower bound of the negated rows, and contains the exact maximum."""
    g = torch.Generator().manual_seed(12)
    B, S, n = 2, 3, 17
    lam = torch.randn(B, S, n, generator=g, dtype=torch.float64)
    s = torch.rand(B, n, generator=g, dtype=torch.float64)
    ub, zmag = torch.rand(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    e = torch.empty(0, dtype=torch.float64)

    def run(lm: torch.Tensor, two: bool):
        out = torch.empty_like(lm)
        bias, mag, bh = (torch.zeros(B, S, dtype=torch.float64) for _ in range(3))
        _C.backward_act(lm, s, s, e, ub, zmag, out,
                        bias, mag, 1e-15, 1e-15, bh if two else e)
        x0 = torch.rand(B, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        l0, u0 = x0 - 0.1, x0 + 0.1
        lo, hi = torch.empty(B, S, dtype=torch.float64), torch.empty(B, S, dtype=torch.float64)
        _C.concretize(out, x0, l0, u0, torch.full((B,), 0.1,
                      dtype=torch.float64), 2, bias, mag, 1e-15, lo,
                      bh if two else e, hi if two else e)
        return lo, hi

    lo, hi = run(lam, True)
    neg_lo, _ = run(-lam, False)
    assert torch.allclose(hi, -neg_lo, rtol=1e-12, atol=1e-12) and (hi >= -neg_lo - 1e-12).all()
    assert (lo <= hi).all()


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("two", [False, True])
@pytest.mark.parametrize("block_rows", [1, 3, 64])
def test_fused_act_affine_backward_equals_the_unfused_kernels(kind: str, shared: bool, two: bool,
                                                              block_rows: int) -> None:
    """act_dense_backward / act_conv_backward (row blocks, one GEMM per block) == backward_act, then
    bias_mag, then the layer's transposed product, for every block size, shared rows and both-sided mode."""
    g = torch.Generator().manual_seed(5)
    B, S = 3, 5
    if kind == "dense":
        W = torch.randn(12, 7, generator=g, dtype=torch.float64)
        n, n_in = 12, 7
        bvec = torch.randn(n, generator=g, dtype=torch.float64)
    else:
        W = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
        L = Conv2d(W, torch.randn(4, generator=g, dtype=torch.float64), (2, 1), (1, 0), (2, 6, 5))
        n, n_in = L.n_out, L.n_in
        bvec = L.params(torch.float64).bias
    lam = torch.randn(1 if shared else B, S, n, generator=g, dtype=torch.float64)
    ls, us = torch.rand(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    if two:
        ls = us.clone()
    ub, zm = torch.randn(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    G = torch.rand(B, n, generator=g, dtype=torch.float64)
    e = np.empty(0)

    def state() -> tuple[torch.Tensor, ...]:
        return (torch.randn(B, S, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
                torch.rand(B, S, generator=torch.Generator().manual_seed(8), dtype=torch.float64),
                torch.randn(B, S, generator=torch.Generator().manual_seed(7), dtype=torch.float64))

    bias1, mag1, bh1 = state()
    mid = torch.empty(B, S, n, dtype=torch.float64)
    _C.backward_act(lam, ls, us, e, ub, zm, mid, bias1,
                    mag1, 1e-7, 1e-6, bh1 if two else e)
    _C.bias_mag(mid, bvec, G, bias1, mag1, 1e-5, 1e-4,
                bh1 if two else e)
    bias2, mag2, bh2 = state()
    out2 = torch.empty(B, S, n_in, dtype=torch.float64)
    nthr = max(1, _C.omp_max_threads())
    if kind == "dense":
        out1 = (mid.reshape(B * S, n) @ W).reshape(B, S, n_in)
        work = np.empty(block_rows * n * nthr)
        _C.act_dense_backward(lam, ls, us, ub, zm, 1e-7, 1e-6, W,
                              bvec, G, 1e-5, 1e-4, out2, bias2, mag2,
                              bh2 if two else e, block_rows, work, e, e)
    else:
        out1 = L.backward(mid.reshape(B * S, n)).reshape(B, S, n_in)
        per = n + 2 * 9 * L.out_shape[1] * L.out_shape[2]
        work = np.empty(block_rows * per * nthr)
        _C.act_conv_backward(lam, ls, us, ub, zm, 1e-7, 1e-6,
                             L.params(torch.float64).W, bvec, G, 1e-5, 1e-4, out2,
                             bias2, mag2, bh2 if two else e, 6, 5, 2, 1, 1, 0, block_rows,
                             work)
    assert torch.allclose(out2, out1, rtol=1e-12, atol=1e-12)
    assert torch.allclose(bias2, bias1, rtol=1e-13, atol=1e-13)
    assert torch.allclose(mag2, mag1, rtol=1e-13, atol=1e-13)
    if two:
        assert torch.allclose(bh2, bh1, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="workspace too small"):
        fn = _C.act_dense_backward if kind == "dense" else None
        if fn is None:
            _C.act_conv_backward(lam, ls, us, ub, zm, 1e-7, 1e-6,
                                 L.params(torch.float64).W, bvec, G, 1e-5, 1e-4,
                                 out2, bias2, mag2, e, 6, 5, 2, 1, 1, 0, block_rows,
                                 np.empty(1))
        else:
            fn(lam, ls, us, ub, zm, 1e-7, 1e-6, W, bvec,
               G, 1e-5, 1e-4, out2, bias2, mag2, e, block_rows, np.empty(1), e, e)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_core_rounding_steps_equal_nextafter(dt: type) -> None:
    """The core's inline up()/down() are exactly nextafter(x, +/-inf), special values included."""
    fi = np.finfo(dt)
    specials = [0.0, -0.0, fi.smallest_subnormal, -fi.smallest_subnormal, fi.tiny, -fi.tiny, fi.max, -fi.max, 1.0,
                -1.0, np.inf, -np.inf, 3.5e-30, -7.25e12]
    x = np.concatenate([np.array(specials, dtype=dt),
                        np.random.default_rng(0).standard_normal(1000).astype(dt) * dt(1e3)])
    u, d = np.empty_like(x), np.empty_like(x)
    _C._step_outward(x, u, d)
    np.testing.assert_array_equal(u, np.nextafter(x, dt(np.inf)))
    np.testing.assert_array_equal(d, np.nextafter(x, dt(-np.inf)))
    n = np.array([np.nan], dtype=dt)
    _C._step_outward(n, u[:1], d[:1])
    assert np.isnan(u[0]) and np.isnan(d[0])


def test_kernels_refuse_zero_sized_layers() -> None:
    """A zero dimension would divide by zero inside the kernel (SIGFPE): refused with ValueError."""
    e = np.zeros(0)
    with pytest.raises(ValueError, match="zero dimension"):
        _C.interval_dense(e, e, np.zeros((2, 0)), np.zeros((2, 0)), e, np.zeros(2), np.zeros(2), e, 1e-10, 1e-300,
                          np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(4))
    with pytest.raises(ValueError, match="zero dimension"):
        _C.dense_forward(e, np.zeros((2, 0)), e, np.zeros(2))
    with pytest.raises(ValueError, match="zero dimension"):
        _C.dense_backward(e, np.zeros((0, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="zero dimension"):
        _C.conv_forward(e, np.zeros((2, 0, 1, 1)), e, np.zeros(8), 2, 2, 1, 1, 0, 0, np.zeros(16))


def _exact_dense_range(W: torch.Tensor, b: torch.Tensor, l: torch.Tensor, u: torch.Tensor) -> tuple[list, list]:
    """Exact (rational) min / max of W x + b over the box [l, u], per sample and output: lists [B][m]."""
    from fractions import Fraction as Fr

    lo, hi = [], []
    for s in range(l.shape[0]):
        ls, us = [Fr(float(v)) for v in l[s]], [Fr(float(v)) for v in u[s]]
        rl, rh = [], []
        for i in range(W.shape[0]):
            w = [Fr(float(v)) for v in W[i]]
            base = Fr(float(b[i]))
            rl.append(base + sum(wj * (lj if wj >= 0 else uj) for wj, lj, uj in zip(w, ls, us)))
            rh.append(base + sum(wj * (uj if wj >= 0 else lj) for wj, lj, uj in zip(w, ls, us)))
        lo.append(rl)
        hi.append(rh)
    return lo, hi


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_interval_dense_center_contains_exact_and_is_tighter(dtype: torch.dtype, bias: bool) -> None:
    """The centre form of a dense interval step (issue #10 point 5c) contains the exact (rational) range,
    its bounds are no wider than the magnitude form's, and its backward weight w covers
    gamma_back |W| r. Values far from 0 with narrow boxes: where the magnitude form's gamma |W||c| dominates."""
    from fastcert.layers.base import interval_dense_center

    g = torch.Generator().manual_seed(11)
    m, n, B = 9, 23, 3
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64) * 50
    L = Dense(W, b if bias else None, (n,))
    c = (torch.randn(B, n, generator=g, dtype=torch.float64) * 100).to(dtype)
    rad = (torch.rand(B, n, generator=g, dtype=torch.float64) * 1e-4).to(dtype)
    rad[:, ::3] = 0  # degenerate entries
    l, u = c - rad, c + rad
    box_c, g_c, ce = interval_dense_center(L, Box(l, u), 1e-5)
    box_m, g_m = interval_affine(L, Box(l, u))
    lo, hi = _exact_dense_range(L.W64, b if bias else torch.zeros(m, dtype=torch.float64), l, u)
    from fractions import Fraction as Fr

    for s in range(B):
        for i in range(m):
            assert Fr(float(box_c.l[s, i])) <= lo[s][i] and Fr(float(box_c.u[s, i])) >= hi[s][i]
    # float64: the same up to the margins of the double operations (~1e-16 relative)
    slack = 0 if dtype == torch.float32 else 1e-14 * float(box_m.u.abs().max())
    assert (box_c.u - box_c.l <= box_m.u - box_m.l + slack).all()
    if dtype == torch.float32:  # the centre product's float32 rounding is gone: far narrower here
        assert ((box_c.u - box_c.l).sum() < 0.5 * (box_m.u - box_m.l).sum())
    assert torch.equal(g_c, g_m)
    r = torch.maximum(u.double() - ce.c.double(), ce.c.double() - l.double())
    assert (ce.w.double() >= 1e-5 * (r @ W.abs().T)).all()
    assert (ce.w > 0).all() and (ce.w >= torch.finfo(dtype).tiny).all()  # never subnormal
    v_exact = ce.c.double() @ W.T + (b if bias else 0)
    assert torch.allclose(ce.v, v_exact, rtol=1e-13, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("two", [False, True])
def test_affine_center_bound_holds_exactly(dtype: torch.dtype, two: bool) -> None:
    """affine_center: for every vertex x of the box (and the centre), in exact arithmetic,
    Lam . (W64 x + b64) + bias0 >= Lam' . x + bias - mag (and <= Lam' . x + bias_hi + mag), with
    Lam' = fl(Lam W): the float64 centre correction and the weight w make the step rigorous."""
    import itertools
    from fractions import Fraction as Fr

    from fastcert.layers.base import interval_dense_center

    g = torch.Generator().manual_seed(12)
    m, n, B, S = 6, 4, 2, 3
    W = torch.randn(m, n, generator=g, dtype=torch.float64) * 3
    b = torch.randn(m, generator=g, dtype=torch.float64)
    L = Dense(W, b, (n,))
    c = (torch.randn(B, n, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    l, u = c - 0.5, c + 0.25
    _, _, ce = interval_dense_center(L, Box(l, u), 1e-3 if dtype == torch.float32 else 1e-12)
    lam = torch.randn(B, S, m, generator=g, dtype=torch.float64).to(dtype)
    new = L.backward(lam.reshape(B * S, m)).reshape(B, S, n)
    bias0 = torch.randn(B, S, generator=g, dtype=torch.float64).to(dtype)
    bias, bh, mag = bias0.clone(), bias0.clone(), torch.zeros(B, S, dtype=dtype)
    e = np.empty(0, dtype=np.float32 if dtype == torch.float32 else np.float64)
    _C.affine_center(lam, new, ce.v, ce.c, ce.w, bias,
                     mag, bh if two else e)
    if not two:
        bh = bias
    for s_ in range(B):
        for q in range(S):
            lr = [Fr(float(v)) for v in lam[s_, q]]
            nr = [Fr(float(v)) for v in new[s_, q]]
            for vert in itertools.product((0, 1, 2), repeat=n):
                x = [Fr(float(l[s_, k] if t == 0 else (u[s_, k] if t == 1 else c[s_, k]))) for k, t in enumerate(vert)]
                y = [Fr(float(b[i])) + sum(Fr(float(W[i, k])) * x[k] for k in range(n)) for i in range(m)]
                exact = Fr(float(bias0[s_, q])) + sum(a * yi for a, yi in zip(lr, y))
                lin = sum(a * xk for a, xk in zip(nr, x))
                assert lin + Fr(float(bias[s_, q])) - Fr(float(mag[s_, q])) <= exact
                assert lin + Fr(float(bh[s_, q])) + Fr(float(mag[s_, q])) >= exact
    # and the mag is small: nowhere near the magnitude form's gamma * |Lam| |W| max|x| (1e3-sized values)
    if dtype == torch.float32:
        m_in = torch.maximum(l.abs(), u.abs()).double()
        mag_form = 1e-3 * torch.einsum("bsm,mn,bn->bs", lam.double().abs(), W.abs(), m_in)
        assert (mag.double() < 0.01 * mag_form).all()


@pytest.mark.parametrize("two", [False, True])
@pytest.mark.parametrize("block_rows", [1, 4, 64])
def test_fused_centre_mode_equals_the_unfused_kernels(two: bool, block_rows: int) -> None:
    """act_dense_backward in centre mode == backward_act, the transposed product, then affine_center."""
    from fastcert.layers.base import interval_dense_center

    g = torch.Generator().manual_seed(13)
    B, S, n, n_in = 3, 5, 12, 7
    W = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    L = Dense(W, torch.randn(n, generator=g, dtype=torch.float64), (n_in,))
    xl = torch.randn(B, n_in, generator=g, dtype=torch.float64)
    _, _, ce = interval_dense_center(L, Box(xl, xl + 0.1), 1e-5)
    lam = torch.randn(B, S, n, generator=g, dtype=torch.float64)
    ls, us = torch.rand(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    if two:
        ls = us.clone()
    ub, zm = torch.randn(B, n, generator=g, dtype=torch.float64), torch.rand(B, n, generator=g, dtype=torch.float64)
    e = np.empty(0)
    st = lambda: (torch.randn(B, S, generator=torch.Generator().manual_seed(9), dtype=torch.float64),  # noqa: E731
                  torch.zeros(B, S, dtype=torch.float64),
                  torch.randn(B, S, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    bias1, mag1, bh1 = st()
    mid = torch.empty(B, S, n, dtype=torch.float64)
    _C.backward_act(lam, ls, us, e, ub, zm, mid, bias1,
                    mag1, 1e-7, 1e-6, bh1 if two else e)
    out1 = L.backward(mid.reshape(B * S, n)).reshape(B, S, n_in)
    _C.affine_center(mid, out1, ce.v, ce.c, ce.w, bias1,
                     mag1, bh1 if two else e)
    bias2, mag2, bh2 = st()
    out2 = torch.empty(B, S, n_in, dtype=torch.float64)
    work = np.empty(block_rows * n * max(1, _C.omp_max_threads()))
    _C.act_dense_backward(lam, ls, us, ub, zm, 1e-7, 1e-6,
                          L.params(torch.float64).W, e, ce.w, 1.0, 0.0, out2,
                          bias2, mag2, bh2 if two else e, block_rows, work,
                          ce.v, ce.c)
    assert torch.allclose(out2, out1, rtol=1e-12, atol=1e-12)
    assert torch.allclose(bias2, bias1, rtol=1e-12, atol=1e-12)
    assert torch.allclose(mag2, mag1, rtol=1e-6, atol=1e-15)  # the same terms, summed in another order
    assert (mag2 > 0).all()
    if two:
        assert torch.allclose(bh2, bh1, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="centre mode"):
        _C.act_dense_backward(lam, ls, us, ub, zm, 1e-7, 1e-6,
                              L.params(torch.float64).W, L.params(torch.float64).bias,
                              ce.w, 1.0, 0.0, out2, bias2, mag2, e, block_rows,
                              work, ce.v, ce.c)


def test_conv_backward_error_within_its_nested_depth() -> None:
    """The float32 transposed convolution's error stays within gamma_{back_depth} |Lam| conv^T |W|, with
    back_depth = OC + KH*KW + 1 (a GEMM over OC, then col2im's sequential adds), not OC*KH*KW; on
    entries of one sign (no cancellation to hide the error) and many rows."""
    from fastcert.rounding import gamma_n

    g = torch.Generator().manual_seed(14)
    W = torch.rand(64, 3, 5, 5, generator=g, dtype=torch.float64) + 0.5
    L = Conv2d(W, None, (1, 1), (2, 2), (3, 12, 12))
    lam = torch.rand(40, L.n_out, generator=g, dtype=torch.float64) + 0.5
    got = L.backward(lam.float().contiguous()).double()
    exact = L.backward(lam.float().double().contiguous())  # float64: ~1e-16, far below the float32 error
    mag = exact.abs()  # every entry positive: |Lam| conv^T |W| itself
    err = (got - exact).abs()
    assert L.back_depth == 64 + 25 + 1
    assert (err <= gamma_n(L.back_depth, torch.float32) * mag).all()


def test_kernels_take_tensor_and_buffer_views_never_converting() -> None:
    """Every certify kernel takes pointer + shape views (View<T>): a CPU tensor or a C-contiguous buffer of
    exactly its dtype, written in place; a wrong dtype, a non-contiguous tensor or one on another device is
    refused (TypeError), never copied or converted."""
    l = torch.tensor([[-1.0, 0.5, -2.0]])
    u = torch.tensor([[1.0, 2.0, -1.0]])
    lo, hi = torch.empty_like(l), torch.empty_like(u)
    _C.relu_interval(l, u, lo, hi)
    assert lo.tolist() == [[0.0, 0.5, 0.0]] and hi.tolist() == [[1.0, 2.0, 0.0]]
    ln, un, lon, hin = (t.numpy().copy() for t in (l, u, lo, hi))
    lon[:] = 7
    _C.relu_interval(ln, un, lon, hin)  # the buffer protocol (a numpy array): same kernel, same result
    assert lon.tolist() == [[0.0, 0.5, 0.0]]
    with pytest.raises(TypeError):
        _C.relu_interval(l, u.double(), lo, hi)  # mixed dtypes: no overload, no conversion
    with pytest.raises(TypeError, match="non-contiguous"):
        _C.relu_interval(l, u, lo, torch.empty(1, 6)[:, ::2])
    with pytest.raises(TypeError, match="device 'meta'"):
        _C.relu_interval(l, u, lo, torch.empty(1, 3, device="meta"))
    ro = np.zeros((1, 3), dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _C.relu_interval(ln, un, lon, ro)
