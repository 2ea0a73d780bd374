"""MIP on graph networks (#10 point 2): residual sums / differences, concatenation and max pooling.

The optimum of ``fastcert.verify`` equals a brute force over activation patterns and max-pool choices (one
LP per pattern, built from the graph's own primitives), lies between the CROWN lower bound and every
sampled / PGD value (the rigorous ``lower_bound`` below every sample with no tolerance, in float64);
early-stopping verdicts agree with the full solve, and a "falsified" carries a counterexample re-checked
in the region and by the float64 torch model; the encoding holds every true point; LP refinement and the
property pipeline (solve_property) work on graphs; sigmoid / tanh graphs are refused by name.
"""

from __future__ import annotations

import itertools
import math

import fastcert
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastcert.api import make_region
from fastcert.io.vnnlib import Property, Spec, check_counterexample
from scipy.optimize import linprog
from torch import nn

pytest.importorskip("highspy")
from fastcert import mip  # noqa: E402
from fastcert.mip.encoding import encode_graph, pool_windows  # noqa: E402
from fastcert.mip.lp_refine import certified_lower, highs_lp, refine_bounds  # noqa: E402
from fastcert.primitives.maxpool import MaxPool2d  # noqa: E402
from fastcert.primitives.relu import ReLU  # noqa: E402

# --------------------------------------------------------------------------- small graph models


class ResMLP(nn.Module):
    """x -> relu(A x) -> h + relu(B h) (or h - ...) -> relu -> C: a residual MLP."""

    def __init__(self, n_in: int = 3, w: int = 3, sign: int = 1) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(n_in, w), nn.Linear(w, w), nn.Linear(w, 3)
        self.sign = sign

    def forward(self, x):
        h = F.relu(self.a(x))
        r = h + F.relu(self.b(h)) if self.sign > 0 else h - self.b(h)
        return self.c(F.relu(r))


class CatMLP(nn.Module):
    """Two branches concatenated, then a ReLU and a linear layer."""

    def __init__(self, n_in: int = 3) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(n_in, 2), nn.Linear(n_in, 3), nn.Linear(5, 3)

    def forward(self, x):
        return self.c(F.relu(torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)))


class PoolNet(nn.Module):
    """conv -> relu -> max pool (k, s, p) [-> + skip through a 1x1 conv of the pooled input] -> linear."""

    def __init__(self, k: int = 2, s: int = 2, p: int = 0, res: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2)
        self.k, self.s, self.p, self.res = k, s, p, res
        self.skip = nn.Conv2d(1, 1, 1)
        oh = (3 + 2 * p - k) // s + 1
        self.fc = nn.Linear(oh * oh, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), self.k, self.s, self.p)
        if self.res:
            h = F.relu(h + self.skip(h))
        return self.fc(h.flatten(1))


