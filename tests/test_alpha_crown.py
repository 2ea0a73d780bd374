"""alpha-CROWN (``method="alpha-crown"``) and the per-row slopes it hands to the certify engine.

- any per-row ReLU lower slopes (random, even outside [0, 1]: they are clamped) and any per-row S-shaped
  tangent points give sound certified bounds: sampling and PGD on hypothesis networks, degenerate boxes
  included;
- alpha-CROWN is sound the same way and never looser than CROWN, entry by entry;
- it is as tight as auto_LiRPA 0.3's alpha-CROWN with the same iterations (float64, within the rounding
  slack of the certified bound), and tighter than CROWN where CROWN is loose;
- the per-row kernel path equals the per-neuron one when every row has the same slopes;
- options are checked, and the optimizer does not touch the model's gradients.
"""

from __future__ import annotations

import copy

import fastcert
import numpy as np
import pytest
import torch
from fastcert.algorithms.alpha import optimize_slopes
from fastcert.algorithms.graph_bounds import RowSlopes, graph_bounds
from fastcert.api import make_region, spec_matrix
from fastcert.api_diff import diff_region
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    build_network,
    build_region,
    fc_settings,
    net_specs,
    pgd_points,
    random_C,
    region_specs,
    sample_points,
)
from torch import nn

from benches import peers

D = torch.float64
FEW = fastcert.BoundOptions(alpha=fastcert.AlphaOptions(iterations=4, patience=2))


def _setup(net, reg_spec, seed: int = 0):
    model = build_network(net)
    for p in model.parameters():
        p.requires_grad_(False)
    reg = build_region(reg_spec, net.input_shape, D)
    B = reg.x.shape[0]
    n = reg.x[0].numel()
    g = torch.Generator().manual_seed(reg_spec.seed ^ net.seed ^ seed)
    C = random_C(net.n_out, B, g)
    return model, reg, B, n, g, C


def _points(model, net, reg, B, n, g, C):
    xf = reg.x.reshape(B, n)
    prob = make_region(reg.x, reg.eps_arg, reg.norm, reg.x_min, reg.x_max)
    lo, hi = prob.l0, prob.u0
    Cf = C.expand(B, *C.shape[-2:]) if C.dim() == 2 else C
    pts = torch.cat([sample_points(xf, reg.eps, reg.norm, lo, hi, g),
                     pgd_points(model, net.input_shape, xf, reg.eps, reg.norm, lo, hi, Cf, g)], 1)
    with torch.no_grad():
        F = model(pts.reshape(-1, *net.input_shape)).reshape(B, pts.shape[1], -1)
    return torch.einsum("bsk,bpk->bps", Cf, F)


def _contains(lower, upper, CF, what: str) -> None:
    below = CF < lower[:, None, :]
    above = CF > upper[:, None, :]
    assert not bool(below.any() | above.any()), (
        f"UNSOUND {what}: {int(below.sum())} below, {int(above.sum())} above; worst "
        f"{float((lower[:, None, :] - CF).max())!r} / {float((CF - upper[:, None, :]).max())!r}")


@fc_settings(40)
@given(net=net_specs(), reg=region_specs())
def test_alpha_crown_sound_and_never_looser_than_crown(net, reg) -> None:
    model, region, B, n, g, C = _setup(net, reg)
    kw = dict(norm=region.norm, C=C, x_min=region.x_min, x_max=region.x_max)
    crown = fastcert.bounds(model, region.x, region.eps_arg, method="crown", **kw)
    alpha = fastcert.bounds(model, region.x, region.eps_arg, method="alpha-crown", options=FEW, **kw)
    assert bool((alpha.lower >= crown.lower).all()) and bool((alpha.upper <= crown.upper).all())
    _contains(alpha.lower, alpha.upper, _points(model, net, region, B, n, g, C), "alpha-crown")


def _random_rows_are_sound(net, reg, seed: int, draw, what: str) -> None:
    """The certify engine with per-row parameters ``draw(a)`` (a: alpha-CROWN's initial ones, for every start
    node and upstream node) bounds every sampled / attacked point."""
    model, region, B, n, g, C = _setup(net, reg, seed)
    net_ = fastcert.Network.from_torch(model, net.input_shape)
    x = region.x
    Ct = spec_matrix(C, x, net.n_out)[0]
    gr, dreg = diff_region(net_, x, region.eps_arg, region.x_min, region.x_max, region.norm)
    (rows,), _ = optimize_slopes(gr, dreg, Ct, D, fastcert.AlphaOptions(iterations=0, candidates=1))
    rnd = {k: {v: draw(a.detach(), g) for v, a in d.items()} for k, d in rows.alpha.items()}
    prob = make_region(x, region.eps_arg, region.norm, region.x_min, region.x_max)
    lo, up = graph_bounds(gr, prob, Ct, "crown", rows=RowSlopes(rows.sel, rnd))
    _contains(lo, up, _points(model, net, region, B, n, g, C), what)


