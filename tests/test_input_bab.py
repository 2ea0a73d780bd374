"""Input-split branch and bound (issue #14 point 2): bisection of the input box with CROWN bounds per sub-box.

Soundness: a property that holds at a known point of the box (b set from the network's value there) is never
answered "unsat", on random ReLU and tanh networks, boxes with zero-width sides included. Completeness on tiny
networks: the verdict equals brute-force enumeration of activation patterns and the MIP's, with properties
whose exact minimum is +-delta; a planted counterexample (margin -1e-6 at a known point) is answered sat and
its mirror (+1e-6) unsat."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastcert
from fastcert.algorithms.input_bab import InputSplitOptions, Lookahead, bisect_boxes, input_bab
from fastcert.api import make_region
from fastcert.io.vnnlib import Property, Spec, check_counterexample
from fastcert.mip.property import PropertyOptions, decide
from strategies import SETTINGS, one_torch_thread
from test_bab import CASES, _vee_net, check_against_brute_force, check_planted, solve_planted
from test_mip import _net


def _box_region(lo: np.ndarray, hi: np.ndarray):
    x0 = (lo + hi) / 2
    return make_region(torch.from_numpy(x0)[None], float(((hi - lo) / 2).max()) * (1 + 1e-9) + 1e-300, "inf",
                       torch.from_numpy(lo), torch.from_numpy(hi))


def _tanh_net(seed: int, n_in: int, widths: list[int], K: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    d = n_in
    for w in widths + [K]:
        lin = nn.Linear(d, w).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(w, d, generator=g, dtype=torch.float64) * 1.5)
            lin.bias.copy_(torch.randn(w, generator=g, dtype=torch.float64) * 0.3)
        mods += [lin, nn.Tanh()]
        d = w
    return nn.Sequential(*mods[:-1]).eval()


def test_bisect_halves_cover_the_box():
    L = torch.tensor([[0.0, -1.0, 2.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    U = torch.tensor([[1.0, 1.0, 2.0], [0.1, 0.7, 0.30000000000000004]], dtype=torch.float64)
    L2, U2 = bisect_boxes(L, U, torch.tensor([1, 2]))
    assert torch.equal(L2[:2], L) and torch.equal(U2[2:], U)  # the lower halves start, the upper ones end, as before
    assert float(U2[0, 1]) == float(L2[2, 1]) == 0.0
    assert float(U2[1, 2]) == float(L2[3, 2]) and 0.3 <= float(U2[1, 2]) <= 0.30000000000000004
    for i in range(2):  # the other sides are the parent's
        assert torch.equal(L2[i, [0]], L[i, [0]]) and torch.equal(U2[i + 2, [0]], U[i, [0]])


def test_lookahead_splits_a_repeated_candidate_once_and_keeps_the_best_pair():
    L = torch.zeros(3, 3, dtype=torch.float64)
    U = torch.ones(3, 3, dtype=torch.float64)
    plan = Lookahead(torch.tensor([[0, 0], [1, 2], [2, 2]]))
    CL, CU, floor = plan.children(L, U, torch.tensor([-3.0, -2.0, -1.0], dtype=torch.float64))
    assert CL.shape == (8, 3)  # 3 parents x 2 halves for the first candidates, 1 x 2 for parent 1's second
    assert floor.tolist() == [-3.0, -2.0, -1.0, -3.0, -2.0, -1.0, -2.0, -2.0]
    assert float(CU[6, 2]) == 0.5 and float(CL[7, 2]) == 0.5 and float(CU[1, 1]) == 0.5
    # parent 1: its second candidate's children (rows 6, 7) close more than its first's (rows 1, 4)
    val = torch.tensor([-1.0, -5.0, -1.0, -1.0, -5.0, -1.0, -0.5, 0.3], dtype=torch.float64)
    dim = torch.zeros(8, 2, dtype=torch.long)
    PL, PU, pv, _ = plan.pick(CL, CU, val, dim)
    assert pv.tolist() == [-1.0, -0.5, -1.0, -1.0, 0.3, -1.0]
    assert torch.equal(PU[1], CU[6]) and torch.equal(PL[4], CL[7]) and torch.equal(PU[0], CU[0])


@settings(max_examples=40, **SETTINGS)
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 3), act=st.sampled_from(["relu", "tanh"]),
       flat=st.sampled_from([None, 0]), gap=st.sampled_from([1e-9, 1e-3]))
def test_never_unsat_when_a_point_satisfies_the_property(seed, n_in, act, flat, gap):
    """b = A f(x*) + gap (relative) at a point x* of the box (a zero-width side when ``flat``): the conjunction
    holds at x*, so the answer is "sat" (a re-checked point) or, out of time or sub-boxes, "timeout" /
    "unknown" -- never "unsat"."""
    rng = np.random.default_rng(seed)
    K = 3
    model = (_net(seed, n_in, [6, 5], n_out=K, scale=1.5) if act == "relu" else _tanh_net(seed, n_in, [6, 5], K))
    net = fastcert.Network.from_torch(model, (n_in,))
    g = net.graph_for((n_in,))
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(0.01, 1.0, n_in)
    if flat is not None:
        hi[flat] = lo[flat]
    xs = lo + (hi - lo) * rng.random(n_in)
    A = rng.standard_normal((2, K))
    with torch.no_grad():
        y = model(torch.from_numpy(xs)[None])[0].numpy()
    b = A @ y + gap * (1 + np.abs(A) @ np.abs(y))
    found = []

    def confirm(x):
        with torch.no_grad():
            v = A @ model(torch.from_numpy(x)[None])[0].numpy() - b
        if np.all(v <= 0) and np.all(x >= lo) and np.all(x <= hi):
            found.append(x)
            return x
        return None

    with one_torch_thread():
        res = input_bab(g, _box_region(lo, hi), torch.from_numpy(A), torch.from_numpy(b),
                        deadline=time.perf_counter() + 20,
                        opts=InputSplitOptions(batch=64, max_domains=20_000),
                        evaluate=lambda t: model(t).detach(), confirm=confirm)
    assert res.verdict in ("sat", "unknown", "timeout"), (res.verdict, res.lower, res.domains)
    if res.verdict == "sat":
        assert found and res.x is found[-1]


@pytest.mark.parametrize("seed,sat", CASES[:6])  # the brute-force truth costs ~15 s per case
def test_input_split_agrees_with_brute_force_and_the_mip(seed, sat):
    opts = PropertyOptions(early_attack=None, attack=None, polish=None, bab_fraction=1.0, use_mip=False,
                           input_split=InputSplitOptions(batch=64))
    check_against_brute_force(seed, sat, opts, "input")


@pytest.mark.parametrize("margin", [-1e-6, 1e-6])
@pytest.mark.parametrize("shift", [0.0, 0.01])
def test_planted_counterexample(margin, shift):
    """The vee network's minimum ``margin`` at p: sat at -1e-6 (a point where f0 <= 0), unsat at +1e-6, with p
    on the first bisection's midpoints (shift 0) or off them."""
    opts = PropertyOptions(early_attack=None, attack=None, polish=None, bab_fraction=1.0, use_mip=False)
    case = solve_planted(margin, shift, opts)
    info = case[-1]
    if margin < 0:  # no attack ran: the point comes from input splitting
        assert info["stage"] == "bab" and info["bab_strategy"] == "input"
    else:
        assert info["stage"] in ("bounds:alpha-crown", "bab")
    check_planted(case, margin)


