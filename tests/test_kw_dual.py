"""The Kolter-Wong dual bound: an independent float64 reference, checked three ways.

1. ``fastcert.reference.kw_dual`` itself: hand-computed cases, exactness on ReLU-free
   networks, soundness by sampling, conv adjoint vs an unrolled dense network, batching of
   ``eps`` and ``C``.
2. The reference vs ``convex_adversarial.DualNetwork`` (the authors' code, pip package
   ``convex-adversarial==0.4.4``) in float64, L-inf (its ``'l1'`` norm type, named after the dual
   norm) and L2 (``'l2'``, exact without projections). convex_adversarial has no L1 ball.
3. ``fastcert.bounds`` vs both: ``method="fastlin"`` (same slopes as KW, so the same bound) must
   equal the reference to 1e-9 relative in float64 for L-inf, L2 and L1 balls, ``method="kw"`` must
   equal convex_adversarial (and the reference, for L1) to 1e-6 relative. fastcert adds a tiny
   rigorous floating-point slack, hence tolerances rather than exact equality. How much tighter
   ``method="crown"`` is than KW is printed (run with ``-s``), never asserted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch import nn

import fastcert
from fastcert.reference.kw_dual import kw_dual_bounds, kw_dual_lower, kw_dual_upper, kw_preactivation_bounds

B = 3  # batch size of every random case
S = 4  # number of spec rows of the random C

# --------------------------------------------------------------------------------------------
# Random networks (float64, seeded). ``ca_ok``: convex_adversarial's conv adjoint has no
# output_padding, so it only handles convs whose transpose reproduces the input size.
# --------------------------------------------------------------------------------------------


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def _mlp_deep() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 10), nn.ReLU(),
        nn.Linear(10, 10, bias=False), nn.ReLU(),
        nn.Linear(10, 10), nn.ReLU(),
        nn.Linear(10, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip


def _cnn() -> nn.Sequential:  # 1x7x7 -> 4x4x4 -> 6x4x4
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(96, 12), nn.ReLU(), nn.Linear(12, 5),
    )  # fmt: skip


def _cnn_rect() -> nn.Sequential:  # 2x6x6 -> 3x6x3 -> 4x5x2
    return nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.Conv2d(3, 4, 2), nn.ReLU(),
        nn.Flatten(), nn.Linear(40, 10), nn.ReLU(), nn.Linear(10, 3),
    )  # fmt: skip


def _cnn_outpad() -> nn.Sequential:  # 1x8x8 -> 3x4x4 -> 4x1x1: both transposes need output_padding
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3),
    )  # fmt: skip


# name -> (builder, input shape, convex_adversarial can handle it)
CASES: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...], bool]] = {
    "mlp": (_mlp, (5,), True),
    "mlp_deep": (_mlp_deep, (3, 2, 2), True),
    "cnn": (_cnn, (1, 7, 7), True),
    "cnn_rect": (_cnn_rect, (2, 6, 6), True),
    "cnn_outpad": (_cnn_outpad, (1, 8, 8), False),
}
# radius per norm, chosen so that every case has both stable and unstable neurons
EPS = {"inf": 0.08, "2": 0.3, "1": 0.6}
SEEDS = (0, 1)
NORMS = ("inf", "2", "1")
CA_NORM = {"inf": "l1", "2": "l2"}  # convex_adversarial's norm_type names the dual norm


def make_case(name: str, seed: int, shared_c: bool = False):
    builder, in_shape, _ = CASES[name]
    g = torch.manual_seed(1000 * seed + sum(map(ord, name)))
    net = builder().double().eval()
    x = torch.randn(B, *in_shape, dtype=torch.float64, generator=g)
    k = net(x).shape[1]
    c = torch.randn(S, k, dtype=torch.float64, generator=g)
    if not shared_c:
        c = c.expand(B, S, k) + 0.5 * torch.randn(B, S, k, dtype=torch.float64, generator=g)
    return net, x, c


def scale_of(t: torch.Tensor) -> float:
    return max(1.0, t.abs().max().item())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    sc = scale_of(expected)
    ok = torch.isclose(actual, expected, rtol=rel, atol=rel * sc)
    if not bool(ok.all()):
        err = (actual - expected).abs().max().item()
        raise AssertionError(
            f"{what}: max |diff| {err:.3e} (scale {sc:.3e}, rel tol {rel:g})\nactual\n{actual}\nexpected\n{expected}"
        )


@functools.lru_cache(maxsize=None)
def ref_bounds(name: str, seed: int, norm: str, shared_c: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached reference (lower, upper) of a case (computed once, shared by the tests)."""
    net, x, c = make_case(name, seed, shared_c)
    return kw_dual_bounds(net, x, EPS[norm], norm, c)


