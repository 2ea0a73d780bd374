"""Differentiable bounds (``fastcert.bounds`` with autograd, ``fastcert.differentiable_bounds``).

- the optimize-mode bound is the certified bound up to rounding (<= 1e-9 relative here), never below it;
  ``fastcert.bounds`` returns the very same values with and without autograd;
- ``gradcheck`` (float64) of whole bounds w.r.t. x, eps and every parameter on a small DAG using every
  primitive (conv, BatchNorm, Normalize, average and max pooling, residual add / sub, concatenation, flatten,
  dense, ReLU, LeakyReLU, Hardtanh, ELU, Softplus, Sigmoid, Tanh, Arctan), for IBP, CROWN-IBP, CROWN and
  Fast-Lin;
- gradients of the IBP and CROWN-IBP bounds equal auto_LiRPA's on the same model within 1e-6 relative
  (float64), skipped with the reason where auto_LiRPA does not import;
- the same for L2 / L1 balls and the S-shaped tangent modes;
- nothing is recorded when nothing requires grad; what the optimize mode does not cover is refused by name.
"""

from __future__ import annotations

import copy

import fastcert
import pytest
import torch
from fastcert.nn import Arctan, Normalize
from torch import nn
from torch.nn import functional as F
from torch.autograd import gradcheck

from benches import peers

D = torch.float64
METHODS = ("ibp", "crown-ibp", "crown", "fastlin")


class Dag(nn.Module):
    """Every primitive of the optimize mode: Normalize, conv, BatchNorm, ReLU, residual add, sub, cat,
    average pooling, flatten, dense."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.1], [0.7])
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.c3 = nn.Conv2d(3, 2, 3, padding=1)
        self.c4 = nn.Conv2d(3, 2, 1)
        self.pool = nn.AvgPool2d(2)
        self.f1 = nn.Linear(5 * 3 * 3, 7)
        self.f2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.c1(self.norm(x))))
        h = h + torch.relu(self.c2(h))  # residual
        k = self.c3(h) - self.c4(h)  # sub of two tensors
        h = torch.cat([h, torch.relu(k)], dim=1)
        h = self.pool(h).flatten(1)
        return self.f2(torch.relu(self.f1(h)))


class ActDag(nn.Module):
    """Every general activation and max pooling: LeakyReLU, MaxPool2d, Sigmoid + Tanh, Arctan / LeakyReLU
    concatenated, Hardtanh - ELU + Softplus."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.f1 = nn.Linear(18, 5)
        self.f2 = nn.Linear(5, 3)
        self.f2b = nn.Linear(5, 3)
        self.f3 = nn.Linear(6, 4)
        self.f4 = nn.Linear(4, 3)
        self.acts = nn.ModuleList([nn.Sigmoid(), nn.Tanh(), Arctan(), nn.LeakyReLU(0.2), nn.Hardtanh(-0.5, 0.7),
                                   nn.ELU(), nn.Softplus()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.acts
        h = self.f1(self.pool(F.leaky_relu(self.c1(x), 0.1)).flatten(1))
        h = a[0](h) + a[1](h)
        h = torch.cat([a[2](self.f2(h)), a[3](self.f2b(h))], 1)
        h = self.f3(h)
        return self.f4(a[4](h) - a[5](h) + a[6](h))


def _act_dag(seed: int = 0) -> ActDag:
    torch.manual_seed(seed)
    return ActDag().double()


def _dag(seed: int = 0) -> Dag:
    torch.manual_seed(seed)
    m = Dag().double().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
    return m


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 15), nn.ReLU(),
                         nn.Linear(15, 4)).double()


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 10), nn.ReLU(), nn.Linear(10, 4)).double()


