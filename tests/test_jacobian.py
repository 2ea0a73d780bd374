"""Jacobian and Lipschitz bounds (``fastcert.jacobian_bounds``, ``fastcert.lipschitz``; issue #13 point 2):
the element-wise bounds contain the exact Jacobian (float64 autograd) at sampled points and at gradient-ascent
points of the ball, on hypothesis MLPs of every covered activation and every norm, with no tolerance; the
Lipschitz constants are at least every sampled gradient's dual norm; Fast-Lip is never looser than the
spectral bound at small eps; the rigorous spectral norm bound is above the true norm and close to it; bad
input and uncovered layers are refused by name."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from exact import exact_graph_jacobian, exact_jacobian
from hypothesis import assume, given
from hypothesis import strategies as st
from test_graph import Block
from strategies import NORMS, build_network, fc_settings, make_feasible, mlp_specs, one_torch_thread, sample_points

import fastcert
from fastcert.errors import UnsupportedError
from fastcert.jacobian import derivative_bounds, spectral_norm_upper
from fastcert.primitives.relu import ReLU

COVERED = ("relu", "leaky_relu", "hardtanh", "sigmoid", "tanh", "arctan")
DUAL = {"inf": 1, "2": 2, "1": math.inf}


def _covered(spec) -> bool:
    acts = {L[1] for L in spec.layers if L[0] == "act"}
    return acts <= set(COVERED)


def _exact_check(model, pts: torch.Tensor, in_shape, C: torch.Tensor, lower, upper, lip, norm: str) -> None:
    """At every point of pts [N, n]: the exact (80-digit) Jacobian of C f lies in [lower, upper] [S, n] and its
    dual norm is at most lip [S] (float bounds taken as the exact rationals they denote)."""
    Cm = [[mpmath.mpf(float(v)) for v in row] for row in C]
    for p in pts:
        _, J = exact_jacobian(model, p, in_shape)
        n = len(J[0])
        for s_, crow in enumerate(Cm):
            row = [sum((crow[k] * J[k][i] for k in range(len(J))), mpmath.mpf(0)) for i in range(n)]
            for i, v in enumerate(row):
                assert mpmath.mpf(float(lower[s_, i])) <= v <= mpmath.mpf(float(upper[s_, i])), (
                    s_, i, v, float(lower[s_, i]), float(upper[s_, i]))
            if norm == "inf":
                dn = sum(abs(v) for v in row)
            elif norm == "2":
                dn = mpmath.sqrt(sum(v * v for v in row))
            else:
                dn = max(abs(v) for v in row)
            assert dn <= mpmath.mpf(float(lip[s_])), (s_, dn, float(lip[s_]))


def _ascent_points(model, x, eps, norm, lo, hi, C, in_shape, seed, steps=15, starts=4) -> torch.Tensor:
    """Points of the region that (locally) maximise the dual norm of the gradient of each row of C f, by
    projected gradient ascent on it (double backprop; ReLU networks have zero curvature, so the start points
    stay, which is fine: they are sampled too)."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[1]
    first = sample_points(x, eps, norm, lo, hi, g)[:, 1:1 + starts, :]  # [B, starts, n]
    found = []
    q = DUAL[norm]
    for b in range(x.shape[0]):
        for s in range(C.shape[0]):
            for p0 in first[b]:
                p = p0.clone().requires_grad_(True)
                for _ in range(steps):
                    y = (model(p.reshape(1, *in_shape))[0] * C[s]).sum()
                    (gr,) = torch.autograd.grad(y, p, create_graph=True)
                    obj = torch.linalg.vector_norm(gr, ord=q)
                    if not obj.requires_grad:
                        break
                    (step,) = torch.autograd.grad(obj, p)
                    with torch.no_grad():
                        p = p + 0.2 * float(eps[b]) * step.sign()
                        p = make_feasible(p.reshape(1, 1, n), x[b:b + 1], eps[b:b + 1], norm, lo[b:b + 1],
                                          hi[b:b + 1]).reshape(n)
                    p.requires_grad_(True)
                found.append(p.detach())
    return torch.stack(found).reshape(x.shape[0], -1, n)


#: (method, direction, shift): the backward recursions and RecurJac's forward variant (--lipsdir +1) both ways
VARIANTS = (("recurjac", "backward", 1), ("fastlip", "backward", 1), ("recurjac", "forward", 0),
            ("recurjac", "forward", 1))


@fc_settings(60)
@given(spec=mlp_specs(), norm=st.sampled_from(NORMS), eps=st.sampled_from((0.0, 1e-3, 0.05, 0.5, 3.0)),
       variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**16))
