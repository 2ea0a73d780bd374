"""Exact MIP verification (fastcert.mip, fastcert.lp_refine): optimum == brute force over activation
patterns, sandwiched by CROWN and attacks, counterexamples re-checked, time limits never produce a wrong
verdict, early stops agree with full solves, LP-refined bounds contain every reachable pre-activation
(sampling and exact MIPs) and are at least as tight as CROWN, LP dual certificates are valid for any
multipliers, and solve_property agrees with brute force on VNN-LIB style properties."""

from __future__ import annotations

import itertools
import math
import time
from fractions import Fraction

import fastcert
import numpy as np
import pytest
import torch
from fastcert import attacks
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from torch import nn

pytest.importorskip("highspy")
from fastcert import lp_refine, mip
from fastcert.api import make_region
from fastcert.io.vnnlib import Property, Spec, check_counterexample


def _net(seed: int, n_in: int, widths: list[int], n_out: int = 3, scale: float = 1.0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    d = n_in
    for w in widths + [n_out]:
        lin = nn.Linear(d, w).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(w, d, generator=g, dtype=torch.float64) * scale)
            lin.bias.copy_(torch.randn(w, generator=g, dtype=torch.float64) * 0.3)
        mods += [lin, nn.ReLU()]
        d = w
    return nn.Sequential(*mods[:-1]).eval()


