"""fastcert IBP against the plain-torch IBP (``fastcert.reference``, center/radius with F.conv2d) on the CNN
bench cases at batch 32, float32, eps 0.01, alternating in one process (issue #10 point 5b).

Run::

    python -m benches.ibp_vs_torch            # the environment as it is
    OMP_WAIT_POLICY=PASSIVE python -m benches.ibp_vs_torch
    python -m benches.ibp_vs_torch --threads 1   # both on one thread: the work, without scheduling noise

Prints per case the medians of ``--calls`` calls of each after a warm-up, the two alternating call by call
(which of the two goes first alternates too), so that a slow stretch of a shared machine hits both alike;
the ratio torch / fastcert (> 1: fastcert is faster); and the median process CPU time of a call (all
threads; on a machine shared with other jobs it moves less than the wall time).
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


def _timed(f: Any) -> tuple[float, float]:
    """(wall ms, process CPU ms, all threads) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    f()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def _alternating(fa: Any, fb: Any, n: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Medians (wall ms, CPU ms) of n calls of fa and of fb, alternating call by call after a warm-up."""
    for _ in range(3):
        fa()
        fb()
    a, b = [], []
    for i in range(n):
        if i % 2:
            a.append(_timed(fa))
            b.append(_timed(fb))
        else:
            b.append(_timed(fb))
            a.append(_timed(fa))
    med = statistics.median
    return (med(t for t, _ in a), med(c for _, c in a)), (med(t for t, _ in b), med(c for _, c in b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads(N) first (fastcert's pool follows it); 0: leave as is")
    ap.add_argument("--calls", type=int, default=150, help="calls of each, alternating (default 150)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache: dict = {}
    print("| case | fastcert ms | plain-torch IBP ms | torch / fastcert | fastcert CPU ms | torch CPU ms |\n"
          "|---|--:|--:|--:|--:|--:|")
    for case in CASES:
        net, x, C = regression._setup(case, 32, cache)
        ref = peers.PEERS["torch-reference"](cache[case][0], x)
        with torch.no_grad():
            (fa, ca), (fb, cb) = _alternating(lambda: fastcert.bounds(net, x, 0.01, method="ibp", C=C),
                                              lambda: ref.bounds(x, 0.01, "ibp", C), args.calls)
        print(f"| {case} | {fa:.3g} | {fb:.3g} | {fb / fa:.2f} | {ca:.3g} | {cb:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