def test_jacobian_bounds_contain_sampled_and_ascent_jacobians(spec, norm, eps, variant, seed) -> None:
    method, direction, shift = variant
    assume(_covered(spec))
    with one_torch_thread():
        model = build_network(spec)
        in_shape = spec.input_shape
        n = math.prod(in_shape)
        g = torch.Generator().manual_seed(seed)
        B = 2
        x = (torch.rand(B, n, generator=g, dtype=torch.float64) * 2 - 1)
        K = spec.n_out
        C = torch.randn(min(K, 3), K, generator=g, dtype=torch.float64)
        kw = dict(norm=norm, C=C, method=method, direction=direction, shift=shift)
        jb = fastcert.jacobian_bounds(model, x.reshape(B, *in_shape), eps, **kw)
        lip = fastcert.lipschitz(model, x.reshape(B, *in_shape), eps, **kw)
        assert jb.lower.shape == (B, C.shape[0], n) and bool((jb.lower <= jb.upper).all())
        e = torch.full((B,), float(eps), dtype=torch.float64)
        lo, hi = torch.full_like(x, -math.inf), torch.full_like(x, math.inf)
        pts = sample_points(x, e, norm, lo, hi, g)  # [B, P, n], exactly inside the region
        asc = _ascent_points(model, x, e, norm, lo, hi, C, in_shape, seed, starts=2) if eps > 0 else pts[:, :1]
        for b in range(B):
            # x, 7 sampled points (random and vertices) and every gradient-ascent end point, exactly
            idx = torch.linspace(0, pts.shape[1] - 1, 8).round().long().unique()
            allp = torch.cat([pts[b, idx], asc[b]])
            _exact_check(model, allp, in_shape, C, jb.lower[b], jb.upper[b], lip.constant[b], norm)


@fc_settings(40)
@given(spec=mlp_specs(), norm=st.sampled_from(NORMS), eps=st.sampled_from((1e-3, 0.05, 0.5, 3.0)),
       seed=st.integers(0, 2**16))
def test_recurjac_never_looser_than_fastlip(spec, norm, eps, seed) -> None:
    """Entry by entry (each RecurJac level is intersected with Fast-Lip's step from the level above, and the
    recursion only replaces interval products by tighter symbolic ones)."""
    assume(_covered(spec))
    with one_torch_thread():
        model = build_network(spec)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(2, *spec.input_shape, generator=g, dtype=torch.float64) * 2 - 1
        fl = fastcert.jacobian_bounds(model, x, eps, norm=norm, method="fastlip")
        lf = fastcert.lipschitz(model, x, eps, norm=norm, method="fastlip").constant
        for direction, shift in (("backward", 1), ("forward", 0), ("forward", 1)):
            rj = fastcert.jacobian_bounds(model, x, eps, norm=norm, method="recurjac", direction=direction,
                                          shift=shift)
            assert bool((rj.lower >= fl.lower).all()) and bool((rj.upper <= fl.upper).all())
            lr = fastcert.lipschitz(model, x, eps, norm=norm, method="recurjac", direction=direction,
                                    shift=shift).constant
            assert bool((lr <= lf).all())


@fc_settings(40)
@given(spec=mlp_specs(), norm=st.sampled_from(NORMS), seed=st.integers(0, 2**16))
def test_fastlip_and_recurjac_never_looser_than_spectral_at_small_eps(spec, norm, seed) -> None:
    """At eps 1e-7 every neuron of a generic network is stable, so the Jacobian bounds are the exact gradient's
    dual norm (up to rounding), which the product of operator norms bounds."""
    assume(_covered(spec))
    with one_torch_thread():
        model = build_network(spec)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(2, *spec.input_shape, generator=g, dtype=torch.float64) * 2 - 1
        sp = fastcert.lipschitz(model, x, 1e-7, norm=norm, method="spectral").constant
        for method in ("fastlip", "recurjac"):
            fl = fastcert.lipschitz(model, x, 1e-7, norm=norm, method=method).constant
            assert bool((fl <= sp * (1 + 1e-6) + 1e-12).all()), (method, fl, sp)


