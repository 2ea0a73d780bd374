"""Branch and bound (issue #14): split constraints in both engines, beta-CROWN multipliers, the BaB loop, its
leaves' LPs, and its stage in the property pipeline.

Soundness: a split sub-domain's certified bound holds at every sampled point of the sub-domain (points
clearly inside it: their float64 pre-activations have the split's sign with a margin, so rounding cannot put
them outside), for any multipliers; a sub-domain proved empty has no sampled point. Completeness on tiny
networks: BaB's verdict equals brute-force enumeration of activation patterns (one LP each) and the MIP's,
with properties whose exact minimum is +-delta."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastcert
from fastcert import mip
from fastcert.algorithms.bab import BabOptions, Bounder, bab
from fastcert.algorithms.diff import DiffRegion, diff_pass, output_bounds
from fastcert.algorithms.graph_bounds import graph_bounds
from fastcert.algorithms.splits import Splits
from fastcert.api import make_region
from fastcert.io.vnnlib import Property, Spec, check_counterexample
from fastcert.mip.property import PropertyOptions
from fastcert.options import BoundOptions
from fastcert.primitives.relu import ReLU
from strategies import SETTINGS, one_torch_thread
from test_mip import _hard_property, _net


def _setup(seed: int, n_in: int = 3, widths: tuple = (6, 5), K: int = 3, eps: float = 0.4, scale: float = 1.5):
    model = _net(seed, n_in, list(widths), n_out=K, scale=scale)
    net = fastcert.Network.from_torch(model, (n_in,))
    g = net.graph_for((n_in,))
    x = torch.from_numpy(np.random.default_rng(seed).random(n_in))[None]
    prob = make_region(x, eps, "inf", None, None)
    return model, net, g, prob


def _relus(g):
    return [nd.id for nd in g.nodes[1:] if isinstance(nd.prim, ReLU)]


def _pre_acts(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The float64 pre-activations of each hidden layer (the ReLUs' inputs) at points x [N, n]."""
    out, h = [], x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            out.append(h)
    return out[:-1]


def _random_splits(g, rng: np.random.Generator, frac: float) -> dict[int, torch.Tensor]:
    return {v: torch.from_numpy(rng.choice([-1, 0, 1], size=(1, g.n(v)), p=[frac / 2, 1 - frac, frac / 2])).to(torch.int8)
            for v in _relus(g)}


@settings(max_examples=30, **SETTINGS)
@given(seed=st.integers(0, 10_000), frac=st.sampled_from([0.2, 0.5, 1.0]), beta_scale=st.sampled_from([0.0, 0.3, 5.0]),
       eps=st.sampled_from([0.0, 0.05, 0.5]))
def test_split_bounds_sound_by_sampling(seed, frac, beta_scale, eps):
    model, net, g, prob = _setup(seed, eps=eps)
    rng = np.random.default_rng(seed)
    sign = _random_splits(g, rng, frac)
    C = torch.from_numpy(rng.standard_normal((1, 2, 3)))
    beta = {v: torch.from_numpy(np.abs(rng.standard_normal((1, 2, g.n(v)))) * beta_scale) for v in sign}
    sp = Splits(sign, beta)
    with one_torch_thread():
        lb, _ = graph_bounds(g, prob, C, "crown", splits=sp, upper=False)
    N = 20000
    x = prob.l0 + (prob.u0 - prob.l0) * torch.from_numpy(rng.random((N, 3)))
    with torch.no_grad():
        z = _pre_acts(model, x)
        y = model(x)
    scale = max(1.0, max(float(t.abs().max()) for t in z))
    inside = torch.ones(N, dtype=torch.bool)
    for v, zz in zip(_relus(g), z):
        s = sign[v][0].double()
        inside &= ((s[None] * zz > 1e-9 * scale) | (s[None] == 0)).all(1)
    if sp.empty is not None and bool(sp.empty[0]):
        assert not bool(inside.any()), "a sub-domain proved empty has points"
        return
    vals = y[inside] @ C[0].T
    if vals.numel():
        assert bool((vals >= lb[0][None]).all()), (vals.min(0).values, lb)


