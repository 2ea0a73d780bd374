"""Speed of fastcert's bound methods against the plain-torch reference, same process, same inputs.

Run:  OMP_WAIT_POLICY=PASSIVE python -m pytest benches --benchmark-only --benchmark-columns=median,iqr
CI runs this file with --benchmark-disable so that the correctness checks stay green. The full
suite against the peers (auto_LiRPA, convex_adversarial) and the roofline are a separate issue.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastcert
from fastcert.reference import crown as ref


def _mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    dims = [784] + widths
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], 10))
    return nn.Sequential(*layers)


CASES = {"mnist-mlp-3x100": [100, 100, 100]}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("impl", ["fastcert", "torch-reference"])
def test_bounds_speed(benchmark, case: str, method: str, batch: int, impl: str) -> None:
    model = _mlp(CASES[case]).float()
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    net = fastcert.Network.from_torch(model)
    # correctness before timing: fastcert contains the reference bounds and is within 1e-3 of them
    r = fastcert.bounds(net, x.double(), 0.01, method=method)
    rl, ru = ref.bounds(model.double(), x.double(), 0.01, method=method)
    model.float()
    assert (r.lower <= rl).all() and (r.upper >= ru).all()
    assert (rl - r.lower).abs().max() < 1e-6
    if impl == "fastcert":
        benchmark(lambda: fastcert.bounds(net, x, 0.01, method=method))
    else:
        with torch.no_grad():
            benchmark(lambda: ref.bounds(model, x, 0.01, method=method))