DAG_SPECS = st.fixed_dictionaries({
    "C": st.integers(1, 2), "k": st.just(2), "H": st.just(4), "pool": st.just(False),
    "act": st.tuples(st.sampled_from(("relu", "leaky_relu", "hardtanh", "sigmoid", "tanh", "arctan")),
                     st.integers(0, 3)),
    "sign": st.sampled_from([1, -1]), "cat": st.booleans(), "seed": st.integers(0, 2**16),
    "scale": st.sampled_from([0.3, 1.0, 3.0]), "eps": st.sampled_from([0.0, 1e-3, 0.05, 0.3]),
    "norm": st.sampled_from(NORMS), "variant": st.sampled_from(VARIANTS)})


@fc_settings(25)
@given(spec=DAG_SPECS)
def test_jacobian_bounds_on_conv_residual_concat_graphs(spec) -> None:
    """Convolutions, residual additions / subtractions and concatenation (tests/test_graph.py's Block without
    pooling): the bounds of every variant contain the exact Jacobian (80 digits, no tolerance) at sampled
    points, vertices and a gradient-ascent point of the ball; RecurJac is never looser than Fast-Lip; every
    Lipschitz bound, spectral's included, is at least the exact gradient's dual norm there; at a tiny radius
    the local bounds are below the spectral one."""
    with one_torch_thread():
        torch.manual_seed(spec["seed"])
        model = Block(spec).double().eval()
        with torch.no_grad():
            for prm in model.parameters():
                prm.mul_(spec["scale"])
        in_shape = (spec["C"], 4, 4)
        n = math.prod(in_shape)
        g = torch.Generator().manual_seed(spec["seed"])
        x = torch.rand(1, n, generator=g, dtype=torch.float64) * 2 - 1
        C = torch.randn(2, 3, generator=g, dtype=torch.float64)
        method, direction, shift = spec["variant"]
        norm, eps = spec["norm"], spec["eps"]
        kw = dict(norm=norm, C=C, direction=direction, shift=shift)
        xs = x.reshape(1, *in_shape)
        jb = fastcert.jacobian_bounds(model, xs, eps, method=method, **kw)
        fl = fastcert.jacobian_bounds(model, xs, eps, method="fastlip", **kw)
        assert bool((jb.lower >= fl.lower).all()) and bool((jb.upper <= fl.upper).all())
        lips = [fastcert.lipschitz(model, xs, eps, method=m, **kw).constant for m in (method, "spectral")]
        e = torch.full((1,), float(eps), dtype=torch.float64)
        inf = torch.full_like(x, math.inf)
        pts = sample_points(x, e, norm, -inf, inf, g)[0]
        asc = _ascent_points(model, x, e, norm, -inf, inf, C, in_shape, spec["seed"], steps=8, starts=1)[0] \
            if eps > 0 else pts[:0]
        gr = fastcert.Network.from_torch(model).op_graph_for(in_shape)
        for p in torch.cat([pts[torch.linspace(0, pts.shape[0] - 1, 3).round().long().unique()], asc]):
            out, J = exact_graph_jacobian(gr, p)
            with torch.no_grad():
                ref = model(p.reshape(1, *in_shape))[0]
            for k in range(3):  # the graph's matrices are the model's: the exact output is torch's, closely
                assert abs(float(out[k]) - float(ref[k])) <= 1e-9 * (1 + abs(float(ref[k])))
            for lip in lips:
                _exact_check_rows(J, C, jb.lower[0], jb.upper[0], lip[0], norm)
        # at a tiny radius the local bounds are the gradient's norm (up to rounding): below the global spectral
        sp = fastcert.lipschitz(model, xs, 1e-7, method="spectral", **kw).constant
        for m in ("fastlip", method):
            loc = fastcert.lipschitz(model, xs, 1e-7, method=m, **kw).constant
            assert bool((loc <= sp * (1 + 1e-6) + 1e-12).all()), (m, loc, sp)


def _exact_check_rows(J, C, lower, upper, lip, norm: str) -> None:
    Cm = [[mpmath.mpf(float(v)) for v in row] for row in C]
    for s_, crow in enumerate(Cm):
        row = [sum((crow[k] * J[k][i] for k in range(len(J))), mpmath.mpf(0)) for i in range(len(J[0]))]
        for i, v in enumerate(row):
            assert mpmath.mpf(float(lower[s_, i])) <= v <= mpmath.mpf(float(upper[s_, i])), (s_, i, v)
        dn = (sum(abs(v) for v in row) if norm == "inf" else mpmath.sqrt(sum(v * v for v in row)) if norm == "2"
              else max(abs(v) for v in row))
        assert dn <= mpmath.mpf(float(lip[s_])), (s_, dn, float(lip[s_]))