ALL = [(n, s) for n in CASES for s in SEEDS]
IDS = [f"{n}-s{s}" for n, s in ALL]

# ============================================================================================
# 1. The reference on its own
# ============================================================================================


def test_reference_hand_computed_relu():
    """f(x) = relu(x), x in [-1, 3]: l=-1, u=3, d=3/4; KW gives [d*l, d*(u-l)] = [-0.75, 3]."""
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
    x = torch.ones(1, 1, dtype=torch.float64)
    for norm in NORMS:  # in 1-D all balls coincide
        (l, u), = kw_preactivation_bounds(net, x, 2.0, norm)  # fmt: skip
        assert l.item() == pytest.approx(-1.0) and u.item() == pytest.approx(3.0)
        assert kw_dual_lower(net, x, 2.0, norm).item() == pytest.approx(-0.75, abs=1e-15)
        assert kw_dual_upper(net, x, 2.0, norm).item() == pytest.approx(3.0, abs=1e-15)
    # stable cases: active (identity) and inactive (zero)
    assert kw_dual_lower(net, x, 0.5).item() == pytest.approx(0.5, abs=1e-15)
    assert kw_dual_upper(net, -x, 0.5).item() == 0.0


@pytest.mark.parametrize("norm", NORMS)
def test_reference_exact_on_affine_network(norm):
    """Without ReLU the dual bound is the exact minimum, attained at an explicit point."""
    g = torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)).double()
    x = torch.randn(B, 5, dtype=torch.float64, generator=g)
    c = torch.randn(B, 2, 3, dtype=torch.float64, generator=g)
    eps = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    low = kw_dual_lower(net, x, eps, norm, c)
    w = net[1].weight.detach() @ net[0].weight.detach()
    grad = c @ w  # [B, S, n]: gradient of each spec row
    if norm == "inf":
        step = grad.sign()
    elif norm == "2":
        step = grad / grad.norm(dim=2, keepdim=True)
    else:
        j = grad.abs().argmax(dim=2, keepdim=True)
        step = torch.zeros_like(grad).scatter(2, j, grad.gather(2, j).sign())
    x_star = x.unsqueeze(1) - eps.view(B, 1, 1) * step
    val = torch.einsum("bsk,bsk->bs", c, net(x_star))
    assert_close(low, val, 1e-12, f"exact affine minimum ({norm})")