def _brute_min(model: nn.Sequential, x0: np.ndarray, eps: float, norm: str, c: np.ndarray,
               lo: float | None, hi: float | None) -> float:
    """min c.f(x') over the region, by one LP per activation pattern of the hidden ReLUs."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    hidden = [lin.out_features for lin in lins[:-1]]
    n = x0.size
    blo = np.maximum(x0 - eps, -np.inf if lo is None else lo)
    bhi = np.minimum(x0 + eps, np.inf if hi is None else hi)
    best = np.inf
    for pattern in itertools.product((0, 1), repeat=sum(hidden)):
        A, a = np.eye(n), np.zeros(n)
        A_ub, b_ub = [], []
        k = 0
        for li, lin in enumerate(lins):
            W, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
            A, a = W @ A, W @ a + b
            if li == len(lins) - 1:
                break
            p = np.array(pattern[k:k + W.shape[0]], dtype=float)
            k += W.shape[0]
            for r in range(W.shape[0]):  # active: z >= 0 ; inactive: z <= 0
                s = -1.0 if p[r] else 1.0
                A_ub.append(s * A[r])
                b_ub.append(-s * a[r])
            A, a = p[:, None] * A, p * a
        obj = c @ A
        const = float(c @ a)
        if norm == "inf":
            r = linprog(obj, A_ub=np.array(A_ub) if A_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                        bounds=list(zip(blo, bhi)), method="highs")
            if r.status == 0:
                best = min(best, r.fun + const)
        else:  # variables [x', t]; t >= |x' - x0|, sum t <= eps
            I = np.eye(n)
            G = [np.hstack([g, np.zeros(n)]) for g in A_ub]
            G += list(np.hstack([I, -I])) + list(np.hstack([-I, -I])) + [np.hstack([np.zeros(n), np.ones(n)])]
            h = list(b_ub) + list(x0) + list(-x0) + [eps]
            r = linprog(np.concatenate([obj, np.zeros(n)]), A_ub=np.array(G), b_ub=np.array(h),
                        bounds=list(zip(blo, bhi)) + [(0, None)] * n, method="highs")
            if r.status == 0:
                best = min(best, r.fun + const)
    return best


def _in_region(xp: torch.Tensor, x0: torch.Tensor, eps: float, norm: str, lo, hi) -> bool:
    d = (xp.double() - x0.double()).reshape(-1)
    ok = bool(d.abs().max() <= eps) if norm == "inf" else bool(d.abs().sum() <= eps)
    if lo is not None:
        ok &= bool((xp >= lo).all())
    if hi is not None:
        ok &= bool((xp <= hi).all())
    return ok


CASES = [  # seed, n_in, widths, eps, norm, domain
    (0, 2, [3], 0.4, "inf", None),
    (1, 3, [4, 3], 0.3, "inf", (0.0, 1.0)),
    (2, 4, [5], 0.25, "1", None),
    (3, 2, [2, 2], 0.5, "1", (0.0, 1.0)),
    (4, 4, [3, 4], 0.2, "inf", None),
    (5, 3, [5], 0.6, "1", (0.0, 1.0)),
    (6, 2, [4, 2], 0.8, "inf", (0.0, 1.0)),
    (7, 3, [2, 3], 0.35, "1", None),
]


@pytest.mark.parametrize("seed,n_in,widths,eps,norm,domain", CASES)
def test_mip_equals_brute_force_and_sandwiched(seed, n_in, widths, eps, norm, domain):
    model = _net(seed, n_in, widths)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(2, n_in, generator=g, dtype=torch.float64)
    lo, hi = (None, None) if domain is None else domain
    res = mip.verify(model, x, eps, norm, x_min=lo, x_max=hi, time_limit=20.0, early_stop=False)
    K = 3
    y = model(x).argmax(1)
    C = -torch.eye(K, dtype=torch.float64).unsqueeze(0).repeat(2, 1, 1)
    C[torch.arange(2), :, y] += 1
    keep = torch.stack([torch.tensor([j for j in range(K) if j != int(y[b])]) for b in range(2)])
    C = torch.stack([C[b, keep[b]] for b in range(2)])  # [B, K-1, K]: f_y - f_j, j != y
    crown = fastcert.bounds(model, x, eps, norm=norm, method="crown", C=C, x_min=lo, x_max=hi).lower
    att = attacks.minimize_linear(model, x, eps, norm, C, steps=40, restarts=2, x_min=lo, x_max=hi, seed=0).values
    assert len(res) == 2 and all(len(r) == K - 1 for r in res)
    for b in range(2):
        for s, r in enumerate(res[b]):
            assert r.target == int(keep[b, s])
            c = C[b, s].numpy()
            exact = _brute_min(model, x[b].numpy(), eps, norm, c, lo, hi)
            assert r.status == "Optimal" and r.min_value is not None
            assert abs(r.min_value - exact) <= 1e-6 * (1 + abs(exact)), (r, exact)
            assert float(crown[b, s]) <= exact + 1e-9
            assert exact <= float(att[b, s]) + 1e-9
            assert r.lower_bound <= exact + 1e-9 and r.upper_bound >= exact - 1e-9
            assert r.lower_bound >= float(crown[b, s])  # never worse than CROWN
            if r.verdict == "verified":
                assert exact > 0
            elif r.verdict == "falsified":
                assert exact < 0
            if abs(exact) > 1e-4:  # solved to optimality with a clear sign: a definite verdict
                assert r.verdict == ("verified" if exact > 0 else "falsified")


def test_counterexamples_really_violate():
    found = 0
    for seed in range(6):
        model = _net(seed, 3, [4, 3], scale=1.5)
        x = torch.rand(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for norm, eps in (("inf", 0.5), ("1", 0.8)):
            for b, rows in enumerate(mip.verify(model, x, eps, norm, x_min=0.0, x_max=1.0, early_stop=False)):
                for r in rows:
                    assert r.verdict in ("verified", "falsified", "unknown")
                    if r.verdict != "falsified":
                        assert r.counterexample is None
                        continue
                    found += 1
                    xp = r.counterexample
                    assert xp.shape == (3,) and xp.dtype == torch.float64
                    assert _in_region(xp, x[b], eps, norm, 0.0, 1.0)
                    out = model(xp.unsqueeze(0))[0].detach()
                    y = int(model(x[b:b + 1]).argmax())
                    assert float(out[y] - out[r.target]) < 0
                    assert r.upper_bound < 0 and r.lower_bound <= r.upper_bound
    assert found > 0  # the sweep does exercise the falsification path


def test_custom_C_and_conv_and_normalize():
    g = torch.Generator().manual_seed(0)
    conv = nn.Sequential(fastcert.nn.Normalize([0.5], [0.5]), nn.Conv2d(1, 2, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    x = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.5, -2.0]], dtype=torch.float64)
    eps = 0.05
    res = mip.verify(conv, x, eps, "inf", C=C, x_min=0.0, x_max=1.0, early_stop=False)[0]
    crown = fastcert.bounds(conv, x, eps, norm="inf", C=C, x_min=0.0, x_max=1.0).lower[0]
    att = attacks.minimize_linear(conv, x, eps, "inf", C, steps=60, restarts=3, x_min=0.0, x_max=1.0).values[0]
    pts = (x + (torch.rand(4000, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        samp = (conv(pts) @ C.T).min(0).values
    for s, r in enumerate(res):
        assert r.target is None and r.min_value is not None
        assert float(crown[s]) - 1e-9 <= r.min_value <= min(float(att[s]), float(samp[s])) + 1e-6
        if r.verdict == "falsified":
            assert float(conv(r.counterexample.unsqueeze(0))[0].detach() @ C[s]) < 0


def test_unfolded_batchnorm_and_relu_output():
    g = torch.Generator().manual_seed(5)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU()).double()
    with torch.no_grad():
        m[2].running_mean.uniform_(-1, 1, generator=g)
        m[2].running_var.uniform_(0.5, 2, generator=g)
        m[2].weight.uniform_(-2, 2, generator=g)
    m.eval()
    assert any(L.kind == "diag" for L in fastcert.Network.from_torch(m).layers_for((3,)))
    x = torch.rand(1, 3, generator=g, dtype=torch.float64)
    eps = 0.3
    res = mip.verify(m, x, eps, "1", early_stop=False)[0]
    y = int(m(x).argmax())
    d = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    d = d / d.abs().sum(1, keepdim=True) * eps * torch.rand(20000, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    with torch.no_grad():
        out = m(x + d)
    for r in res:
        assert r.min_value is not None
        assert r.min_value <= float((out[:, y] - out[:, r.target]).min()) + 1e-9
        # min_value is the solver's optimum (feasibility tolerance 1e-9); the bounds are rigorous
        assert r.lower_bound <= r.min_value + 1e-8 and r.min_value <= r.upper_bound + 1e-9


def test_time_limit_never_gives_a_wrong_verdict():
    model = _net(11, 4, [12, 12, 12], n_out=4, scale=1.0)
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full = [r for rows in mip.verify(model, x, 0.2, "inf", time_limit=30.0, early_stop=False) for r in rows]
    assert all(f.status == "Optimal" for f in full)
    tiny = [r for rows in mip.verify(model, x, 0.2, "inf", time_limit=1e-3, early_stop=False) for r in rows]
    assert any(q.verdict == "unknown" and q.status == "Time limit reached" for q in tiny)
    short = [r for rows in mip.verify(model, x, 0.2, "inf", time_limit=0.02, early_stop=False) for r in rows]
    for f, q in zip(full + full, tiny + short):
        assert q.verdict in ("verified", "falsified", "unknown")
        assert q.time_s < 2.0
        if f.min_value is not None and q.verdict != "unknown":
            assert q.verdict == ("verified" if f.min_value > 0 else "falsified")
        if q.min_value is None:
            assert q.status != "Optimal"
        assert q.lower_bound <= f.upper_bound + 1e-9 and f.lower_bound <= q.upper_bound + 1e-9


def test_network_object_and_float32_input():
    model = _net(1, 3, [4, 3])
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = mip.verify(model, x, 0.3, "inf", labels=[0, 1], early_stop=False)
    net = fastcert.Network.from_torch(model)
    got = mip.verify(net, x.float(), 0.3, "inf", labels=[0, 1], early_stop=False)
    for rr, gg in zip(ref, got):
        for r, g in zip(rr, gg):
            assert r.target == g.target and r.verdict == g.verdict
            # x.float() rounds the centre, so the optimum moves by about float32 precision only
            assert abs(r.min_value - g.min_value) <= 1e-5 * (1 + abs(r.min_value))


def test_refusals():
    model = _net(0, 2, [3])
    x = torch.rand(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="second-order-cone"):
        mip.verify(model, x, 0.1, "2")
    tanh = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with pytest.raises(ValueError, match="ReLU networks only"):
        mip.verify(tanh, x, 0.1, "inf")
    with pytest.raises(ValueError, match="time_limit"):
        mip.verify(model, x, 0.1, "inf", time_limit=0)
    with pytest.raises(ValueError, match="bounds_method"):
        mip.verify(model, x, 0.1, "inf", bounds_method="nope")


# --------------------------------------------------------------------------- early stop, LP refinement


@pytest.mark.parametrize("seed,n_in,widths,eps,norm,domain", CASES[::2])
def test_early_stop_agrees_with_full_solve(seed, n_in, widths, eps, norm, domain):
    model = _net(seed, n_in, widths, scale=1.3)
    x = torch.rand(2, n_in, generator=torch.Generator().manual_seed(200 + seed), dtype=torch.float64)
    lo, hi = (None, None) if domain is None else domain
    full = mip.verify(model, x, eps, norm, x_min=lo, x_max=hi, time_limit=20.0, early_stop=False)
    fast = mip.verify(model, x, eps, norm, x_min=lo, x_max=hi, time_limit=20.0, early_stop=True)
    refined = mip.verify(model, x, eps, norm, x_min=lo, x_max=hi, time_limit=20.0, lp_refine=5.0, early_stop=False)
    for b in range(2):
        for f, q, r in zip(full[b], fast[b], refined[b]):
            assert f.min_value is not None and q.min_value is None
            # LP-refined pre-activation bounds change the encoding, never the optimum
            assert r.min_value is not None and abs(r.min_value - f.min_value) <= 1e-6 * (1 + abs(f.min_value))
            assert r.n_binaries <= f.n_binaries or norm == "1"
            if abs(f.min_value) > 1e-4:
                assert q.verdict == f.verdict == ("verified" if f.min_value > 0 else "falsified")
            assert q.lower_bound <= f.min_value + 1e-9 <= q.upper_bound + 2e-9
            if q.verdict == "falsified":
                out = model(q.counterexample.unsqueeze(0))[0].detach()
                y = int(model(x[b:b + 1]).argmax())
                assert float(out[y] - out[q.target]) < 0


def _pre_values(model: nn.Sequential, pts: torch.Tensor) -> dict[int, np.ndarray]:
    """Pre-activation values [N, n] of every ReLU (keyed by module index = IR layer index)."""
    out = {}
    h = pts
    with torch.no_grad():
        for i, m in enumerate(model):
            if isinstance(m, nn.ReLU):
                out[i] = h.numpy().copy()
            h = m(h)
    return out


def _box_setup(seed: int, n_in: int, widths: list[int], half: float):
    model = _net(seed, n_in, widths, scale=1.2)
    g = torch.Generator().manual_seed(seed + 7)
    c = torch.rand(n_in, generator=g, dtype=torch.float64)
    lo = (c - half * torch.rand(n_in, generator=g, dtype=torch.float64)).numpy()
    hi = (c + half * torch.rand(n_in, generator=g, dtype=torch.float64)).numpy()
    net = fastcert.Network.from_torch(model, (n_in,))
    layers = net.layers_for((n_in,))
    x0 = (lo + hi) / 2
    prob = make_region(torch.from_numpy(x0)[None], float((hi - lo).max() / 2), "inf", torch.from_numpy(lo),
                   torch.from_numpy(hi))
    pre = {i: (v[0][0].copy(), v[1][0].copy()) for i, v in mip.prefix_bounds(layers, prob, "crown").items()}
    return model, layers, pre, lo, hi


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 10**6), n_in=st.integers(2, 4), widths=st.lists(st.integers(3, 7), min_size=2, max_size=3),
       half=st.floats(0.05, 0.8))
def test_lp_refined_bounds_are_sound_and_tighter(seed, n_in, widths, half):
    model, layers, pre, lo, hi = _box_setup(seed, n_in, widths, half)
    new, info = lp_refine.refine_bounds(layers, pre, lo, hi, time_budget=20.0)
    assert info["complete"] and set(new) == set(pre)
    for i in pre:  # never looser than CROWN
        assert (new[i][0] >= pre[i][0]).all() and (new[i][1] <= pre[i][1]).all()
        assert (new[i][0] <= new[i][1]).all()
    # sampling: uniform points, every box corner
    g = torch.Generator().manual_seed(seed)
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    pts = lo_t + (hi_t - lo_t) * torch.rand(3000, n_in, generator=g, dtype=torch.float64)
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n_in)), dtype=torch.float64)
    pts = torch.cat([pts, lo_t + (hi_t - lo_t) * corners])
    for i, v in _pre_values(model, pts).items():
        l, u = new[i]
        tol = 1e-12 * (1 + np.abs(v))
        assert (v >= l - tol).all() and (v <= u + tol).all()
    # exact: each refined neuron's true range (MIP on the prefix with CROWN bounds) lies inside
    x0 = torch.from_numpy((lo + hi) / 2)[None]
    eps = float((hi - lo).max() / 2)
    for i in list(pre)[1:]:
        l, u = pre[i]
        uns = np.nonzero((l < 0) & (u > 0))[0]
        if len(uns) == 0:
            continue
        prefix = nn.Sequential(*list(model)[:i])
        n = layers[i - 1].n_out
        C = torch.cat([torch.eye(n, dtype=torch.float64)[uns], -torch.eye(n, dtype=torch.float64)[uns]])
        res = mip.verify(prefix, x0, eps, "inf", C=C, x_min=lo_t, x_max=hi_t, time_limit=20.0, early_stop=False)[0]
        k = len(uns)
        for q, nrn in enumerate(uns):
            zmin, zmax = res[q].min_value, -res[k + q].min_value
            assert new[i][0][nrn] <= zmin + 1e-7 * (1 + abs(zmin))
            assert new[i][1][nrn] >= zmax - 1e-7 * (1 + abs(zmax))


def test_lp_refinement_tightens():
    """On a deeper net with a wide box the triangle LPs beat CROWN for some neurons and stabilise some."""
    gained = 0
    for seed in range(3):
        _, layers, pre, lo, hi = _box_setup(seed, 6, [16, 16, 16], 0.6)
        new, info = lp_refine.refine_bounds(layers, pre, lo, hi, time_budget=20.0)
        gained += sum(int((new[i][0] > pre[i][0]).sum() + (new[i][1] < pre[i][1]).sum()) for i in pre)
        assert info["lps"] > 0
    assert gained > 0


def _true_point(enc: lp_refine.Encoding, layers: list, x: np.ndarray) -> np.ndarray:
    """The encoding's columns at the network's real values for input x (binaries = activation signs)."""
    v = np.zeros(enc.ncol)
    v[enc.x] = x
    h = torch.from_numpy(x)[None]
    for i, L in enumerate(layers):
        if i in enc.binary:
            nrn, cols = enc.binary[i]
            v[cols] = (h[0].numpy()[nrn] > 0).astype(float)
        h = L.forward(h)
        c = enc.out[i]
        v[c[c >= 0]] = h[0].numpy()[c >= 0]
    return v


@pytest.mark.parametrize("mode", ["lp", "mip"])
def test_encoding_contains_every_true_point_and_certificates_are_valid(mode):
    for seed in range(4):
        _, layers, pre, lo, hi = _box_setup(seed, 4, [6, 5], 0.5)
        enc = lp_refine.encode(layers, pre, lo, hi, mode=mode)
        g = np.random.default_rng(seed)
        pts = lo + (hi - lo) * g.random((200, 4))
        V = np.stack([_true_point(enc, layers, p) for p in pts])
        AV = V @ enc.A.T.toarray()
        assert (AV >= enc.row_lo - 1e-9).all() and (AV <= enc.row_hi + 1e-9).all()
        assert (V >= enc.col_lo - 1e-12).all() and (V <= enc.col_hi + 1e-12).all()
        # weak duality: HiGHS's duals give (almost) the LP optimum, any multipliers give a valid bound
        lpenc = enc if mode == "lp" else lp_refine.Encoding(enc.ncol, enc.col_lo, enc.col_hi, 0 * enc.integer, enc.A,
                                                            enc.row_lo, enc.row_hi, enc.x, enc.out, enc.binary)
        for _ in range(3):
            cost = g.standard_normal(enc.ncol)
            hs = lp_refine.highs_lp(lpenc, cost, 10.0)
            hs.run()
            opt = hs.getInfo().objective_function_value
            lam = np.asarray(hs.getSolution().row_dual)
            cert = lp_refine.certified_lower(lpenc, cost, lam)
            assert opt - 1e-6 * (1 + abs(opt)) <= cert <= opt + 1e-9 * (1 + abs(opt))
            for scale in (1e-3, 1.0):
                bad = lp_refine.certified_lower(lpenc, cost, lam + scale * g.standard_normal(len(lam)))
                assert bad <= opt + 1e-9 * (1 + abs(opt))
                assert bad <= float((V @ cost).min()) + 1e-12  # below the objective at every true point


# --------------------------------------------------------------------------- solve_property


def _brute_conj_min(model: nn.Sequential, lo: np.ndarray, hi: np.ndarray, A: np.ndarray, b: np.ndarray) -> float:
    """min over the box of max_i (A_i f(x) - b_i), one LP (variables x, t) per activation pattern."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    hidden = [lin.out_features for lin in lins[:-1]]
    n = lo.size
    best = np.inf
    for pattern in itertools.product((0, 1), repeat=sum(hidden)):
        F, f = np.eye(n), np.zeros(n)
        G, h = [], []
        k = 0
        for li, lin in enumerate(lins):
            W, bb = lin.weight.detach().numpy(), lin.bias.detach().numpy()
            F, f = W @ F, W @ f + bb
            if li == len(lins) - 1:
                break
            p = np.array(pattern[k:k + W.shape[0]], dtype=float)
            k += W.shape[0]
            for r in range(W.shape[0]):
                s = -1.0 if p[r] else 1.0
                G.append(np.append(s * F[r], 0.0))
                h.append(-s * f[r])
            F, f = p[:, None] * F, p * f
        for i in range(A.shape[0]):  # A_i (F x + f) - b_i - t <= 0
            G.append(np.append(A[i] @ F, -1.0))
            h.append(b[i] - A[i] @ f)
        r = linprog(np.append(np.zeros(n), 1.0), A_ub=np.array(G), b_ub=np.array(h),
                    bounds=[*zip(lo, hi), (None, None)], method="highs")
        if r.status == 0:
            best = min(best, r.fun)
    return best


