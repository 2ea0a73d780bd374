"""Soundness and tightness of the elementwise relaxations (python/fastcert/primitives/).

Every line is checked against the exact function: the line's value ``s x + t`` exactly (Fractions of
the float coefficients) against ``f(x)`` by mpmath at 50 digits (piecewise-linear ``f`` exactly). To
keep the exact checks few, a dense float64 grid first screens the points: a point whose float64 gap
``f(x) - line(x)`` has the right sign by more than 1e-9 of ``1 + |f| + |s x| + |t|`` (a million times
any float64 evaluation error) passes on that; every other point, the end points, the tangent points
and the worst grid points of each neuron are checked exactly. No point passes by a tolerance.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from fastcert.errors import UnsupportedError
from fastcert.layers.base import Box
from fastcert.primitives.arctan import Arctan
from fastcert.primitives.base import RelaxOptions
from fastcert.primitives.elu import ELU
from fastcert.primitives.hardtanh import Hardtanh
from fastcert.primitives.leaky_relu import LeakyReLU
from fastcert.primitives.sigmoid import Sigmoid
from fastcert.primitives.softplus import Softplus
from fastcert.primitives.sshape import SShaped
from fastcert.primitives.tanh import Tanh
from hypothesis import given, settings
from hypothesis import strategies as st

mpmath = pytest.importorskip("mpmath", reason="the exact checks need mpmath")
mp = mpmath.mp
mp.dps = 50

F64 = torch.float64
INF = math.inf


# ---- exact truth --------------------------------------------------------------------------------
def softplus_values(prim: Softplus, x: float) -> tuple:
    """Every value f(x) may take: the exact piecewise function (``x`` where ``beta x > threshold``
    exactly, else softplus) and what torch's float64 ``F.softplus`` computes at x (its own test
    ``fl(x * beta) > threshold``): one value, or both branches where the two tests disagree."""
    b, t = prim.beta, prim.threshold
    sp = mp.log1p(mp.exp(mp.mpf(b) * x)) / b
    if not math.isfinite(t):
        return (sp,)
    exact_line = Fraction(b) * Fraction(x) > Fraction(t)
    torch_line = x * b > t  # float64 product, as torch's kernel
    return tuple({True: Fraction(x), False: sp}[k] for k in {exact_line, torch_line})


def truth(prim):
    """x (float) -> exact f(x) as an mpf or a Fraction, or a tuple of every value f(x) may take."""
    if isinstance(prim, Softplus):
        return lambda x: softplus_values(prim, x)
    if isinstance(prim, ELU):
        a = prim.alpha
        return lambda x: Fraction(x) if x > 0 else mp.mpf(a) * mp.expm1(mp.mpf(x))
    if isinstance(prim, Sigmoid):
        return lambda x: 1 / (1 + mp.exp(-mp.mpf(x)))
    if isinstance(prim, Tanh):
        return lambda x: mp.tanh(mp.mpf(x))
    if isinstance(prim, Arctan):
        return lambda x: mp.atan(mp.mpf(x))
    if isinstance(prim, LeakyReLU):
        a = Fraction(prim.negative_slope)
        return lambda x: Fraction(x) if x >= 0 else a * Fraction(x)
    if isinstance(prim, Hardtanh):
        lo, hi = prim.min_val, prim.max_val
        return lambda x: Fraction(min(max(x, lo), hi))
    raise AssertionError(prim)


def to_mp(v):
    return mp.mpf(v.numerator) / v.denominator if isinstance(v, Fraction) else v


def values(fx) -> tuple:
    return fx if isinstance(fx, tuple) else (fx,)


def exact_gap(fx, s: float, x: float, t: float):
    """f(x) - (s x + t), exactly for Fractions, at 50 digits for an mpf f."""
    line = Fraction(s) * Fraction(x) + Fraction(t)
    if isinstance(fx, Fraction):
        return fx - line
    return fx - to_mp(line)


def tangent_points(prim, s: torch.Tensor) -> list[torch.Tensor]:
    """Points where f' = s (both sides), float64 approximations: where a tangent line touches f."""
    s = s.double().clamp(min=1e-300)
    if isinstance(prim, Sigmoid):
        r = torch.sqrt((1 - 4 * s).clamp(min=0))
        p = ((1 - r) / 2).clamp(min=1e-300)
        x = torch.log(p) - torch.log1p(-p)
    elif isinstance(prim, Tanh):
        x = -torch.atanh(torch.sqrt((1 - s).clamp(min=0, max=1 - 2**-53)))
    elif isinstance(prim, Arctan):
        x = -torch.sqrt((1 / s - 1).clamp(min=0))
    elif isinstance(prim, Softplus):
        s = s.clamp(max=1 - 2**-53)
        return [(torch.log(s) - torch.log1p(-s)) / prim.beta]
    elif isinstance(prim, ELU):
        return [torch.log(s / prim.alpha).clamp(max=0.0)] if prim.alpha > 0 else []
    else:
        return []
    return [x, -x]


