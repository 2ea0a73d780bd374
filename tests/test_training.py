"""fastcert.training (issue #12, first part): schedules exact at their breakpoints; each loss decreases on a
tiny problem; every robust loss is at least the loss at PGD points (float64, no tolerance); the KW robust
loss equals convex_adversarial's ``robust_loss`` (value and gradients, float64); bad arguments are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastcert import training as tr
from fastcert.losscommon import adversarial_points
from torch import nn

from benches import peers

D = torch.float64


def _mlp(seed: int = 0, dtype: torch.dtype = D) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 4)).to(dtype)


def _cnn(seed: int = 0, dtype: torch.dtype = D) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def _data(B: int = 16, seed: int = 1, dtype: torch.dtype = D) -> tuple[torch.Tensor, torch.Tensor]:
    """Four separable classes: the class sets one quadrant of a 4x4 image brighter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (B,), generator=g)
    x = 0.3 * torch.rand(B, 1, 4, 4, generator=g, dtype=dtype)
    for b in range(B):
        r, c = divmod(int(y[b]), 2)
        x[b, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 0.6
    return x, y


def test_linear_ramp_is_exact_at_its_breakpoints() -> None:
    r = tr.LinearRamp(1.0, 0.5, begin=10, length=40)
    assert r(0) == 1.0 and r(10) == 1.0 and r(50) == 0.5 and r(10_000) == 0.5
    assert r(30) == 0.75
    assert tr.LinearRamp(0.0, 0.3, 5, 0)(5) == 0.0 and tr.LinearRamp(0.0, 0.3, 5, 0)(6) == 0.3
    eps, kappa = tr.gowal_schedule(0.1, warmup=2, ramp=8)
    assert (eps(2), eps(10), kappa(2), kappa(10)) == (0.0, 0.1, 1.0, 0.5)
    e, k, b = tr.crown_ibp_schedule(0.2, 0, 4)
    assert (e(0), e(4), k(0), k(4), b(0), b(4)) == (0.0, 0.2, 1.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="begin"):
        tr.LinearRamp(0, 1, -1, 3)


LOSSES = {
    "ibp": lambda m, x, y, e: tr.ibp_loss(m, x, y, e, kappa=0.5),
    "crown-ibp": lambda m, x, y, e: tr.crown_ibp_loss(m, x, y, e, kappa=0.0, beta=0.5),
    "kw": lambda m, x, y, e: tr.robust_loss(m, e, x, y)[0],
    "pgd": lambda m, x, y, e: tr.pgd_loss(m, x, y, e, steps=3),
    "mtl-ibp": lambda m, x, y, e: tr.mtl_ibp_loss(m, x, y, e, alpha=0.5, steps=3),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_each_loss_decreases_on_a_tiny_problem(name: str, make) -> None:
    model = make(0, torch.float32)
    x, y = _data(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loss = LOSSES[name]
    first = loss(model, x, y, 0.05).item()
    for _ in range(25):
        opt.zero_grad()
        loss(model, x, y, 0.05).backward()
        opt.step()
    last = loss(model, x, y, 0.05).item()
    assert last < 0.7 * first, f"{name}: {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "kw"])
@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_robust_losses_bound_the_loss_at_pgd_points(method: str, make) -> None:
    """Per sample, CE at the worst-case logits >= CE at every PGD point of the ball and at x (float64)."""
    model = make(2)
    x, y = _data(8, seed=3)
    eps = 0.08
    with torch.no_grad():
        zhat = tr.worst_case_logits(model, x, y, eps, method)
    robust = F.cross_entropy(zhat, y, reduction="none")
    assert bool((zhat.gather(1, y[:, None]) == 0).all())
    for seed in range(3):
        xa = adversarial_points(model, x, y, eps, "inf", 20, 2, None, None, None, seed)
        assert float((xa - x).abs().max()) <= eps
        with torch.no_grad():
            ce = F.cross_entropy(model(xa), y, reduction="none")
            margins = model(xa).gather(1, y[:, None]) - model(xa)
        assert bool((robust >= ce).all()), (method, (ce - robust).max())
        assert bool((margins >= -zhat).all())
    with torch.no_grad():
        assert bool((robust >= F.cross_entropy(model(x), y, reduction="none")).all())


def test_ibp_and_crown_ibp_losses_mix_as_stated() -> None:
    model = _mlp(4)
    x, y = _data(6, seed=5)
    eps = 0.05
    clean = F.cross_entropy(model(x), y)
    ibp = F.cross_entropy(tr.worst_case_logits(model, x, y, eps, "ibp"), y)
    torch.testing.assert_close(tr.ibp_loss(model, x, y, eps, kappa=0.25), 0.25 * clean + 0.75 * ibp)
    torch.testing.assert_close(tr.ibp_loss(model, x, y, eps, kappa=1.0), clean)
    lc = -tr.worst_case_logits(model, x, y, eps, "crown-ibp")
    li = -tr.worst_case_logits(model, x, y, eps, "ibp")
    want = 0.4 * clean + 0.6 * F.cross_entropy(-(0.3 * lc + 0.7 * li), y)
    torch.testing.assert_close(tr.crown_ibp_loss(model, x, y, eps, kappa=0.4, beta=0.3), want)


@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_kw_robust_loss_equals_convex_adversarial(make) -> None:
    ok, reason = peers.kw_status()
    if not ok:
        pytest.skip(reason)
    from convex_adversarial import robust_loss as theirs

    model = make(6)
    x, y = _data(7, seed=7)
    for avg in (True, False):
        l1, e1 = theirs(model, 0.04, x, y, size_average=avg)
        l2, e2 = tr.robust_loss(model, 0.04, x, y, size_average=avg)
        torch.testing.assert_close(l2, l1.to(D), rtol=1e-6, atol=1e-9)
        assert torch.equal(e2, torch.as_tensor(e1, dtype=D).reshape(e2.shape))
        params = list(model.parameters())
        g1 = torch.autograd.grad(l1.sum(), params)
        g2 = torch.autograd.grad(l2.sum(), params)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)


def test_bad_arguments_are_refused_by_name() -> None:
    model = _mlp()
    x, y = _data(4)
    with pytest.raises(ValueError, match="kappa"):
        tr.ibp_loss(model, x, y, 0.1, kappa=1.5)
    with pytest.raises(ValueError, match="beta"):
        tr.crown_ibp_loss(model, x, y, 0.1, beta=-0.1)
    with pytest.raises(ValueError, match="class indices outside"):
        tr.ibp_loss(model, x, y + 10, 0.1)
    with pytest.raises(TypeError, match="integer"):
        tr.robust_loss(model, 0.1, x, y.double())
    with pytest.raises(ValueError, match="eps"):
        tr.ibp_loss(model, x, y, -0.1)
