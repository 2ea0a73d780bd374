"""The graph IR (#10 point 1): models with forward methods (residual connections, concatenation,
max pooling) traced with torch.fx, evaluated exactly like torch, and bounded soundly by every method.

Soundness is checked by sampling (vertices and uniform points of the ball) and by a projected-gradient
attack on every bound, in float64 with no tolerance, on hypothesis-generated graphs; the graph engine
also equals the chain engine on chains; and the residual / DenseSequential models of
convex_adversarial and VNN-COMP's Convnet_maxpool load and get sound bounds.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastcert
from fastcert.algorithms.graph_bounds import graph_bounds
from fastcert.algorithms.linear_bounds import linear_bounds
from fastcert.api import make_region
from fastcert.primitives import registry as activations
from shared_data import require_shared
from strategies import one_torch_thread

METHODS = ["ibp", "crown-ibp", "crown", "fastlin"]


class Block(nn.Module):
    """A random residual / concatenation / pooling graph on [C, H, W] inputs (see ``spec``)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        C, k = spec["C"], spec["k"]
        self.spec = spec
        self.c1 = nn.Conv2d(C, C, 3, padding=1)
        self.c2 = nn.Conv2d(C, C, 3, padding=1)
        self.c3 = nn.Conv2d(2 * C, C, 1)
        name, k = spec["act"]
        sp = activations.spec(name)
        self.act = sp.module(sp.examples[k % len(sp.examples)])
        H = spec["H"] // 2 if spec["pool"] else spec["H"]
        self.fc = nn.Linear(C * H * H, 3)

    def forward(self, x):
        h = self.act(self.c1(x))
        r = h + self.c2(h) if self.spec["sign"] > 0 else h - self.c2(h)  # a residual connection
        r = F.relu(r)
        if self.spec["cat"]:
            r = self.c3(torch.cat([r, h], dim=1))
        if self.spec["pool"]:
            r = F.max_pool2d(r, 2) if self.spec["k"] == 2 else nn.functional.max_pool2d(r, 3, 2, 1)
        return self.fc(r.view(r.size(0), -1))


SPECS = st.fixed_dictionaries({
    "C": st.integers(1, 3), "k": st.sampled_from([2, 3]), "H": st.sampled_from([4, 6]),
    # every registered activation, with its example parameters: a new primitive is tested by construction
    "act": st.tuples(st.sampled_from(activations.names()), st.integers(0, 3)), "sign": st.sampled_from([1, -1]),
    "cat": st.booleans(), "pool": st.booleans(), "seed": st.integers(0, 2**16), "eps": st.sampled_from([0.0, 1e-3, 0.05, 0.3]),
    "scale": st.sampled_from([0.3, 1.0, 3.0]),
})


def _model(spec: dict) -> nn.Module:
    torch.manual_seed(spec["seed"])
    m = Block(spec).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(spec["scale"])
    return m