def _ball_samples(x: torch.Tensor, eps: float, norm: str, n: int, g: torch.Generator) -> torch.Tensor:
    """n points of the ball around each x (including boundary and vertex points): [B, n, *shape]."""
    b, dim = x.shape[0], x[0].numel()
    if norm == "inf":
        d = torch.rand(b, n, dim, dtype=x.dtype, generator=g) * 2 - 1
        d[:, : n // 2] = d[:, : n // 2].sign()
    elif norm == "2":
        d = torch.randn(b, n, dim, dtype=x.dtype, generator=g)
        d = d / d.norm(dim=2, keepdim=True) * torch.rand(b, n, 1, dtype=x.dtype, generator=g) ** (1 / dim)
    else:
        d = torch.randn(b, n, dim, dtype=x.dtype, generator=g) ** 3
        d = d / d.abs().sum(dim=2, keepdim=True)
        eye = torch.eye(dim, dtype=x.dtype)
        d[:, : 2 * dim] = torch.cat([eye, -eye])
    return x.unsqueeze(1) + eps * d.reshape(b, n, *x.shape[1:])


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(CASES))
def test_reference_sound_by_sampling(name, norm):
    net, x, c = make_case(name, 0)
    eps = EPS[norm]
    low, up = ref_bounds(name, 0, norm)
    xs = _ball_samples(x, eps, norm, 400, torch.Generator().manual_seed(3))
    ys = torch.einsum("bsk,bnk->bns", c, net(xs.flatten(0, 1)).reshape(B, xs.shape[1], -1))
    assert bool((ys >= low.unsqueeze(1) - 1e-12).all()), "reference lower bound violated by a sample"
    assert bool((ys <= up.unsqueeze(1) + 1e-12).all()), "reference upper bound violated by a sample"
    # every case exercises the relaxation: some unstable and some stable neurons
    pre = kw_preactivation_bounds(net, x, eps, norm)
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre)
    total = sum(l.numel() for l, _ in pre)
    assert 0 < unstable < total, f"{name}/{norm}: {unstable}/{total} unstable neurons, retune EPS"


def _unroll(net: nn.Sequential, in_shape: tuple[int, ...]) -> nn.Sequential:
    """The same function as a flat MLP: each Conv2d becomes the equivalent dense Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    z = torch.zeros(1, *in_shape, dtype=torch.float64)
    for layer in net:
        out = layer(z)
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            n = z[0].numel()
            basis = torch.eye(n, dtype=torch.float64).reshape(n, *z.shape[1:])
            bias = layer(torch.zeros_like(z)).reshape(-1)
            lin = nn.Linear(n, out[0].numel()).double()
            with torch.no_grad():
                lin.weight.copy_((layer(basis).reshape(n, -1) - bias).T)
                lin.bias.copy_(bias)
            layers.append(lin)
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU())
        z = out
    return nn.Sequential(*layers)


@pytest.mark.parametrize("norm", NORMS)
def test_reference_conv_adjoint_matches_unrolled(norm):
    """Conv via conv_transpose2d (output_padding, dilation, rectangular) == the dense unrolling."""
    torch.manual_seed(11)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3),
    ).double()  # fmt: skip
    x = torch.randn(B, 2, 8, 7, dtype=torch.float64)
    dense = _unroll(net, (2, 8, 7))
    assert torch.allclose(net(x), dense(x), atol=1e-12)
    c = torch.randn(B, S, 3, dtype=torch.float64)
    eps = EPS[norm]
    assert_close(kw_dual_lower(net, x, eps, norm, c), kw_dual_lower(dense, x, eps, norm, c), 1e-12, "conv vs dense")
    pre_conv, pre_dense = kw_preactivation_bounds(net, x, eps, norm), kw_preactivation_bounds(dense, x, eps, norm)
    for (l1, u1), (l2, u2) in zip(pre_conv, pre_dense):
        assert_close(l1.flatten(1), l2, 1e-12, "conv vs dense l")
        assert_close(u1.flatten(1), u2, 1e-12, "conv vs dense u")


def test_reference_batching_of_eps_and_c():
    net, x, c = make_case("cnn", 1)
    eps = torch.tensor([0.02, 0.08, 0.15], dtype=torch.float64)
    full = kw_dual_lower(net, x, eps, "inf", c)
    for i in range(B):
        one = kw_dual_lower(net, x[i : i + 1], eps[i].item(), "inf", c[i])
        assert_close(full[i : i + 1], one, 1e-13, f"sample {i} alone")
    c2 = c[0]
    shared = kw_dual_lower(net, x, 0.08, "inf", c2)
    expanded = kw_dual_lower(net, x, 0.08, "inf", c2.expand(B, *c2.shape))
    assert_close(shared, expanded, 1e-15, "[S,K] vs [B,S,K]")
    # the one-pass upper bound of kw_dual_bounds is literally -lower(-C)
    both = kw_dual_bounds(net, x, 0.08, "inf", c)
    assert_close(both[0], kw_dual_lower(net, x, 0.08, "inf", c), 1e-15, "kw_dual_bounds lower")
    assert_close(both[1], kw_dual_upper(net, x, 0.08, "inf", c), 1e-13, "kw_dual_bounds upper vs -lower(-C)")
    low, up = kw_dual_lower(net, x, 0.08, "inf"), kw_dual_upper(net, x, 0.08, "inf")
    fx = net(x)
    assert low.shape == fx.shape and low.dtype == torch.float64
    assert bool((low <= fx).all() and (fx <= up).all())


# ============================================================================================
# 2. The reference vs convex_adversarial (the authors' implementation)
# ============================================================================================


def _convex_adversarial():
    try:
        from convex_adversarial import DualNetwork
    except Exception as e:  # pragma: no cover - depends on the environment
        why = f"{type(e).__name__}: {e}"
        pytest.skip(f"convex_adversarial is not importable ({why}); pip install convex-adversarial==0.4.4")
    return DualNetwork


def ca_lower(net: nn.Sequential, x: torch.Tensor, eps, norm: str, c: torch.Tensor) -> torch.Tensor:
    dual_network = _convex_adversarial()
    c3 = c if c.dim() == 3 else c.expand(x.shape[0], *c.shape)
    with torch.no_grad():
        return dual_network(net.double(), x.double(), eps, norm_type=CA_NORM[norm])(c3.double())


@functools.lru_cache(maxsize=None)
def ca_bounds(name: str, seed: int, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached convex_adversarial (lower, upper) of a case."""
    net, x, c = make_case(name, seed)
    both = ca_lower(net, x, EPS[norm], norm, torch.cat([c, -c], dim=1))
    return both[:, :S], -both[:, S:]


