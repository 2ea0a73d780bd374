"""Where the time of one forward + backward bound step goes (torch profiler), for fastcert or auto_LiRPA:
the step of ``benches/bench_diff.py`` on one case. Used for the "products share" argument in BENCHMARKS.md.

    OMP_WAIT_POLICY=PASSIVE python -m benches.profile_diff cifar-cnn-small ibp 128 auto_LiRPA
"""

from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile

from benches.bench_diff import _case, _fastcert_step, _lirpa_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("case")
    ap.add_argument("method", choices=("ibp", "crown-ibp"))
    ap.add_argument("batch", type=int)
    ap.add_argument("impl", choices=("fastcert", "auto_LiRPA"))
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (after two warm-up steps)")
    a = ap.parse_args()
    model, x, C = _case(a.case, a.batch)
    step = (_fastcert_step if a.impl == "fastcert" else _lirpa_step)(model, x, C, a.method)
    for _ in range(2):
        step()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    print(f"{a.impl} {a.case} {a.method} batch {a.batch}: median {sorted(ts)[2] * 1e3:.1f} ms a step")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
