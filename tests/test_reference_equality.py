"""fastcert's compiled pass equals the plain-torch reference (fastcert.reference.crown) in float64.

fastcert moves its bounds outward by a rigorous rounding slack, so the check is: fastcert's bounds
are never inside the reference's and differ from them by a relative 1e-9 at most.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastcert
from fastcert.reference import crown as ref


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 4)).double()


def _cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 5)).double()


CASES = [(_mlp, (12,)), (_cnn, (2, 8, 8))]


@pytest.mark.parametrize("method", ["ibp", "fastlin", "crown", "crown-ibp"])
@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("domain", [False, True])
def test_matches_reference(method: str, norm: str, case: int, domain: bool) -> None:
    build, shape = CASES[case]
    for seed in range(3):
        model = build(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(4, *shape, generator=g, dtype=torch.float64)
        C = torch.randn(3, model[-1].out_features, generator=g, dtype=torch.float64)
        kw = dict(x_min=0.0, x_max=1.0) if domain else {}
        eps = [0.0, 0.02, 0.2][seed]
        r = fastcert.bounds(model, x, eps, norm=norm, method=method, C=C, **kw)
        rl, ru = ref.bounds(model, x, eps, norm=norm, method=method, C=C, **kw)
        scale = 1 + rl.abs().max().item()
        assert (r.lower <= rl).all() and (r.upper >= ru).all()
        assert (rl - r.lower).max().item() <= 1e-9 * scale
        assert (r.upper - ru).max().item() <= 1e-9 * scale


def test_tightness_order_reported() -> None:
    """Mean bound widths per method are printed (tightness order is not a theorem, so not asserted);
    every method must give upper >= lower."""
    model = _mlp(0)
    x = torch.rand(16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    widths = {}
    for m in ["ibp", "crown-ibp", "fastlin", "crown"]:
        r = fastcert.bounds(model, x, 0.05, method=m)
        widths[m] = (r.upper - r.lower).mean().item()
        assert (r.upper >= r.lower).all()
    print("mean bound width:", widths)


@pytest.mark.parametrize("slope", ["adaptive", "parallel", "zero", "one"])
def test_lower_slope_choices_are_sound(slope: str) -> None:
    """Every lower-slope rule gives sound bounds (sampled, float64, no tolerance), and the option is
    refused where the method fixes its slopes or the rule is unknown."""
    model = _mlp(3)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 12, generator=g, dtype=torch.float64)
    r = fastcert.bounds(model, x, 0.1, method="crown", lower_slope=slope)
    pts = x[:, None] + (torch.rand(4, 256, 12, generator=g, dtype=torch.float64) * 2 - 1) * 0.1
    with torch.no_grad():
        f = model(pts.reshape(-1, 12)).reshape(4, 256, -1)
    assert (r.lower[:, None] <= f).all() and (f <= r.upper[:, None]).all()
    with pytest.raises(ValueError, match="lower_slope"):
        fastcert.bounds(model, x, 0.1, method="kw", lower_slope=slope)
    with pytest.raises(ValueError, match="lower_slope"):
        fastcert.bounds(model, x, 0.1, method="crown", lower_slope="steep")