def _slopes(a: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """ReLU slopes in [0, 1], and some far outside (clamped when used)."""
    t = torch.rand(a.shape, generator=g, dtype=D)
    wild = torch.rand(a.shape, generator=g, dtype=D) < 0.3
    return torch.where(wild, torch.rand(a.shape, generator=g, dtype=D) * 7 - 3, t)


def _tangents(a: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Tangent points near d* and far from it (projected where used); ReLU slopes as _slopes."""
    if a.dim() == 3:
        return _slopes(a, g)
    t = a + torch.randn(a.shape, generator=g, dtype=D) * 3
    return torch.where(torch.rand(a.shape, generator=g, dtype=D) < 0.2, a, t)


@fc_settings(40)
@given(net=net_specs("relu"), reg=region_specs())
def test_any_row_slopes_are_sound(net, reg) -> None:
    """The certify engine with random per-row slopes for every start node (output and intermediate)."""
    _random_rows_are_sound(net, reg, 1, _slopes, "random row slopes")


@fc_settings(30)
@given(net=st.one_of(*(net_specs(a) for a in ("sigmoid", "tanh", "arctan", "mixed"))), reg=region_specs())
def test_any_row_tangent_points_are_sound(net, reg) -> None:
    """The certify engine with random per-row tangent points of every S-shaped node (inside the box, at d*,
    and far outside it: projected, and the intercepts are rigorous for any slope), for every start node."""
    _random_rows_are_sound(net, reg, 2, _tangents, "random row tangent points")


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_tangent_points_tighten_s_shaped_networks(act) -> None:
    """On a network with no ReLU, alpha-CROWN's only parameters are the S-shaped tangent points: it must be
    strictly tighter than CROWN somewhere (and never looser), and sound by sampling."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, 5)).double()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 8, dtype=D)
    eps = 0.3
    cr = fastcert.bounds(model, x, eps, method="crown")
    al = fastcert.bounds(model, x, eps, method="alpha-crown")
    assert bool((al.lower >= cr.lower).all()) and bool((al.upper <= cr.upper).all())
    assert float((al.lower - cr.lower).sum() + (cr.upper - al.upper).sum()) > 1e-6
    z = x[:, None] + eps * (2 * torch.rand(3, 20000, 8, dtype=D) - 1)
    y = model(z)
    assert bool((y.min(1).values >= al.lower).all()) and bool((y.max(1).values <= al.upper).all())


def test_per_row_kernel_equals_per_neuron_when_rows_agree() -> None:
    """_C.backward_act with [B, S, n] slopes and intercepts that repeat the [B, n] ones: the same outputs."""
    from fastcert._ext import _C
    from fastcert.layers.base import empty_like_dtype

    g = torch.Generator().manual_seed(0)
    B, S, n = 3, 5, 7
    lam = torch.randn(B, S, n, generator=g, dtype=D)
    ls, us, lb, ub = (torch.rand(B, n, generator=g, dtype=D) for _ in range(4))
    zm = torch.rand(B, n, generator=g, dtype=D)
    e = empty_like_dtype(D)

    def run(ls_, us_, lb_, ub_):
        out, bias, mag = torch.empty(B, S, n, dtype=D), torch.zeros(B, S, dtype=D), torch.zeros(B, S, dtype=D)
        _C.backward_act(lam, ls_, us_, lb_, ub_, zm,
                        out, bias, mag, 1e-15, 1e-14, e)
        return out, bias, mag

    ref = run(ls, us, lb, ub)
    rows = [t[:, None, :].expand(B, S, n).contiguous() for t in (ls, us, lb, ub)]
    for k in range(4):  # each array per row on its own, then all
        args = [rows[i] if i == k else t for i, t in enumerate((ls, us, lb, ub))]
        for a, b in zip(run(*args), ref):
            assert torch.equal(a, b)
    for a, b in zip(run(*rows), ref):
        assert torch.equal(a, b)
    # per-row slopes that differ per row: row s uses its own
    ls_rows = torch.rand(B, S, n, generator=g, dtype=D)
    out = run(ls_rows, us, lb, ub)[0]
    want = torch.where(lam >= 0, lam * ls_rows, lam * us[:, None, :])
    assert torch.equal(out, want)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(),
                         nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5)).double()


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).double()


