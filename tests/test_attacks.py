"""``fastcert.attacks``: PGD / FGSM / minimize_linear.

- Every returned point lies in the region (ball ∩ box), checked in exact rational arithmetic
  (``fractions.Fraction``), for L-inf / L2 / L1, float32 / float64, with and without a box (scalar,
  per-feature, per-sample), per-sample eps including 0 and tiny radii.
- Reported margins / success flags / values equal a re-run of the model at ``x_adv``.
- Determinism under a seed; the global RNG is untouched; nothing returned requires grad.
- Linear models, where the exact minimal adversarial distance is known in closed form (with a box:
  a one-dimensional monotone equation solved to 1e-13): PGD succeeds at 1.01x that distance and
  never below it; targeted attacks reach exactly the targets the closed form says are reachable.
- The projections equal an independent bisection reference.
- Attacks never beat fastcert's certified margin lower bounds (CROWN) on random small ReLU nets,
  untargeted and per class for targeted attacks; minimize_linear stays inside ``bounds``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import fastcert
import numpy as np
import pytest
import torch
from fastcert import attacks
from fastcert.attacks.projections import proj_l1, proj_l2
from strategies import one_torch_thread
from torch import nn

NORMS = ("inf", "2", "1")


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with one_torch_thread():
        yield


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int, seed: int, dtype=torch.float64) -> nn.Sequential:
    g = _gen(seed)
    mods: list[nn.Module] = []
    prev = n_in
    for h in hidden:
        lin = nn.Linear(prev, h)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(h, prev, generator=g) * (1.5 / math.sqrt(prev)))
            lin.bias.copy_(torch.randn(h, generator=g) * 0.3)
        mods += [lin, nn.ReLU()]
        prev = h
    lin = nn.Linear(prev, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, prev, generator=g) / math.sqrt(prev))
        lin.bias.copy_(torch.randn(n_out, generator=g) * 0.1)
    mods.append(lin)
    return nn.Sequential(*mods).to(dtype).eval()


def _cnn(seed: int, dtype=torch.float64) -> nn.Sequential:  # [1, 5, 5] -> 3
    g = _gen(seed)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    with torch.no_grad():
        for prm in m.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.5)
    return m.to(dtype).eval()


def _linear(W: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return lin.eval()


# ------------------------------------------------------------------------------------------------
# exact membership (rational arithmetic)
# ------------------------------------------------------------------------------------------------


def _exact_inside(p: torch.Tensor, x: torch.Tensor, eps, norm: str, x_min=None, x_max=None) -> list[bool]:
    """p, x: [B, *shape]; eps scalar / [B]; x_min / x_max None or broadcastable to x (float64 values)."""
    B = x.shape[0]
    e = torch.as_tensor(eps, dtype=torch.float64).expand(B)
    lo = None if x_min is None else torch.broadcast_to(torch.as_tensor(x_min, dtype=torch.float64), x.shape)
    hi = None if x_max is None else torch.broadcast_to(torch.as_tensor(x_max, dtype=torch.float64), x.shape)
    out = []
    for i in range(B):
        pi = [Fraction(float(v)) for v in p[i].double().reshape(-1)]
        xi = [Fraction(float(v)) for v in x[i].double().reshape(-1)]
        ok = all(math.isfinite(float(v)) for v in p[i].double().reshape(-1))
        if lo is not None:
            ok &= all(a >= Fraction(float(v)) for a, v in zip(pi, lo[i].reshape(-1)))
        if hi is not None:
            ok &= all(a <= Fraction(float(v)) for a, v in zip(pi, hi[i].reshape(-1)))
        d = [abs(a - b) for a, b in zip(pi, xi)]
        E = Fraction(float(e[i]))
        if norm == "inf":
            ok &= max(d) <= E
        elif norm == "2":
            ok &= sum(v * v for v in d) <= E * E
        else:
            ok &= sum(d) <= E
        out.append(bool(ok))
    return out


def _margins(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    fy = logits.gather(1, y[:, None]).squeeze(1)
    if t is not None:
        return fy - logits.gather(1, t[:, None]).squeeze(1)
    return fy - logits.scatter(1, y[:, None], -math.inf).amax(1)


# ------------------------------------------------------------------------------------------------
# every returned point lies in the region; reported values are the model's at x_adv
# ------------------------------------------------------------------------------------------------

BOXES = ("none", "unit", "feature", "sample")


def _box(kind: str, x: torch.Tensor, g: torch.Generator):
    if kind == "none":
        return None, None
    if kind == "unit":
        return 0.0, 1.0
    if kind == "feature":  # float64 per-feature bounds, some touching x, not representable in float32
        x64 = x.double()
        lo = x64.amin(0) - 0.05 * torch.rand(x.shape[1:], generator=g, dtype=torch.float64)
        hi = x64.amax(0) + 0.05 * torch.rand(x.shape[1:], generator=g, dtype=torch.float64)
        lo = torch.where(torch.rand(x.shape[1:], generator=g) < 0.3, x64.amin(0), lo)
        return lo, hi
    x64 = x.double()  # per-sample boxes [B, *shape]
    lo = x64 - 0.1 * torch.rand(x.shape, generator=g, dtype=torch.float64)
    hi = x64 + 0.1 * torch.rand(x.shape, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(x.shape, generator=g) < 0.2, x64, lo), hi


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("norm", NORMS)
def test_points_inside_region_and_values_reevaluated(norm: str, box: str, dtype: torch.dtype) -> None:
    g = _gen(hash((norm, box, str(dtype))) % 2**31)
    B = 5
    x = torch.rand(B, 1, 5, 5, generator=g, dtype=torch.float64)
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 1 / 3])  # on the unit box's faces, and not representable exactly
    x = x.to(dtype)
    mult = {"inf": 0.15, "2": 0.6, "1": 2.0}[norm]
    eps = torch.tensor([0.0, 1e-12, 0.1 / 3, 1.0, 7.0], dtype=torch.float64) * mult  # per sample, incl. 0 / tiny
    x_min, x_max = _box(box, x, g)
    model = _cnn(3, dtype)
    res = attacks.pgd(model, x, eps, norm, steps=15, restarts=2, x_min=x_min, x_max=x_max, seed=1)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == dtype
    assert all(_exact_inside(res.x_adv, x, eps, norm, x_min, x_max))
    assert torch.equal(res.x_adv[0], x[0])  # eps = 0: the region is {x}
    with torch.no_grad():
        logits = model(res.x_adv)
    assert torch.equal(logits, res.logits)
    assert torch.equal(_margins(logits, res.labels), res.margin)
    assert torch.equal(res.success, res.margin < 0)
    assert torch.equal(res.success, logits.argmax(1) != res.labels) or (res.margin == 0).any()
    # targeted and fgsm results are inside too
    t = (res.labels + 1) % 3
    rt = attacks.pgd(model, x, eps, norm, targets=t, steps=10, restarts=2, x_min=x_min, x_max=x_max, loss="ce")
    assert all(_exact_inside(rt.x_adv, x, eps, norm, x_min, x_max))
    assert torch.equal(rt.margin, _margins(rt.logits, rt.labels, t)) and torch.equal(rt.success, rt.margin < 0)
    rf = attacks.fgsm(model, x, eps, norm, x_min=x_min, x_max=x_max)
    assert all(_exact_inside(rf.x_adv, x, eps, norm, x_min, x_max))
    C = torch.randn(2, 3, generator=g, dtype=torch.float64)
    rl = attacks.minimize_linear(model, x, eps, norm, C, steps=10, x_min=x_min, x_max=x_max)
    assert rl.x_adv.shape == (B, 2, 1, 5, 5) and rl.values.shape == (B, 2)
    for s in range(2):
        assert all(_exact_inside(rl.x_adv[:, s], x, eps, norm, x_min, x_max))
    with torch.no_grad():
        lg = model(rl.x_adv.reshape(B * 2, 1, 5, 5)).reshape(B, 2, 3)
    assert torch.equal(lg, rl.logits)
    assert torch.equal((lg * rl.C).sum(-1), rl.values)


@pytest.mark.parametrize("norm", NORMS)
def test_large_eps_and_flat_mlp_float32(norm: str) -> None:
    """Huge radii (the box binds), float32 rounding everywhere: still exactly inside."""
    g = _gen(11)
    x = torch.rand(4, 20, generator=g).float()
    model = _mlp(20, (16,), 4, seed=5, dtype=torch.float32)
    for eps in (1e3, 3.0):
        res = attacks.pgd(model, x, eps, norm, steps=8, restarts=2, x_min=0.0, x_max=1.0)
        assert all(_exact_inside(res.x_adv, x, eps, norm, 0.0, 1.0))
        res = attacks.pgd(model, x, eps / 1e3, norm, steps=8, restarts=2)
        assert all(_exact_inside(res.x_adv, x, eps / 1e3, norm))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", NORMS)
def test_python_float_arguments_keep_their_float64_value(norm: str, dtype: torch.dtype) -> None:
    """Scalar eps / x_min / x_max given as Python floats must be used as the float64 values they
    are, never through torch's default float32 dtype (which rounds these ones outwards)."""
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    eps = f32(0.038 * {"inf": 1, "2": 4, "1": 10}[norm]) * (1 - 1e-12)  # just below a float32 number
    x_min, x_max = f32(0.1) + 1e-12, f32(0.9) - 1e-12
    assert f32(eps) > eps and f32(x_min) < x_min and f32(x_max) > x_max  # float32 would enlarge the region
    g = _gen(31)
    x = (x_min + (x_max - x_min) * torch.rand(6, 12, generator=g, dtype=torch.float64)).to(dtype)
    x = torch.clamp(x, torch.nextafter(torch.tensor(x_min, dtype=dtype), torch.tensor(1.0, dtype=dtype)),
                    torch.nextafter(torch.tensor(x_max, dtype=dtype), torch.tensor(0.0, dtype=dtype)))
    x[0, :6] = x[0, 0]  # some coordinates on the box faces where representable
    model = _mlp(12, (16,), 3, seed=31, dtype=dtype)
    for kw in (dict(), dict(x_min=x_min, x_max=x_max)):
        res = attacks.pgd(model, x, eps, norm, steps=10, restarts=2, **kw)
        assert all(_exact_inside(res.x_adv, x, eps, norm, kw.get("x_min"), kw.get("x_max")))
        big = attacks.pgd(model, x, 50.0, norm, steps=5, **kw)  # the box binds everywhere
        assert all(_exact_inside(big.x_adv, x, 50.0, norm, kw.get("x_min"), kw.get("x_max")))
        rl = attacks.minimize_linear(model, x, eps, norm, torch.eye(3), steps=5, **kw)
        for s in range(3):
            assert all(_exact_inside(rl.x_adv[:, s], x, eps, norm, kw.get("x_min"), kw.get("x_max")))


