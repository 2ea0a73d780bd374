"""fastcert IBP against the plain-torch IBP (``fastcert.reference``, center/radius with F.conv2d) on the CNN
bench cases at batch 32, float32, eps 0.01, alternating in one process (issue #10 point 5b).

Run::

    python -m benches.ibp_vs_torch            # the environment as it is
    OMP_WAIT_POLICY=PASSIVE python -m benches.ibp_vs_torch

Prints per case the medians (3 alternating repetitions of 20 calls after a warm-up) and the ratio
torch / fastcert (> 1: fastcert is faster).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch

import fastcert
from benches import peers, regression

CASES = ("mnist-cnn-kw", "cifar-cnn-small", "real-kw-mnist")


def _median_ms(f: Any, n: int = 20) -> float:
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main() -> int:
    cache: dict = {}
    print("| case | fastcert ms | plain-torch IBP ms | torch / fastcert |\n|---|--:|--:|--:|")
    for case in CASES:
        net, x, C = regression._setup(case, 32, cache)
        ref = peers.PEERS["torch-reference"](cache[case][0], x)
        a, b = [], []
        with torch.no_grad():
            for _ in range(3):
                a.append(_median_ms(lambda: fastcert.bounds(net, x, 0.01, method="ibp", C=C)))
                b.append(_median_ms(lambda: ref.bounds(x, 0.01, "ibp", C)))
        fa, fb = statistics.median(a), statistics.median(b)
        print(f"| {case} | {fa:.3g} | {fb:.3g} | {fb / fa:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