CA_CASES = [(n, s) for n, s in ALL if CASES[n][2]]
CA_IDS = [f"{n}-s{s}" for n, s in CA_CASES]


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("name,seed", CA_CASES, ids=CA_IDS)
def test_reference_vs_convex_adversarial(name, seed, norm):
    ref_lo, ref_up = ref_bounds(name, seed, norm)
    ca_lo, ca_up = ca_bounds(name, seed, norm)
    assert_close(ref_lo, ca_lo, 1e-6, "reference vs CA lower")
    assert_close(ref_up, ca_up, 1e-6, "reference vs CA upper")


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_reference_vs_convex_adversarial_eps_per_sample(norm):
    # convex_adversarial 0.4.4 mis-broadcasts a tensor epsilon in InfBall.objective, so it is
    # called per sample with a float epsilon
    net, x, c = make_case("cnn", 1)
    eps = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64) * EPS[norm]
    ca = torch.cat([ca_lower(net, x[i : i + 1], eps[i].item(), norm, c[i : i + 1]) for i in range(B)])
    assert_close(kw_dual_lower(net, x, eps, norm, c), ca, 1e-6, "reference vs CA, eps [B]")


# ============================================================================================
# 3. fastcert.bounds vs the reference and convex_adversarial
# ============================================================================================


def fc_bounds(net, x, eps, norm, method, c):
    res = fastcert.bounds(net, x, eps, norm=norm, method=method, C=c)
    for t in (res.lower, res.upper):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float64, f"{method}: expected float64 tensors"
        assert t.shape == (x.shape[0], c.shape[-2]), f"{method}: shape {tuple(t.shape)}"
    return res.lower, res.upper


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,seed", ALL, ids=IDS)
def test_fastlin_equals_reference(name, seed, norm):
    net, x, c = make_case(name, seed)
    eps = EPS[norm]
    lo, up = fc_bounds(net, x, eps, norm, "fastlin", c)
    ref_lo, ref_up = ref_bounds(name, seed, norm)
    assert_close(lo, ref_lo, 1e-9, f"fastlin lower vs reference ({name}, {norm})")
    assert_close(up, ref_up, 1e-9, f"fastlin upper vs reference ({name}, {norm})")


