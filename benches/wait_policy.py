"""fastcert's speed in a default environment against ``OMP_WAIT_POLICY=PASSIVE`` (issue #10, point 5a).

OpenMP reads its wait policy when the runtime starts, so the two sides are two worker processes,
started once (one with the caller's environment minus every ``OMP_*`` / ``GOMP_*`` / thread-count
variable, one with ``OMP_WAIT_POLICY=PASSIVE`` added), each building the bench cases of
``benches/cases.py`` the same way. The driver asks them in turn, alternating which goes first, to time
``fastcert.bounds`` on one case (``--rounds`` calls after one warm-up call), repeats that
``--reps`` times, and reports per case the median of each side and the ratio default / passive.

Run (the bench cases at batch 32 and 1, eps 0.01, every method; a few minutes)::

    python -m benches.wait_policy [--cases mnist-mlp-3x100,...] [--methods crown,ibp] [--batches 1,32]
        [--eps 0.01] [--rounds 5] [--reps 3] [--torch-load]

``--torch-load`` also runs a torch matmul between the calls in both workers (torch's OpenMP pool
busy next to fastcert's, the reported scenario).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_", "GOMP_", "KMP_", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "FASTCERT_BLAS_THREADS")


def worker() -> None:
    """Child: read JSON requests on stdin, answer with timings (ms) on stdout."""
    import torch

    import fastcert
    from benches import regression

    cache: dict = {}
    for line in sys.stdin:
        req = json.loads(line)
        net, x, C = regression._setup(req["case"], req["batch"], cache)
        eps, method = req["eps"], req["method"]
        load = torch.rand(256, 1024) if req.get("torch_load") else None

        def call() -> None:
            if load is not None:
                load @ load.T  # torch's own OpenMP region next to fastcert's
            fastcert.bounds(net, x, eps, method=method, C=C)

        with torch.no_grad():
            call()  # warm-up
            times = []
            for _ in range(req["rounds"]):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps(times), flush=True)


def _start(passive: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_VARS)}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return subprocess.Popen([sys.executable, "-m", "benches.wait_policy", "--worker"], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(p: subprocess.Popen, req: dict) -> list[float]:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(json.dumps(req) + "\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise RuntimeError("worker died")
    return json.loads(line)


def case_args(ap: argparse.ArgumentParser, rounds: int, reps: int) -> None:
    """The options that choose the timed calls: cases, methods, batches, eps, rounds, reps."""
    from benches.cases import CASES

    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--methods", default="ibp,crown,crown-ibp,kw")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--eps", default="0.01")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--reps", type=int, default=reps)


def requests(a: argparse.Namespace) -> list[dict]:
    """One worker request per (case, method, batch, eps) chosen by :func:`case_args`' options."""
    return [dict(case=case, method=method, batch=batch, eps=eps, rounds=a.rounds)
            for case in a.cases.split(",") for method in a.methods.split(",")
            for batch in (int(b) for b in a.batches.split(",")) for eps in (float(e) for e in a.eps.split(","))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    case_args(ap, rounds=5, reps=3)
    ap.add_argument("--torch-load", action="store_true")
    a = ap.parse_args(argv)
    if a.worker:
        worker()
        return 0
    sides = {"default": _start(False), "passive": _start(True)}
    print("| case | method | batch | eps | default ms | PASSIVE ms | default / PASSIVE |")
    print("|---|---|--:|--:|--:|--:|--:|")
    worst = 0.0
    try:
        for req in requests(a):
            req["torch_load"] = a.torch_load
            t: dict[str, list[float]] = {"default": [], "passive": []}
            for rep in range(a.reps):
                for side in (("default", "passive") if rep % 2 == 0 else ("passive", "default")):
                    t[side] += ask(sides[side], req)
            md, mp = statistics.median(t["default"]), statistics.median(t["passive"])
            worst = max(worst, md / mp)
            print(f"| {req['case']} | {req['method']} | {req['batch']} | {req['eps']} | {md:.3g} | {mp:.3g} | "
                  f"{md / mp:.2f} |", flush=True)
    finally:
        for p in sides.values():
            p.stdin.close()  # type: ignore[union-attr]
            p.wait()
    print(f"worst default / PASSIVE: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
