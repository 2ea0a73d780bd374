"""convex_adversarial's random projections for the KW bound (issue #12, fastcert.kw_proj): with the exact basis
the forward-mode formulas reproduce fastcert's KW bound (values and gradients, float64); with ``proj=p`` every
intermediate L1 norm estimate is within the median estimator's stated error; ``robust_loss(proj=k)`` trains and
is refused where it cannot estimate."""

from __future__ import annotations

import math

import fastcert
import pytest
import torch
from fastcert import training as tr
from fastcert.errors import UnsupportedError
from fastcert.kw_proj import kw_bounds_projected
from torch import nn

D = torch.float64


def _net(seed: int, conv: bool) -> nn.Sequential:
    torch.manual_seed(seed)
    if conv:
        return nn.Sequential(nn.Conv2d(1, 3, 3, 1, 1), nn.ReLU(), nn.Conv2d(3, 4, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 4)).to(D)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(),
                         nn.Linear(30, 4)).to(D)


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "cnn"])
@pytest.mark.parametrize("limits", [(None, None), (0.0, 1.0)], ids=["free", "clipped"])
def test_exact_basis_reproduces_fastcerts_kw_bound_and_gradients(conv: bool, limits) -> None:
    model = _net(1, conv)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 1, 8, 8, generator=g, dtype=D), torch.randint(0, 4, (3,), generator=g)
    C = tr.margin_spec(y, 4, D)
    a = kw_bounds_projected(model, x, 0.1, C, None, *limits)
    b = fastcert.differentiable_bounds(model, x, 0.1, method="kw", C=C, x_min=limits[0], x_max=limits[1],
                                       bound_upper=False)[0]
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)
    ga = torch.autograd.grad(a.sum(), list(model.parameters()))
    gb = torch.autograd.grad(b.sum(), list(model.parameters()))
    for p, q in zip(ga, gb):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "cnn"])
def test_projected_l1_norms_are_within_the_estimators_error(conv: bool) -> None:
    """First ReLU layer: the bound's half-width is exactly the input term's L1 norm, so (u - l) / 2 estimates it;
    each estimate is within 5 standard deviations (pi / (2 sqrt(p)) relative) of the exact norm."""
    model = _net(3, conv)
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(4, 1, 8, 8, generator=g, dtype=D), torch.randint(0, 4, (4,), generator=g)
    C = tr.margin_spec(y, 4, D)
    exact: list = []
    for p in (None, 50, 400):
        if p is None:
            with torch.no_grad():
                kw_bounds_projected(model, x, 0.1, C, None, intermediate=exact)
            continue
        est: list = []
        with torch.no_grad():
            kw_bounds_projected(model, x, 0.1, C, p, seed=p, intermediate=est)
        w_exact = (exact[0][1] - exact[0][0]) / 2
        w_est = (est[0][1] - est[0][0]) / 2
        rel = ((w_est - w_exact) / w_exact).abs()
        assert float(rel.max()) <= 5 * math.pi / (2 * math.sqrt(p)), (p, float(rel.max()))
        assert float(rel.mean()) <= math.pi / (2 * math.sqrt(p))


def test_projected_robust_loss_trains_and_is_close_to_the_exact_one() -> None:
    model = _net(5, True).float()
    g = torch.Generator().manual_seed(6)
    y = torch.randint(0, 4, (16,), generator=g)
    x = 0.3 * torch.rand(16, 1, 8, 8, generator=g)  # four classes: one bright quadrant each
    for b in range(16):
        r, c = divmod(int(y[b]), 2)
        x[b, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.6
    exact = tr.robust_loss(model, 0.05, x, y)[0].item()
    est = tr.robust_loss(model, 0.05, x, y, proj=200)[0].item()
    assert abs(est - exact) <= 0.05 * exact
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    first = tr.robust_loss(model, 0.05, x, y, proj=50)[0].item()
    for step in range(30):
        opt.zero_grad()
        tr.robust_loss(model, 0.05, x, y, proj=50, seed=step)[0].backward()
        opt.step()
    assert tr.robust_loss(model, 0.05, x, y, proj=50)[0].item() < 0.7 * first


def test_projections_refuse_what_they_cannot_estimate() -> None:
    x, y = torch.rand(2, 1, 8, 8, dtype=D), torch.tensor([0, 1])
    with pytest.raises(UnsupportedError, match="Tanh"):
        tr.robust_loss(nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 4)).to(D), 0.1, x, y,
                       proj=10)
    with pytest.raises(ValueError, match="L-inf"):
        tr.robust_loss(_net(0, False), 0.1, x, y, norm="2", proj=10)
    with pytest.raises(ValueError, match="proj"):
        tr.robust_loss(_net(0, False), 0.1, x, y, proj=0)