def switch_points(prim) -> list[float]:
    """Where f switches pieces, and the floats next to it: always checked exactly."""
    if isinstance(prim, Softplus) and math.isfinite(prim.threshold):
        x0 = prim.threshold / prim.beta
        pts, lo, hi = [x0, prim.t0, prim.t1], x0, x0
        for _ in range(3):
            lo, hi = math.nextafter(lo, -INF), math.nextafter(hi, INF)
            pts += [lo, hi]
        return pts
    if isinstance(prim, ELU):
        return [0.0, -5e-324, 5e-324]
    return []


def check(prim, l: torch.Tensor, u: torch.Tensor, dtype: torch.dtype, opts: RelaxOptions, grid: int = 401,
          exact_per_neuron: int = 6) -> int:
    """Relax ``prim`` on the box ``[l, u]`` (1-D float64, cast to ``dtype``) and check both lines and the
    interval on a grid; returns the number of exact checks made."""
    box = Box(l.to(dtype)[None].contiguous(), u.to(dtype)[None].contiguous())
    r = prim.relax(box, opts)
    iv = prim.interval(box)
    for t in (r.lo_s, r.up_s, r.up_b, iv.l, iv.u) + (() if r.lo_b is None else (r.lo_b,)):
        assert t.dtype == dtype and t.shape == box.l.shape and bool(torch.isfinite(t).all())
    L, Uu = box.l[0].double(), box.u[0].double()
    n = L.numel()
    lo_s, up_s, up_b = r.lo_s[0].double(), r.up_s[0].double(), r.up_b[0].double()
    lo_b = torch.zeros(n, dtype=F64) if r.lo_b is None else r.lo_b[0].double()
    w = torch.linspace(0, 1, grid, dtype=F64)
    X = L[:, None] + (Uu - L)[:, None] * w[None, :]
    X = torch.minimum(torch.maximum(X, L[:, None]), Uu[:, None])
    extra = [L[:, None], Uu[:, None]] + [p[:, None] for p in tangent_points(prim, lo_s) + tangent_points(prim, up_s)]
    extra += [torch.full_like(L[:, None], v) for v in switch_points(prim)]
    X = torch.cat([X] + [torch.where((e >= L[:, None]) & (e <= Uu[:, None]), e, L[:, None]) for e in extra], 1)
    f = truth(prim)
    memo: dict[float, tuple] = {}
    fx64 = f64_values(prim, X)
    checks = 0
    for side, s, t in (("lower", lo_s, lo_b), ("upper", up_s, up_b)):
        line = s[:, None] * X + t[:, None]
        gap = (fx64 - line) if side == "lower" else (line - fx64)
        scale = 1 + fx64.abs() + (s[:, None] * X).abs() + t[:, None].abs()
        need = gap <= 1e-9 * scale
        need[:, grid:] = True  # end points and tangent points: always exactly
        worst = gap.argsort(dim=1)[:, :exact_per_neuron]
        need.scatter_(1, worst, True)
        seen: set[tuple[int, float]] = set()  # a narrow box repeats its points
        for i, j in need.nonzero().tolist():
            x = float(X[i, j])
            if (i, x) in seen:
                continue
            seen.add((i, x))
            if x not in memo:
                memo[x] = values(f(x))
            gaps = [to_mp(exact_gap(v, float(s[i]), x, float(t[i]))) for v in memo[x]]
            g = min(gaps) if side == "lower" else max(gaps)
            checks += 1
            ok = g >= 0 if side == "lower" else g <= 0
            assert ok, (f"{prim.kind} {dtype} {opts}: {side} line {float(s[i])!r} x + {float(t[i])!r} "
                        f"{'above' if side == 'lower' else 'below'} f at x={x!r} on [{float(L[i])!r}, "
                        f"{float(Uu[i])!r}] by {float(-g if side == 'lower' else g)!r}")
    # the interval at the end points, the grid's extremes and 0
    ilo, ihi = iv.l[0].double(), iv.u[0].double()
    for i in range(n):
        for x in {float(L[i]), float(Uu[i]), float(X[i, int(fx64[i].argmin())]), float(X[i, int(fx64[i].argmax())])} | \
                ({0.0} if float(L[i]) <= 0 <= float(Uu[i]) else set()):
            for fx in map(to_mp, memo[x] if x in memo else values(f(x))):
                assert to_mp(Fraction(float(ilo[i]))) <= fx <= to_mp(Fraction(float(ihi[i]))), \
                    (prim.kind, dtype, x, float(ilo[i]), float(ihi[i]))
    return checks