class DeepPool(nn.Module):
    """conv -> relu -> 1x1 conv -> max pool (k 2, s 1): the pool reads bounds LP refinement can tighten."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 2, 2), nn.Conv2d(2, 2, 1), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(F.max_pool2d(self.c2(F.relu(self.c1(x))), 2, 1).flatten(1))


def _model(kind: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    m, shape = {"res": (ResMLP(), (3,)), "sub": (ResMLP(sign=-1), (3,)), "cat": (CatMLP(), (3,)),
                "pool": (PoolNet(), (1, 4, 4)), "pool-overlap": (PoolNet(3, 2, 1), (1, 4, 4)),
                "pool-res": (PoolNet(res=True), (1, 4, 4)), "pool-deep": (DeepPool(), (1, 4, 4))}[kind]
    m = m.double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.5)
    return m, shape


KINDS = ["res", "sub", "cat", "pool", "pool-overlap", "pool-res"]
EPS = {"res": 0.5, "sub": 0.5, "cat": 0.5, "pool": 0.3, "pool-overlap": 0.3, "pool-res": 0.3, "pool-deep": 0.3}  # unstable neurons


# --------------------------------------------------------------------------- brute force over patterns


def _affine_forms(g, n0: int, choice: dict) -> tuple[list, list]:
    """Per node, the affine form ``(F [n_v, n0], f [n_v])`` of its output under the pattern ``choice``
    (ReLU node -> 0/1 per neuron; max-pool node -> window position per output), and the constraints
    ``(G, h)`` (``G x <= h``) that make the pattern hold."""
    forms: list = [(np.eye(n0), np.zeros(n0))]
    G, h = [], []
    for nd in g.nodes[1:]:
        p = nd.prim
        ins = [forms[i] for i in nd.inputs]
        if isinstance(p, ReLU):
            Fz, fz = ins[0]
            on = choice[nd.id]
            for r in range(len(fz)):  # on: z >= 0 ; off: z <= 0
                s = -1.0 if on[r] else 1.0
                G.append(s * Fz[r])
                h.append(-s * fz[r])
            forms.append((on[:, None] * Fz, on * fz))
        elif isinstance(p, MaxPool2d):
            Fz, fz = ins[0]
            win = pool_windows(p)
            pick = win[np.arange(len(win)), choice[nd.id]]
            for o, row in enumerate(win):
                for j in row[row >= 0]:  # x_pick >= x_j
                    G.append(Fz[j] - Fz[pick[o]])
                    h.append(fz[pick[o]] - fz[j])
            forms.append((Fz[pick], fz[pick]))
        else:  # linear in its inputs: evaluate on the stacked forms (columns = basis directions, then offset)
            stacked = [torch.from_numpy(np.ascontiguousarray(np.vstack([Fi.T, fi[None]]))) for Fi, fi in ins]
            if p.is_affine:
                zero = p.forward(torch.zeros(1, p.n_in, dtype=torch.float64))[0].numpy()
                lin = p.forward(stacked[0]).numpy() - zero
                forms.append((lin[:-1].T, lin[-1] + zero))
            else:
                out = p.forward(*stacked).numpy()
                forms.append((out[:-1].T, out[-1]))
    return forms, (G, h)


def _brute_min(g, lo: np.ndarray, hi: np.ndarray, c: np.ndarray, fixed: dict) -> float:
    """min c . f(x) over the box, one LP per ReLU pattern / max-pool choice (``fixed``: per node the
    patterns allowed, from sound bounds, to keep the enumeration small)."""
    nodes = sorted(fixed)
    best = math.inf
    for combo in itertools.product(*(fixed[v] for v in nodes)):
        forms, (G, h) = _affine_forms(g, len(lo), dict(zip(nodes, combo)))
        Fo, fo = forms[-1]
        r = linprog(c @ Fo, A_ub=np.array(G) if G else None, b_ub=np.array(h) if h else None,
                    bounds=list(zip(lo, hi)), method="highs")
        if r.status == 0:
            best = min(best, r.fun + float(c @ fo))
    return best


def _patterns(g, pre: dict) -> dict:
    """Per ReLU / max-pool node, the patterns its sound input bounds allow."""
    out = {}
    for nd in g.nodes[1:]:
        p = nd.prim
        if isinstance(p, ReLU):
            l, u = pre[nd.inputs[0]]
            opts = [[1.0] if a >= 0 else [0.0] if b <= 0 else [0.0, 1.0] for a, b in zip(l, u)]
            out[nd.id] = [np.array(t) for t in itertools.product(*opts)]
        elif isinstance(p, MaxPool2d):
            l, u = pre[nd.inputs[0]]
            win = pool_windows(p)
            opts = []
            for row in win:
                pos = [q for q, j in enumerate(row) if j >= 0]
                L = max(l[row[q]] for q in pos)
                opts.append([q for q in pos if u[row[q]] >= L])
            out[nd.id] = [np.array(t) for t in itertools.product(*opts)]
    assert math.prod(len(v) for v in out.values()) <= 20000, "enumeration too large for the brute force"
    return out


def _samples(model: nn.Module, x: torch.Tensor, eps: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform points and vertices of the L-inf ball around x [1, *shape], then 30 PGD steps from each
    on every output direction; returns (points [N, *shape], outputs [N, K]) in float64."""
    gen = torch.Generator().manual_seed(seed)
    d = x[0].numel()
    pts = x + (torch.rand(n, *x.shape[1:], generator=gen, dtype=torch.float64) * 2 - 1) * eps
    if d <= 10:
        v = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=torch.float64)
        pts = torch.cat([pts, x + eps * v.reshape(-1, *x.shape[1:])])
    K = model(x).shape[1]
    runs = [pts]
    for k in range(K):
        for sgn in (1.0, -1.0):
            z = pts[:64].clone().requires_grad_(True)
            for _ in range(30):
                (sgn * model(z)[:, k]).sum().backward()
                with torch.no_grad():
                    z -= eps / 10 * z.grad.sign()
                    z.copy_(torch.maximum(torch.minimum(z, x + eps), x - eps))
                z.grad = None
            runs.append(z.detach())
    pts = torch.cat(runs)
    with torch.no_grad():
        return pts, model(pts)