def _random_property(seed: int, model: nn.Sequential, n_in: int, K: int) -> list[Property]:
    g = np.random.default_rng(seed)
    props = []
    for _ in range(1 + seed % 2):  # one or two disjuncts
        c = g.random(n_in)
        half = 0.05 + 0.4 * g.random()
        lo, hi = np.clip(c - half, 0, 1), np.clip(c + half, 0, 1)
        y = int(model(torch.from_numpy(c)[None]).argmax())
        cons = []
        for j in range(K):  # margins: f_j >= f_y
            if j != y:
                A = np.zeros((1, K))
                A[0, y], A[0, j] = 1.0, -1.0
                cons.append((A, np.zeros(1)))
        t = (y + 1) % K  # targeted: f_t >= every other output (a multi-row conjunction)
        A = np.zeros((K - 1, K))
        for r, j in enumerate(jj for jj in range(K) if jj != t):
            A[r, j], A[r, t] = 1.0, -1.0
        cons.append((A, np.full(K - 1, 0.05 * g.standard_normal())))
        props.append(Property(lo, hi, cons))
    return props


def _hard_property(seed: int, model: nn.Sequential, n_in: int, K: int, sat: bool) -> tuple[list[Property], float]:
    """:func:`_random_property` with every conjunction's b shifted so that its exact minimum is +-delta
    (delta in [0.01, 0.05]): unsat when ``sat`` is False, else exactly one conjunction reaches -delta.
    Returns (properties, exact minimum over all conjunctions)."""
    g = np.random.default_rng(1000 + seed)
    props = _random_property(seed, model, n_in, K)
    jobs = [(p, k) for p in props for k in range(len(p.constraints))]
    bad = int(g.integers(len(jobs))) if sat else -1
    truth = np.inf
    for n, (p, k) in enumerate(jobs):
        A, b = p.constraints[k]
        t = _brute_conj_min(model, p.lo, p.hi, A, b)
        delta = 0.01 + 0.04 * g.random()
        target = -delta if n == bad else delta
        p.constraints[k] = (A, b + (t - target))  # shifting b by s moves the minimum by -s
        truth = min(truth, target)
    return props, truth


