"""CROWN's intermediate-bound rules on random max-pool CNNs, float64 (issue #10 point 4): the default
``BoundOptions(intermediate="intersect")`` against ``"sparse"`` (auto_LiRPA 0.3's rule).

Run::

    python -m benches.intermediate_rule

Per (shape, eps), over 5 seeds at batch 4 and every bound entry (lower and upper of every logit): how
often the default is tighter / looser / equal (within 1e-9 of the sparse interval's width), the mean
ratio of the interval widths default / sparse, and the largest loss and gain as a fraction of the sparse
width. Shapes: "small" (tests/test_peers_general.py's CNN, 1x8x8), "mid" (3x16x16, 8 and 16 channels,
a 64-unit dense layer), "ovl" (1x16x16 with an overlapping, padded 3x3 / stride 2 pool, which auto_LiRPA
0.3 cannot bound).
"""

from __future__ import annotations

import torch
from torch import nn

import fastcert


def model(kind: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A random max-pool CNN (float64, eval) and a batch of 4 inputs [4, C, H, W] in [0, 1)."""
    torch.manual_seed(seed)
    if kind == "small":
        m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3))
        shape = (1, 8, 8)
    elif kind == "mid":
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
        shape = (3, 16, 16)
    else:
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
        shape = (1, 16, 16)
    x = torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))
    return m.double().eval(), x


def main() -> None:
    sparse = fastcert.BoundOptions(intermediate="sparse")
    print("shape eps   | default tighter / looser / equal | mean width default/sparse | max loss | max gain")
    totals = [0, 0, 0]
    for kind in ("small", "mid", "ovl"):
        for eps in (0.005, 0.02, 0.05, 0.1):
            counts, ratios, loss, gain = [0, 0, 0], [], 0.0, 0.0
            for seed in range(5):
                m, x = model(kind, seed)
                d = fastcert.bounds(m, x, eps, method="crown")
                s = fastcert.bounds(m, x, eps, method="crown", options=sparse)
                width = (s.upper - s.lower).clamp(min=1e-12)
                g = torch.cat([(d.lower - s.lower) / width, (s.upper - d.upper) / width]).flatten()  # > 0: tighter
                counts[0] += int((g > 1e-9).sum())
                counts[1] += int((g < -1e-9).sum())
                counts[2] += int((g.abs() <= 1e-9).sum())
                ratios.append(((d.upper - d.lower) / width).flatten())
                loss, gain = max(loss, float(-g.min())), max(gain, float(g.max()))
            totals = [a + b for a, b in zip(totals, counts)]
            print(f"{kind:5s} {eps:5.3f} | {counts[0]:4d} / {counts[1]:4d} / {counts[2]:4d}"
                  f" | {float(torch.cat(ratios).mean()):.4f} | {loss:.2e} | {gain:.2e}")
    print(f"all: default tighter on {totals[0]}, looser on {totals[1]}, equal on {totals[2]} of {sum(totals)} entries")


if __name__ == "__main__":
    main()
