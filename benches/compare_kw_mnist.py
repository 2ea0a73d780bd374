"""fastcert's KW bound vs convex_adversarial's DualNetwork on Wong & Kolter's MNIST CNN, eps 0.1.

Same process, same images (the first N of the 1000 shipped MNIST test images in ../shared/data),
float32, batches of 50, alternating the two tools batch by batch; prints certified counts and
median time per batch. Run:

    OMP_WAIT_POLICY=PASSIVE python benches/compare_kw_mnist.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fastcert

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


def main(n: int = 1000, batch: int = 50) -> None:
    from convex_adversarial import DualNetwork

    model = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(1568, 100), nn.ReLU(), nn.Linear(100, 10))
    sd = torch.load(DATA / "convex_adversarial/models/mnist.pth", map_location="cpu")
    model.load_state_dict(dict(zip(model.state_dict().keys(), sd.values())))
    X = torch.from_numpy(np.load(DATA / "abcrown/datasets/eran/mnist_eran/X_eran.npy"))[:n]
    y = torch.from_numpy(np.load(DATA / "abcrown/datasets/eran/mnist_eran/y_eran.npy"))[:n]
    net = fastcert.Network.from_torch(model)
    fastcert.certify(net, X[:2], 0.1, labels=y[:2], method="kw")  # warm-up
    t_fc, t_ca, c_fc, c_ca = [], [], 0, 0
    for b0 in range(0, n, batch):
        xb, yb = X[b0:b0 + batch], y[b0:b0 + batch]
        t = time.perf_counter()
        r = fastcert.certify(net, xb, 0.1, labels=yb, method="kw")
        t_fc.append(time.perf_counter() - t)
        c_fc += int(r.certified.sum())
        t = time.perf_counter()
        with torch.no_grad():
            C = -torch.eye(10).unsqueeze(0).repeat(len(yb), 1, 1)
            C[torch.arange(len(yb)), :, yb] += 1
            lb = DualNetwork(model, xb, 0.1)(C)
            lb[torch.arange(len(yb)), yb] = float("inf")
            ok = (lb > 0).all(1) & (model(xb).argmax(1) == yb)
        t_ca.append(time.perf_counter() - t)
        c_ca += int(ok.sum())
    print(f"images {n}, batch {batch}, float32, eps 0.1 (L-inf, unclipped)")
    print(f"fastcert kw          : certified {c_fc}/{n}, median {statistics.median(t_fc)*1e3:.0f} ms/batch, "
          f"total {sum(t_fc):.1f} s")
    print(f"convex_adversarial   : certified {c_ca}/{n}, median {statistics.median(t_ca)*1e3:.0f} ms/batch, "
          f"total {sum(t_ca):.1f} s")
    print(f"ratio (ca / fastcert): {statistics.median(t_ca) / statistics.median(t_fc):.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