@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_as_tight_as_auto_lirpa_alpha_crown(make) -> None:
    ok, reason = peers.lirpa_status()
    if not ok:
        pytest.skip(reason)
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    m = make()
    side = 6 if make is _mlp else 8
    x = torch.rand(4, 1, side, side, generator=torch.Generator().manual_seed(2), dtype=D)
    eps = 0.08
    with torch.no_grad():
        y = m(x).argmax(1)
    C = peers.margin_spec(y, 5).double()
    opts = dict(peers.LIRPA_BOUND_OPTS)
    opts["optimize_bound_args"] = {"iteration": 20}
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # auto_LiRPA 0.3 creates its slopes in the default dtype
    try:
        bm = BoundedModule(copy.deepcopy(m), torch.zeros_like(x), bound_opts=opts, device="cpu")
        xt = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=eps))
        theirs, _ = bm.compute_bounds(x=(xt,), C=C, method="alpha-CROWN", bound_upper=False)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        crown = fastcert.bounds(m, x, eps, method="crown", C=C).lower
        ours = fastcert.bounds(m, x, eps, method="alpha-crown", C=C,
                               options=fastcert.BoundOptions(alpha=fastcert.AlphaOptions(iterations=20))).lower
    theirs = theirs.detach()
    scale = float(theirs.abs().max())
    assert float((theirs - ours).max()) <= 1e-9 * scale, float((theirs - ours).max())
    assert float((ours - crown).mean()) > 1e-4 * scale  # alpha-CROWN does improve on CROWN here


def test_alpha_crown_leaves_model_gradients_alone_and_is_differentiable() -> None:
    m = _mlp()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=D)
    r = fastcert.bounds(m, x, 0.05, method="alpha-crown", options=FEW)
    assert all(p.grad is None for p in m.parameters())
    r.lower.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_alpha_options_are_checked() -> None:
    with pytest.raises(ValueError, match="AlphaOptions.iterations"):
        fastcert.AlphaOptions(iterations=-1)
    with pytest.raises(ValueError, match="AlphaOptions.lr"):
        fastcert.AlphaOptions(lr=0.0)
    with pytest.raises(ValueError, match="AlphaOptions.decay"):
        fastcert.AlphaOptions(decay=1.5)
    with pytest.raises(ValueError, match="AlphaOptions.optimize"):
        fastcert.AlphaOptions(optimize="upper")
    with pytest.raises(TypeError, match="BoundOptions.alpha"):
        fastcert.BoundOptions(alpha=20)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method='alpha-crown'"):
        fastcert.differentiable_bounds(_mlp(), torch.rand(1, 1, 6, 6, dtype=D), 0.1, method="alpha-crown")
    with pytest.raises(ValueError, match="lower_slope applies"):
        fastcert.bounds(_mlp(), torch.rand(1, 1, 6, 6, dtype=D), 0.1, method="alpha-crown", lower_slope="zero")


def test_mip_starts_from_alpha_crown_pre_activation_bounds() -> None:
    """The MIP's pre-activation bounds with alpha-CROWN: inside CROWN's, tighter somewhere, and sound."""
    from fastcert.mip.common import incomplete_bounds, node_bounds

    m = _mlp(1)
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=D)
    net = fastcert.Network.from_torch(m, (1, 6, 6))
    prob = make_region(x, 0.08, "inf", None, None)
    with torch.no_grad():
        y = m(x).argmax(1)
    C = peers.margin_spec(y, 5).double()
    crown = node_bounds(net, (1, 6, 6), prob, "crown")
    lo, up, alpha = incomplete_bounds(net, (1, 6, 6), prob, C, "alpha-crown")
    assert alpha.keys() == crown.keys()
    tighter = 0.0
    for v, (l, u) in alpha.items():
        assert (l >= crown[v][0]).all() and (u <= crown[v][1]).all()
        tighter += float((l - crown[v][0]).sum() + (crown[v][1] - u).sum())
    assert tighter > 0
    # sound: the pre-activations of sampled inputs lie inside
    pts = x[:, None] + (torch.rand(2, 500, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=D) * 2 - 1) * 0.08
    h = pts.reshape(-1, 36)
    layers = [mod for mod in m if isinstance(mod, nn.Linear)]
    keys = sorted(alpha)
    for k, lin in zip(keys, layers):
        h = lin(h)
        z = h.reshape(2, 500, -1)
        assert bool((z >= torch.from_numpy(alpha[k][0])[:, None] - 0).all())
        assert bool((z <= torch.from_numpy(alpha[k][1])[:, None]).all())
        h = torch.relu(h)
    crown_out = fastcert.bounds(net, x, 0.08, method="crown", C=C).lower
    assert bool((lo >= crown_out).all())