def _x(B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(B, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [_dag, _act_dag, _mlp, _cnn], ids=["dag", "act-dag", "mlp", "cnn"])
def test_same_value_with_and_without_autograd(make, method: str) -> None:
    m, x = make(), _x(3)
    eps = 0.05 if make is not _act_dag else 0.2  # S-shaped boxes crossing 0 (tangent lines)
    with torch.no_grad():
        cert = fastcert.bounds(m, x, eps, method=method)
    r = fastcert.bounds(m, x, eps, method=method)
    assert r.lower.grad_fn is not None and r.upper.grad_fn is not None
    assert torch.equal(r.lower.detach(), cert.lower) and torch.equal(r.upper.detach(), cert.upper)
    lo, hi = fastcert.differentiable_bounds(m, x, eps, method=method)
    scale = float(cert.upper.abs().max())
    assert float((lo.detach() - cert.lower).abs().max()) <= 1e-9 * scale
    assert float((hi.detach() - cert.upper).abs().max()) <= 1e-9 * scale
    assert bool((lo.detach() >= cert.lower).all()) and bool((hi.detach() <= cert.upper).all())


@pytest.mark.parametrize("tangent", ["lookup", "envelope"])
def test_tangent_modes_match_certified(tangent: str) -> None:
    m, x = _act_dag(), _x(3)
    opts = fastcert.BoundOptions(tangent=tangent)
    with torch.no_grad():
        cert = fastcert.bounds(m, x, 0.2, method="crown", options=opts)
    g = fastcert.Network.from_torch(m, (1, 6, 6))
    from fastcert.api_diff import diff_bounds_of

    C = torch.eye(3, dtype=D).expand(3, 3, 3)
    lo, hi = (t.detach() for t in diff_bounds_of(g, x, 0.2, C, "crown", tangent=tangent))
    scale = float(cert.upper.abs().max())
    assert float((lo - cert.lower).abs().max()) <= 1e-9 * scale and bool((lo >= cert.lower).all())
    assert float((hi - cert.upper).abs().max()) <= 1e-9 * scale and bool((hi <= cert.upper).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [_dag, _act_dag], ids=["dag", "act-dag"])
def test_gradcheck_whole_bound_on_a_dag(make, method: str) -> None:
    m, x = make(), _x(2)
    params = [p for p in m.parameters()]
    eps = torch.tensor(0.03 if make is _dag else 0.2, dtype=D, requires_grad=True)
    xr = x.clone().requires_grad_()
    C = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), dtype=D)

    def f(xx: torch.Tensor, ee: torch.Tensor, *ps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the parameters are the model's own tensors: gradcheck perturbs them in place
        return fastcert.differentiable_bounds(m, xx, ee, method=method, C=C)

    # fast_mode: the Jacobian checked along random directions (every input, one product each)
    assert gradcheck(f, (xr, eps, *params), atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradients_of_certified_bounds_are_those_of_the_nominal_bound() -> None:
    m, x = _dag(), _x(2)
    r = fastcert.bounds(m, x, 0.05, method="crown")
    g1 = torch.autograd.grad(r.lower.sum() - r.upper.sum(), list(m.parameters()))
    lo, hi = fastcert.differentiable_bounds(m, x, 0.05, method="crown")
    g2 = torch.autograd.grad(lo.sum() - hi.sum(), list(m.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nothing_recorded_without_grad() -> None:
    m, x = _mlp(), _x(2)
    with torch.no_grad():
        assert fastcert.bounds(m, x, 0.05).lower.grad_fn is None
    net = fastcert.Network.from_torch(m, (1, 6, 6))
    assert fastcert.bounds(net, x, 0.05).lower.grad_fn is None  # a Network's parameters are snapshots
    for p in m.parameters():
        p.requires_grad_(False)
    assert fastcert.bounds(m, x, 0.05).lower.grad_fn is None
    xr = x.clone().requires_grad_()
    r = fastcert.bounds(m, xr, 0.05)
    (g,) = torch.autograd.grad(r.lower.sum(), xr)
    assert g.shape == x.shape


def test_training_step_changes_parameters_read_live() -> None:
    """differentiable_bounds reads the parameters at every call: after an optimizer step the bound moves,
    and equals a fresh computation of the same bound."""
    m, x = _mlp(), _x(4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    lo0, hi0 = fastcert.differentiable_bounds(m, x, 0.05, method="crown-ibp")
    (hi0 - lo0).sum().backward()
    opt.step()
    lo1, hi1 = fastcert.differentiable_bounds(m, x, 0.05, method="crown-ibp")
    assert float((hi1 - lo1).sum().detach()) < float((hi0 - lo0).sum().detach())
    fresh = copy.deepcopy(m)
    lo2, hi2 = fastcert.differentiable_bounds(fresh, x, 0.05, method="crown-ibp")
    torch.testing.assert_close(lo1, lo2, rtol=0, atol=0)


def test_unsupported_requests_are_refused_by_name() -> None:
    """fastcert.bounds returns its certified values whatever is asked; a gradient it cannot compute is
    refused, naming the option or node, when autograd asks for it (never a silent wrong gradient)."""
    x = _x(2)
    sparse = fastcert.BoundOptions(intermediate="sparse")
    r = fastcert.bounds(_mlp(), x, 0.05, options=sparse)
    assert r.lower.grad_fn is not None
    with pytest.raises(fastcert.UnsupportedError, match=r"intermediate='intersect'.*got 'sparse'"):
        r.lower.sum().backward()
    with torch.no_grad():  # the same certified values, nothing recorded
        r3 = fastcert.bounds(_mlp(), x, 0.05, options=sparse)
    assert r3.lower.grad_fn is None
    assert torch.equal(r3.lower, r.lower.detach()) and torch.equal(r3.upper, r.upper.detach())
    with pytest.raises(fastcert.UnsupportedError, match=r"Kolter-Wong dual bound.*ReLU networks only"):
        fastcert.differentiable_bounds(_act_dag(), x, 0.05, method="kw")


@pytest.mark.parametrize("norm", ["2", "1"])
@pytest.mark.parametrize("method", METHODS)
def test_lp_balls(norm: str, method: str) -> None:
    """L2 / L1 balls (within a box or not): the certified values with autograd; the optimize-mode bound
    within 1e-9 of them and never looser; gradcheck in x and eps."""
    m, x = _act_dag(), _x(2)
    for lo_lim in (None, 0.0):
        with torch.no_grad():
            cert = fastcert.bounds(m, x, 0.4, norm=norm, method=method, x_min=lo_lim)
        lo, hi = fastcert.differentiable_bounds(m, x, 0.4, norm=norm, method=method, x_min=lo_lim)
        scale = float(cert.upper.abs().max())
        assert float((lo.detach() - cert.lower).abs().max()) <= 1e-9 * scale and bool((lo >= cert.lower).all())
        assert float((hi.detach() - cert.upper).abs().max()) <= 1e-9 * scale and bool((hi <= cert.upper).all())
    xr = x.clone().requires_grad_()
    eps = torch.tensor(0.4, dtype=D, requires_grad=True)
    assert gradcheck(lambda xx, ee: fastcert.differentiable_bounds(m, xx, ee, norm=norm, method=method),
                     (xr, eps), atol=1e-6, rtol=1e-5)


def _lirpa_grads(model: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor, method: str) -> list[torch.Tensor]:
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    bm = BoundedModule(model, torch.zeros_like(x), bound_opts=dict(peers.LIRPA_BOUND_OPTS), device="cpu")
    xt = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=eps))
    lb, ub = bm.compute_bounds(x=(xt,), C=C, method={"ibp": "IBP", "crown-ibp": "CROWN-IBP"}[method])
    loss = lb.sum() - 0.5 * ub.sum()
    return list(torch.autograd.grad(loss, list(model.parameters())))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_gradients_equal_auto_lirpa(make, method: str) -> None:
    ok, reason = peers.lirpa_status()
    if not ok:
        pytest.skip(reason)
    m, x = make(), _x(3)
    with torch.no_grad():
        y = m(x).argmax(1)
    C = peers.margin_spec(y, 4).double()
    theirs = _lirpa_grads(copy.deepcopy(m), x, 0.05, C, method)
    lo, hi = fastcert.differentiable_bounds(m, x, 0.05, method=method, C=C)
    ours = torch.autograd.grad(lo.sum() - 0.5 * hi.sum(), list(m.parameters()))
    for a, b in zip(ours, theirs):
        rel = float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)
        assert rel <= 1e-6, rel


def test_shared_slope_back_substitution_equals_the_stacked_rows() -> None:
    """Fast-Lin / KW (equal ReLU slopes) bound both sides of a row in one back-substitution
    (``diff.backsub_both``): the same values and gradients as carrying ``[lam, -lam]`` (``diff.backsub``), on a
    graph with convolutions, a residual subtraction and a concatenation; CROWN's unequal slopes are refused."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_graph import Block

    from fastcert.algorithms import diff
    from fastcert.algorithms.alpha import region_of
    from fastcert.api import make_region

    spec = {"C": 2, "k": 2, "H": 4, "act": ("relu", 0), "sign": -1, "cat": True, "pool": False, "seed": 3}
    torch.manual_seed(3)
    model = Block(spec).double()
    g = fastcert.Network.from_torch(model).op_graph_for((2, 4, 4))
    x = torch.rand(3, 32, dtype=torch.float64)
    reg = region_of(make_region(x, 0.2, "inf", None, None))
    C = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    for method in ("kw", "fastlin"):
        st = diff.diff_pass(g, reg, C, method, torch.float64)
        assert diff._shared_slopes(st, g.output, 0)
        lo, hi = diff.backsub_both(st, g.output, C)
        both = diff.backsub(st, g.output, torch.cat([C, -C], 1))
        assert torch.allclose(lo, both[:, :4], rtol=1e-12, atol=1e-12)
        assert torch.allclose(hi, -both[:, 4:], rtol=1e-12, atol=1e-12)
        g1 = torch.autograd.grad((lo * 1.3 + hi * 0.7).sum(), C, retain_graph=True)[0]
        g2 = torch.autograd.grad((both[:, :4] * 1.3 - both[:, 4:] * 0.7).sum(), C)[0]
        assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-12)
        assert bool((lo <= hi).all())
    st = diff.diff_pass(g, reg, C, "crown", torch.float64)
    assert not diff._shared_slopes(st, g.output, 0)