def _attack(model: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor, lower: torch.Tensor,
            upper: torch.Tensor) -> None:
    """Projected gradient steps on every row of C f, both directions, from random starts: no point
    may leave [lower, upper]."""
    B, S = lower.shape
    gen = torch.Generator().manual_seed(0)
    for sign in (1.0, -1.0):
        z = (x + (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps).unsqueeze(1)
        z = z.expand(B, S, *x.shape[1:]).clone()
        for _ in range(15):
            z.requires_grad_(True)
            y = model(z.reshape(B * S, *x.shape[1:])).reshape(B, S, -1)
            val = (y * C).sum(-1)
            (g,) = torch.autograd.grad((sign * val).sum(), z)
            with torch.no_grad():
                z = z - eps / 4 * g.sign()
                z = torch.minimum(torch.maximum(z, x.unsqueeze(1) - eps), x.unsqueeze(1) + eps)
        with torch.no_grad():
            val = (model(z.reshape(B * S, *x.shape[1:])).reshape(B, S, -1) * C).sum(-1)
        assert (val >= lower).all() and (val <= upper).all(), (sign, (val - lower).min(), (upper - val).min())


@pytest.mark.parametrize("method", METHODS + ["crown-sparse"])  # crown with BoundOptions(intermediate="sparse")
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS)
def test_graph_bounds_are_sound(method: str, spec: dict) -> None:
    with one_torch_thread():
        model = _model(spec)
        eps = spec["eps"]
        gen = torch.Generator().manual_seed(spec["seed"])
        x = torch.rand(2, spec["C"], spec["H"], spec["H"], generator=gen, dtype=torch.float64)
        net = fastcert.Network.from_torch(model)
        assert not net.chain
        torch.testing.assert_close(net.forward(x), model(x), rtol=1e-12, atol=1e-12)
        C = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
        opts = fastcert.BoundOptions(intermediate="sparse") if method == "crown-sparse" else None
        res = fastcert.bounds(model, x, eps, method=method.removesuffix("-sparse"), C=C, options=opts)
        assert (res.lower <= res.upper).all()
        n = 400
        pts = x.unsqueeze(0) + (torch.randint(0, 2, (n, *x.shape), generator=gen).double() * 2 - 1) * eps
        pts[n // 2:] = x.unsqueeze(0) + (torch.rand(n // 2, *x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
        with torch.no_grad():
            y = model(pts.reshape(-1, *x.shape[1:])).reshape(n, 2, 3)
        val = torch.einsum("bsk,nbk->nbs", C, y)
        assert (val >= res.lower).all() and (val <= res.upper).all()
        if eps > 0:
            _attack(model, x, eps, C, res.lower, res.upper)


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS)
def test_graph_bounds_float32_contain_the_exact_network(spec: dict) -> None:
    """float32 x and weights on the graph engine: the bounds must hold for the exact network (the same
    float32 numbers evaluated in float64), by sampling and attack, for every method."""
    with one_torch_thread():
        m32 = _model(spec).float()
        exact = copy.deepcopy(m32).double()  # float32 weights, exactly, evaluated in float64
        gen = torch.Generator().manual_seed(spec["seed"])
        x = torch.rand(2, spec["C"], spec["H"], spec["H"], generator=gen).float()
        C = torch.randn(2, 4, 3, generator=gen).float()
        for eps in sorted({0.0, spec["eps"]}):  # eps = 0: the bounds' width is the rounding analysis alone
            n = 200 if eps > 0 else 1
            pts = x.double().unsqueeze(0) + (torch.rand(n, *x.shape, generator=gen, dtype=torch.float64) * 2 - 1) * eps
            pts[: n // 2] = x.double().unsqueeze(0) + (torch.randint(0, 2, (n // 2, *x.shape), generator=gen).double()
                                                       * 2 - 1) * eps
            with torch.no_grad():
                y = exact(pts.reshape(-1, *x.shape[1:])).reshape(n, 2, 3)
            val = torch.einsum("bsk,nbk->nbs", C.double(), y)
            for method in METHODS:
                res = fastcert.bounds(m32, x, eps, method=method, C=C)
                assert res.lower.dtype == torch.float32
                lo, hi = res.lower.double(), res.upper.double()
                assert (val >= lo).all() and (val <= hi).all(), (method, eps)
                if eps > 0:
                    _attack(exact, x.double(), eps, C.double(), lo, hi)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_graph_engine_equals_chain_engine_on_chains(method: str, norm: str) -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    net = fastcert.Network.from_torch(seq)
    prob = make_region(x, 0.1, norm, None, None)
    C = torch.randn(3, 5, 3, dtype=torch.float64)
    a = linear_bounds(net.layers_for((1, 6, 6)), prob, C, method)
    b = graph_bounds(net.graph_for((1, 6, 6)), prob, C, method)
    for u, v in zip(a, b):
        assert ((u - v).abs() <= 1e-12 * u.abs().clamp(min=1)).all()