def test_forward_recurjac_is_its_own_recursion() -> None:
    """The forward variant (--lipsdir +1) splits by the sign of each layer's Jacobian w.r.t. the input, so on
    a deep enough network it is strictly tighter than Fast-Lip and differs from the backward recursion; with
    shift 0 on a one-hidden-layer network it is the exact range of ``C W2 D W1`` over the derivative box (each
    term's sign is known: the extremes sum term by term)."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).double()
    x = torch.randn(2, 5, dtype=torch.float64)
    fl = fastcert.jacobian_bounds(model, x, 0.3, method="fastlip")
    fw = fastcert.jacobian_bounds(model, x, 0.3, method="recurjac", direction="forward", shift=0)
    bw = fastcert.jacobian_bounds(model, x, 0.3, method="recurjac")
    assert float((fw.upper - fw.lower).sum()) < 0.95 * float((fl.upper - fl.lower).sum())
    assert not torch.equal(fw.upper, bw.upper)
    two = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3)).double()
    x2 = torch.randn(1, 4, dtype=torch.float64)
    jb = fastcert.jacobian_bounds(two, x2, 0.5, method="recurjac", direction="forward", shift=0)
    box = fastcert.bounds(two[:1], x2, 0.5, method="crown")
    gl, gu = derivative_bounds(ReLU((9,)), box.lower, box.upper)
    W1, W2 = two[0].weight.detach(), two[2].weight.detach()
    a = W2[:, :, None] * W1[None, :, :]  # [3, 9, 4]: the terms of (W2 D W1)[s, r] per hidden neuron
    lo = torch.minimum(a * gl[0, None, :, None], a * gu[0, None, :, None]).sum(1)
    hi = torch.maximum(a * gl[0, None, :, None], a * gu[0, None, :, None]).sum(1)
    assert torch.allclose(jb.lower[0], lo, rtol=1e-12, atol=1e-14)
    assert torch.allclose(jb.upper[0], hi, rtol=1e-12, atol=1e-14)


def test_lipschitz_saturates_to_a_global_constant() -> None:
    """As eps grows Fast-Lip's local constant increases and stops changing once every neuron's box covers
    every activation state (the RecurJac paper's saturation), staying below the spectral bound."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 30), torch.nn.ReLU(), torch.nn.Linear(30, 30), torch.nn.ReLU(),
                                torch.nn.Linear(30, 4)).double()
    x = torch.rand(1, 5, dtype=torch.float64)
    vals = [float(fastcert.lipschitz(model, x, e, norm="inf").constant.max()) for e in (1e-3, 1e-1, 1e1, 1e3, 1e5)]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(vals, vals[1:]))
    assert vals[-1] == pytest.approx(vals[-2], rel=1e-9)
    assert vals[-1] <= float(fastcert.lipschitz(model, x, 1.0, norm="inf", method="spectral").constant.max())


@pytest.mark.parametrize("shape", [(7, 5), (40, 90), (200, 30), (1, 9), (9, 1)])
def test_spectral_norm_upper_is_rigorous_and_close(shape) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    W = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    bound, est = spectral_norm_upper(W)
    true = float(torch.linalg.matrix_norm(W, 2))
    assert bound >= true
    d = min(shape)
    assert bound <= true * d ** (1 / 2**9) * (1 + 1e-9)
    assert est <= true * (1 + 1e-9)
    tiny = W * 2.0**-600  # scaled by a power of two: the bound scales exactly
    assert spectral_norm_upper(tiny)[0] >= true * 2.0**-600


def test_derivative_bounds_enclose_the_derivatives() -> None:
    l = torch.tensor([[-3.0, -1.0, -0.5, 0.0, 0.2, 2.0, -40.0]], dtype=torch.float64)
    u = torch.tensor([[-2.0, 1.0, 0.0, 0.0, 0.7, 5.0, 40.0]], dtype=torch.float64)
    mods = {"sigmoid": torch.nn.Sigmoid(), "tanh": torch.nn.Tanh(), "arctan": fastcert.nn.Arctan(),
            "relu": torch.nn.ReLU(), "leaky_relu": torch.nn.LeakyReLU(0.2), "hardtanh": torch.nn.Hardtanh(-0.5, 1.0)}
    for name, mod in mods.items():
        net = fastcert.Network.from_torch(torch.nn.Sequential(mod))
        prim = net.op_graph_for((7,)).nodes[1].prim
        gl, gu = derivative_bounds(prim, l, u)
        assert bool((gl >= 0).all()) and bool((gl <= gu).all())
        t = torch.linspace(0, 1, 41, dtype=torch.float64)[:, None]
        z = (l + t * (u - l)).clamp(l, u)
        # the exact derivative (80 digits) at each point: torch's own sigmoid' rounds e^-40 to 0
        for k in range(z.shape[0]):
            _, J = exact_jacobian(torch.nn.Sequential(mod), z[k], (7,))
            for i in range(7):
                assert mpmath.mpf(float(gl[0, i])) <= J[i][i] <= mpmath.mpf(float(gu[0, i])), (name, i)