def test_success_agrees_with_rerunning_each_sample() -> None:
    g = _gen(2)
    model = _mlp(8, (32, 32), 5, seed=2)
    x = torch.rand(16, 8, generator=g, dtype=torch.float64)
    res = attacks.pgd(model, x, 0.15, "inf", steps=20, restarts=2)
    assert res.success.any() and not res.success.all()
    for i in range(16):  # one sample at a time (another batch size, same verdict)
        with torch.no_grad():
            li = model(res.x_adv[i:i + 1])
        assert bool(li.argmax(1) != res.labels[i]) == bool(res.success[i])
        assert torch.allclose(li[0], res.logits[i], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# determinism, RNG, gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_deterministic_under_seed_and_global_rng_untouched(norm: str) -> None:
    g = _gen(3)
    model = _mlp(6, (24,), 3, seed=3)
    x = torch.rand(6, 6, generator=g, dtype=torch.float64)
    state = torch.random.get_rng_state()
    kw = dict(steps=5, restarts=3, x_min=0.0, x_max=1.0)
    a = attacks.pgd(model, x, 0.4, norm, seed=7, **kw)
    torch.manual_seed(12345)  # the global RNG must play no part
    b = attacks.pgd(model, x, 0.4, norm, seed=7, **kw)
    torch.random.set_rng_state(state)
    for f in ("x_adv", "margin", "success", "logits"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    state = torch.random.get_rng_state()
    attacks.pgd(model, x, 0.4, norm, seed=8, **kw)
    attacks.minimize_linear(model, x, 0.4, norm, torch.eye(3, dtype=torch.float64), restarts=2, steps=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(torch.random.get_rng_state(), state)
    # random search only (no steps): other seeds, other random starts
    a0 = attacks.pgd(model, x, 0.4, norm, seed=7, steps=0, restarts=4)
    c0 = attacks.pgd(model, x, 0.4, norm, seed=8, steps=0, restarts=4)
    assert not torch.equal(a0.x_adv, c0.x_adv)
    assert torch.equal(a0.x_adv, attacks.pgd(model, x, 0.4, norm, seed=7, steps=0, restarts=4).x_adv)
    # restarts = 1 starts at x: no randomness at all
    assert torch.equal(attacks.pgd(model, x, 0.4, norm, seed=1, steps=5).x_adv,
                       attacks.pgd(model, x, 0.4, norm, seed=2, steps=5).x_adv)


def test_no_grad_leaks_and_model_untouched() -> None:
    model = _mlp(5, (8,), 3, seed=4)
    model.train()  # no BatchNorm / Dropout: training mode is harmless and must be left as is
    x = torch.rand(3, 5, generator=_gen(4), dtype=torch.float64).requires_grad_(True)
    res = attacks.pgd(model, x, 0.1, "2", steps=3)
    assert model.training
    for t in (res.x_adv, res.margin, res.logits):
        assert not t.requires_grad and t.grad_fn is None
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert x.grad is None
    rl = attacks.minimize_linear(model, x, 0.1, "1", torch.ones(1, 3), steps=2)
    assert not rl.x_adv.requires_grad and not rl.values.requires_grad


# ------------------------------------------------------------------------------------------------
# closed forms on linear models
# ------------------------------------------------------------------------------------------------


def _bisect(f, lo: float, hi: float, iters: int = 200) -> float:
    """The root of an increasing function on [lo, hi] (float64 bisection to the last ulp)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return hi


def _best_decrease(v: np.ndarray, cap: np.ndarray, eps: float, norm: str) -> float:
    """max sum_i |v_i| t_i over 0 <= t_i <= cap_i, ||t||_norm <= eps (exact / 1-d bisection)."""
    av = np.abs(v)
    if norm == "inf":
        return float((av * np.minimum(eps, cap)).sum())
    if norm == "1":  # fractional knapsack: fill the largest |v_i| first
        left, tot = eps, 0.0
        for i in np.argsort(-av):
            take = min(cap[i], left)
            tot += av[i] * take
            left -= take
        return tot
    pos = av > 0
    if not pos.any():
        return 0.0
    if np.isfinite(cap[pos]).all() and np.sum(cap[pos] ** 2) <= eps * eps:  # every coordinate saturates
        return float((av[pos] * cap[pos]).sum())
    # t = min(lam |v|, cap) with ||t||_2 = eps; at lam = eps / min|v| the norm is >= eps
    lam = _bisect(lambda t: float(np.sum(np.minimum(t * av, cap) ** 2)) - eps * eps, 0.0,
                  2 * eps / av[pos].min())
    return float((av * np.minimum(lam * av, cap)).sum())


def _critical_eps(v: np.ndarray, m0: float, cap: np.ndarray, norm: str) -> float:
    """The smallest eps at which min over the region of m0 + v.d reaches 0 (inf if never)."""
    if np.isinf(cap).all():
        dual = {"inf": np.abs(v).sum(), "2": np.linalg.norm(v), "1": np.abs(v).max()}[norm]
        return m0 / dual
    if _best_decrease(v, cap, 1e6, norm) < m0:
        return math.inf
    return _bisect(lambda e: _best_decrease(v, cap, e, norm) - m0, 0.0, 1e6)


def _caps(v: np.ndarray, x: np.ndarray, lo, hi) -> np.ndarray:
    """Room from x to the box face in the direction that decreases v.d (i.e. -sign(v))."""
    if lo is None:
        return np.full_like(x, np.inf)
    return np.where(v > 0, x - lo, hi - x)


@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_linear_two_class_exact_distance(norm: str, box: bool) -> None:
    g = _gen(20 + NORMS.index(norm) + 3 * box)
    n, B = 6, 8
    W = torch.randn(2, n, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64) * 0.2
    model = _linear(W, b)
    x = torch.rand(B, n, generator=g, dtype=torch.float64)
    lo, hi = (0.0, 1.0) if box else (None, None)
    with torch.no_grad():
        f = model(x)
    y = f.argmax(1)
    crit = []
    for i in range(B):
        yi = int(y[i])
        v = (W[yi] - W[1 - yi]).numpy()
        m0 = float(f[i, yi] - f[i, 1 - yi])
        crit.append(_critical_eps(v, m0, _caps(v, x[i].numpy(), lo, hi), norm))
    crit_t = torch.tensor(crit, dtype=torch.float64)
    reach = torch.isfinite(crit_t)
    if box:
        assert reach.any()
    above = torch.where(reach, crit_t * 1.01, torch.full_like(crit_t, 5.0))
    below = torch.where(reach, crit_t * 0.99, torch.full_like(crit_t, 5.0))
    kw = dict(x_min=lo, x_max=hi, steps=60, restarts=2)
    r_above = attacks.pgd(model, x, above, norm, y, **kw)
    assert torch.equal(r_above.success, reach), (crit, r_above.margin)
    r_below = attacks.pgd(model, x, below, norm, y, **kw)
    assert not r_below.success.any()
    # the margins found are (nearly) the exact minima
    for i in range(B):
        yi = int(y[i])
        v = (W[yi] - W[1 - yi]).numpy()
        m0 = float(f[i, yi] - f[i, 1 - yi])
        exact = m0 - _best_decrease(v, _caps(v, x[i].numpy(), lo, hi), float(below[i]), norm)
        assert float(r_below.margin[i]) >= exact - 1e-12
        assert float(r_below.margin[i]) <= exact + 1e-3 * (1 + abs(exact))
    if not box and norm in ("inf", "2"):  # one FGSM step is optimal for a linear model without a box
        rf = attacks.fgsm(model, x, above, norm, y)
        assert torch.equal(rf.success, reach)


@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_linear_targeted_reachability(norm: str, box: bool) -> None:
    """3 classes: target t is reachable (f_t > f_y somewhere in the region) iff eps > its critical eps."""
    g = _gen(40 + NORMS.index(norm) + 3 * box)
    n, B, K = 5, 6, 3
    W = torch.randn(K, n, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64) * 0.2
    model = _linear(W, b)
    x = torch.rand(B, n, generator=g, dtype=torch.float64)
    lo, hi = (0.0, 1.0) if box else (None, None)
    with torch.no_grad():
        f = model(x)
    y = f.argmax(1)
    for k in (1, 2):
        t = (y + k) % K
        crit = []
        for i in range(B):
            v = (W[y[i]] - W[t[i]]).numpy()
            m0 = float(f[i, y[i]] - f[i, t[i]])
            crit.append(_critical_eps(v, m0, _caps(v, x[i].numpy(), lo, hi), norm))
        crit_t = torch.tensor(crit, dtype=torch.float64)
        reach = torch.isfinite(crit_t)
        # one eps for the whole batch: between the critical radii, so some targets are reachable, some not
        fin = crit_t[reach]
        eps = float(fin.median()) if fin.numel() else 1.0
        expect = crit_t < eps
        close = ((crit_t / eps - 1).abs() < 0.01)  # too close to call: skip those samples
        res = attacks.pgd(model, x, eps, norm, y, t, steps=60, restarts=2, x_min=lo, x_max=hi)
        assert torch.equal(res.success[~close], expect[~close]), (crit, eps, res.margin)
        assert torch.equal(res.success, res.logits.gather(1, t[:, None]).squeeze(1) > res.logits.gather(
            1, y[:, None]).squeeze(1))


def test_misclassified_at_x_is_a_success_and_robust_error() -> None:
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    model = _linear(W, torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])  # sample 1 is misclassified at x; margins at x: 0.2, -0.2, 0.8
    res = attacks.pgd(model, x, 0.0, "inf", y)
    assert res.success.tolist() == [False, True, False]
    # Linf: margin 0.2 - 2 eps, L2: 0.2 - sqrt(2) eps, L1: 0.2 - eps
    assert attacks.robust_error(model, x, y, 0.11, "inf") == pytest.approx(2 / 3)
    assert attacks.robust_error(model, x, y, 0.09, "inf") == pytest.approx(1 / 3)
    assert attacks.robust_error(model, x, y, 0.15, "2") == pytest.approx(2 / 3)
    assert attacks.robust_error(model, x, y, 0.19, "1") == pytest.approx(1 / 3)
    assert attacks.robust_error(model, x, y, 0.21, "1") == pytest.approx(2 / 3)
    assert attacks.robust_error(model, x, y, 0.41, "1") == pytest.approx(2 / 3)
    assert attacks.robust_error(model, x, y, 0.81, "1") == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# projections against a bisection reference
# ------------------------------------------------------------------------------------------------


def _ref_proj(d: torch.Tensor, e: float, l: torch.Tensor, u: torch.Tensor, norm: str) -> torch.Tensor:
    c = torch.clamp(d, l, u)
    if norm == "1":
        if c.abs().sum() <= e:
            return c
        h = lambda th: torch.sign(d) * torch.minimum((d.abs() - th).clamp_min(0), c.abs())  # noqa: E731
        lo_t, hi_t = 0.0, float(d.abs().max())  # sum |h(theta)| decreases from > e to 0
        for _ in range(200):
            mid = 0.5 * (lo_t + hi_t)
            if mid in (lo_t, hi_t):
                break
            lo_t, hi_t = (mid, hi_t) if float(h(mid).abs().sum()) > e else (lo_t, mid)
        return h(hi_t)
    if c.norm() <= e:
        return c
    s = _bisect(lambda s: float(torch.clamp(s * d, l, u).norm()) - e, 0.0, 1.0)
    return torch.clamp(s * d, l, u)


@pytest.mark.parametrize("norm", ["1", "2"])
def test_projection_onto_ball_and_box_is_exact(norm: str) -> None:
    g = _gen(7)
    N, n = 40, 9
    d = torch.randn(N, n, generator=g, dtype=torch.float64) * torch.rand(N, 1, generator=g, dtype=torch.float64) * 3
    d[:5, 4:] = 0.0  # zero coordinates
    l = -torch.rand(N, n, generator=g, dtype=torch.float64) * 1.5
    u = torch.rand(N, n, generator=g, dtype=torch.float64) * 1.5
    l[::3, :2] = -math.inf  # unbounded coordinates
    u[::4] = math.inf
    u[1::5, 3] = 0.0  # a face through x
    e = torch.rand(N, 1, generator=g, dtype=torch.float64) * 2 + 0.01
    fn = proj_l1 if norm == "1" else proj_l2
    out = fn(d, e, l, u)
    for i in range(N):
        ref = _ref_proj(d[i], float(e[i]), l[i], u[i], norm)
        assert torch.allclose(out[i], ref, rtol=0, atol=1e-9), (i, out[i], ref)
    # no box: Duchi et al.'s projection onto the L1 ball / radial scaling
    inf = torch.full_like(d, math.inf)
    out = fn(d, e, -inf, inf)
    nrm = out.abs().sum(-1) if norm == "1" else out.norm(dim=-1)
    assert torch.allclose(nrm, torch.minimum(e[:, 0], d.abs().sum(-1) if norm == "1" else d.norm(dim=-1)),
                          rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------
# attacks never beat certified bounds
# ------------------------------------------------------------------------------------------------


def _never_below(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, lb: torch.Tensor) -> bool:
    """Exactly (rationals): for every sample, f_y - f_j >= lb[b, j] for j = t (targeted) or every
    j != y (untargeted; lb [B, K]); the float subtraction could round half an ulp below."""
    B, K = logits.shape
    for b in range(B):
        yb = int(y[b])
        js = [int(t[b])] if t is not None else [j for j in range(K) if j != yb]
        for j in js:
            if Fraction(float(logits[b, yb])) - Fraction(float(logits[b, j])) < Fraction(float(lb[b, j])):
                return False
    return True


@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_attack_never_beats_certified_bounds(norm: str, box: bool) -> None:
    found = 0
    for seed in range(2):
        g = _gen(100 + seed)
        n, K, B = 6, 4, 8
        model = _mlp(n, (12, 12), K, seed=200 + seed)
        x = torch.rand(B, n, generator=g, dtype=torch.float64)
        mult = {"inf": 0.04, "2": 0.08, "1": 0.15}[norm]
        eps = mult * (0.5 + torch.rand(B, generator=g, dtype=torch.float64) * 2)
        lo, hi = (0.0, 1.0) if box else (None, None)
        if box:  # coordinates on the faces: the box binds
            x = torch.where(torch.rand(B, n, generator=g) < 0.4, (x > 0.5).double(), x)
        cert = fastcert.certify(model, x, eps, norm, method="crown", x_min=lo, x_max=hi)
        y = cert.labels
        res = attacks.pgd(model, x, eps, norm, y, steps=20, restarts=2, x_min=lo, x_max=hi, seed=seed)
        assert _never_below(res.logits, y, None, cert.margins)
        assert (res.margin >= cert.margins.min(1).values - 1e-12).all()
        assert not (res.success & cert.certified).any()
        found += int(res.success.sum())
        for k in range(1, K):
            t = (y + k) % K
            rt = attacks.pgd(model, x, eps, norm, y, t, steps=20, restarts=2, x_min=lo, x_max=hi, seed=seed)
            assert _never_below(rt.logits, y, t, cert.margins)
        C = torch.randn(B, 3, K, generator=g, dtype=torch.float64)
        bd = fastcert.bounds(model, x, eps, norm, method="crown", C=C, x_min=lo, x_max=hi)
        lo_found = attacks.minimize_linear(model, x, eps, norm, C, steps=20, x_min=lo, x_max=hi)
        hi_found = attacks.minimize_linear(model, x, eps, norm, -C, steps=20, x_min=lo, x_max=hi)
        assert (lo_found.values >= bd.lower - 1e-12).all() and (-hi_found.values <= bd.upper + 1e-12).all()
        assert (lo_found.values <= -hi_found.values).all()
    assert found > 0  # eps large enough that the comparison is not vacuous


def test_stop_below_and_early_stop() -> None:
    model = _mlp(6, (16,), 3, seed=9)
    x = torch.rand(8, 6, generator=_gen(9), dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    full = attacks.minimize_linear(model, x, 0.3, "inf", C, restarts=3)
    early = attacks.minimize_linear(model, x, 0.3, "inf", C, restarts=3, stop_below=0.0)
    # rows stopping early only stop once below the threshold; the others run the same search
    assert torch.equal(early.values < 0, full.values < 0)
    res = attacks.pgd(model, x, 0.3, "inf", early_stop=True, restarts=3)
    assert torch.equal(res.success, attacks.pgd(model, x, 0.3, "inf", restarts=3).success)
    # chunked rows: same answers
    ch = attacks.minimize_linear(model, x, 0.3, "inf", C, restarts=3, batch_size=3)
    assert torch.allclose(ch.values, full.values, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

_M = _mlp(3, (4,), 2, seed=0)
_X = torch.rand(2, 3, generator=_gen(1), dtype=torch.float64)


@pytest.mark.parametrize("kw, exc, words", [
    (dict(x=torch.tensor([[0.1, float("nan"), 0.2]] * 2, dtype=torch.float64)), ValueError, ["NaN"]),
    (dict(x=_X.float()), TypeError, ["model.float()"]),
    (dict(x=_X.to(torch.int64)), TypeError, ["dtype"]),
    (dict(x=_X[0]), ValueError, ["batched"]),
    (dict(x=_X[:0]), ValueError, ["empty"]),
    (dict(x=[[0.1, 0.2, 0.3]]), TypeError, ["torch.Tensor"]),
    (dict(x=torch.rand(2, 4, dtype=torch.float64)), ValueError, ["cannot be run", "shape"]),
    (dict(eps=-0.1), ValueError, ["eps", ">= 0"]),
    (dict(eps=float("inf")), ValueError, ["eps", "finite"]),
    (dict(eps=torch.ones(3)), ValueError, ["eps", "one entry per sample"]),
    (dict(eps="0.1"), TypeError, ["eps"]),
    (dict(norm="3"), ValueError, ["norm", "'inf'"]),
    (dict(labels=[0, 2]), ValueError, ["labels", "[0, 2)"]),
    (dict(labels=[0.0, 1.0]), TypeError, ["labels", "integers"]),
    (dict(labels=[0]), ValueError, ["labels", "one entry per sample"]),
    (dict(labels=[0, 1], targets=[1, 1]), ValueError, ["target", "label"]),
    (dict(targets=[5, 5]), ValueError, ["targets", "[0, 2)"]),
    (dict(loss="hinge"), ValueError, ["loss", "margin"]),
    (dict(steps=-1), ValueError, ["steps"]),
    (dict(restarts=0), ValueError, ["restarts"]),
    (dict(steps=2.5), TypeError, ["steps", "int"]),
    (dict(x_min=0.5), ValueError, ["x_min", "below"]),
    (dict(x_max=0.5), ValueError, ["x_max", "above"]),
    (dict(x_min=torch.zeros(4)), ValueError, ["x_min", "broadcast"]),
    (dict(x_min=float("nan")), ValueError, ["x_min", "finite"]),
    (dict(step_size=-1.0), ValueError, ["step_size"]),
    (dict(l1_sparsity=0.0), ValueError, ["l1_sparsity"]),
    (dict(seed=1.5), TypeError, ["seed"]),
    (dict(model="net"), TypeError, ["nn.Module"]),
])
def test_bad_input(kw: dict, exc: type, words: list[str]) -> None:
    args = dict(model=_M, x=_X, eps=0.1, norm="inf")
    args.update(kw)
    with pytest.raises(exc) as info:
        attacks.pgd(**args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_input_model_and_spec() -> None:
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()  # training mode
    with pytest.raises(ValueError, match="model.eval()"):
        attacks.pgd(bn, _X, 0.1)
    bn.eval()
    bn[1].train()  # a submodule left in training mode
    with pytest.raises(ValueError, match="BatchNorm1d layer in training mode"):
        attacks.pgd(bn, _X, 0.1)
    drop = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    with pytest.raises(ValueError, match="Dropout"):
        attacks.pgd(drop, _X, 0.1)
    attacks.pgd(drop.eval(), _X, 0.1, steps=1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        attacks.pgd(nn.Linear(3, 1).double(), _X, 0.1)
    with pytest.raises(ValueError, match=r"C must be \[S, 2\]"):
        attacks.minimize_linear(_M, _X, 0.1, "inf", torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        attacks.minimize_linear(_M, _X, 0.1, "inf", torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="C must be"):
        attacks.minimize_linear(_M, _X, 0.1, "inf", [[1.0, 0.0]])
    # unusual but good inputs just work: numpy x and C, norm spellings, [B, 1] eps, int C
    r = attacks.minimize_linear(_M, _X.numpy(), np.array([0.1, 0.2])[:, None], "L2", np.array([[1, -1]]))
    assert r.values.shape == (2, 1)
    for nm in (math.inf, 2, 1, "linf", "Linf", "l1"):
        attacks.fgsm(_M, _X, 0.1, nm)


@pytest.mark.cuda
def test_cuda_matches_region_and_rerun() -> None:
    dev = torch.device("cuda")
    model = _mlp(10, (32,), 4, seed=1).to(dev)
    x = torch.rand(16, 10, generator=_gen(1), dtype=torch.float64).to(dev)
    for norm in NORMS:
        res = attacks.pgd(model, x, 0.3, norm, steps=10, restarts=2, x_min=0.0, x_max=1.0)
        assert res.x_adv.device.type == "cuda"
        assert all(_exact_inside(res.x_adv.cpu(), x.cpu(), 0.3, norm, 0.0, 1.0))
        with torch.no_grad():
            assert torch.equal(model(res.x_adv), res.logits)
        cpu = attacks.pgd(model.cpu(), x.cpu(), 0.3, norm, steps=10, restarts=2, x_min=0.0, x_max=1.0)
        model.to(dev)
        assert abs(cpu.success_rate - res.success_rate) <= 1 / 16  # same search, other rounding


# --------------------------------------------------------------------------- the specification attack


def _spec_net() -> tuple[fastcert.Network, nn.Sequential]:
    """y = (relu(x0) + relu(x1), relu(x0) - relu(x1)) as a fastcert Network on [N, 2]."""
    lin1, lin2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.eye(2))
        lin2.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    model = nn.Sequential(lin1, nn.ReLU(), lin2).double().requires_grad_(False)
    return fastcert.Network.from_torch(model, (2,)), model


def test_minimize_spec_finds_violations_in_the_box_and_stops_early() -> None:
    net, model = _spec_net()
    twin = attacks.TorchTwin(net, (2,))
    x = torch.rand(5, 2, dtype=torch.float64)
    assert torch.equal(twin(x), model(x))  # the twin is the same float64 function
    lo, hi = np.zeros(2), np.ones(2)
    sat = (lo, hi, np.array([[0.0, -1.0]]), np.array([-0.5]))  # y1 >= 0.5: x = (1, 0) gives y1 = 1
    unsat = (lo, hi, np.array([[-1.0, 0.0]]), np.array([-2.5]))  # y0 >= 2.5: y0 <= 2
    for sched in ("cosine", "linear"):
        res = attacks.minimize_spec(twin, (2,), [unsat, sat], restarts=3, steps=50, seed=0, schedule=sched)
        assert res.values.shape == (2,) and res.values[1] < 0 and res.values[0] >= 0.5
        for (tlo, thi, A, b), xv, v in zip([unsat, sat], res.x, res.values):
            assert ((xv >= tlo) & (xv <= thi)).all()
            y = model(torch.from_numpy(xv)[None])[0].numpy()
            assert float(np.max(A @ y - b)) == v  # the value reported is the value at the point
    with pytest.raises(ValueError, match="unknown schedule"):
        attacks.minimize_spec(twin, (2,), [sat], restarts=1, steps=5, seed=0, schedule="constant")
    with pytest.raises(ValueError, match="empty conjunction"):
        attacks.minimize_spec(twin, (2,), [(lo, hi, np.zeros((0, 2)), np.zeros(0))], restarts=1, steps=5, seed=0)
    # a start at the centre of a box where the value is already negative: no step is taken
    start = attacks.minimize_spec(twin, (2,), [(lo, hi, np.array([[0.0, -1.0]]), np.array([1.0]))], restarts=2,
                                  steps=50, seed=0)
    np.testing.assert_array_equal(start.x[0], (lo + hi) / 2)
