"""Issue #13: RecurJac's backward and forward recursions (the reference's ``--lipsdir`` / ``--lipsshift``) next to
Fast-Lip, on the 7x100 ReLU MLP that ``benches.radius_table`` trains (first MNIST test image, L-inf balls, the
largest L1 gradient bound over the 10 logits, and the time of one call).

    python -m benches.lipschitz_directions --data-dir ../shared/data/mnist \
        --model .benchmarks/radius/mlp-7x100-relu-e2.pt
"""

from __future__ import annotations

import argparse
import time

import torch

import fastcert
from fastcert.io.datasets import load_idx_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--eps", default="1e-3,1e-2")
    a = ap.parse_args()
    X, _ = load_idx_dataset(a.data_dir, "test", torch.float64)
    m = torch.load(a.model, weights_only=False).double()
    x = X[:1]
    for eps in (float(e) for e in a.eps.split(",")):
        for method, direction, shift in (("fastlip", "backward", 1), ("recurjac", "backward", 1),
                                         ("recurjac", "forward", 1), ("recurjac", "forward", 0)):
            t = time.perf_counter()
            L = fastcert.lipschitz(m, x, eps, "inf", method, direction=direction, shift=shift).constant
            print(f"eps {eps:g} {method:9s} {direction:8s} shift {shift}: max L1 {float(L.max()):.4g}  "
                  f"{time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