def _setup(kind: str, seed: int, eps: float):
    model, shape = _model(kind, seed)
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    net = fastcert.Network.from_torch(model, shape)
    g = net.graph_for(shape)
    prob = make_region(x, eps, "inf", None, None)
    pre = {v: (b[0][0].copy(), b[1][0].copy()) for v, b in mip.node_bounds(net, shape, prob, "crown").items()}
    return model, shape, x, net, g, prob, pre


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [1, 4])
def test_mip_optimum_equals_brute_force_and_is_sandwiched(kind: str, seed: int) -> None:
    eps = EPS[kind]
    model, shape, x, net, g, prob, pre = _setup(kind, seed, eps)
    assert not net.chain
    res = mip.verify(model, x, eps, C=torch.eye(3, dtype=torch.float64), time_limit=60.0, early_stop=False)[0]
    crown = fastcert.bounds(model, x, eps, method="crown", C=torch.eye(3, dtype=torch.float64))
    pts, outs = _samples(model, x, eps, 2000, seed)
    lo, hi = prob.l0[0].numpy(), prob.u0[0].numpy()
    fixed = _patterns(g, pre)
    n_bin = 0
    for k, r in enumerate(res):
        c = np.eye(3)[k]
        truth = _brute_min(g, lo, hi, c, fixed)
        sample_min = float(outs[:, k].min())
        assert r.verdict in ("verified", "falsified") and r.min_value is not None
        assert abs(r.min_value - truth) <= 1e-6 * (1 + abs(truth)), (kind, k, r.min_value, truth)
        assert truth <= sample_min + 1e-9 * (1 + abs(sample_min))  # the brute force is a true minimum
        # rigorous: CROWN <= lower_bound <= every sampled / PGD value (float64, no tolerance)
        assert float(crown.lower[0, k]) <= r.lower_bound <= sample_min
        assert r.lower_bound <= r.min_value <= r.upper_bound + 1e-9 * (1 + abs(r.upper_bound))
        n_bin += r.n_binaries
    assert n_bin > 0  # the graphs have unstable ReLUs / undecided windows: the encoding is exercised


@pytest.mark.parametrize("kind", KINDS)
def test_verify_verdicts_agree_with_sampling_and_full_solve(kind: str) -> None:
    eps = EPS[kind] / 2
    model, shape = _model(kind, 4)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    fast = mip.verify(model, x, eps, time_limit=60.0)  # margins f_y - f_j, early stop (the default)
    full = mip.verify(model, x, eps, time_limit=60.0, early_stop=False)
    seen = set()
    for b in range(3):
        y = int(model(x[b:b + 1]).argmax())
        pts, outs = _samples(model, x[b:b + 1], eps, 1000, b)
        for f, q in zip(full[b], fast[b]):
            margin = outs[:, y] - outs[:, q.target]
            assert q.lower_bound <= float(margin.min())  # rigorous
            if abs(f.min_value) > 1e-4:
                assert q.verdict == f.verdict == ("verified" if f.min_value > 0 else "falsified")
            if q.verdict == "verified":
                assert bool((margin > 0).all())  # no sample or PGD point breaks a verified row
            if q.verdict == "falsified":
                cex = q.counterexample
                assert bool(((cex - x[b]).abs() <= eps).all())
                out = model(cex.unsqueeze(0))[0].detach()
                assert float(out[y] - out[q.target]) < 0
            seen.add(q.verdict)
    assert seen  # at least one decided row