CASES_SP = [(seed, False) for seed in range(8)] + [(seed, True) for seed in range(8, 16)]


@pytest.mark.parametrize("seed,hard", CASES_SP)
def test_solve_property_agrees_with_brute_force(seed, hard):
    K, n_in = 3, 3
    model = _net(300 + seed, n_in, [5, 3], n_out=K, scale=1.5)
    if hard:
        props, truth = _hard_property(seed, model, n_in, K, sat=seed % 2 == 1)
    else:
        props = _random_property(seed, model, n_in, K)
        truth = min(_brute_conj_min(model, p.lo, p.hi, A, b) for p in props for A, b in p.constraints)
    if abs(truth) < 1e-5:
        pytest.skip("a property on the boundary")
    want = "sat" if truth < 0 else "unsat"
    net = fastcert.Network.from_torch(model, (n_in,))
    spec = Spec(props, n_in, K)
    for kwargs in ({}, {"attack": False}, {"attack": False, "lp_refine": False}):
        verdict, x, info = mip.solve_property(net if kwargs else model, spec, 30.0, **kwargs)
        assert verdict == want, (kwargs, info)
        assert info["best_lower"] <= truth + 1e-9 if verdict == "sat" else info["best_lower"] == math.inf
        if verdict == "sat":
            assert x is not None and x.dtype == np.float64 and x.shape == (n_in,)
            assert check_counterexample(net, spec, x)[0]
            assert any(((x >= p.lo) & (x <= p.hi)).all() for p in props)
            assert info["best_upper"] <= 0
        else:
            assert x is None and all(c["closed"] for c in info["conjunctions"])
        if want == "unsat" and kwargs.get("attack") is False:
            assert info["stage"] in ("bounds:alpha-crown", "lp", "mip")


