"""CROWN on general activations and max pooling against auto_LiRPA 0.3 in float64 (#10 point 4).

With ``BoundOptions(tangent="lookup")`` fastcert's S-shaped relaxations are auto_LiRPA's (its tangent
table), so CROWN on sigmoid / tanh MLPs and CNNs must agree to 1e-4 relative (it agrees to ~1e-9: the
difference is fastcert's rounding slack). On max-pooling CNNs IBP and CROWN-IBP must agree the same way.
The default tangent ("bisect", per neuron) and CROWN on max-pooling CNNs differ from auto_LiRPA by design
(docs/architecture.md, "Relaxations of elementwise primitives" and "Graph IR"); their soundness is
tested in test_graph.py / test_soundness.py. Skipped, with the reason, when auto_LiRPA does not import.
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
