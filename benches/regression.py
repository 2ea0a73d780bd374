"""Regression harness: the bounds of every case of ``benches/bench_bounds.py``, saved and compared.

Every case of ``benches/cases.py`` x method {ibp, crown, crown-ibp, kw} x batch {1, 32} x eps {0.01,
0.05}, on the same inputs and margin specification as the benches (``C: [B, 9, 10]``), in float64 and
in float32. Saved as a ``torch.save`` dict ``{"meta": {...}, "bounds": {key: {"f64": (lower, upper),
"f32": (lower, upper)}}}`` with ``key = "case/method/b<batch>/eps<eps>"`` and bounds ``[B, 9]``.

Run (about 2-4 minutes on the 2-core machine)::

    python -m benches.regression save /work/baseline-bounds.pt     # from the code to compare against
    python -m benches.regression compare /work/baseline-bounds.pt  # after a change: exit 1 on a regression

``compare`` recomputes every case and checks that the float64 bounds equal the baseline's to
``--rtol`` (default 1e-9) relative: ``|new - old| <= rtol * max(|old|, 1)`` per entry (the ``1``
keeps a bound that is 0 up to rounding from failing on an absolute 1e-17). It prints the worst
difference, per case with ``-v``, and the float32 margin loss of the new code (:func:`margin_loss`).
``--only SUBSTRING`` restricts both modes to keys containing it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("ibp", "crown", "crown-ibp", "kw")
BATCHES = (1, 32)
EPSS = (0.01, 0.05)
ROOT = Path(__file__).resolve().parents[1]


def keys(only: str | None = None) -> list[tuple[str, str, int, float]]:
    from benches.cases import CASES

    out = [(c, m, b, e) for c in CASES for m in METHODS for b in BATCHES for e in EPSS]
    return [k for k in out if only is None or only in key_name(k)]


def key_name(k: tuple[str, str, int, float]) -> str:
    c, m, b, e = k
    return f"{c}/{m}/b{b}/eps{e}"


def _setup(case: str, batch: int, cache: dict) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(fastcert network, x [B, ...] float32, C [B, 9, 10] float32), as benches/bench_bounds.py builds them."""
    import fastcert
    from benches import peers
    from benches.cases import CASES

    if (case, batch) not in cache:
        if case not in cache:
            cache[case] = CASES[case]()
        model, make_x = cache[case]
        x = make_x(batch).float().contiguous()
        with torch.no_grad():
            y = model(x).argmax(1)
        C = peers.margin_spec(y, 10).contiguous()
        cache[(case, batch)] = (fastcert.Network.from_torch(model), x, C)
    return cache[(case, batch)]


def compute(only: str | None = None, log: bool = True) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Bounds of every case: ``{key: {"f64": (lower, upper), "f32": (lower, upper)}}`` ([B, 9] each)."""
    import fastcert

    cache: dict = {}
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for k in keys(only):
        case, method, batch, eps = k
        try:
            net, x, C = _setup(case, batch, cache)
        except Exception as exc:  # e.g. the real case without ../shared/data
            if log:
                print(f"skip {key_name(k)}: {exc}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        r64 = fastcert.bounds(net, x.double(), eps, method=method, C=C.double())
        r32 = fastcert.bounds(net, x, eps, method=method, C=C)
        out[key_name(k)] = {"f64": (r64.lower.clone(), r64.upper.clone()), "f32": (r32.lower.clone(), r32.upper.clone())}
        if log:
            print(f"{key_name(k)}: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return out


def margin_loss(b64: tuple[torch.Tensor, torch.Tensor], b32: tuple[torch.Tensor, torch.Tensor]) -> float:
    """How much of its margin a float32 bound loses against the float64 one, as a fraction.

    ``sum(lb64 - lb32) + sum(ub32 - ub64)`` over all samples and rows, divided by
    ``sum |lb64| + sum |ub64|``: the total widening of the float32 bounds relative to the total size
    of the float64 bounds (a per-entry ratio would blow up on bounds that happen to be near 0)."""
    (l64, u64), (l32, u32) = b64, (b32[0].double(), b32[1].double())
    lost = float((l64 - l32).sum() + (u32 - u64).sum())
    size = float(l64.abs().sum() + u64.abs().sum())
    return lost / size if size > 0 else 0.0


def _meta() -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    return {"commit": commit + ("+dirty" if dirty else ""), "torch": str(torch.__version__),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def compare(base: dict, new: dict, rtol: float, verbose: bool) -> tuple[bool, list[str]]:
    """Check new float64 bounds == base ones to ``rtol``; returns (ok, report lines)."""
    lines, ok, worst, worst_key = [], True, 0.0, ""
    missing = sorted(set(base) - set(new))
    if missing:
        ok = False
        lines.append(f"missing in the new run: {len(missing)} keys, e.g. {missing[:3]}")
    for k in sorted(set(base) & set(new)):
        d = 0.0
        for old, cur in zip(base[k]["f64"], new[k]["f64"]):
            if old.shape != cur.shape:
                d = float("inf")
                break
            d = max(d, float(((cur - old).abs() / old.abs().clamp_min(1.0)).max()))
        if d > worst:
            worst, worst_key = d, k
        if not d <= rtol:
            ok = False
            lines.append(f"DIFFERS {k}: max relative difference {d:.3e} > {rtol:.0e}")
        elif verbose:
            lines.append(f"ok {k}: {d:.3e}")
    lines.append(f"float64: {len(set(base) & set(new))} keys compared, worst relative difference {worst:.3e}"
                 f"{' (' + worst_key + ')' if worst_key else ''}; {'OK' if ok else 'REGRESSION'} at rtol {rtol:.0e}")
    return ok, lines


def loss_table(res: dict) -> list[str]:
    """The float32 margin loss (:func:`margin_loss`) of every key, worst first."""
    rows = sorted(((margin_loss(v["f64"], v["f32"]), k) for k, v in res.items()), reverse=True)
    return [f"{loss * 100:7.3f}%  {k}" for loss, k in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("save", "compare", "loss"))
    ap.add_argument("file", help="the baseline file (.pt)")
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--only", default=None, help="restrict to keys containing this substring")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.mode == "loss":  # the float32 margin loss stored in a file, no computation
        for line in loss_table(torch.load(a.file)["bounds"])[:20]:
            print(line)
        return 0
    res = compute(a.only, log=a.verbose)
    if a.mode == "save":
        torch.save({"meta": _meta(), "bounds": res}, a.file)
        print(f"saved {len(res)} keys to {a.file}")
        return 0
    saved = torch.load(a.file)
    base = {k: v for k, v in saved["bounds"].items() if a.only is None or a.only in k}
    ok, lines = compare(base, res, a.rtol, a.verbose)
    print(f"baseline: {a.file} ({saved['meta']})")
    for line in lines:
        print(line)
    print("float32 margin loss (worst 5): " + "; ".join(s.strip() for s in loss_table(res)[:5]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