def _true_columns(g, enc, xs: np.ndarray) -> np.ndarray:
    """The MIP encoding's columns at the network's real values for input xs (ReLU binaries = activation
    signs; per max-pool window the selector of the first candidate attaining the max)."""
    vals = [torch.from_numpy(xs)[None]]
    for nd in g.nodes[1:]:
        vals.append(nd.prim.forward(*(vals[i] for i in nd.inputs)))
    v = np.zeros(enc.ncol)
    for nid, h in enumerate(enc.out):
        v[h[h >= 0]] = vals[nid][0].numpy()[h >= 0]
    for nid, (keys, cols) in enc.binary.items():
        zin = vals[g.nodes[nid].inputs[0]][0].numpy()
        if isinstance(g.nodes[nid].prim, ReLU):
            v[cols] = (zin[keys] > 0).astype(float)
            continue
        y = vals[nid][0].numpy()
        chosen: set = set()
        for q, (o, j) in enumerate(keys):
            if o not in chosen and zin[j] == y[o]:
                v[cols[q]] = 1.0
                chosen.add(o)
    return v


@pytest.mark.parametrize("kind", KINDS)
def test_graph_encoding_holds_every_true_point(kind: str) -> None:
    """Every true point satisfies the MIP encoding's rows and column bounds; LP certificates (binaries
    relaxed) from any multipliers stay below the objective at every true point; the LP-mode encoding's
    certified minimum of each output is below its value at every true point."""
    model, shape, x, net, g, prob, pre = _setup(kind, 4, 0.25)
    lo, hi = prob.l0[0].numpy(), prob.u0[0].numpy()
    enc = encode_graph(g, pre, lo, hi, mode="mip")
    assert enc.n_binaries > 0
    rng = np.random.default_rng(0)
    xs = lo + (hi - lo) * rng.random((300, len(lo)))
    V = np.array([_true_columns(g, enc, p) for p in xs])
    AV = V @ enc.A.T.toarray()
    tol = 1e-9 * (1 + np.abs(AV))
    assert (AV >= enc.row_lo - tol).all() and (AV <= enc.row_hi + tol).all()
    assert (V >= enc.col_lo - 1e-12).all() and (V <= enc.col_hi + 1e-12).all()
    lpenc = mip.lp_refine.Encoding(enc.ncol, enc.col_lo, enc.col_hi, 0 * enc.integer, enc.A, enc.row_lo, enc.row_hi,
                                   enc.x, enc.out, enc.binary)
    for _ in range(3):
        cost = rng.standard_normal(enc.ncol)
        hs = highs_lp(lpenc, cost, 10.0)
        hs.run()
        opt = hs.getInfo().objective_function_value
        lam = np.asarray(hs.getSolution().row_dual)
        assert opt - 1e-6 * (1 + abs(opt)) <= certified_lower(lpenc, cost, lam) <= opt + 1e-9 * (1 + abs(opt))
        for scale in (1e-3, 1.0):
            bad = certified_lower(lpenc, cost, lam + scale * rng.standard_normal(len(lam)))
            assert bad <= float((V @ cost).min())
    lp = encode_graph(g, pre, lo, hi, mode="lp")
    with torch.no_grad():
        f = model(torch.from_numpy(xs).reshape(-1, *shape)).numpy()
    for k in range(f.shape[1]):
        cost = np.zeros(lp.ncol)
        cost[lp.out[-1][k]] = 1.0
        hs = highs_lp(lp, cost, 10.0)
        hs.run()
        assert certified_lower(lp, cost, np.asarray(hs.getSolution().row_dual)) <= float(f[:, k].min())


@pytest.mark.parametrize("kind", ["res", "sub", "pool-deep"])
def test_lp_refinement_on_graphs_is_sound_and_tighter(kind: str) -> None:
    lps = 0
    for seed in (1, 3, 4):
        model, shape, x, net, g, prob, pre = _setup(kind, seed, EPS[kind])
        lo, hi = prob.l0[0].numpy(), prob.u0[0].numpy()
        new, info = refine_bounds(g, pre, lo, hi, time_budget=30.0)
        assert info["complete"] and set(new) == set(pre)
        lps += info["lps"]
        rng = np.random.default_rng(seed)
        xs = torch.from_numpy(lo + (hi - lo) * rng.random((3000, len(lo))))
        vals = [xs]
        for nd in g.nodes[1:]:
            vals.append(nd.prim.forward(*(vals[i] for i in nd.inputs)))
        for v in pre:
            assert (new[v][0] >= pre[v][0]).all() and (new[v][1] <= pre[v][1]).all()
            z = vals[v].numpy()
            assert (z >= new[v][0]).all() and (z <= new[v][1]).all()  # float64, no tolerance
    assert lps > 0


