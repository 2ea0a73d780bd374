"""How often CROWN's certified radius is below Fast-Lin's on small random ReLU MLPs (why
``tests/test_radius.py`` does not assert CROWN >= Fast-Lin per sample).

    python -m benches.radius_crown_vs_fastlin --nets 150

Networks: 1-3 hidden layers of width 8-32, He weights, normal biases (``tests/strategies.build_network``),
inputs uniform in [-1, 1], 4 samples, L-inf / L2 / L1, 10 search steps from eps 0.02.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import fastcert

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from strategies import NetSpec, build_network  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", type=int, default=150)
    a = ap.parse_args()
    below = total = below_mean = batches = 0
    for seed in range(a.nets):
        g = torch.Generator().manual_seed(seed)
        n_in = int(torch.randint(2, 10, (1,), generator=g))
        layers: list[tuple] = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            layers += [("linear", int(torch.randint(8, 33, (1,), generator=g)), True), ("act", "relu", 0.0)]
        layers.append(("linear", int(torch.randint(2, 6, (1,), generator=g)), True))
        model = build_network(NetSpec((n_in,), tuple(layers), 1.0, "normal", seed))
        x = torch.rand(4, n_in, generator=g, dtype=torch.float64) * 2 - 1
        for norm in ("inf", "2", "1"):
            kw = dict(norm=norm, steps=10, eps_init=0.02)
            c = fastcert.certified_radius(model, x, method="crown", **kw).radius
            f = fastcert.certified_radius(model, x, method="fastlin", **kw).radius
            total += 4
            batches += 1
            below += int((c < f).sum())
            below_mean += int(c.mean() < f.mean())
    print(f"CROWN radius < Fast-Lin radius on {below} of {total} samples; mean below on {below_mean} of {batches} "
          f"batches ({a.nets} networks x 3 norms)")


if __name__ == "__main__":
    main()