def test_solve_property_time_limit_and_refusals():
    model = _net(11, 4, [12, 12, 12], n_out=4, scale=1.0)
    net = fastcert.Network.from_torch(model, (4,))
    props = _random_property(1, model, 4, 4)
    for tl in (1e-3, 0.05):
        verdict, x, info = mip.solve_property(net, props, tl, attack=False)
        assert verdict in ("timeout", "sat", "unsat") and info["time_s"] < tl + 2.0
        if verdict == "sat":
            assert check_counterexample(net, Spec(props, 4, 4), x)[0]
    tanh = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 4)).double()
    verdict, x, info = mip.solve_property(tanh, props, 5.0)
    assert verdict == "unknown" and x is None and "ReLU networks only" in info["reason"]
    with pytest.raises(ValueError, match="time_limit"):
        mip.solve_property(net, props, 0)
    with pytest.raises(TypeError, match="Spec, Property"):
        mip.solve_property(net, "prop.vnnlib", 5.0)
    small = _net(5, 3, [4, 3], n_out=4, scale=1.5)
    for p in _random_property(3, small, 3, 4):
        for A, b in p.constraints:
            v1 = mip.verify_box(small, p.lo, p.hi, A, b, 20.0)[0]
            v2 = mip.solve_property(small, Property(p.lo, p.hi, [(A, b)]), 20.0, attack=False)[0]
            assert v1 == v2 == ("sat" if _brute_conj_min(small, p.lo, p.hi, A, b) < 0 else "unsat")


