"""CROWN on general activations and max pooling against auto_LiRPA 0.3 in float64 (#10 point 4).

With ``BoundOptions(tangent="lookup")`` fastcert's S-shaped relaxations are auto_LiRPA's (its tangent
table), so CROWN on sigmoid / tanh MLPs and CNNs must agree to 1e-4 relative (it agrees to ~1e-9: the
difference is fastcert's rounding slack). On max-pooling CNNs IBP and CROWN-IBP must agree the same way.
With ``BoundOptions(intermediate="sparse")`` fastcert's CROWN bounds intermediate neurons by auto_LiRPA's rule
(its default ``sparse_intermediate_bounds``: back-substitution replaces the interval bound on the neurons the
interval bound finds unstable in some sample, all of them above 90 %), and CROWN on max-pooling CNNs (windows
of 2 and 3, a border the pool drops) and on ReLU chains (also deep narrow ones at large eps, where the default
differs by up to ~97 %) must agree to 1e-4 relative (it agrees to ~1e-9). auto_LiRPA 0.3 refuses
overlapping and padded pooling windows in CROWN (``ValueError`` in ``BoundMaxPool.bound_backward``), so those
are compared with nothing. The default tangent ("bisect", per neuron) and the default intermediate bounds
(intersected with IBP, on every neuron a max pool reads) differ from auto_LiRPA by design: tighter on most
entries, not on all (docs/architecture.md, "Relaxations of elementwise primitives" and "Graph IR"); their
soundness is tested in test_graph.py / test_soundness.py. Skipped, with the reason, when auto_LiRPA does not
import.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastcert
from benches import peers

TOL = 1e-4


def _lirpa(model: nn.Module, x: torch.Tensor, eps: float, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    ok, reason = peers.lirpa_status()
    if not ok:
        pytest.skip(reason)
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # auto_LiRPA allocates some of its tensors in the default dtype
    try:
        bm = BoundedModule(model, torch.zeros_like(x), bound_opts=peers.LIRPA_BOUND_OPTS, device="cpu")
        ptb = PerturbationLpNorm(norm=np.inf, eps=eps)
        with torch.no_grad():
            lb, ub = bm.compute_bounds(x=(BoundedTensor(x, ptb),), method=peers.LIRPA_METHODS[method])
    finally:
        torch.set_default_dtype(old)
    return lb.detach(), ub.detach()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-6)).max())


def _models(act: type) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(20, 50), act(), nn.Linear(50, 50), act(), nn.Linear(50, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), act(), nn.Conv2d(4, 8, 3, stride=2, padding=1), act(),
                        nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    g = torch.Generator().manual_seed(1)
    return {"mlp": (mlp.double().eval(), torch.rand(3, 20, generator=g, dtype=torch.float64)),
            "cnn": (cnn.double().eval(), torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64))}


@pytest.mark.parametrize("eps", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_crown_sshaped_equals_auto_lirpa(act: type, name: str, eps: float) -> None:
    model, x = _models(act)[name]
    lb, ub = _lirpa(model, x, eps, "crown")
    r = fastcert.bounds(model, x, eps, method="crown", options=fastcert.BoundOptions(tangent="lookup"))
    assert _rel(r.lower, lb) <= TOL and _rel(r.upper, ub) <= TOL, (_rel(r.lower, lb), _rel(r.upper, ub))


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_maxpool_cnn_equals_auto_lirpa(method: str, eps: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 10), nn.ReLU(),
                          nn.Linear(10, 3)).double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lb, ub = _lirpa(model, x, eps, method)
    r = fastcert.bounds(model, x, eps, method=method)
    assert _rel(r.lower, lb) <= TOL and _rel(r.upper, ub) <= TOL, (_rel(r.lower, lb), _rel(r.upper, ub))
    assert (r.lower <= lb).all() and (r.upper >= ub).all()  # the same bound, moved outward by the rounding slack


SPARSE = fastcert.BoundOptions(intermediate="sparse")


def _pool_cnn(kind: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """k2: test_maxpool_cnn_equals_auto_lirpa's CNN; k3: a 3x3 pool; odd: a 2x2 pool of a 7x7 map (the last
    row and column dropped)."""
    torch.manual_seed(seed)
    if kind == "k2":
        m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3))
        shape = (1, 8, 8)
    elif kind == "k3":
        m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(36, 10), nn.ReLU(), nn.Linear(10, 3))
        shape = (1, 9, 9)
    else:
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3))
        shape = (2, 7, 7)
    x = torch.rand(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))
    return m.double().eval(), x


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["k2", "k3", "odd"])
def test_crown_maxpool_cnn_equals_auto_lirpa(kind: str, seed: int, eps: float) -> None:
    model, x = _pool_cnn(kind, seed)
    lb, ub = _lirpa(model, x, eps, "crown")
    r = fastcert.bounds(model, x, eps, method="crown", options=SPARSE)
    assert _rel(r.lower, lb) <= TOL and _rel(r.upper, ub) <= TOL, (_rel(r.lower, lb), _rel(r.upper, ub))
    assert (r.lower <= lb).all() and (r.upper >= ub).all()  # the same bound, moved outward by the rounding slack


@pytest.mark.parametrize("eps", [0.1, 1.0])
@pytest.mark.parametrize("name", ["deep-narrow", "cnn"])
def test_crown_relu_chain_sparse_equals_auto_lirpa(name: str, eps: float) -> None:
    """Chains run the graph engine under ``intermediate="sparse"`` (the chain engine only intersects)."""
    torch.manual_seed(1)
    if name == "deep-narrow":  # 20-4x5-10: at eps 1 the default differs from auto_LiRPA by up to 97 %
        layers: list[nn.Module] = [nn.Linear(20, 4), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Linear(4, 4), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(4, 10)).double().eval()
        x = torch.rand(3, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    else:
        model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                              nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(32, 10), nn.ReLU(), nn.Linear(10, 3)).double().eval()
        x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lb, ub = _lirpa(model, x, eps, "crown")
    r = fastcert.bounds(model, x, eps, method="crown", options=SPARSE)
    assert _rel(r.lower, lb) <= TOL and _rel(r.upper, ub) <= TOL, (_rel(r.lower, lb), _rel(r.upper, ub))
    assert (r.lower <= lb).all() and (r.upper >= ub).all()