def f64_values(prim, X: torch.Tensor) -> torch.Tensor:
    """float64 f on the grid (screening only)."""
    if isinstance(prim, SShaped):
        return prim.value(X)
    return prim.forward(X)


# ---- the boxes -----------------------------------------------------------------------------------
def edge_boxes() -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [(-2.0, 3.0), (-5.0, -1.0), (1.0, 4.0), (-0.5, 0.5), (-4.0, 0.1), (-0.1, 4.0), (-1e-8, 1e-8),
             (0.0, 0.0), (-3.0, -3.0), (5.0, 5.0), (45.0, 45.0), (-800.0, -800.0), (1e-300, 1e-300), (-5e-324, 5e-324),
             (-1e4, 1e4), (-1e5, 3.0), (-3.0, 1e5), (-1e4, -1e3), (1e3, 1e4), (40.0, 50.0), (-50.0, -40.0),
             (-800.0, -700.0), (700.0, 800.0), (-745.5, -709.0), (0.7, 0.7 + 1e-12), (-0.7 - 1e-12, -0.7),
             (-1e-12, 1e-12), (0.0, 1e-300), (-1e-300, 0.0), (0.0, 2.0), (-2.0, 0.0), (-30.0, 0.5), (-0.5, 30.0),
             (-6.0, 1e-3), (-1e-3, 6.0), (-1.0, 1.0), (-0.25, 0.5), (-1e19, 1e19), (-0.26, 0.49),
             # Softplus' switch points (threshold / beta = 20, 2.5, 40, -1, 0.02) and ELU's kink
             (19.9, 20.1), (20.0, 20.0), (20.0 - 1e-9, 20.0 + 1e-9), (20.0, 21.0), (19.0, 20.0), (2.4, 2.6),
             (39.0, 41.0), (-1.001, -0.999), (-1.0, -1.0), (0.0199, 0.0201), (-1e-300, 1e-300), (0.0, 5.0),
             (-5.0, 0.0), (-700.0, 700.0)]
    l = torch.tensor([p[0] for p in pairs], dtype=F64)
    u = torch.tensor([p[1] for p in pairs], dtype=F64)
    return l, u