def test_uncovered_layers_and_bad_input_are_refused_by_name() -> None:
    pool = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(2, 2)).double()
    with pytest.raises(UnsupportedError, match="maxpool"):
        fastcert.jacobian_bounds(pool, torch.zeros(1, 1, 4, 4, dtype=torch.float64), 0.1)
    big = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 64 * 64, 2)).double()
    with pytest.raises(UnsupportedError, match=r"dense matrix.*\[65536, 12288\]"):
        fastcert.lipschitz(big, torch.zeros(1, 3, 64, 64, dtype=torch.float64), 0.1, method="spectral")
    elu = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2)).double()
    with pytest.raises(UnsupportedError, match="ELU|elu"):
        fastcert.lipschitz(elu, torch.zeros(1, 3, dtype=torch.float64), 0.1)

    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    x = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown Jacobian method"):
        fastcert.jacobian_bounds(mlp, x, 0.1, method="spectral")
    with pytest.raises(ValueError, match="unknown Jacobian method"):
        fastcert.jacobian_bounds(mlp, x, 0.1, method="recur")
    with pytest.raises(ValueError, match="direction must be one of"):
        fastcert.jacobian_bounds(mlp, x, 0.1, direction="sideways")
    with pytest.raises(ValueError, match="shift must be 0 or 1"):
        fastcert.lipschitz(mlp, x, 0.1, direction="forward", shift=2)
    with pytest.raises(ValueError, match="unknown Lipschitz method"):
        fastcert.lipschitz(mlp, x, 0.1, method="power")
    with pytest.raises(ValueError, match="eps"):
        fastcert.lipschitz(mlp, x, -0.1)
    with pytest.raises(ValueError, match="NaN"):
        fastcert.jacobian_bounds(mlp, torch.full((1, 3), math.nan, dtype=torch.float64), 0.1)


def test_lipschitz_curve_and_landscape() -> None:
    """The curve is nondecreasing in eps; R_max is sound: at the radius some gradient entry keeps its sign at
    every sampled point (checked exactly), and at a finite upper end the bounds show no such entry."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12), torch.nn.ReLU(),
                                torch.nn.Linear(12, 3)).double()
    x = torch.rand(2, 4, dtype=torch.float64)
    curve = fastcert.lipschitz_curve(model, x, num=6, log_start=-3, log_end=2)
    assert curve.constant.shape == (6, 2, 3) and torch.equal(curve.eps, torch.logspace(-3, 2, 6, dtype=torch.float64))
    assert bool((curve.constant[1:] >= curve.constant[:-1] * (1 - 1e-12)).all())
    land = fastcert.landscape(model, x, steps=10)
    assert land.radius.shape == (2, 3) and bool((land.radius > 0).all())
    assert bool((land.radius < land.upper).all())
    g = torch.Generator().manual_seed(0)
    for b in range(2):
        for s in range(3):
            C = torch.zeros(1, 3, dtype=torch.float64)
            C[0, s] = 1
            r = float(land.radius[b, s])
            jb = fastcert.jacobian_bounds(model, x[b:b + 1], r, C=C, method=land.method)
            keep = ((jb.lower > 0) | (jb.upper < 0))[0, 0]
            assert bool(keep.any())
            i = int(keep.nonzero()[0])
            sign = 1 if float(jb.lower[0, 0, i]) > 0 else -1
            e = torch.full((1,), r, dtype=torch.float64)
            inf = torch.full((1, 4), math.inf, dtype=torch.float64)
            pts = sample_points(x[b:b + 1], e, "inf", -inf, inf, g)[0, :6]
            for p in pts:
                _, J = exact_jacobian(model, p, (4,))
                assert sign * J[s][i] > 0
            up = float(land.upper[b, s])
            if math.isfinite(up):
                jb2 = fastcert.jacobian_bounds(model, x[b:b + 1], up, C=C, method=land.method)
                assert not bool(((jb2.lower > 0) | (jb2.upper < 0)).any())
    with pytest.raises(ValueError, match="num must be a positive int"):
        fastcert.lipschitz_curve(model, x, num=0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        fastcert.landscape(model, x, steps=0)
