"""Hypothesis strategies, random network builders and the adversary used by the soundness tests.

Everything random is described by small frozen dataclasses (:class:`NetSpec`, :class:`RegionSpec`)
of plain values, so that a failing hypothesis example prints a complete reproducer: the network is
``build_network(NetSpec(...))`` and the input region ``build_region(RegionSpec(...), input_shape,
dtype)``; no hidden global random state is involved.

The points the tests evaluate are always *exactly* inside the region (ball intersected with the
box): :func:`make_feasible` checks membership with error-free transformations / outward-rounded
sums and pulls a point towards the centre until that conservative check passes. So a bound that
misses one of these points is a genuine soundness bug, never sampling noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import hypothesis.strategies as st
import torch
from hypothesis import HealthCheck, settings
from torch import nn

import fastcert
from fastcert.primitives import registry as activations

# ------------------------------------------------------------------------------------------------
# hypothesis profile: deterministic, no example database, no deadline
# ------------------------------------------------------------------------------------------------

SETTINGS = dict(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fc_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, **SETTINGS)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch single-threaded. On small machines torch's OpenMP pool and the one fastcert's core
    links (a second libgomp) spin against each other and every call gets ~50x slower; the tests
    only evaluate tiny networks, so one torch thread costs nothing."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


RELU_METHODS = ("ibp", "fastlin", "kw", "crown", "crown-ibp")
LINEAR_METHODS = ("fastlin", "kw", "crown", "crown-ibp")  # need ReLU-only networks
NORMS = ("inf", "2", "1")
P_OF = {"inf": math.inf, "2": 2, "1": 1}

# ------------------------------------------------------------------------------------------------
# Network descriptions
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetSpec:
    """A random network. ``layers`` is a tuple of tuples:

    ("normalize",) ("linear", n_out, has_bias) ("conv", out_ch, k, stride, pad, has_bias)
    ("bn",) ("avgpool", k, stride, pad) ("flatten",) ("act", kind, alpha) ("identity",)
    ("nest", start, stop) wraps layers[start:stop] in a nested nn.Sequential.

    weight_scale multiplies He-style weights; bias_mode: "normal", "zero", "pos" (every
    pre-activation > 0 over the whole input region), "neg" (every one < 0), "mixed" (a random
    per-neuron choice of the three), "big" (large random biases of both signs).
    ``f32_weights``: round every parameter to float32 (so float32 and float64 copies agree).
    """

    input_shape: tuple[int, ...]
    layers: tuple[tuple, ...]
    weight_scale: float
    bias_mode: str
    seed: int
    f32_weights: bool = False
    input_bound: float = 4.0  # every coordinate of every input point has |x'| <= input_bound
    # extreme magnitudes: the k-th Linear / Conv2d's weights are multiplied by layer_scales[k] (1 when
    # absent) and the inputs by input_scale (RegionSpec.scale must match); biases follow the product
    # of the scales so far, so that they stay comparable with W x
    layer_scales: tuple[float, ...] = ()
    input_scale: float = 1.0

    @property
    def relu_only(self) -> bool:
        return all(L[1] == "relu" for L in self.layers if L[0] == "act")

    @property
    def n_out(self) -> int:
        return [L for L in self.layers if L[0] == "linear"][-1][1]


def _f32(t: torch.Tensor, spec: NetSpec) -> torch.Tensor:
    return t.float().double() if spec.f32_weights else t


def build_network(spec: NetSpec) -> nn.Sequential:
    """The torch model (float64, eval mode) described by ``spec``; deterministic in ``spec``."""
    g = torch.Generator().manual_seed(spec.seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def uni(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    shape = tuple(spec.input_shape)
    # bound on |activation| entering the current layer, for "pos"/"neg" biases
    M = spec.input_bound * spec.input_scale
    mods: list[nn.Module] = []
    cum = [spec.input_scale]  # typical magnitude of the values entering the current layer
    n_affine = [0]

    def layer_scale() -> float:
        k = n_affine[0]
        n_affine[0] += 1
        s = spec.layer_scales[k] if k < len(spec.layer_scales) else 1.0
        cum[0] *= s
        return s

    def bias_for(rowabs: torch.Tensor, n: int) -> torch.Tensor:
        c = cum[0]
        big = rowabs * M + (1.0 + uni(0, 2, n)) * c
        mode = spec.bias_mode
        if mode == "zero":
            return torch.zeros(n, dtype=torch.float64)
        if mode == "normal":
            return rnd(n) * 0.5 * c
        if mode == "big":
            return rnd(n) * 20.0 * c
        if mode == "pos":
            return big
        if mode == "neg":
            return -big
        pick = torch.randint(0, 3, (n,), generator=g)
        return torch.where(pick == 0, big, torch.where(pick == 1, -big, rnd(n) * 0.5 * c))

    for L in spec.layers:
        kind = L[0]
        if kind == "normalize":
            C = shape[0]
            mean = _f32(uni(-0.5, 1.0, C), spec)
            std = _f32(uni(0.1, 2.0, C), spec)
            mods.append(fastcert.Normalize(mean.tolist(), std.tolist()))
            M = float(((M + mean.abs()) / std).max())
            cum[0] = max(cum[0], 1.0)  # (x - mean) / std: the means are of order 1
        elif kind == "linear":
            n_in = int(torch.tensor(shape).prod())
            lin = nn.Linear(n_in, L[1], bias=L[2]).double()
            W = _f32(rnd(L[1], n_in) * (spec.weight_scale / math.sqrt(n_in) * layer_scale()), spec)
            rowabs = W.abs().sum(1)
            with torch.no_grad():
                lin.weight.copy_(W)
                if L[2]:
                    lin.bias.copy_(_f32(bias_for(rowabs, L[1]), spec))
            b = lin.bias.detach().abs().max() if L[2] else 0.0
            M = float((rowabs * M).max() + b) + cum[0]
            mods.append(lin)
            shape = (L[1],)
        elif kind == "conv":
            _, oc, k, s, p, hb = L
            C = shape[0]
            conv = nn.Conv2d(C, oc, k, stride=s, padding=p, bias=hb).double()
            W = _f32(rnd(oc, C, k, k) * (spec.weight_scale / math.sqrt(C * k * k) * layer_scale()), spec)
            rowabs = W.abs().flatten(1).sum(1)
            with torch.no_grad():
                conv.weight.copy_(W)
                if hb:
                    conv.bias.copy_(_f32(bias_for(rowabs, oc), spec))
            b = conv.bias.detach().abs().max() if hb else 0.0
            M = float((rowabs * M).max() + b) + cum[0]
            mods.append(conv)
            H = (shape[1] + 2 * p - k) // s + 1
            Wd = (shape[2] + 2 * p - k) // s + 1
            shape = (oc, H, Wd)
        elif kind == "bn":
            C = shape[0]
            bn = (nn.BatchNorm2d(C) if len(shape) == 3 else nn.BatchNorm1d(C)).double()
            with torch.no_grad():
                bn.running_mean.copy_(_f32(uni(-2, 2, C), spec))
                bn.running_var.copy_(_f32(uni(0.05, 4, C), spec))
                bn.weight.copy_(_f32(uni(-2, 2, C), spec))  # negative scales too
                bn.bias.copy_(_f32(uni(-1, 1, C), spec))
            bn.eval()
            scale = bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)
            M = float((scale * (M + bn.running_mean.abs())).max() + bn.bias.detach().abs().max()) + 1.0
            mods.append(bn)
        elif kind == "avgpool":
            _, k, s, p, div = L
            mods.append(nn.AvgPool2d(k, stride=s, padding=p, divisor_override=div))
            if div is not None:
                M = M * k * k / div
            H = (shape[1] + 2 * p - k) // s + 1
            Wd = (shape[2] + 2 * p - k) // s + 1
            shape = (shape[0], H, Wd)
        elif kind == "flatten":
            mods.append(nn.Flatten())
            shape = (int(torch.tensor(shape).prod()),)
        elif kind == "act":
            a = L[1]
            mods.append(activations.spec(a).module(act_params(L)))
            if a == "leaky_relu":
                M = M * max(1.0, abs(L[2]))
            M = M + (1.0 if a in BOUNDED_ACTS else cum[0])
            if a in BOUNDED_ACTS:
                cum[0] = 1.0  # bounded outputs
        elif kind == "identity":
            mods.append(nn.Identity())
        elif kind == "nest":
            start, stop = L[1], L[2]
            mods[start:stop] = [nn.Sequential(*mods[start:stop])]
        else:  # pragma: no cover
            raise AssertionError(kind)
    model = nn.Sequential(*mods).double()
    model.eval()
    return model


# ------------------------------------------------------------------------------------------------
# Strategies for networks
# ------------------------------------------------------------------------------------------------

# activations come from the registry: a new primitive is drawn by every network strategy
ACT_MODES = ("relu", "relu", "relu", "relu", *[n for n in activations.names() if n != "relu"], "mixed")
BOUNDED_ACTS = ("tanh", "sigmoid", "arctan", "hardtanh")  # outputs of order 1 (hardtanh: with finite bounds)


def act_params(L: tuple) -> dict:
    """The registry parameters of an ("act", kind, p) layer spec: p is LeakyReLU's slope, Hardtanh's
    (min, max), else unused."""
    if L[1] == "leaky_relu":
        return {"alpha": float(L[2])}
    if L[1] == "hardtanh":
        return {"min": float(L[2][0]), "max": float(L[2][1])}
    return {}


@st.composite
def _act(draw, mode: str) -> tuple:
    kind = draw(st.sampled_from(tuple(activations.names()))) if mode == "mixed" else mode
    if kind == "leaky_relu":
        return ("act", kind, draw(st.sampled_from((0.0, 0.01, 0.1, 0.5, 1.0, 2.0, -0.5))))
    if kind == "hardtanh":
        return ("act", kind, draw(st.sampled_from([(e["min"], e["max"]) for e in activations.spec(kind).examples
                                                   if math.isfinite(e["min"]) and math.isfinite(e["max"])])))
    return ("act", kind, 0.0)


@st.composite
def _weight_bias(draw) -> tuple[float, str]:
    scale = draw(st.sampled_from((0.05, 1.0, 1.0, 2.0, 5.0, 20.0)))
    bias = draw(st.sampled_from(("normal", "normal", "zero", "pos", "neg", "mixed", "big")))
    return scale, bias


@st.composite
def mlp_specs(draw, act_mode: str | None = None) -> NetSpec:
    mode = act_mode or draw(st.sampled_from(ACT_MODES))
    n_in = draw(st.integers(1, 8))
    depth = draw(st.integers(1, 4))
    layers: list[tuple] = []
    input_shape: tuple[int, ...] = (n_in,)
    if draw(st.integers(0, 4)) == 0:  # an image-shaped input flattened first
        input_shape = (1, 2, draw(st.integers(1, 3)))
        layers.append(("flatten",))
    elif draw(st.booleans()):
        layers.append(("normalize",))
    if draw(st.integers(0, 9)) == 0:  # an activation on the raw input
        layers.append(draw(_act(mode)))
    for _ in range(depth):
        layers.append(("linear", draw(st.integers(1, 12)), draw(st.integers(0, 5)) > 0))
        if draw(st.integers(0, 4)) == 0:
            layers.append(("bn",))
        layers.append(draw(_act(mode)))
        if draw(st.integers(0, 9)) == 0:  # two activations in a row
            layers.append(draw(_act(mode)))
        if draw(st.integers(0, 9)) == 0:
            layers.append(("identity",))
        if draw(st.integers(0, 6)) == 0:  # BatchNorm after the activation (not foldable backwards)
            layers.append(("bn",))
    layers.append(("linear", draw(st.integers(1, 5)), draw(st.integers(0, 5)) > 0))
    if draw(st.integers(0, 9)) == 0:  # network ending in an activation
        layers.append(draw(_act(mode)))
    if draw(st.integers(0, 5)) == 0 and len(layers) >= 3:
        a = draw(st.integers(0, len(layers) - 2))
        b = draw(st.integers(a + 1, len(layers)))
        layers.append(("nest", a, b))
    scale, bias = draw(_weight_bias())
    return NetSpec(input_shape, tuple(layers), scale, bias, draw(st.integers(0, 2**31 - 1)),
                   draw(st.booleans()))


@st.composite
def cnn_specs(draw, act_mode: str | None = None, bn_after_flatten: bool = False) -> NetSpec:
    """``bn_after_flatten``: always put a BatchNorm1d on the flattened conv features (a valid torch
    model of supported layers; kept out of the default strategy so that one bug there does not mask
    everything else)."""
    mode = act_mode or draw(st.sampled_from(ACT_MODES))
    C, H, W = draw(st.sampled_from(((1, 5, 5), (2, 6, 6), (1, 4, 6), (3, 3, 3))))
    layers: list[tuple] = []
    if draw(st.booleans()):
        layers.append(("normalize",))
    shape = (C, H, W)
    for _ in range(draw(st.integers(1, 2))):
        k = draw(st.integers(1, 3))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, 2))
        k = min(k, shape[1] + 2 * p, shape[2] + 2 * p)
        oc = draw(st.integers(1, 4))
        layers.append(("conv", oc, k, s, p, draw(st.integers(0, 4)) > 0))
        shape = (oc, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        if draw(st.integers(0, 2)) == 0:
            layers.append(("bn",))
        layers.append(draw(_act(mode)))
        if draw(st.integers(0, 3)) == 0 and min(shape[1:]) >= 2:
            k = draw(st.integers(1, 2))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2))
            layers.append(("avgpool", k, s, p, draw(st.sampled_from((None, None, 1, 3)))))
            shape = (oc, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        if draw(st.integers(0, 5)) == 0:
            layers.append(("bn",))  # BatchNorm2d after the activation / pool: an unfoldable Diag
    layers.append(("flatten",))
    if bn_after_flatten:
        layers.append(("bn",))
    if draw(st.booleans()):
        layers.append(("linear", draw(st.integers(1, 10)), True))
        layers.append(draw(_act(mode)))
    layers.append(("linear", draw(st.integers(1, 5)), draw(st.integers(0, 5)) > 0))
    scale, bias = draw(_weight_bias())
    return NetSpec((C, H, W), tuple(layers), scale, bias, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()))


@st.composite
def deep_mlp_specs(draw, act_mode: str = "relu") -> NetSpec:
    """Deep and narrow (10-30 hidden layers of width 1-3): many roundings accumulate while the
    rounding-error factor (which grows with the width) stays small."""
    n_in = draw(st.integers(1, 3))
    w = draw(st.integers(1, 3))
    layers: list[tuple] = []
    for _ in range(draw(st.integers(10, 30))):
        layers.append(("linear", w, True))
        layers.append(draw(_act(act_mode)))
    layers.append(("linear", draw(st.integers(1, 3)), True))
    scale = draw(st.sampled_from((1.0, 1.5, 2.0)))
    bias = draw(st.sampled_from(("normal", "pos", "mixed", "big")))
    return NetSpec((n_in,), tuple(layers), scale, bias, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()),
                   input_bound=4.0)


def net_specs(act_mode: str | None = None) -> st.SearchStrategy[NetSpec]:
    return st.one_of(mlp_specs(act_mode), cnn_specs(act_mode))


# ------------------------------------------------------------------------------------------------
# Input regions
# ------------------------------------------------------------------------------------------------

EPS_KINDS = ("zero", "tiny", "small", "large", "mixed")


@dataclass(frozen=True)
class RegionSpec:
    """B centres in [0,1]^n; eps kind ("zero": l == u, "tiny": 1e-12, "small", "large", "mixed":
    one eps per sample); ``box``: None, "unit" (x_min=0, x_max=1 scalars), "tensor" (per-feature
    x_min / x_max on a 1/64 grid that hug x) or "tensor64" (float64 per-feature bounds that float32
    cannot represent, some equal to x); ``x_on_edge``: some coordinates of x exactly 0 or 1."""

    batch: int
    norm: str
    eps_kind: str
    box: str | None
    x_on_edge: bool
    seed: int
    scale: float = 1.0  # x, eps and the box are multiplied by it (extreme magnitudes)


@st.composite
def region_specs(draw, eps_kinds: tuple[str, ...] = EPS_KINDS, norms: tuple[str, ...] = NORMS) -> RegionSpec:
    return RegionSpec(draw(st.integers(1, 3)), draw(st.sampled_from(norms)), draw(st.sampled_from(eps_kinds)),
                      draw(st.sampled_from((None, "unit", "tensor", "tensor64"))), draw(st.booleans()),
                      draw(st.integers(0, 2**31 - 1)))


@dataclass
class Region:
    x: torch.Tensor  # [B, *shape]
    eps: torch.Tensor  # [B] float64 (exactly what is passed to fastcert)
    eps_arg: object  # scalar or tensor, as passed
    norm: str
    x_min: object
    x_max: object
    lo: torch.Tensor  # [B, *shape] x_min broadcast (-inf when absent), float64
    hi: torch.Tensor


def _eps_value(kind: str, norm: str, g: torch.Generator) -> float:
    r = float(torch.rand((), generator=g, dtype=torch.float64))
    mult = {"inf": 1.0, "2": 2.0, "1": 3.0}[norm]
    if kind == "zero":
        return 0.0
    if kind == "tiny":
        return 1e-12
    if kind == "small":
        return (0.002 + 0.05 * r) * mult
    return (0.2 + 0.8 * r) * mult  # large


def build_region(spec: RegionSpec, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Region:
    g = torch.Generator().manual_seed(spec.seed)
    B = spec.batch
    x = torch.rand(B, *input_shape, generator=g, dtype=torch.float64)
    if spec.x_on_edge:
        m = torch.rand(x.shape, generator=g) < 0.3
        x = torch.where(m, (torch.rand(x.shape, generator=g) < 0.5).double(), x)
    x = (x * spec.scale).to(dtype)
    if spec.eps_kind == "mixed":
        kinds = ["zero", "tiny", "small", "large"]
        eps_list = [_eps_value(kinds[int(torch.randint(0, 4, (), generator=g))], spec.norm, g) * spec.scale
                    for _ in range(B)]
        eps_arg: object = torch.tensor(eps_list, dtype=torch.float64)
    else:
        eps_arg = _eps_value(spec.eps_kind, spec.norm, g) * spec.scale
        eps_list = [eps_arg] * B  # type: ignore[list-item]
    eps = torch.tensor(eps_list, dtype=torch.float64)
    x64 = x.double()
    if spec.box is None:
        x_min = x_max = None
        lo = torch.full_like(x64, -math.inf)
        hi = torch.full_like(x64, math.inf)
    elif spec.box == "unit":
        x_min, x_max = 0.0, float(torch.tensor(spec.scale, dtype=torch.float64).to(dtype))
        lo, hi = torch.zeros_like(x64), torch.full_like(x64, x_max)
    elif spec.box == "tensor":  # per-feature bounds on multiples of 1/64 (exact in float32 and float64), hugging x
        sc = spec.scale
        xm = (torch.floor(x64.amin(0) / sc * 64) / 64 - torch.randint(0, 3, input_shape, generator=g) / 64) * sc
        xM = (torch.ceil(x64.amax(0) / sc * 64) / 64 + torch.randint(0, 3, input_shape, generator=g) / 64) * sc
        xm = torch.minimum(xm, x64.amin(0))  # x / sc * sc may round past x
        xM = torch.maximum(xM, x64.amax(0))
        x_min, x_max = xm, xM
        lo, hi = xm.expand_as(x64).clone(), xM.expand_as(x64).clone()
    else:  # "tensor64": float64 per-feature bounds that float32 cannot represent, some touching x
        xm = x64.amin(0) - 0.05 * spec.scale * torch.rand(input_shape, generator=g, dtype=torch.float64)
        xM = x64.amax(0) + 0.05 * spec.scale * torch.rand(input_shape, generator=g, dtype=torch.float64)
        touch = torch.rand(input_shape, generator=g) < 0.3
        xm = torch.where(touch, x64.amin(0), xm)
        xM = torch.where(torch.rand(input_shape, generator=g) < 0.3, x64.amax(0), xM)
        x_min, x_max = xm, xM
        lo, hi = xm.expand_as(x64).clone(), xM.expand_as(x64).clone()
    return Region(x, eps, eps_arg, spec.norm, x_min, x_max, lo, hi)


# ------------------------------------------------------------------------------------------------
# Exact membership in the region, and moving points into it
# ------------------------------------------------------------------------------------------------

_U64 = 2.0**-53


def _two_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hi + lo == a - b exactly (Knuth's TwoSum), float64."""
    s = a - b
    bb = s - a
    err = (a - (s - bb)) + (-b - bb)
    return s, err