@pytest.mark.parametrize("prop,want", [("prop_2_0.03", "sat"), ("prop_11_0.05", "unsat"), ("prop_4_0.03", "unsat")])
def test_solve_property_on_vnncomp_mnist_fc(prop, want):
    from fastcert.io import load_onnx, load_vnnlib
    from shared_data import require_shared

    root = require_shared("vnncomp2022/mnist_fc")
    net, _, info = load_onnx(root / "onnx/mnist-net_256x2.onnx.gz")
    spec = load_vnnlib(root / f"vnnlib/{prop}.vnnlib.gz", info["n_inputs"], info["n_outputs"])
    t0 = time.perf_counter()
    verdict, x, res = mip.solve_property(net, spec, 60.0)
    assert verdict == want, res["reason"]
    assert time.perf_counter() - t0 < 30.0
    if want == "sat":
        assert check_counterexample(net, spec, x)[0]


@pytest.mark.parametrize("seed", range(8))
def test_solve_property_close_margins_match_the_exact_mip(seed):
    """Margins shifted to +-[0.01, 0.05] of their exact minima (fastcert.verify, checked against brute
    force above): bounds and LP points cannot decide most of them, the early-stopping MIP must."""
    model = _net(500 + seed, 4, [10, 8], n_out=4, scale=1.5)
    g = np.random.default_rng(seed)
    c = g.random(4)
    lo, hi = np.clip(c - 0.3, 0, 1), np.clip(c + 0.3, 0, 1)
    y = int(model(torch.from_numpy(c)[None]).argmax())
    exact = mip.verify(model, torch.from_numpy((lo + hi) / 2)[None], float((hi - lo).max() / 2), "inf", labels=[y],
                       x_min=torch.from_numpy(lo), x_max=torch.from_numpy(hi), early_stop=False)[0]
    bad = int(g.integers(3)) if seed % 2 else -1
    cons = []
    for n, r in enumerate(exact):
        A = np.zeros((1, 4))
        A[0, y], A[0, r.target] = 1.0, -1.0
        delta = 0.01 + 0.04 * g.random()
        cons.append((A, np.array([r.min_value - (-delta if n == bad else delta)])))
    prop = Property(lo, hi, cons)
    want = "sat" if bad >= 0 else "unsat"
    for kwargs in ({}, {"attack": False}):
        verdict, x, info = mip.solve_property(model, prop, 30.0, **kwargs)
        assert verdict == want
        if seed in (0, 1) and kwargs:
            assert info["stage"] == "mip"
        if verdict == "sat":
            assert check_counterexample(fastcert.Network.from_torch(model, (4,)), Spec([prop], 4, 4), x)[0]
        else:
            lower = [cj["lower"] for cj in info["conjunctions"]]
            assert all(0 < lb <= 0.05 + 1e-9 for lb in lower)  # bounds below the true minima (delta)


# --------------------------------------------------------------------------- counterexamples proved exactly
# (issue #9, point 8): "falsified" / "sat" only for a point inside the region in exact arithmetic whose
# violation fastcert's rigorous bounds prove; rounding alone never makes a counterexample.


def _exact_forward(model: nn.Sequential, x) -> list:
    """The exact real output of a Linear/ReLU Sequential at x (rational arithmetic)."""
    h = [Fraction(float(v)) for v in np.asarray(x, dtype=np.float64).reshape(-1)]
    for m in model:
        if isinstance(m, nn.Linear):
            W, b = m.weight.detach().double().numpy(), m.bias.detach().double().numpy()
            h = [sum((Fraction(float(W[i, j])) * h[j] for j in range(len(h))), Fraction(float(b[i])))
                 for i in range(W.shape[0])]
        else:
            h = [max(v, Fraction(0)) for v in h]
    return h


def _l1_excess(xp, x0, eps):
    return sum(abs(Fraction(float(a)) - Fraction(float(b))) for a, b in zip(xp, x0)) - Fraction(eps)