PRIMS = {
    "sigmoid": lambda n: Sigmoid((n,)),
    "tanh": lambda n: Tanh((n,)),
    "arctan": lambda n: Arctan((n,)),
    "leaky0.01": lambda n: LeakyReLU((n,), 0.01),
    "leaky_neg": lambda n: LeakyReLU((n,), -0.3),
    "leaky3": lambda n: LeakyReLU((n,), 3.0),
    "relu": lambda n: LeakyReLU((n,), 0.0),
    "leaky1": lambda n: LeakyReLU((n,), 1.0),
    "hardtanh": lambda n: Hardtanh((n,)),
    "relu6": lambda n: Hardtanh((n,), 0.0, 6.0),
    "clip_0.1_0.5": lambda n: Hardtanh((n,), -0.25, 0.5),
    "clamp_min": lambda n: Hardtanh((n,), 0.1, INF),
    "clamp_max": lambda n: Hardtanh((n,), -INF, -0.7),
    "softplus": lambda n: Softplus((n,)),
    "softplus_b2_t5": lambda n: Softplus((n,), 2.0, 5.0),
    "softplus_b0.5": lambda n: Softplus((n,), 0.5, 20.0),
    "softplus_tneg": lambda n: Softplus((n,), 1.0, -1.0),  # a jump of 1.31 at x = -1
    "softplus_b1000": lambda n: Softplus((n,), 1000.0, 20.0),
    "softplus_onnx": lambda n: Softplus((n,), 1.0, INF),  # no threshold
    "elu": lambda n: ELU((n,)),
    "elu0.3": lambda n: ELU((n,), 0.3),
    "elu2.5": lambda n: ELU((n,), 2.5),  # a concave kink at 0
    "elu0": lambda n: ELU((n,), 0.0),  # ReLU
}
SSHAPED = ("sigmoid", "tanh", "arctan")


def modes(name: str) -> list[RelaxOptions]:
    if name in SSHAPED:
        return [RelaxOptions(tangent=t) for t in ("bisect", "lookup", "envelope")]
    return [RelaxOptions(lower_slope=m) for m in ("adaptive", "parallel", "zero", "one")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(PRIMS))
def test_edge_boxes(name: str, dtype: torch.dtype) -> None:
    l, u = edge_boxes()
    # piecewise linear: every point is checked exactly; Softplus / ELU: the tangent and switch points are
    grid = 201 if name in SSHAPED else 61
    for opts in modes(name):
        assert check(PRIMS[name](l.numel()), l, u, dtype, opts, grid=grid) > 0


def interval_strategy() -> st.SearchStrategy:
    """(l, u) pairs: generic, equal, very narrow, very wide, saturated, near 0."""
    fin = st.floats(-60, 60, allow_nan=False)
    return st.one_of(
        st.tuples(fin, fin).map(lambda p: (min(p), max(p))),
        fin.map(lambda x: (x, x)),
        st.tuples(fin, st.floats(0, 1e-11)).map(lambda p: (p[0], p[0] + p[1])),
        st.tuples(st.floats(-1e6, 0), st.floats(0, 1e6)),
        st.tuples(st.floats(36, 1e3), st.floats(0, 1e3)).map(lambda p: (p[0], p[0] + p[1])),
        st.tuples(st.floats(36, 1e3), st.floats(0, 1e3)).map(lambda p: (-p[0] - p[1], -p[0])),
        st.tuples(st.floats(-1e-6, 1e-6), st.floats(-1e-6, 1e-6)).map(lambda p: (min(p), max(p))),
    )


@settings(max_examples=80, deadline=None)
@given(pairs=st.lists(interval_strategy(), min_size=1, max_size=12), name=st.sampled_from(list(PRIMS)),
       f32=st.booleans(), k=st.integers(0, 3))
def test_random_intervals(pairs, name, f32, k) -> None:
    l = torch.tensor([p[0] for p in pairs], dtype=F64)
    u = torch.tensor([p[1] for p in pairs], dtype=F64)
    if f32:  # the float32 box must still have l <= u after rounding
        l, u = l.float().double(), u.float().double()
    ms = modes(name)
    check(PRIMS[name](l.numel()), l, u, torch.float32 if f32 else F64, ms[k % len(ms)], grid=61, exact_per_neuron=3)


# ---- the enclosures of f and f' ------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Sigmoid, Tanh, Arctan])
def test_value_and_derivative_enclosures(cls) -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(300, dtype=F64) * 5, torch.randn(100, dtype=F64) * 300,
                   torch.tensor([0.0, -0.0, 5e-324, -1e-300, 709.8, -709.8, -745.2, 372.6, 1e200, -1e200])])
    p = cls((x.numel(),))
    vlo, vhi = p.value_bounds(x)
    dlo, dhi = p.deriv_bounds(x)
    f = truth(p)
    for i in range(x.numel()):
        xi = mp.mpf(float(x[i]))
        fv = f(float(x[i]))
        h = mp.mpf(10) ** -30 * max(1, abs(xi))
        dv = mp.diff(lambda z: f(z), xi) if abs(xi) < 1e3 else None
        assert mp.mpf(float(vlo[i])) <= fv <= mp.mpf(float(vhi[i])), (cls.kind, float(x[i]))
        if dv is not None:
            assert mp.mpf(float(dlo[i])) - h <= dv <= mp.mpf(float(dhi[i])) + h, (cls.kind, float(x[i]))