def test_zero_beta_and_no_split_reproduce_the_unsplit_bounds():
    model, net, g, prob = _setup(3)
    C = torch.randn(1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with one_torch_thread():
        plain = graph_bounds(g, prob, C, "crown")
        none = graph_bounds(g, prob, C, "crown", splits=Splits({v: torch.zeros(1, g.n(v), dtype=torch.int8)
                                                                  for v in _relus(g)}))
        rng = np.random.default_rng(1)
        sign = _random_splits(g, rng, 0.5)
        boxes = graph_bounds(g, prob, C, "crown", splits=Splits(sign))
        zero = graph_bounds(g, prob, C, "crown", splits=Splits(sign, {v: torch.zeros(1, 4, g.n(v), dtype=torch.float64)
                                                                      for v in sign}))
    for a, b in zip(plain, none):
        assert torch.equal(a, b)
    for a, b in zip(boxes, zero):
        assert torch.equal(a, b)
    # the optimize mode: beta = 0 is the split-box bound, no split the plain bound
    reg = DiffRegion((prob.l0 + prob.u0) / 2, (prob.u0 - prob.l0) / 2)
    st0 = diff_pass(g, reg, C, "crown", torch.float64, live=False)
    st1 = diff_pass(g, reg, C, "crown", torch.float64, live=False,
                    splits=Splits({v: torch.zeros(1, g.n(v)) for v in _relus(g)},
                                  {v: torch.zeros(1, 2, g.n(v), dtype=torch.float64) for v in _relus(g)}))
    assert torch.equal(output_bounds(st0, C, upper=False)[0], output_bounds(st1, C, upper=False)[0])


def test_beta_tightens_a_split_bound():
    """With optimized multipliers the bound of a sub-domain is at least the split-box bound, and on some of
    these sub-domains strictly tighter (the multipliers carry the split constraint into the output's rows)."""
    gains = 0
    for seed in range(10):
        model, net, g, prob = _setup(40 + seed, widths=(8, 8))
        rng = np.random.default_rng(seed)
        sign = _random_splits(g, rng, 0.5)
        A = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
        out0 = bab(g, prob, A, torch.tensor([-1e9], dtype=torch.float64),
                   opts=BabOptions(root_iterations=0))  # closed at once: the value is the plain bound
        assert out0.verdict == "unsat"
        bd = Bounder(g, prob, A, torch.zeros(1, dtype=torch.float64),
                      BabOptions(dtype=torch.float64, lr_beta=0.2), BoundOptions())
        bd.bound({v: torch.zeros(1, g.n(v), dtype=torch.int8) for v in _relus(g)}, 0)  # the root's boxes
        plain = bd.bound(sign, 0)["value"]
        if math.isinf(float(plain[0])):  # proved empty: nothing to tighten
            continue
        opt = bd.bound(sign, 40)["value"]
        assert float(opt[0]) >= float(plain[0]) - 1e-9 * (1 + abs(float(plain[0])))
        gains += float(opt[0]) > float(plain[0]) + 1e-6
    assert gains >= 1


CASES = [(seed, seed % 2 == 1) for seed in range(10)]


def brute_force_case(seed: int, sat: bool) -> tuple:
    """A tiny net (3 inputs, 6 and 5 ReLUs, 3 outputs) and a property whose exact minimum is +-delta, found by
    brute-force enumeration of activation patterns: (net, spec, the verdict it implies)."""
    model = _net(300 + seed, 3, [6, 5], n_out=3, scale=1.5)
    props, truth = _hard_property(seed, model, 3, 3, sat=sat)
    return fastcert.Network.from_torch(model, (3,)), Spec(props, 3, 3), "sat" if truth < 0 else "unsat"


def check_against_brute_force(seed: int, sat: bool, opts: PropertyOptions, strategy: str,
                              stages: tuple = ("bounds:alpha-crown", "bab")) -> None:
    """The pipeline (no attack) on :func:`brute_force_case`: the brute-force verdict (a re-checked point when
    sat; one of ``stages``, with BaB's ``strategy``, when unsat), and the MIP alone agrees."""
    net, spec, want = brute_force_case(seed, sat)
    with one_torch_thread():
        verdict, x, info = mip.solve_property(net, spec, 60.0, options=opts)
    assert verdict == want, info.get("bab")
    if want == "unsat":
        assert info["stage"] in stages, info["stage"]
        assert info["stage"] == "bounds:alpha-crown" or info["bab_strategy"] == strategy
    else:
        assert x is not None and check_counterexample(net, spec, x)[0]
    with one_torch_thread():
        v_mip, _, _ = mip.solve_property(net, spec, 60.0, attack=False)
    assert v_mip == verdict


@pytest.mark.parametrize("seed,sat", CASES)
def test_bab_agrees_with_brute_force_and_the_mip(seed, sat):
    opts = PropertyOptions(early_attack=None, attack=None, polish=None, bab_fraction=1.0, use_mip=False,
                           input_split_dims=0, bab=BabOptions(batch=32, iterations=10, root_iterations=20))
    check_against_brute_force(seed, sat, opts, "activation")


def _vee_net(p: np.ndarray, margin: float) -> nn.Sequential:
    """f(x) = sum_i |x_i - p_i| + margin through two ReLU layers (min ``margin``, reached at x = p only)."""
    n = p.size
    l1 = nn.Linear(n, 2 * n).double()
    l2 = nn.Linear(2 * n, 2 * n).double()
    l3 = nn.Linear(2 * n, 2).double()
    with torch.no_grad():
        l1.weight.copy_(torch.cat([torch.eye(n), -torch.eye(n)]).double())
        l1.bias.copy_(torch.from_numpy(np.r_[-p, p]))
        l2.weight.copy_(torch.eye(2 * n, dtype=torch.float64))
        l2.bias.zero_()
        l3.weight.copy_(torch.stack([torch.ones(2 * n), torch.zeros(2 * n)]).double())
        l3.bias.copy_(torch.tensor([margin, 0.0], dtype=torch.float64))
    return nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3).eval()