@pytest.mark.parametrize("kind", ["res", "cat", "pool", "pool-res"])
def test_solve_property_on_graphs_agrees_with_brute_force(kind: str) -> None:
    model, shape, x, net, g, prob, pre = _setup(kind, 4, EPS[kind])
    lo, hi = prob.l0[0].numpy(), prob.u0[0].numpy()
    y = int(model(x).argmax())
    j = (y + 1) % 3
    c = np.zeros(3)
    c[y], c[j] = 1.0, -1.0
    truth = _brute_min(g, lo, hi, c, _patterns(g, pre))
    for delta in (0.02, -0.02):  # c.f <= b is sat iff the minimum is <= b
        b = truth + delta * (1 + abs(truth))
        want = "sat" if delta > 0 else "unsat"
        spec = Spec([Property(lo, hi, [(c[None], np.array([b]))])], len(lo), 3)
        for kw in ({"attack": False}, {"attack": False, "lp_refine": False}, {}):
            verdict, cex, info = mip.solve_property(net, spec, 30.0, **kw)
            assert verdict == want, (kind, delta, kw, info["reason"])
            if verdict == "sat":
                assert check_counterexample(net, spec, cex)[0]


def test_non_piecewise_linear_graph_nodes_are_refused_by_name() -> None:
    class SigRes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(x + torch.sigmoid(self.a(x)))

    model = SigRes().double().eval()
    x = torch.rand(1, 3, dtype=torch.float64)
    with pytest.raises(fastcert.UnsupportedError, match="sigmoid.*no piecewise-linear"):
        mip.verify(model, x, 0.1)
    box = Property(np.zeros(3), np.ones(3), [(np.array([[1.0, -1.0]]), np.zeros(1))])
    verdict, _, info = mip.solve_property(model, box, 5.0)
    assert verdict == "unknown" and "sigmoid" in info["reason"]


# --------------------------------------------------------------------------- VNN-COMP Convnet_maxpool


def _blind_bounds(monkeypatch: pytest.MonkeyPatch, close_lp: bool) -> None:
    """Withhold the incomplete bounds (and, unless ``close_lp``, the LP certificates) from the pipeline,
    so the LP / MIP stage must decide."""
    from fastcert.mip import property as prop
    from fastcert.mip import stages

    real = prop.network_bounds

    def blind(*a, **k):
        lb, ub = real(*a, **k)
        return torch.full_like(lb, -1e9), torch.full_like(ub, 1e9)

    real_inc = prop.incomplete_bounds

    def blind_inc(*a, **k):  # alpha-CROWN's output bounds too (its pre-activation bounds stay)
        lb, ub, pre = real_inc(*a, **k)
        return torch.full_like(lb, -1e9), torch.full_like(ub, 1e9), pre

    monkeypatch.setattr(prop, "network_bounds", blind)
    monkeypatch.setattr(prop, "incomplete_bounds", blind_inc)
    if not close_lp:
        monkeypatch.setattr(stages, "certified_lower", lambda *a, **k: -math.inf)


@pytest.mark.shared_data
@pytest.mark.parametrize("stage", ["lp", "mip"])
def test_convnet_maxpool_lp_and_mip_stages_decide_published_instances(stage: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from fastcert.io import load_onnx, load_vnnlib
    from fastcert.mip.property import PropertyOptions, as_properties, decide
    from shared_data import require_shared

    d = require_shared("vnncomp2021/verivital/verdicts.csv").parent
    net, _, info = load_onnx(d / "Convnet_maxpool.onnx")
    rows = [r for r in csv.DictReader(open(d / "verdicts.csv")) if "maxpool" in r["onnx"]][:3]
    _blind_bounds(monkeypatch, close_lp=stage == "lp")
    for r in rows:
        spec = load_vnnlib(str(d / r["vnnlib"]) + ".gz", info["n_inputs"], info["n_outputs"])
        verdict, _, res = decide(net, net.input_shape, as_properties(spec), 60.0,
                                 PropertyOptions(attack=None, polish=None, lp_refine=False))
        assert (verdict, res["stage"]) == (r["verdict"], stage), (r["vnnlib"], res["reason"])