# ---- auto_LiRPA --------------------------------------------------------------------------------------
def lirpa_bounds():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from benches.peers import lirpa_status
    finally:
        sys.path.pop(0)
    ok, why = lirpa_status()
    if not ok:
        pytest.skip(why)
    from auto_LiRPA.operators.activation import BoundSigmoid, BoundTanh

    return {Sigmoid: BoundSigmoid, Tanh: BoundTanh}


@pytest.mark.parametrize("cls", [Sigmoid, Tanh])
def test_lookup_matches_auto_lirpa(cls) -> None:
    """The "lookup" lines equal auto_LiRPA 0.3's CROWN lines (its table built in float64: the
    default dtype is float64 while the node is made) on boxes inside [-500, 500]."""
    import types

    bound_cls = lirpa_bounds()[cls]
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        node = bound_cls(attr={"device": "cpu"}, inputs=[], output_index=0, options={})
    finally:
        torch.set_default_dtype(old)
    torch.manual_seed(1)
    n = 4000
    l = torch.cat([torch.randn(1, n, dtype=F64) * 4, torch.full((1, 4), -2.0, dtype=F64)], 1)
    u = l + torch.cat([torch.rand(1, n, dtype=F64) * 6, torch.tensor([[0.0, 1e-9, 2.0, 4.0]], dtype=F64)], 1)
    x = types.SimpleNamespace(lower=l, upper=u)
    node.opt_stage = None
    node.init_linear_relaxation(x)
    node.bound_relax(x)
    r = cls((l.numel(),)).relax(Box(l, u), RelaxOptions(tangent="lookup"))
    for ours, theirs in ((r.lo_s, node.lw), (r.lo_b, node.lb), (r.up_s, node.uw), (r.up_b, node.ub)):
        assert float((ours - theirs).abs().max()) <= 1e-6


# ---- tightness ---------------------------------------------------------------------------------------
def line_at(s, t, x):
    return s * x + (0 if t is None else t)


@pytest.mark.parametrize("cls", [Sigmoid, Tanh, Arctan])
def test_bisect_and_envelope_tightness(cls) -> None:
    """CROWN's bisected tangent gives the highest lower line at u and the lowest upper line at l (what
    it optimises): at least as tight there as auto_LiRPA's table. The "envelope" lines have the least
    area of all three (they support the convex / concave envelope at the midpoint)."""
    torch.manual_seed(2)
    n = 20000
    l = torch.cat([-torch.rand(1, n, dtype=F64) * 10, torch.randn(1, n, dtype=F64) * 5], 1)
    u = torch.cat([torch.rand(1, n, dtype=F64) * 10, torch.randn(1, n, dtype=F64) * 5], 1)
    l, u = torch.minimum(l, u), torch.maximum(l, u)
    p = cls((l.numel(),))
    rs = {m: p.relax(Box(l, u), RelaxOptions(tangent=m)) for m in ("bisect", "lookup", "envelope")}
    tol = 1e-13  # the outward rounding of the intercepts (a few ulps of values <= pi/2)
    b, k = rs["bisect"], rs["lookup"]
    assert bool((line_at(b.lo_s, b.lo_b, u) >= line_at(k.lo_s, k.lo_b, u) - tol).all())
    assert bool((line_at(b.up_s, b.up_b, l) <= line_at(k.up_s, k.up_b, l) + tol).all())

    def area(r):
        m = (l + u) / 2
        return (u - l) * (line_at(r.up_s, r.up_b, m) - line_at(r.lo_s, r.lo_b, m))

    env = area(rs["envelope"])
    for m in ("bisect", "lookup"):
        assert bool((env <= area(rs[m]) + tol * (u - l)).all()), m
    # and the envelope is strictly tighter somewhere (the test can fail)
    assert float((area(rs["bisect"]) - env).max()) > 1e-3