def test_tanh_network_is_decided_by_input_split():
    """A tanh network (no MIP encoding; the VNN-COMP pipeline, :func:`decide`): b a little below the sampled
    minimum is proved unsat by input splitting; a little above it, sat."""
    model = _tanh_net(5, 2, [8, 8], 2)
    net = fastcert.Network.from_torch(model, (2,))
    lo, hi = np.array([-1.0, -0.5]), np.array([0.5, 1.0])
    grid = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 301), np.linspace(lo[1], hi[1], 301)), -1).reshape(-1, 2)
    A = np.array([[1.0, -1.0]])
    with torch.no_grad():
        m = float((model(torch.from_numpy(grid)) @ torch.from_numpy(A).T).min())
    opts = PropertyOptions(early_attack=None, attack=None, polish=None, bab_fraction=1.0)
    for delta, want in ((-0.05, "unsat"), (0.05, "sat")):
        spec = Spec([Property(lo, hi, [(A, np.array([m + delta]))])], 2, 2)
        with one_torch_thread():
            verdict, x, info = decide(net, (2,), list(spec.properties), 60.0, opts)
        assert verdict == want, (delta, info.get("bab"), info["reason"])
        assert info["stage"] == "bab" and info["bab_strategy"] == "input", info["stage"]
        if want == "sat":
            assert check_counterexample(net, spec, x)[0]