def in_region(pts: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str, lo: torch.Tensor,
              hi: torch.Tensor) -> torch.Tensor:
    """Conservative (never says yes wrongly) exact test: pts [B, P, n] (any float dtype), x [B, n],
    eps [B], lo / hi [B, n]. True where ||pts - x||_norm <= eps and lo <= pts <= hi hold exactly."""
    p = pts.double()
    xb = x.double()[:, None, :]
    ok = ((p >= lo[:, None, :]) & (p <= hi[:, None, :])).all(-1)
    dh, dl = _two_diff(p, xb.expand_as(p))
    e = eps[:, None]
    if norm == "inf":
        ah = dh.abs()
        e3 = e[..., None]
        inside = (ah < e3) | ((ah == e3) & (dl * torch.sign(dh) <= 0))
        return ok & inside.all(-1)
    n = p.shape[-1]
    inf = torch.tensor(math.inf, dtype=torch.float64)
    a = torch.nextafter(dh.abs() + dl.abs(), inf)  # >= |d_i|
    if norm == "2":
        # scale by the power of two that brings eps to [0.5, 1) (exact for eps; a * s rounded up), so
        # that squares neither underflow nor overflow; what the squares of tiny entries still lose to
        # underflow is at most eta each: add n of them
        _, k = torch.frexp(e)
        s = torch.ldexp(torch.ones_like(e), -k.clamp(-1000, 1000))
        a = torch.nextafter(a * s[..., None], inf)
        es = e * s
        S = (a * a).sum(-1) * (1 + 2 * (n + 2) * _U64) + (n + 1) * 2.0**-1074
        lim = es * es * (1 - 4 * _U64)
    else:
        S = a.sum(-1) * (1 + 2 * (n + 2) * _U64)
        lim = e * (1 - 2 * _U64)
    return ok & (S <= lim)


