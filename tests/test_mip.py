"""Exact MIP verification (fastcert.mip): optimum == brute force over activation patterns, sandwiched
by CROWN and attacks, counterexamples re-checked, time limits never produce a wrong verdict."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import fastcert
from fastcert import attacks

pytest.importorskip("highspy")
from fastcert import mip  # noqa: E402


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
    res = mip.verify(model, x, eps, norm, x_min=lo, x_max=hi, time_limit=20.0)
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
            for b, rows in enumerate(mip.verify(model, x, eps, norm, x_min=0.0, x_max=1.0)):
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
    res = mip.verify(conv, x, eps, "inf", C=C, x_min=0.0, x_max=1.0)[0]
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
    res = mip.verify(m, x, eps, "1")[0]
    y = int(m(x).argmax())
    d = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    d = d / d.abs().sum(1, keepdim=True) * eps * torch.rand(20000, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    with torch.no_grad():
        out = m(x + d)
    for r in res:
        assert r.min_value is not None
        assert r.min_value <= float((out[:, y] - out[:, r.target]).min()) + 1e-9
        assert r.lower_bound <= r.min_value <= r.upper_bound + 1e-9


def test_time_limit_never_gives_a_wrong_verdict():
    model = _net(11, 4, [12, 12, 12], n_out=4, scale=1.0)
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full = [r for rows in mip.verify(model, x, 0.2, "inf", time_limit=30.0) for r in rows]
    assert all(f.status == "Optimal" for f in full)
    tiny = [r for rows in mip.verify(model, x, 0.2, "inf", time_limit=1e-3) for r in rows]
    assert any(q.verdict == "unknown" and q.status == "Time limit reached" for q in tiny)
    short = [r for rows in mip.verify(model, x, 0.2, "inf", time_limit=0.02) for r in rows]
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
    ref = mip.verify(model, x, 0.3, "inf", labels=[0, 1])
    net = fastcert.Network.from_torch(model)
    got = mip.verify(net, x.float(), 0.3, "inf", labels=[0, 1])
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
