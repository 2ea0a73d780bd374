"""Two builds of fastcert against each other on the bench cases (issue #10 point 5: "bench medians stay
within 10% of today's").

Side A is this interpreter's fastcert; side B another interpreter with another build installed (e.g. a
venv with the code of an older commit: ``git worktree add --detach /tmp/old <commit>`` and
``pip install --no-build-isolation /tmp/old`` into that venv). Both sides are worker processes of
:mod:`benches.wait_policy` (started once, run from this checkout, so both build the cases with the same
bench code and time ``fastcert.bounds`` the same way: one warm-up, ``--rounds`` calls), asked in turn,
alternating which goes first, ``--reps`` times. Both get the same environment (by default the caller's
plus ``OMP_WAIT_POLICY=PASSIVE``, the setting of the earlier bench tables; ``--default-env`` drops every
thread variable instead). Correctness first: before timing a case, both sides' float64 bounds must agree
to 1e-9 relative (the regression tolerance).

Run::

    python -m benches.ab --python-b /path/to/old/venv/bin/python [--cases ...] [--methods ...]
        [--batches 1,32] [--eps 0.01] [--rounds 3] [--reps 2]

Prints per case the medians of both sides and A / B (< 1: A is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benches.wait_policy import THREAD_VARS, ask, case_args, requests

ROOT = Path(__file__).resolve().parents[1]


def _start(python: str, default_env: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_VARS)}
    if not default_env:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.pop("PYTHONPATH", None)
    return subprocess.Popen([python, "-m", "benches.wait_policy", "--worker"], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _check_same_bounds(python_b: str, case: str, method: str, batch: int, eps: float) -> str:
    """Both sides' float64 bounds on the case, compared at 1e-9 relative; '' when equal, else the worst."""
    code = ("import sys, torch, fastcert; from benches import regression; c = {}; "
            "net, x, C = regression._setup(sys.argv[1], int(sys.argv[2]), c); "
            "r = fastcert.bounds(net, x.double(), float(sys.argv[3]), method=sys.argv[4], C=C.double()); "
            "torch.save((r.lower, r.upper), sys.argv[5])")
    out = []
    for i, py in enumerate((sys.executable, python_b)):
        f = f"/tmp/fastcert-ab-{os.getpid()}-{i}.pt"
        subprocess.run([py, "-c", code, case, str(batch), str(eps), method, f], cwd=ROOT, check=True)
        import torch

        out.append(torch.load(f))
        os.unlink(f)
    (la, ua), (lb, ub) = out
    worst = max(float(((la - lb).abs() / lb.abs().clamp(min=1)).max()), float(((ua - ub).abs() / ub.abs().clamp(min=1)).max()))
    return "" if worst <= 1e-9 else f"{worst:.2e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python-b", required=True, help="the interpreter of side B")
    case_args(ap, rounds=3, reps=2)
    ap.add_argument("--default-env", action="store_true")
    a = ap.parse_args(argv)
    sides = {"A": _start(sys.executable, a.default_env), "B": _start(a.python_b, a.default_env)}
    print("| case | method | batch | eps | A ms | B ms | A / B |")
    print("|---|---|--:|--:|--:|--:|--:|")
    ratios = []
    try:
        for req in requests(a):
            row = f"| {req['case']} | {req['method']} | {req['batch']} | {req['eps']} |"
            diff = _check_same_bounds(a.python_b, req["case"], req["method"], req["batch"], req["eps"])
            if diff:
                print(f"{row} bounds differ ({diff}): not timed | | |", flush=True)
                continue
            t: dict[str, list[float]] = {"A": [], "B": []}
            for rep in range(a.reps):
                for side in (("A", "B") if rep % 2 == 0 else ("B", "A")):
                    t[side] += ask(sides[side], req)
            ma, mb = statistics.median(t["A"]), statistics.median(t["B"])
            ratios.append(ma / mb)
            print(f"{row} {ma:.3g} | {mb:.3g} | {ma / mb:.2f} |", flush=True)
    finally:
        for p in sides.values():
            p.stdin.close()  # type: ignore[union-attr]
            p.wait()
    if ratios:
        print(f"A / B: median {statistics.median(ratios):.2f}, worst {max(ratios):.2f}, best {min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