def make_feasible(pts: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str, lo: torch.Tensor,
                  hi: torch.Tensor) -> torch.Tensor:
    """Clip pts [B, P, n] (dtype of x) into the box and shrink them towards x until :func:`in_region`
    holds (falls back to x itself)."""
    dt = x.dtype
    xb = x[:, None, :].expand_as(pts)
    p = torch.maximum(torch.minimum(pts, hi[:, None, :].to(dt)), lo[:, None, :].to(dt))
    # lo/hi may be -inf/inf; x lies in the box, so clipping never moves a point away from x
    p = torch.where(torch.isfinite(p), p, xb)
    ok = in_region(p, x, eps, norm, lo, hi)
    f = 1.0
    for k in range(40):
        if ok.all():
            return p
        f = 1.0 - min(1.0, 1e-16 * 4.0**k)
        cand = xb + (p - xb) * f
        cand = torch.maximum(torch.minimum(cand, hi[:, None, :].to(dt)), lo[:, None, :].to(dt))
        good = in_region(cand, x, eps, norm, lo, hi)
        upd = (~ok) & good
        p = torch.where(upd[..., None], cand, p)
        ok = ok | good
    return torch.where(ok[..., None], p, xb)


# ------------------------------------------------------------------------------------------------
# Points: random samples, vertices, PGD
# ------------------------------------------------------------------------------------------------