# ---- piecewise-linear specifics -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["adaptive", "parallel", "zero", "one"])
def test_relu_forms_agree_with_the_relu_kernel(mode: str) -> None:
    """LeakyReLU(0), Hardtanh(0, inf) and ELU(0) give fastcert's ReLU lines (the C++ kernel) to rounding."""
    from fastcert.primitives.relu import ReLU

    torch.manual_seed(3)
    l = torch.randn(2, 500, dtype=F64) * 3
    u = l + torch.rand(2, 500, dtype=F64) * 5
    lo_s, up_s, up_b = ReLU((500,)).relax(Box(l, u), mode)
    for prim in (LeakyReLU((500,), 0.0), Hardtanh((500,), 0.0, INF), ELU((500,), 0.0)):
        r = prim.relax(Box(l, u), RelaxOptions(lower_slope=mode))
        assert r.lo_b is None
        assert torch.equal(r.lo_s, lo_s) if mode != "parallel" else torch.allclose(r.lo_s, lo_s, rtol=1e-15)
        assert torch.allclose(r.up_s, up_s, rtol=1e-15, atol=0)
        assert torch.allclose(r.up_b, up_b, rtol=1e-14, atol=0)


def test_leaky_relu_adaptive_is_auto_lirpas_rule_and_identity() -> None:
    l = torch.tensor([[-1.0, -3.0, -1.0, -2.0]], dtype=F64)
    u = torch.tensor([[2.0, 1.0, 1.0, 3.0]], dtype=F64)
    r = LeakyReLU((4,), 0.2).relax(Box(l, u), RelaxOptions())
    k = (u - 0.2 * l) / (u - l)
    assert torch.equal(r.lo_s, torch.where(k >= 0.5, torch.ones_like(k), torch.full_like(k, 0.2)))
    assert torch.allclose(r.up_s, k, rtol=1e-15)
    r1 = LeakyReLU((4,), 1.0).relax(Box(l, u), RelaxOptions())
    assert torch.equal(r1.lo_s, torch.ones_like(l)) and r1.lo_b is None and torch.equal(r1.up_b, torch.zeros_like(l))
    # a > 1 is concave: the chord is the lower line
    r3 = LeakyReLU((4,), 3.0).relax(Box(l, u), RelaxOptions())
    assert torch.allclose(r3.lo_s, (u - 3 * l) / (u - l), rtol=1e-15)


def test_hardtanh_cases() -> None:
    ht = Hardtanh((5,), -1.0, 1.0)
    l = torch.tensor([[-3.0, 2.0, -0.5, -3.0, -3.0]], dtype=F64)
    u = torch.tensor([[-2.0, 3.0, 0.5, 0.5, 2.0]], dtype=F64)
    r = ht.relax(Box(l, u), RelaxOptions())
    assert r.lo_s.tolist()[0][:4] == [0.0, 0.0, 1.0, 0.0]
    assert r.lo_s[0, 4] == pytest.approx(2 / 3)  # two kinks, u - a >= a - l: slope (b - a) / (u - a)
    assert r.lo_b is not None and r.lo_b.tolist()[0][:3] == [-1.0, 1.0, 0.0]
    assert r.up_s.tolist()[0][:3] == [0.0, 0.0, 1.0]
    assert r.up_b.tolist()[0][:3] == [-1.0, 1.0, 0.0]
    assert r.up_s[0, 3] == pytest.approx(1.5 / 3.5)  # chord from (-3, -1) to (0.5, 0.5)
    assert r.up_s[0, 4] == pytest.approx(0.5)  # two kinks, b - l >= u - b: slope (b - a) / (b - l)


