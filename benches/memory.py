"""Peak memory of one bound computation, per tool, each in a fresh process (issue #3's memory target).

For each tool a child process imports everything, builds the model (and the peer's wrapper), reads
its resident set size, runs one bound computation, and reports the peak resident set size
(``ru_maxrss``) minus that baseline: the memory the computation itself needed at its peak.

    OMP_WAIT_POLICY=PASSIVE python -m benches.memory --case cifar-cnn-small --batch 32 --eps 0.01 --method crown
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

IMPLS = ("fastcert", "auto_LiRPA", "torch-reference")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _child(case: str, batch: int, eps: float, method: str, impl: str) -> dict:
    import torch

    import fastcert
    from benches import peers
    from benches.cases import CASES

    model, make_x = CASES[case]()
    x = make_x(batch).float().contiguous()
    with torch.no_grad():
        C = peers.margin_spec(model(x).argmax(1), 10).contiguous()
    if impl == "fastcert":
        net = fastcert.Network.from_torch(model)
        net.layers_for(tuple(x.shape[1:]))

        def run() -> None:
            fastcert.bounds(net, x, eps, method=method, C=C)
    else:
        peer = peers.PEERS[impl](model, x)

        def run() -> None:
            with torch.no_grad():
                peer.bounds(x, eps, method, C)
    base = _rss_kib()
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"impl": impl, "case": case, "batch": batch, "eps": eps, "method": method,
            "baseline_mib": base / 1024, "peak_extra_mib": (peak - base) / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="cifar-cnn-small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--method", default="crown")
    ap.add_argument("--impl", default=None, help="(internal) run one tool in this process")
    a = ap.parse_args(argv)
    if a.impl:
        print(json.dumps(_child(a.case, a.batch, a.eps, a.method, a.impl)))
        return 0
    for impl in IMPLS:
        cmd = [sys.executable, "-m", "benches.memory", "--case", a.case, "--batch", str(a.batch), "--eps", str(a.eps),
               "--method", a.method, "--impl", impl]
        p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if p.returncode != 0:
            print(json.dumps({"impl": impl, "error": p.stderr.strip().splitlines()[-1:]}))
            continue
        print(p.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
