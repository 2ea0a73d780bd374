"""Issue #12 point 4: the table of clean / PGD / certified error of every training method at two eps, next to
a plain-trained model, on one data set (``fastcert train`` runs; a results table, not a speed benchmark).

    python -m benches.train_table --data digits --epochs 6 --out /tmp/train-table > table.md
    python -m benches.train_table --data mnist --data-dir ../shared/data/mnist --methods plain,ibp --eps 0.1

L-inf methods run at ``--eps`` (two values); ``local-lip`` is an L2 method and runs at ``--eps-l2`` (two
values), certified in L2, next to the plain model's L2 figures. Every run uses ``--model`` (default ``kw``: convex_adversarial's MNIST model, =
MMR's LeNet-small), the trainer's default schedules (one warm-up epoch, eps ramped over half of the rest) and
evaluates on the whole test set (``--eval-n`` to cut it). Each run's ``final.json`` stays in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fastcert.trainer import TrainConfig, train

METHODS = ("plain", "pgd", "ibp", "crown-ibp", "kw", "mmr", "local-lip", "mtl-ibp")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="kw")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--eps", default="0.05,0.1", help="two L-inf radii")
    p.add_argument("--eps-l2", default="0.5,1.0", help="two L2 radii (local-lip)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-n", type=int, default=None)
    p.add_argument("--out", default="train-table")
    a = p.parse_args(argv)
    rows = []
    runs = [(m, m == "local-lip") for m in a.methods.split(",")]
    if ("local-lip", True) in runs and ("plain", False) in runs:  # the plain baseline in L2 as well
        runs.insert(runs.index(("plain", False)) + 1, ("plain", True))
    for method, l2 in runs:
        for eps in (float(e) for e in (a.eps_l2 if l2 else a.eps).split(",")):
            cfg = TrainConfig(method=method, model=a.model, data=a.data, data_dir=a.data_dir, eps=eps,
                              norm="2" if l2 else "inf", epochs=a.epochs, batch_size=a.batch_size,
                              eval_n=a.eval_n, kappa_end=0.0 if l2 else 0.5,
                              out=str(Path(a.out) / f"{a.data}-{method}-{'l2' if l2 else 'linf'}-{eps:g}"))
            t = time.perf_counter()
            res = train(cfg, quiet=True)
            rows.append((method, cfg.norm, eps, res, time.perf_counter() - t))
            print(f"{method} {cfg.norm} {eps:g}: {json.dumps({k: res[k] for k in ('clean_acc', 'pgd_acc', 'certified_acc')})}",
                  file=sys.stderr)
    print("| method | norm | eps | clean err | PGD err | certified err (bound) | train + eval s |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for method, norm, eps, res, sec in rows:
        print(f"| {method} | {'L2' if norm == '2' else 'L-inf'} | {eps:g} | {1 - res['clean_acc']:.3f} | "
              f"{1 - res['pgd_acc']:.3f} | {1 - res['certified_acc']:.3f} ({res['cert_method']}) | {sec:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