# ---- forward, options, errors --------------------------------------------------------------------
def test_forward_is_torchs() -> None:
    import fastcert.nn as fnn

    x = torch.randn(3, 7, dtype=F64) * 4
    for prim, mod in ((Sigmoid((7,)), torch.nn.Sigmoid()), (Tanh((7,)), torch.nn.Tanh()),
                      (Arctan((7,)), fnn.Arctan()),
                      (LeakyReLU((7,), -0.3), torch.nn.LeakyReLU(-0.3)),
                      (Hardtanh((7,), -2.0, 0.5), torch.nn.Hardtanh(-2.0, 0.5)),
                      (Hardtanh((7,), 0.0, 6.0), torch.nn.ReLU6()),
                      (Softplus((7,), 2.0, 3.0), torch.nn.Softplus(2.0, 3.0)), (Softplus((7,)), torch.nn.Softplus()),
                      (ELU((7,), 0.5), torch.nn.ELU(0.5)), (ELU((7,), 2.5), torch.nn.ELU(2.5))):
        for dt in (torch.float32, F64):
            assert torch.equal(prim.forward(x.to(dt)), mod(x.to(dt)))
    assert torch.equal(Hardtanh((7,), 0.1, INF).forward(x), torch.clamp(x, min=0.1))
    assert torch.equal(Hardtanh((7,), -INF, 0.1).forward(x), torch.clamp(x, max=0.1))