@pytest.mark.parametrize("norm", NORMS)
def test_fastlin_equals_reference_shared_c(norm):
    net, x, c = make_case("cnn", 0, shared_c=True)  # C: [S, K]
    eps = EPS[norm]
    lo, up = fc_bounds(net, x, eps, norm, "fastlin", c)
    ref_lo, ref_up = ref_bounds("cnn", 0, norm, shared_c=True)
    assert_close(lo, ref_lo, 1e-9, f"fastlin lower, C [S,K] ({norm})")
    assert_close(up, ref_up, 1e-9, f"fastlin upper, C [S,K] ({norm})")


@pytest.mark.parametrize("name", list(CASES))
def test_fastlin_float32_close_to_reference(name):
    """float32 fastcert on float32 weights/inputs (exact in float64) stays within 1e-3 (relative
    to the bound scale) of the float64 KW value of that same network; typical gap ~1e-5..1e-4."""
    net, x, c = make_case(name, 0)
    net, x, c = net.float(), x.float(), c.float()
    res = fastcert.bounds(net, x, EPS["inf"], norm="inf", method="fastlin", C=c)
    assert res.lower.dtype == torch.float32 and res.upper.dtype == torch.float32
    ref_lo, ref_up = kw_dual_bounds(net, x.double(), EPS["inf"], "inf", c.double())
    assert_close(res.lower.double(), ref_lo, 1e-3, f"float32 fastlin lower ({name})")
    assert_close(res.upper.double(), ref_up, 1e-3, f"float32 fastlin upper ({name})")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,seed", ALL, ids=IDS)
def test_fastcert_kw_equals_convex_adversarial(name, seed, norm):
    net, x, c = make_case(name, seed)
    eps = EPS[norm]
    lo, up = fc_bounds(net, x, eps, norm, "kw", c)
    if norm in CA_NORM and CASES[name][2]:
        (ref_lo, ref_up), who = ca_bounds(name, seed, norm), "convex_adversarial"
    else:  # no L1 ball / no output_padding in convex_adversarial: the reference (== CA elsewhere)
        (ref_lo, ref_up), who = ref_bounds(name, seed, norm), "reference"
    assert_close(lo, ref_lo, 1e-6, f"fastcert kw lower vs {who} ({name}, {norm})")
    assert_close(up, ref_up, 1e-6, f"fastcert kw upper vs {who} ({name}, {norm})")


def test_report_crown_vs_kw():
    """Printed only (pytest -s): how CROWN's bounds compare with KW's, relative to the KW width
    ``upper - lower``. CROWN's adaptive lower slopes do not dominate KW's row by row, so it is
    usually, not always, tighter; nothing is asserted."""
    lines = []
    for norm in NORMS:
        for name in CASES:
            net, x, c = make_case(name, 0)
            kw_lo, kw_up = ref_bounds(name, 0, norm)
            cr_lo, cr_up = fc_bounds(net, x, EPS[norm], norm, "crown", c)
            width = (kw_up - kw_lo).clamp(min=1e-300)
            gain = (cr_lo - kw_lo) / width
            shrink = ((cr_up - cr_lo) / width).mean().item()
            looser = (cr_lo < kw_lo).double().mean().item()
            lines.append(
                f"  {norm:>3} {name:<11} lower gain mean {gain.mean().item():+.3f} min {gain.min().item():+.3f}"
                f"  width crown/kw {shrink:.3f}  crown lower looser on {looser:.0%} of rows"
            )
    print("\nCROWN vs KW (gains relative to the KW interval width):\n" + "\n".join(lines))