def _seq(*layers) -> nn.Sequential:
    """Linear(W, b) / "relu" entries -> a float64 Sequential with exactly those weights."""
    mods: list[nn.Module] = []
    for L in layers:
        if L == "relu":
            mods.append(nn.ReLU())
            continue
        W, b = torch.tensor(L[0], dtype=torch.float64), torch.tensor(L[1], dtype=torch.float64)
        lin = nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        mods.append(lin)
    return nn.Sequential(*mods).eval()


# found by a random sweep of fastcert.verify(norm="1"): the solver's point, moved into the ball with a
# float check, lay one ulp (5.55e-17 / 6.16e-17) outside the L1 ball in exact arithmetic
L1_CASES = [
    ([[-1.2077009446902867, 0.23360543294006658]], 8.771594383151001,
     ([[0.24042880535125732, -0.5529108643531799], [-0.18966713547706604, 0.06411471217870712],
       [0.08567189425230026, -0.24982164800167084]], [-0.7009816765785217, -0.18389040231704712, 0.27070945501327515]),
     ([[0.4971392750740051, -0.521364152431488, 0.27564695477485657],
       [-0.5478326082229614, -0.552121102809906, -0.36156246066093445]], [-0.07625832408666611, 0.16125039756298065])),
    ([[0.0008443358596002815, -0.001624763154713959]], 1.3342003827745208,
     ([[-0.27070295810699463, 0.2794628441333771], [-0.6268987655639648, -0.3616795539855957],
       [0.26559004187583923, -0.6008022427558899]], [0.35242411494255066, 0.05943598970770836, -0.5895907282829285]),
     ([[-0.5729809999465942, 0.18247193098068237, 0.2728951573371887],
       [-0.11541598290205002, -0.510525107383728, -0.3327537477016449]], [0.06136276200413704, 0.021004583686590195])),
]


@pytest.mark.parametrize("case", range(len(L1_CASES)))
def test_l1_counterexamples_lie_in_the_ball_exactly(case):
    x0, eps, l1, l2 = L1_CASES[case]
    model = _seq(l1, "relu", l2)
    x = torch.tensor(x0, dtype=torch.float64)
    found = 0
    for early in (False, True):
        for r in mip.verify(model, x, eps, "1", time_limit=10.0, early_stop=early)[0]:
            if r.verdict != "falsified":
                continue
            found += 1
            assert _l1_excess(r.counterexample, x[0], eps) <= 0, "counterexample outside the L1 ball"
            exact = _exact_forward(model, r.counterexample)
            assert exact[0] * (1 if r.target == 1 else -1) + exact[1] * (-1 if r.target == 1 else 1) < 0
    assert found  # the falsification path is exercised


def _rounding_net(out: str) -> nn.Sequential:
    """h = (x + 660000, x) -> g = (h0 - 660000, h1): float64 makes g0 = 0 for 0 < x < 5.8e-11, exactly g0 = x.
    out "margin": y0 = g0 - g1 / 2 (float: -x/2 < 0, exactly +x/2 > 0), y1 = 0; out "equal": y = (g0, 0)."""
    last = [[1.0, -0.5], [0.0, 0.0]] if out == "margin" else [[1.0, 0.0], [0.0, 0.0]]
    return _seq(([[1.0], [1.0]], [660000.0, 0.0]), "relu", ([[1.0, 0.0], [0.0, 1.0]], [-660000.0, 0.0]), "relu",
                (last, [0.0, 0.0]))


ROUND_LO, ROUND_HI = 2e-11, 4e-11


def test_rounding_only_violations_are_never_falsified():
    model = _rounding_net("margin")
    x = torch.tensor([[3e-11]], dtype=torch.float64)
    for p in (x[0], torch.tensor([ROUND_LO]), torch.tensor([ROUND_HI])):  # the premise, in exact arithmetic
        assert float(model(p[None].double()).detach()[0, 0]) < 0 < _exact_forward(model, p)[0]
    for early in (False, True):
        r = mip.verify(model, x, 1e-11, "inf", C=torch.tensor([[1.0, 0.0]]), time_limit=5.0, early_stop=early)[0][0]
        assert r.verdict != "falsified" and r.counterexample is None, r
        assert r.upper_bound >= 0  # a rigorous upper bound of the minimum (exactly 1e-11 > 0)


@pytest.mark.parametrize("kind", ["margin", "output", "equal"])
def test_rounding_only_violations_are_never_sat(kind):
    lo, hi = np.array([ROUND_LO]), np.array([ROUND_HI])
    if kind == "margin":  # y0 <= 0: float64 says y0 = -x/2, exactly y0 = x/2 > 0
        model, A, b = _rounding_net("margin"), np.array([[1.0, 0.0]]), np.array([0.0])
    elif kind == "output":  # outputs near 6.6e5: y0 <= 660000 with y0 = x + 660000 (float64: exactly 660000)
        model, A, b = _seq(([[1.0]], [660000.0])), np.array([[1.0]]), np.array([660000.0])
    else:  # Y_0 = Y_1: float64 gives y = (0, 0), exactly y0 = x != 0 = y1
        model, A, b = _rounding_net("equal"), np.array([[1.0, -1.0], [-1.0, 1.0]]), np.zeros(2)
    xm = np.array([3e-11])
    y = model(torch.from_numpy(xm)[None]).detach().numpy()[0]
    assert np.all(A @ y <= b)  # float64 says "violated" ...
    exact = _exact_forward(model, xm)
    assert max(sum(Fraction(float(a)) * v for a, v in zip(row, exact)) - Fraction(float(bb))
               for row, bb in zip(A, b)) > 0  # ... exact arithmetic says not
    for kwargs in ({}, {"attack": False}):
        verdict, x, info = mip.solve_property(model, Property(lo, hi, [(A, b)]), 5.0, **kwargs)
        assert verdict != "sat" and x is None, info["reason"]