def test_bad_options_and_parameters() -> None:
    box = Box(torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64))
    with pytest.raises(ValueError, match="tangent must be one of"):
        Sigmoid((2,)).relax(box, RelaxOptions(tangent="table"))
    with pytest.raises(ValueError, match="lower_slope must be one of"):
        LeakyReLU((2,), 0.1).relax(box, RelaxOptions(lower_slope="steep"))
    with pytest.raises(ValueError, match="min_val < max_val"):
        Hardtanh((2,), 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        LeakyReLU((2,), math.nan)
    for bad in (dict(beta=0.0), dict(beta=-1.0), dict(beta=1e9), dict(beta=math.nan)):
        with pytest.raises(UnsupportedError, match="beta"):
            Softplus((2,), **bad)
    for bad in (800.0, -800.0, math.nan, -INF):
        with pytest.raises(UnsupportedError, match="threshold"):
            Softplus((2,), 1.0, bad)
    for bad in (-0.5, math.nan, INF, 2.0**21):
        with pytest.raises(UnsupportedError, match="alpha"):
            ELU((2,), bad)
    nan = Box(torch.full((1, 2), math.nan, dtype=F64), torch.ones(1, 2, dtype=F64))
    for p in (Tanh((2,)), LeakyReLU((2,), 0.1), Hardtanh((2,)), Softplus((2,)), ELU((2,))):
        with pytest.raises(ValueError, match="NaN"):
            p.relax(nan, RelaxOptions())


# ---- Softplus and ELU specifics --------------------------------------------------------------------
def test_softplus_jump_is_needed() -> None:
    """The check can fail: lines of the plain softplus (no identity piece: t0 = t1 = inf) are above
    torch's thresholded softplus just past threshold / beta, by up to its jump of ~1e-9."""
    p = Softplus((1,))
    l, u = torch.tensor([19.0], dtype=F64), torch.tensor([21.0], dtype=F64)
    assert check(p, l, u, F64, RelaxOptions()) > 0
    p.t0 = p.t1 = INF
    with pytest.raises(AssertionError, match="lower line .* above f"):
        check(p, l, u, F64, RelaxOptions())


def test_elu_concave_kink_is_lifted() -> None:
    """alpha > 1: the chord from (l, f(l)) to (u, u) passes below the kink (0, 0); the upper line is
    lifted above it (intercept >= 0 at 0), and the lines of alpha <= 1 are exact where they should be."""
    l = torch.tensor([[-1.0, -2.0, 0.0, -3.0]], dtype=F64)
    u = torch.tensor([[1.0, 0.5, 2.0, -1.0]], dtype=F64)
    r = ELU((4,), 2.5).relax(Box(l, u), RelaxOptions())
    assert float(r.up_b[0, 0]) >= 0 and float(r.up_b[0, 1]) >= 0
    r1 = ELU((4,), 1.0).relax(Box(l, u), RelaxOptions())
    assert r1.lo_s[0, 0] == 1.0 and float(r1.lo_b[0, 0]) == 0.0  # u >= -l: the identity, exactly
    assert (r1.lo_s[0, 2], r1.lo_b[0, 2], r1.up_s[0, 2], r1.up_b[0, 2]) == (1.0, 0.0, 1.0, 0.0)  # [0, u]
    assert not bool(ELU((4,)).unstable(Box(l, u))[0, 2]) and bool(ELU((4,)).unstable(Box(l, u))[0, 0])


@pytest.mark.parametrize("prim", [Softplus((1,)), Softplus((1,), 2.0, 5.0), Softplus((1,), 1000.0, 20.0),
                                  Softplus((1,), 2.0**-20, 1.0), Softplus((1,), 2.0**20, -3.0), Softplus((1,), 1.0, INF),
                                  ELU((1,)), ELU((1,), 0.3), ELU((1,), 2.5), ELU((1,), 0.0)],
                         ids=lambda p: f"{p.kind}{getattr(p, 'beta', '')}_{getattr(p, 'threshold', getattr(p, 'alpha', ''))}")
def test_curve_enclosures_and_eval_error(prim) -> None:
    """The enclosures of the curve c and of c' contain the exact values (mpmath), and eval_error bounds
    torch's float64 evaluation against the exact function (its branch by the exact test), also where
    a float input just past the switch point stands for an exact input just before it."""
    torch.manual_seed(5)
    x = torch.cat([torch.randn(200, dtype=F64) * 5, torch.randn(100, dtype=F64) * 300,
                   torch.tensor([0.0, -0.0, 5e-324, -5e-324, -1e-300, 700.0, -700.0, -745.5, -800.0, 1e6, -1e6])])
    if isinstance(prim, Softplus):
        x = torch.cat([x / prim.beta, torch.tensor([prim.x0, prim.t0, prim.t1], dtype=F64)]) if \
            math.isfinite(prim.threshold) else x / prim.beta
        c = lambda v: mp.log1p(mp.exp(mp.mpf(prim.beta) * v)) / prim.beta  # noqa: E731
        dc = lambda v: 1 / (1 + mp.exp(-mp.mpf(prim.beta) * v))  # noqa: E731
        x = x[x.abs() <= 2.0**64]
    else:
        x = x.clamp(max=0.0)
        c = lambda v: prim.alpha * mp.expm1(mp.mpf(v))  # noqa: E731
        dc = lambda v: prim.alpha * mp.exp(mp.mpf(v))  # noqa: E731
    vlo, vhi = prim.curve_bounds(x)
    dlo, dhi = prim.slope_bounds(x)
    for i, xi in enumerate(x.tolist()):
        assert mp.mpf(float(vlo[i])) <= c(xi) <= mp.mpf(float(vhi[i])), (prim.kind, xi)
        assert mp.mpf(float(dlo[i])) <= dc(xi) <= mp.mpf(float(dhi[i])), (prim.kind, xi)
    # eval_error: torch's float64 forward against the exact piecewise function
    y = prim.forward(x)
    f = truth(prim)
    for i, xi in enumerate(x.tolist()):
        exact = to_mp(values(f(xi))[0] if not isinstance(prim, Softplus) else exact_softplus(prim, xi))
        bound = float(prim.eval_error(torch.tensor([abs(float(exact))], dtype=F64).nextafter(torch.tensor(INF))))
        assert abs(mp.mpf(float(y[i])) - exact) <= bound, (prim.kind, xi, float(y[i]), float(exact), bound)
    if isinstance(prim, Softplus) and math.isfinite(prim.threshold):
        x0 = prim.threshold / prim.beta
        xs = [x0, math.nextafter(x0, INF), math.nextafter(x0, -INF)]
        xs = [v for v in xs if prim.forward(torch.tensor([v], dtype=F64)).item() == v]  # torch: the identity
        below = math.nextafter(min(xs), -INF)
        while prim.beta * Fraction(below) > Fraction(prim.threshold):
            below = math.nextafter(below, -INF)
        exact = exact_softplus(prim, below)  # the curve, at an input one float away
        bound = float(prim.eval_error(torch.tensor([float(exact)], dtype=F64).nextafter(torch.tensor(INF))))
        assert abs(mp.mpf(min(xs)) - exact) <= prim.lipschitz * (min(xs) - below) + bound


def exact_softplus(prim: Softplus, x: float):
    """The exact piecewise function: x where beta x > threshold exactly, else softplus."""
    if math.isfinite(prim.threshold) and Fraction(prim.beta) * Fraction(x) > Fraction(prim.threshold):
        return mp.mpf(x)
    return mp.log1p(mp.exp(mp.mpf(prim.beta) * x)) / prim.beta
