"""Softplus and ELU end to end: the registry maps their modules, functional calls and ONNX ops, and
every linear method bounds small networks with non-default parameters (the hypothesis strategies of
test_soundness.py draw them with their default parameters only), checked by sampling torch's
float64 forward. The relaxations themselves are checked pointwise in test_relaxations.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastcert
from fastcert.primitives import registry
from fastcert.primitives.elu import ELU
from fastcert.primitives.softplus import Softplus

F64 = torch.float64


def test_registry_entries() -> None:
    assert registry.from_module(nn.Softplus(2.0, 5.0), "m") == {"act": "softplus", "beta": 2.0, "threshold": 5.0}
    assert registry.from_module(nn.ELU(0.3), "m") == {"act": "elu", "alpha": 0.3}
    assert registry.from_call(F.softplus, (None, 3.0), {"threshold": 4}, "c") == \
        {"act": "softplus", "beta": 3.0, "threshold": 4.0}
    assert registry.from_call(F.softplus, (None,), {}, "c") == {"act": "softplus", "beta": 1.0, "threshold": 20.0}
    assert registry.from_call(F.elu, (None,), {"alpha": 2, "inplace": True}, "c") == {"act": "elu", "alpha": 2.0}
    assert registry.from_onnx("Softplus", {}, "o") == {"act": "softplus", "beta": 1.0, "threshold": math.inf}
    assert registry.from_onnx("Elu", {}, "o") == {"act": "elu", "alpha": 1.0}
    p = registry.build("softplus", (3,), {"beta": 2.0, "threshold": 5.0}, "n")
    assert isinstance(p, Softplus) and (p.beta, p.threshold, p.x0) == (2.0, 5.0, 2.5)
    assert isinstance(registry.build("elu", (3,), {"alpha": 0.5}, "n"), ELU)
    for name in ("softplus", "elu"):  # every example builds and has a torch module computing it
        sp = registry.spec(name)
        for ex in sp.examples:
            prim = sp.build((4,), ex, "x")
            x = torch.randn(2, 4, dtype=F64) * 10
            assert torch.equal(prim.forward(x), sp.module(ex)(x))
    with pytest.raises(fastcert.UnsupportedError, match="beta"):
        fastcert.bounds(nn.Sequential(nn.Linear(2, 2), nn.Softplus(-1.0)).double(), torch.zeros(1, 2, dtype=F64), 0.1)
    with pytest.raises(fastcert.UnsupportedError, match="alpha"):
        fastcert.bounds(nn.Sequential(nn.Linear(2, 2), nn.ELU(-1.0)).double(), torch.zeros(1, 2, dtype=F64), 0.1)


class Functional(nn.Module):
    """F.softplus / F.elu calls (traced by torch.fx)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 10)
        self.b = nn.Linear(10, 8)
        self.c = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.elu(self.b(F.softplus(self.a(x), 2.0, 3.0)), 2.5))


def _nets() -> list[nn.Module]:
    torch.manual_seed(0)
    nets: list[nn.Module] = [Functional()]
    for act in (nn.Softplus(), nn.Softplus(3.0, 2.0), nn.Softplus(1.0, -1.0), nn.ELU(), nn.ELU(0.2), nn.ELU(2.5)):
        nets.append(nn.Sequential(nn.Linear(4, 10), act, nn.Linear(10, 8), act, nn.Linear(8, 3)))
    for n in nets:
        with torch.no_grad():
            for m in n.modules():
                if isinstance(m, nn.Linear):
                    m.weight.mul_(3.0)
    return [n.double().eval() for n in nets]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["ibp", "fastlin", "crown", "crown-ibp"])
def test_bounds_contain_samples(method: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    for model in _nets():
        x = torch.randn(2, 4, dtype=F64, generator=g)
        eps = 0.2
        r = fastcert.bounds(model, x.to(dtype), eps, method=method)
        # the point is the float the bounds were computed for: the dtype-rounded x
        xd = x.to(dtype).double()
        pts = xd[:, None, :] + eps * (2 * torch.rand(2, 3000, 4, dtype=F64, generator=g) - 1)
        pts = torch.cat([pts, xd[:, None, :] + eps * torch.randn(2, 500, 4, dtype=F64, generator=g).sign()], 1)
        with torch.no_grad():
            y = model(pts.reshape(-1, 4)).reshape(2, -1, 3)
        lo, hi = r.lower.double()[:, None, :], r.upper.double()[:, None, :]
        assert bool((y >= lo).all() and (y <= hi).all()), (method, dtype, model)
        assert bool(torch.isfinite(r.lower).all() and torch.isfinite(r.upper).all())
    if method == "crown":  # and CROWN is much tighter than IBP on them
        m = _nets()[1]
        x = torch.zeros(1, 4, dtype=dtype)
        wc = fastcert.bounds(m, x, 0.05, method="crown")
        wi = fastcert.bounds(m, x, 0.05, method="ibp")
        assert float((wc.upper - wc.lower).sum()) < 0.5 * float((wi.upper - wi.lower).sum())


def test_kw_refuses_them_by_name() -> None:
    for model in _nets()[:2]:
        with pytest.raises(fastcert.UnsupportedError, match="Kolter-Wong"):
            fastcert.bounds(model, torch.zeros(1, 4, dtype=F64), 0.1, method="kw")