def solve_planted(margin: float, shift: float, opts: PropertyOptions) -> tuple:
    """The vee network's property ``f0 - f1 <= 0`` on the box of half-width 0.25 around ``p + shift`` through the
    property pipeline: (model, net, spec, verdict, x, info)."""
    p = np.array([0.3125, 0.625, 0.5])  # exact in binary: f(p) = margin exactly
    model = _vee_net(p, margin)
    net = fastcert.Network.from_torch(model, (3,))
    A = np.array([[1.0, -1.0]])  # f0 - f1 <= 0: a violation where the margin is <= 0
    c = p + shift
    spec = Spec([Property(c - 0.25, c + 0.25, [(A, np.zeros(1))])], 3, 2)
    with one_torch_thread():
        verdict, x, info = mip.solve_property(net, spec, 60.0, options=opts)
    return model, net, spec, verdict, x, info


def check_planted(case: tuple, margin: float) -> None:
    """sat with a proved point where f0 <= 0 at margin -1e-6; unsat at +1e-6."""
    model, net, spec, verdict, x, info = case
    if margin < 0:
        assert verdict == "sat" and check_counterexample(net, spec, x)[0]
        with torch.no_grad():
            assert float(model(torch.from_numpy(x)[None])[0, 0]) <= 0
    else:
        assert verdict == "unsat", info.get("bab")


@pytest.mark.parametrize("margin", [-1e-6, 1e-6])
def test_planted_counterexample(margin):
    """A margin of -1e-6 at a known point is answered sat (with that point's neighbourhood), its mirror +1e-6
    is never sat (here: unsat)."""
    opts = PropertyOptions(early_attack=None, attack=None, polish=None, bab_fraction=1.0, use_mip=False,
                           input_split_dims=0, bab=BabOptions(batch=16, iterations=10, root_iterations=10))
    check_planted(solve_planted(margin, 0.0, opts), margin)


def test_bab_result_and_refusals():
    model, net, g, prob = _setup(7)
    A = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    res = bab(g, prob, A, torch.tensor([-1e6], dtype=torch.float64))
    assert res.verdict == "unsat" and res.domains == 1 and res.lower == math.inf
    res = bab(g, prob, A, torch.tensor([1e6], dtype=torch.float64),
              evaluate=lambda t: model(t).detach(), confirm=lambda x: x)
    assert res.verdict == "sat" and res.x is not None
    with pytest.raises(ValueError, match="one float64 sample"):
        bab(g, make_region(torch.zeros(2, 3, dtype=torch.float64), 0.1, "inf", None, None), A, torch.zeros(1))
    with pytest.raises(ValueError, match="box"):
        bab(g, make_region(torch.zeros(1, 3, dtype=torch.float64), 0.1, "2", None, None), A, torch.zeros(1))
    tanh = fastcert.Network.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval(), (3,))
    with pytest.raises(ValueError, match="splits ReLU neurons only"):
        bab(tanh.graph_for((3,)), prob, A, torch.zeros(1, dtype=torch.float64))
    # a time limit in the past: the root is bounded, then "timeout" with the open sub-domains' bound
    res = bab(g, make_region(torch.zeros(1, 3, dtype=torch.float64), 5.0, "inf", None, None), A,
              torch.tensor([0.0], dtype=torch.float64), deadline=0.0)
    assert res.verdict in ("timeout", "unsat", "sat") and res.domains >= 1