def sample_points(x: torch.Tensor, eps: torch.Tensor, norm: str, lo: torch.Tensor, hi: torch.Tensor,
                  g: torch.Generator, n_random: int = 48, n_vertices: int = 48) -> torch.Tensor:
    """x [B, n] -> feasible points [B, P, n] (x itself first)."""
    B, n = x.shape
    dt = torch.float64
    x64 = x.double()
    e = eps[:, None, None]
    pts = [x64[:, None, :]]
    if norm == "inf":
        pts.append(x64[:, None, :] + e * (2 * torch.rand(B, n_random, n, generator=g, dtype=dt) - 1))
        if n <= 6:  # every vertex
            idx = torch.arange(2**n)
            signs = ((idx[:, None] >> torch.arange(n)) & 1).double() * 2 - 1
            pts.append(x64[:, None, :] + e * signs[None])
        else:
            signs = (torch.rand(B, n_vertices, n, generator=g) < 0.5).double() * 2 - 1
            pts.append(x64[:, None, :] + e * signs)
        # vertices of the box intersected with [lo, hi]
        a = torch.maximum(x64 - eps[:, None], lo)
        b = torch.minimum(x64 + eps[:, None], hi)
        pick = torch.rand(B, n_vertices // 2, n, generator=g) < 0.5
        pts.append(torch.where(pick, a[:, None, :], b[:, None, :]))
    else:
        if norm == "2":
            d = torch.randn(B, n_random, n, generator=g, dtype=dt)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        else:
            d = -torch.log(torch.rand(B, n_random, n, generator=g, dtype=dt).clamp_min(1e-300))
            d = d * (torch.rand(B, n_random, n, generator=g) < 0.5).double().mul(2).sub(1)
            d = d / d.abs().sum(-1, keepdim=True).clamp_min(1e-300)
        r = torch.rand(B, n_random, 1, generator=g, dtype=dt)
        r[:, : n_random // 2] = 1.0  # half on the sphere, half inside
        pts.append(x64[:, None, :] + e * r * d)
        eye = torch.eye(n, dtype=dt)
        pts.append(x64[:, None, :] + e * eye[None])  # axis points: the vertices of the L1 ball
        pts.append(x64[:, None, :] - e * eye[None])
    P = torch.cat(pts, 1).to(x.dtype)
    return make_feasible(P, x, eps, norm, lo, hi)


def _project(p: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str, lo: torch.Tensor,
             hi: torch.Tensor) -> torch.Tensor:
    """Approximate projection onto the ball, then the box (p, x: [N, n]; eps: [N])."""
    d = p - x
    e = eps[:, None]
    if norm == "inf":
        d = torch.maximum(torch.minimum(d, e), -e)
    elif norm == "2":
        nr = d.norm(dim=-1, keepdim=True)
        d = d * torch.where(nr > e, e / nr.clamp_min(1e-300), torch.ones_like(nr))
    else:  # L1: Duchi et al. sort-based projection
        a = d.abs()
        out = a.sum(-1, keepdim=True) > e
        mu, _ = a.sort(-1, descending=True)
        cs = mu.cumsum(-1) - e
        ar = torch.arange(1, d.shape[-1] + 1, dtype=d.dtype)
        cond = mu - cs / ar > 0
        rho = (cond * ar).argmax(-1, keepdim=True)
        theta = cs.gather(-1, rho) / (rho + 1).to(d.dtype)
        dp = torch.sign(d) * (a - theta).clamp_min(0)
        d = torch.where(out, dp, d)
    return torch.maximum(torch.minimum(x + d, hi), lo)


def pgd_points(model: nn.Module, in_shape: tuple[int, ...], x: torch.Tensor, eps: torch.Tensor, norm: str,
               lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, g: torch.Generator, steps: int = 20,
               restarts: int = 2) -> torch.Tensor:
    """PGD in float64 that minimises and maximises every row of C f over the region.

    x [B, n], C [B, S, K] -> feasible points [B, 2*S*restarts + 1, n] (the final iterates and, per
    objective, the best iterate seen)."""
    B, n = x.shape
    S = C.shape[1]
    if float(eps.max()) == 0.0:
        return x[:, None, :].clone()
    x64 = x.double()
    R = 2 * S * restarts
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat_interleave(S).repeat(restarts)  # [R]
    rows = torch.arange(S).repeat(2 * restarts)  # [R]
    c = C.double()[:, rows, :] * sign[None, :, None]  # [B, R, K]: maximise c . f
    xr = x64[:, None, :].expand(B, R, n).reshape(B * R, n)
    er = eps[:, None].expand(B, R).reshape(B * R)
    lor = lo[:, None, :].expand(B, R, n).reshape(B * R, n)
    hir = hi[:, None, :].expand(B, R, n).reshape(B * R, n)
    cr = c.reshape(B * R, -1)
    # random start (first restart starts at x)
    start = xr + er[:, None] * (2 * torch.rand(B * R, n, generator=g, dtype=torch.float64) - 1)
    start.view(B, R, n)[:, : 2 * S] = x64[:, None, :]
    p = _project(start, xr, er, norm, lor, hir)
    step = 2.5 * er / steps
    best = p.clone()
    best_v = torch.full((B * R,), -math.inf, dtype=torch.float64)
    for _ in range(steps):
        p = p.detach().requires_grad_(True)
        out = model(p.reshape(B * R, *in_shape))
        val = (out * cr).sum(-1)
        (grad,) = torch.autograd.grad(val.sum(), p)
        with torch.no_grad():
            better = val > best_v
            best = torch.where(better[:, None], p, best)
            best_v = torch.where(better, val, best_v)
            if norm == "inf":
                dirn = grad.sign()
            elif norm == "2":
                dirn = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            else:  # steepest L1 ascent: the coordinate(s) with the largest |gradient|, plus a bit of L2
                top = (grad.abs() == grad.abs().amax(-1, keepdim=True)).double() * grad.sign()
                dirn = top + 0.3 * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            p = _project(p + step[:, None] * dirn, xr, er, norm, lor, hir)
    with torch.no_grad():
        val = (model(p.reshape(B * R, *in_shape)) * cr).sum(-1)
        better = val > best_v
        best = torch.where(better[:, None], p, best)
    allp = torch.cat([x64[:, None, :], p.reshape(B, R, n), best.reshape(B, R, n)], 1).to(x.dtype)
    return make_feasible(allp, x, eps, norm, lo.reshape(B, n), hi.reshape(B, n))


def random_C(K: int, B: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random spec matrix: [S, K] or [B, S, K] with S in 1..4 (sometimes integer entries)."""
    S = int(torch.randint(1, 5, (), generator=g))
    kind = int(torch.randint(0, 3, (), generator=g))
    shape = (S, K) if kind < 2 else (B, S, K)
    C = torch.randn(*shape, generator=g, dtype=torch.float64)
    if kind == 1:
        C = torch.round(C * 2)
    return C.to(dtype)


# ------------------------------------------------------------------------------------------------
# Extreme magnitudes: per-layer weight scales and input scales
# ------------------------------------------------------------------------------------------------

# Decimal exponents, per dtype: of the inputs, of one layer's scale, of the running product
# input_scale * layer scales (kept clear of overflow), and the "valley" the products are driven into
# (float32: below its normal range 1.2e-38, into the subnormals; float64: below 2.2e-308 and even
# below its smallest subnormal 4.9e-324), from which later layers climb back.
_RANGES = {  # dtype: (input lo, hi), (layer lo, hi), (cumulative lo, hi), (valley lo, hi)
    torch.float32: ((-24, 12), (-24, 24), (-70, 30), (-50, -38)),
    torch.float64: ((-170, 12), (-170, 300), (-340, 270), (-335, -305)),
}


@st.composite
def scale_profiles(draw, n_affine: int, dtype: torch.dtype, mode: str | None = None) -> tuple[float, tuple[float, ...]]:
    """(input_scale, layer_scales), powers of ten. "uniform": each layer's exponent in -12..12;
    "valley": the running product is driven down into the subnormal range of ``dtype`` (a tiny input
    and tiny layers: subnormal products) by layer k, then the later layers climb with huge weights,
    which amplify whatever the subnormal products lost; "sink": it stays down there (subnormal
    outputs)."""
    (ilo, ihi), (llo, lhi), (clo, chi), (vlo, vhi) = _RANGES[dtype]

    def clamp(v: int, lo: int, hi: int) -> int:
        return max(lo, min(hi, v))

    exps: list[int] = []
    mode = mode or draw(st.sampled_from(("uniform", "valley", "valley", "sink")))
    if mode == "uniform":
        e_in = draw(st.integers(-12, 12))
        cum = e_in
        for _ in range(n_affine):
            new = clamp(cum + draw(st.integers(-12, 12)), clo, chi)
            exps.append(new - cum)
            cum = new
        return 10.0**e_in, tuple(10.0**e for e in exps)
    target = draw(st.integers(vlo, vhi))
    k = draw(st.integers(0, n_affine - 1))
    e_in = clamp(target - (k + 1) * draw(st.integers(llo // 2, 0)), ilo, ihi)
    cum = e_in
    for i in range(n_affine):
        if i <= k:  # descend to the valley (as far as the per-layer range allows)
            want = (target - cum) // (k + 1 - i) + draw(st.integers(-2, 2))
            e = clamp(want, llo, lhi)
        elif mode == "sink":  # stay there: the outputs themselves are subnormal
            e = draw(st.integers(-2, 2))
        else:  # climb back
            e = draw(st.integers(0, lhi))
        new = clamp(cum + e, clo, chi)
        exps.append(new - cum)
        cum = new
    return 10.0**e_in, tuple(10.0**e for e in exps)


@st.composite
def scaled_specs(draw, dtype: torch.dtype, act_mode: str | None = None, cnn: bool = True,
                 mode: str | None = None) -> NetSpec:
    """A network of :func:`net_specs` (or :func:`mlp_specs`) with a :func:`scale_profiles` draw; the
    region must use ``RegionSpec.scale = spec.input_scale``."""
    base = draw(net_specs(act_mode) if cnn else mlp_specs(act_mode))
    # BatchNorm re-centres its input on running statistics of order 1, which no scale profile can follow
    layers = tuple(L for L in base.layers if L[0] != "bn")
    layers = tuple(L for L in layers if L[0] != "nest") if len(layers) != len(base.layers) else layers
    n_aff = sum(L[0] in ("linear", "conv") for L in layers)
    inp, raw = draw(scale_profiles(n_aff, dtype, mode))
    # follow the magnitude through the layers: Normalize and tanh / sigmoid bring it back to order 1;
    # keep the running product clear of overflow
    clo, chi = _RANGES[dtype][2]
    cum, k, scales = math.log10(inp), 0, []
    for L in layers:
        if L[0] == "normalize" or (L[0] == "act" and L[1] in BOUNDED_ACTS):
            cum = max(cum, 0.0) if L[0] == "normalize" else 0.0
        elif L[0] in ("linear", "conv"):
            e = min(max(math.log10(raw[k]), clo - cum), chi - cum)
            scales.append(10.0 ** round(e))
            cum += round(e)
            k += 1
    # the back-substitution's coefficients are products of the weights from a layer to the output:
    # keep those clear of overflow too (the methods refuse such networks with a clear error)
    suffix = 0
    for k in range(len(scales) - 1, -1, -1):
        e = min(round(math.log10(scales[k])), chi - suffix)
        scales[k] = 10.0**e
        suffix = max(0, suffix + e)
    base = dataclasses.replace(base, layers=layers)
    inp, scales = inp, tuple(scales)
    # float32-rounded weights only where float32 can hold them; always for float32 computations, whose
    # parameters must round to float32 exactly (or stay in its normal range) to be accepted at all
    f32 = dtype == torch.float32 or (base.f32_weights and all(1e-25 < v < 1e25 for v in (inp, *scales)))
    return NetSpec(base.input_shape, base.layers, base.weight_scale, base.bias_mode, base.seed, f32,
                   base.input_bound, scales, inp)