def test_input_bab_result_and_refusals():
    model = _net(7, 2, [5], n_out=2)
    g = fastcert.Network.from_torch(model, (2,)).graph_for((2,))
    prob = _box_region(np.zeros(2), np.ones(2))
    A = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    res = input_bab(g, prob, A, torch.tensor([-1e6], dtype=torch.float64))
    assert res.verdict == "unsat" and res.domains == 1 and res.lower == math.inf and res.batches == 1
    res = input_bab(g, prob, A, torch.tensor([1e6], dtype=torch.float64),
                    evaluate=lambda t: model(t).detach(), confirm=lambda x: x)
    assert res.verdict == "sat" and res.x is not None
    res = input_bab(g, prob, A, torch.tensor([0.0], dtype=torch.float64), deadline=0.0)  # past: one batch
    assert res.verdict in ("timeout", "unsat") and res.domains == 1
    with pytest.raises(ValueError, match="one float64 sample"):
        input_bab(g, make_region(torch.zeros(2, 2, dtype=torch.float64), 0.1, "inf", None, None), A, torch.zeros(1))
    with pytest.raises(ValueError, match="box"):
        input_bab(g, make_region(torch.zeros(1, 2, dtype=torch.float64), 0.1, "2", None, None), A, torch.zeros(1))
    with pytest.raises(ValueError, match="branching"):
        input_bab(g, prob, A, torch.zeros(1), opts=InputSplitOptions(branching="random"))
    with pytest.raises(ValueError, match="batch"):
        input_bab(g, prob, A, torch.zeros(1), opts=InputSplitOptions(batch=1))


def test_strategy_follows_the_input_dimension():
    """bab_strategy: input splitting up to ``input_split_dims`` inputs (any activation), ReLU splits above it,
    nothing for a network without ReLUs above it or without nonlinear nodes at all."""
    from types import SimpleNamespace

    from fastcert.mip.bab_stage import bab_strategy

    relu = fastcert.Network.from_torch(_net(11, 3, [6, 5], n_out=3), (3,))
    tanh = fastcert.Network.from_torch(_tanh_net(5, 3, [4], 2), (3,))
    affine = fastcert.Network.from_torch(nn.Sequential(nn.Linear(3, 2)).double().eval(), (3,))
    from fastcert.algorithms.dispatch import nonlinear_kinds

    def run(net, dims):
        return SimpleNamespace(shape=(3,), acts=nonlinear_kinds(net, (3,)), graph=net.graph_for((3,)),
                               opts=PropertyOptions(input_split_dims=dims))

    assert bab_strategy(run(relu, 16)) == "input" and bab_strategy(run(relu, 3)) == "input"
    assert bab_strategy(run(relu, 2)) == "activation"
    assert bab_strategy(run(tanh, 16)) == "input" and bab_strategy(run(tanh, 2)) is None
    assert bab_strategy(run(affine, 16)) is None


@pytest.mark.parametrize("branching", ["pair", "lookahead", "smear", "widest"])
@pytest.mark.parametrize("margin", [-1e-6, 1e-6])
def test_every_branching_decides_the_planted_property(branching, margin):
    """input_bab itself with each branching, the planted point off the bisection midpoints: sat (a proved
    point with f0 <= 0) at -1e-6, unsat at +1e-6."""
    p = np.array([0.3125, 0.625, 0.5])
    model = _vee_net(p, margin)
    g = fastcert.Network.from_torch(model, (3,)).graph_for((3,))
    c = p + 0.01
    A = torch.tensor([[1.0, -1.0]], dtype=torch.float64)

    def confirm(x):
        with torch.no_grad():
            return x if float(model(torch.from_numpy(x)[None])[0, 0]) <= 0 else None

    with one_torch_thread():
        res = input_bab(g, _box_region(c - 0.25, c + 0.25), A, torch.zeros(1, dtype=torch.float64),
                        deadline=time.perf_counter() + 60, opts=InputSplitOptions(branching=branching, batch=64),
                        evaluate=lambda t: model(t).detach(), confirm=confirm)
    assert res.verdict == ("sat" if margin < 0 else "unsat"), (res.verdict, res.lower, res.domains)
    if margin < 0:
        assert np.all(np.abs(res.x - p) <= 1e-5)  # f0 <= 0 only within 1e-6 of p (in L1)


ACAS = [("ACASXU_run2a_2_2_batch_2000", "prop_1"), ("ACASXU_run2a_5_1_batch_2000", "prop_3"),
        ("ACASXU_run2a_4_5_batch_2000", "prop_10")]


@pytest.mark.shared_data
@pytest.mark.parametrize("net,prop", ACAS)
def test_acasxu_instances_closed_by_input_split(net, prop):
    """VNN-COMP 2022 ACAS Xu instances (published unsat) that the attack and alpha-CROWN leave open: the
    pipeline closes them by input splitting within 60 s on 2 cores (each took under 5 s when measured)."""
    from fastcert.vnncomp import VnnOptions, load_instance, solve_instance
    from shared_data import require_shared

    d = require_shared("vnncomp2022/acasxu")
    inst = load_instance(f"onnx/{net}.onnx.gz", f"vnnlib/{prop}.vnnlib.gz", base=d)
    res = solve_instance(inst, 60.0, options=VnnOptions())
    assert res.verdict == "unsat" and res.stage == "bab", (res.verdict, res.stage, res.reason)
    assert res.details["bab"] and all(s["verdict"] == "unsat" for s in res.details["bab"])