BESIDE = PropertyOptions(early_attack=None, attack=None, polish=None, bab_fraction=0.7, mip_beside_bab=True,
                         input_split_dims=0, bab=BabOptions(batch=32, iterations=10, root_iterations=20))


@pytest.mark.parametrize("seed,sat", CASES[:2])
def test_mip_beside_bab_agrees_with_brute_force(seed, sat):
    """BaB with the LP / MIP on a thread beside it (the VNN-COMP default for ReLU splits): the brute-force
    verdict, whichever of the two answers."""
    check_against_brute_force(seed, sat, BESIDE, "activation + MIP beside",
                              stages=("bounds:alpha-crown", "bab", "lp", "mip"))


@pytest.mark.parametrize("margin", [-1e-6, 1e-6])
def test_planted_counterexample_mip_beside(margin):
    check_planted(solve_planted(margin, 0.0, BESIDE), margin)


@pytest.mark.parametrize("sat", [False, True])
def test_mip_beside_answers_when_bab_cannot(sat):
    """BaB capped at one open sub-domain gives up at once ("unknown"): the MIP on the other thread, which goes
    on with the time left, decides (stage lp / mip), and its answer is the brute-force one."""
    opts = replace(BESIDE, bab=BabOptions(batch=2, iterations=2, root_iterations=2, max_domains=0))
    for seed in range(20):
        net, spec, want = brute_force_case(seed, sat)
        with one_torch_thread():
            verdict, x, info = mip.solve_property(net, spec, 60.0, options=opts)
        assert verdict == want
        if info["stage"] in ("bounds:alpha-crown", "attack") or info["bab"][0]["verdict"] == "sat":
            continue  # decided before BaB, or by BaB's root candidate point
        assert info["stage"] in ("lp", "mip"), (info["stage"], info["bab"])
        assert info["bab"][0]["verdict"] in ("unknown", "stopped") and "mip_beside" in info
        return
    pytest.fail("no case reached branch and bound")  # pragma: no cover


def test_bab_stop_and_mip_interrupt():
    """``stop`` ends bab after the root ("stopped", with the root's bound); ``interrupt`` stops HiGHS, whose
    dual bound so far stays below the exact minimum."""
    from fastcert.mip.common import conj_model, node_bounds
    from fastcert.mip.encoding import encode_graph
    from fastcert.mip.highs import run_mip

    model, net, g, prob = _setup(11, n_in=4, widths=(16, 16), eps=0.5)
    A = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    b = torch.zeros(1, dtype=torch.float64)
    res = bab(g, prob, A, b, stop=lambda: True)
    assert res.verdict == "stopped" and res.domains == 1 and res.lower < 0
    pre = {v: (lu[0][0].copy(), lu[1][0].copy()) for v, lu in node_bounds(net, (4,), prob, "crown").items()}
    lo, hi = prob.l0[0].numpy(), prob.u0[0].numpy()
    menc, cost, offset = conj_model(encode_graph(g, pre, lo, hi, mode="mip"), A.numpy(), b.numpy(), -1e9, 1e9)
    exact = run_mip(menc, cost, offset, 60.0)
    calls = []
    cut = run_mip(menc, cost, offset, 60.0, interrupt=lambda: calls.append(1) is None and len(calls) > 50)
    assert exact.optimal and exact.nodes > 100 and len(calls) > 50, (exact.status, exact.nodes)
    assert not cut.optimal and "nterrupt" in cut.status and cut.nodes < exact.nodes, cut.status
    assert cut.raw_lower <= exact.raw_lower
