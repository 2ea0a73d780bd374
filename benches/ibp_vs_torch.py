"""fastcert IBP against the plain-torch IBP (``fastcert.reference``, center/radius with F.conv2d) on the CNN
bench cases at batch 32, float32, eps 0.01, alternating in one process (issue #10 point 5b).

Run::

    python -m benches.ibp_vs_torch            # the environment as it is
    OMP_WAIT_POLICY=PASSIVE python -m benches.ibp_vs_torch
    python -m benches.ibp_vs_torch --threads 1   # both on one thread: the work, without scheduling noise

Prints per case the medians (3 alternating repetitions of 20 calls after a warm-up) and the ratio
torch / fastcert (> 1: fastcert is faster), and the median process CPU time of a call (all threads;
on a machine shared with other jobs it moves less than the wall time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

import fastcert
from benches import peers, regression

CASES = ("mnist-cnn-kw", "cifar-cnn-small", "real-kw-mnist")


def _median_ms(f: Any, n: int = 20) -> tuple[float, float]:
    """(median wall ms, median process CPU ms, all threads) of n calls after a warm-up."""
    f()
    ts, cs = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        f()
        ts.append((time.perf_counter() - t0) * 1e3)
        cs.append((time.process_time() - c0) * 1e3)
    return statistics.median(ts), statistics.median(cs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads(N) first (fastcert's pool follows it); 0: leave as is")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache: dict = {}
    print("| case | fastcert ms | plain-torch IBP ms | torch / fastcert | fastcert CPU ms | torch CPU ms |\n"
          "|---|--:|--:|--:|--:|--:|")
    for case in CASES:
        net, x, C = regression._setup(case, 32, cache)
        ref = peers.PEERS["torch-reference"](cache[case][0], x)
        a, b = [], []
        with torch.no_grad():
            for _ in range(3):
                a.append(_median_ms(lambda: fastcert.bounds(net, x, 0.01, method="ibp", C=C)))
                b.append(_median_ms(lambda: ref.bounds(x, 0.01, "ibp", C)))
        fa, fb = statistics.median(t for t, _ in a), statistics.median(t for t, _ in b)
        ca, cb = statistics.median(c for _, c in a), statistics.median(c for _, c in b)
        print(f"| {case} | {fa:.3g} | {fb:.3g} | {fb / fa:.2f} | {ca:.3g} | {cb:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