@pytest.mark.parametrize("eps", [0.01, 0.3, 1.0])
def test_sparse_intermediate_bounds_on_chains_are_sound(eps: float) -> None:
    """Chains run the graph engine under ``intermediate="sparse"``: sampled points (vertices and uniform) and a
    projected-gradient attack stay inside the bounds, float64, no tolerance."""
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    C = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    res = fastcert.bounds(seq, x, eps, C=C, options=fastcert.BoundOptions(intermediate="sparse"))
    pts = x + (torch.randint(0, 2, (400, *x.shape), generator=gen).double() * 2 - 1) * eps
    pts[200:] = x + (torch.rand(200, *x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
    with torch.no_grad():
        val = torch.einsum("bsk,nbk->nbs", C, seq(pts.reshape(-1, 1, 6, 6)).reshape(400, 2, 3))
    assert (val >= res.lower).all() and (val <= res.upper).all()
    _attack(seq, x, eps, C, res.lower, res.upper)


def test_bad_intermediate_option_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"intermediate must be one of \('intersect', 'sparse'\), got 'lirpa'"):
        fastcert.BoundOptions(intermediate="lirpa")


def test_kw_refuses_non_relu_graph_nodes_by_name() -> None:
    spec = {"C": 1, "k": 2, "H": 4, "act": ("tanh", 0), "sign": 1, "cat": False, "pool": True, "seed": 0, "eps": 0.1,
            "scale": 1.0}
    with pytest.raises(fastcert.UnsupportedError, match="Kolter-Wong.*ReLU"):
        fastcert.bounds(_model(spec), torch.rand(1, 1, 4, 4, dtype=torch.float64), 0.1, method="kw")


def test_unsupported_traced_op_names_the_node() -> None:
    class Gelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return F.gelu(self.fc(x)) * 2

    with pytest.raises(fastcert.UnsupportedError, match=r"traced node 'gelu'.*supports"):
        fastcert.Network.from_torch(Gelu())


def _check_sound(model: nn.Module, x: torch.Tensor, eps: float, methods: list[str]) -> None:
    net = fastcert.Network.from_torch(model)
    torch.testing.assert_close(net.forward(x), model(x), rtol=1e-10, atol=1e-10)
    gen = torch.Generator().manual_seed(0)
    pts = x.unsqueeze(0) + (torch.rand(64, *x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
    with torch.no_grad():
        y = model(pts.reshape(-1, *x.shape[1:])).reshape(64, x.shape[0], -1)
    widths = {}
    for m in methods:
        r = fastcert.bounds(net, x, eps, method=m)
        assert (y >= r.lower).all() and (y <= r.upper).all(), m
        widths[m] = float((r.upper - r.lower).mean())
    if "crown" in widths and "ibp" in widths:
        assert widths["crown"] <= widths["ibp"]


def test_convex_adversarial_dense_sequential_resnet() -> None:
    """convex_adversarial's residual CIFAR model (examples/problems.py cifar_model_resnet, N=1, factor=1,
    on 16x16 inputs): DenseSequential of Dense blocks whose forward adds skip convolutions."""
    ca = pytest.importorskip("convex_adversarial", reason="convex_adversarial is not installed")
    Dense, DenseSequential = ca.Dense, ca.DenseSequential

    def block(cin: int, cout: int, down: bool) -> list[nn.Module]:
        kf, s, ks = (4, 2, 2) if down else (3, 1, 1)
        return [Dense(nn.Conv2d(cin, cout, kf, stride=s, padding=1)), nn.ReLU(),
                Dense(nn.Conv2d(cin, cout, ks, stride=s, padding=0), None, nn.Conv2d(cout, cout, 3, stride=1, padding=1)),
                nn.ReLU()]

    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, stride=1, padding=1), nn.ReLU()] + block(4, 4, False) + block(4, 8, True) + \
        [nn.Flatten(), nn.Linear(8 * 8 * 8, 20), nn.ReLU(), nn.Linear(20, 10)]
    model = DenseSequential(*layers).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    _check_sound(model, x, 2 / 255, ["ibp", "crown-ibp", "crown"])


def test_maxpool_onnx_network_from_shared_data() -> None:
    """vnncomp2021/verivital/Convnet_maxpool.onnx (refused before the graph IR) loads, evaluates like the
    ONNX graph's torch twin and gets sound bounds."""
    from fastcert.io.onnx_import import load_onnx

    net, shape, _ = load_onnx(require_shared("vnncomp2021/verivital/Convnet_maxpool.onnx"))
    x = torch.rand(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    pts = x.unsqueeze(0) + (torch.rand(64, *x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * 0.01
    y = net.forward(pts.reshape(-1, *shape)).reshape(64, 2, -1)
    for m in ["ibp", "crown-ibp", "crown"]:
        r = fastcert.bounds(net, x, 0.01, method=m)
        assert (y >= r.lower).all() and (y <= r.upper).all(), m