def test_true_violations_near_the_rounding_limit_are_still_sat():
    """The same network with a spec that holds with room (exactly y0 = x/2 <= 2e-11 < 1e-7; the rigorous
    bounds at a point are about 1e-8 wide here): sat, and the reported point is a proved counterexample."""
    model = _rounding_net("margin")
    prop = Property(np.array([ROUND_LO]), np.array([ROUND_HI]), [(np.array([[1.0, 0.0]]), np.array([1e-7]))])
    verdict, x, info = mip.solve_property(model, prop, 5.0)
    assert verdict == "sat", info["reason"]
    assert ROUND_LO <= x[0] <= ROUND_HI and _exact_forward(model, x)[0] < 1e-7


def _exact_inside(p, x0, eps, norm, lo, hi) -> bool:
    F = Fraction
    if np.any(p < lo) or np.any(p > hi):
        return False
    d = [abs(F(float(a)) - F(float(b))) for a, b in zip(p, x0)]
    if norm == "inf":
        return max(d) <= F(eps)
    if norm == "1":
        return sum(d) <= F(eps)
    return sum(v * v for v in d) <= F(eps) ** 2


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 5), norm=st.sampled_from(["inf", "1", "2"]),
       scale=st.sampled_from([1e-300, 1e-12, 1.0, 1e3, 1e200]), boxed=st.booleans())
def test_region_membership_is_exact(seed, n, norm, scale, boxed):
    """confirm.in_region agrees with rational arithmetic on points at the ball's boundary (a float
    projection onto it lands an ulp inside or outside), and into_region returns points that are inside."""
    from fastcert.confirm import in_region, into_region

    g = np.random.default_rng(seed)
    x0 = g.normal(size=n) * scale * 10 ** g.uniform(-2, 2, size=n)
    eps = float(scale * 10 ** g.uniform(-3, 1))
    lo, hi = (x0 - g.random(n) * eps, x0 + g.random(n) * eps) if boxed else (np.full(n, -np.inf), np.full(n, np.inf))
    for _ in range(6):
        d = g.normal(size=n)
        size = {"inf": np.abs(d).max(), "1": np.abs(d).sum(), "2": np.sqrt((d * d).sum())}[norm]
        p = x0 + d * (eps / size) * (1 + g.choice([-1, 0, 1]) * 2.0 ** -52)
        p = np.where(g.random(n) < 0.2, np.nextafter(p, g.choice([-np.inf, np.inf])), p)
        assert in_region(p, x0, eps, norm, lo, hi) == _exact_inside(p, x0, eps, norm, lo, hi)
        q = into_region(p, x0, eps, norm, lo, hi)
        assert q is not None and _exact_inside(q, x0, eps, norm, lo, hi)
        if _exact_inside(p, x0, eps, norm, lo, hi):
            assert np.array_equal(q, p)  # a point inside is kept as it is
        else:
            assert np.all(np.abs(q - x0) <= np.abs(p - x0))  # moved towards the centre only


def test_confirm_property_strictness_and_disjuncts():
    """A conjunction is proved only by the rigorous bounds at the point: strict by default (the parser
    reads ``<`` as ``<=``), non-strict where the property says so; an equality is never proved (the
    bounds have width); the box is exact (no tolerance); the disjunct and conjunction are reported."""
    from fastcert.confirm import confirm_point, confirm_property, output_upper

    model = _seq(([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]))  # y = x, exact in every arithmetic
    net = fastcert.Network.from_torch(model, (2,))
    box = (np.zeros(2), np.ones(2))
    x = np.array([0.25, 0.5])
    eq = (np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([0.25, -0.25]))  # y0 = 0.25 holds exactly
    lt = (np.array([[0.0, 1.0]]), np.array([0.75]))  # y1 < 0.75
    up = float(output_upper(net, (2,), x, lt[0])[0])
    assert 0.5 < up < 0.75
    at = (lt[0], np.array([up]))  # y1 <= up: its bound reaches b exactly
    assert confirm_property(net, (2,), [Property(*box, [eq])], x) is None
    p = Property(*box, [at, lt])
    assert confirm_property(net, (2,), [p], x) == (0, 1)  # strict: up < up fails
    p.strict = [np.array([False]), np.array([True])]  # the parser may record strictness
    assert confirm_property(net, (2,), [p], x) == (0, 0)
    assert confirm_property(net, (2,), [Property(np.zeros(2), np.array([1.0, np.nextafter(0.5, 0)]), [lt]),
                                        Property(*box, [lt])], x) == (1, 0)  # one ulp outside box 0
    x3 = np.array([0.1, 0.3])  # not float32-representable: the float32 neighbour is reported
    got = confirm_point(net, (2,), [Property(*box, [lt])], x3)
    assert got is not None and np.array_equal(got, x3.astype(np.float32).astype(np.float64))
