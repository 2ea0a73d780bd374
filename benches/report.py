"""Markdown table and PNG chart from a pytest-benchmark JSON file of ``benches/bench_bounds.py``.

Run::

    python -m benches.report [FILE.json] [--md FILE.md] [--png docs/benchmarks.png | --no-png]

FILE defaults to the newest ``*.json`` under ``.benchmarks/``. The table goes to stdout unless
``--md`` is given; the chart to ``--png`` (default ``docs/benchmarks.png``).

Input schema, each benchmark's ``extra_info``:

- a bound timing: ``{"case", "method", "batch", "eps", "impl", "flops", "bytes"}`` with ``impl`` one
  of ``fastcert`` or a peer (``auto_LiRPA``, ``convex_adversarial``, ``torch-reference``; any other
  name that is not listed below is treated as a peer too, in its own column);
- the machine's GEMM rate: ``{"impl": "gemm", "case": "gemm-rate", "flops", "dtype"}`` (one large
  SGEMM through the same BLAS; with several, the fastest rate is used);
- anything else with an ``impl`` in :data:`OTHER_IMPLS` (e.g. ``gemm-floor``: the bare GEMMs of a
  case) is listed in a second table with its rate and % of the GEMM rate.

Benchmarks without ``extra_info["impl"]`` are ignored (counted on stderr). Times are the medians
(``stats.median``, seconds); when one (case, method, batch, eps, impl) was timed more than once, the
smallest median is used.

The table has one row per (case, method, batch, eps): fastcert's median (ms), each peer's median
(ms, "–" where the peer did not run), each peer's ratio ``peer / fastcert`` (> 1: fastcert is
faster), the ratio of the fastest peer, fastcert's GFLOP/s (``flops / median``) and that rate as a
% of the GEMM rate. The chart has one panel per batch size: grouped bars of the speed-up of fastcert
over each peer (log scale, a line at 1x), one group per (case, method, eps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FASTCERT = "fastcert"
GEMM = "gemm"
KNOWN_PEERS = ("auto_LiRPA", "convex_adversarial", "torch-reference")
OTHER_IMPLS = ("gemm-floor",)
METHOD_ORDER = ("ibp", "crown-ibp", "kw", "fastlin", "crown", "alpha-crown")
PEER_COLORS = {"auto_LiRPA": "#1f77b4", "convex_adversarial": "#ff7f0e", "torch-reference": "#2ca02c"}
DASH = "–"

Key = tuple[str, str, int, float]  # (case, method, batch, eps)


@dataclass(frozen=True)
class Timing:
    """One benchmark of the JSON: its extra_info fields and median time in seconds."""

    impl: str
    case: str
    method: str
    batch: int
    eps: float
    median_s: float
    flops: float = float("nan")
    bytes: float = float("nan")
    min_s: float = float("nan")  # the fastest round (used for the GEMM ceiling)


@dataclass
class Row:
    """One (case, method, batch, eps) of the table: medians by implementation (seconds)."""

    case: str
    method: str
    batch: int
    eps: float
    median_s: dict[str, float] = field(default_factory=dict)
    flops: float = float("nan")
    bytes: float = float("nan")

    @property
    def key(self) -> Key:
        return self.case, self.method, self.batch, self.eps

    def fastcert_s(self) -> float | None:
        return self.median_s.get(FASTCERT)

    def ratio(self, peer: str) -> float | None:
        """``peer median / fastcert median`` (the speed-up of fastcert over that peer), or None."""
        f, p = self.fastcert_s(), self.median_s.get(peer)
        if f is None or p is None or f <= 0:
            return None
        return p / f

    def fastest_peer(self, peers: Sequence[str]) -> tuple[str, float] | None:
        """(name, ratio) of the fastest peer that ran, or None."""
        ratios = [(p, r) for p in peers if (r := self.ratio(p)) is not None]
        return min(ratios, key=lambda t: t[1]) if ratios else None

    def gflops(self) -> float | None:
        f = self.fastcert_s()
        if f is None or f <= 0 or not math.isfinite(self.flops) or self.flops <= 0:
            return None
        return self.flops / f / 1e9


@dataclass
class Report:
    """Everything the table and the chart show."""

    rows: list[Row]
    peers: list[str]
    gemm_gflops: float | None
    others: list[Timing]
    source: str = ""
    machine: str = ""
    ignored: int = 0


def _num(v: Any, default: float = float("nan")) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def parse(data: dict[str, Any]) -> tuple[list[Timing], int]:
    """The timings of a pytest-benchmark JSON document, and how many benchmarks had no ``impl``."""
    out: list[Timing] = []
    ignored = 0
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        impl = info.get("impl")
        median = _num((b.get("stats") or {}).get("median"))
        if not impl or not math.isfinite(median):
            ignored += 1
            continue
        out.append(Timing(impl=str(impl), case=str(info.get("case", "")), method=str(info.get("method", "")),
                          batch=int(_num(info.get("batch"), 0)), eps=_num(info.get("eps"), 0.0), median_s=median,
                          flops=_num(info.get("flops")), bytes=_num(info.get("bytes")),
                          min_s=_num((b.get("stats") or {}).get("min"))))
    return out, ignored


def _method_rank(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m), m) if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def build(timings: Iterable[Timing], source: str = "", machine: str = "", ignored: int = 0) -> Report:
    """Group the timings into table rows; the GEMM rate from the ``gemm`` timings (the fastest round of
    the fastest)."""
    rows: dict[Key, Row] = {}
    gemm: list[float] = []
    others: list[Timing] = []
    seen_peers: set[str] = set()
    for t in timings:
        if t.impl == GEMM:  # a ceiling: the fastest round (OpenBLAS's thread pool on a shared machine
            # does not always get the second core, so its median can be a one-core figure)
            best = t.min_s if math.isfinite(t.min_s) and t.min_s > 0 else t.median_s
            if best > 0 and math.isfinite(t.flops) and t.flops > 0:
                gemm.append(t.flops / best / 1e9)
            continue
        if t.impl in OTHER_IMPLS:
            others.append(t)
            continue
        key = (t.case, t.method, t.batch, t.eps)
        row = rows.setdefault(key, Row(*key))
        old = row.median_s.get(t.impl)
        row.median_s[t.impl] = t.median_s if old is None else min(old, t.median_s)
        if t.impl == FASTCERT or not math.isfinite(row.flops):
            row.flops, row.bytes = t.flops, t.bytes
        if t.impl != FASTCERT:
            seen_peers.add(t.impl)
    peers = list(KNOWN_PEERS) + sorted(seen_peers - set(KNOWN_PEERS))
    case_rank = {c: i for i, c in enumerate(dict.fromkeys(r.case for r in rows.values()))}  # as in the file
    ordered = sorted(rows.values(), key=lambda r: (case_rank[r.case], _method_rank(r.method), r.batch, r.eps))
    others.sort(key=lambda t: (t.case, _method_rank(t.method), t.batch, t.eps, t.impl))
    return Report(ordered, peers, max(gemm) if gemm else None, others, source, machine, ignored)


def load(path: Path) -> Report:
    """Read a pytest-benchmark JSON file."""
    data = json.loads(Path(path).read_text())
    timings, ignored = parse(data)
    mi = data.get("machine_info") or {}
    cpu = (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or ""
    machine = ", ".join(s for s in (cpu, mi.get("python_implementation", "") + " " + mi.get("python_version", ""),
                                    data.get("datetime", "")) if s.strip())
    return build(timings, str(path), machine, ignored)


def newest_json(root: Path = ROOT / ".benchmarks") -> Path:
    """The most recently modified ``*.json`` under ``root`` (pytest-benchmark's autosave folder)."""
    files = sorted(root.rglob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.json under {root}: run the benches with --benchmark-json=FILE or "
                                f"--benchmark-autosave, or pass the file")
    return files[-1]


def _ms(s: float | None) -> str:
    if s is None:
        return DASH
    ms = s * 1e3
    return f"{ms:#.3g}" if ms < 100 else f"{ms:.0f}"


def _x(r: float | None) -> str:
    if r is None:
        return DASH
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def _eps(e: float) -> str:
    return f"{e:g}"


def markdown(rep: Report) -> str:
    """The report as Markdown: a header, the main table, and the other timings (if any)."""
    lines: list[str] = ["## fastcert vs peers: median time per call", ""]
    if rep.source:
        lines.append(f"Source: `{rep.source}`" + (f" ({rep.machine})" if rep.machine else ""))
    gemm = f"{rep.gemm_gflops:.1f} GFLOP/s" if rep.gemm_gflops else "not measured"
    lines += [f"GEMM rate (one large SGEMM, same BLAS; the fastest round of one thread and of all cores): {gemm}.",
              "Ratios are peer time / fastcert time (> 1: fastcert is faster); " + DASH + ": did not run.", ""]
    head = (["case", "method", "batch", "eps", "fastcert ms"] + [f"{p} ms" for p in rep.peers]
            + [f"{p} / fastcert" for p in rep.peers] + ["fastest peer / fastcert", "fastcert GFLOP/s", "% of GEMM"])
    align = ["---", "---", "--:", "--:"] + ["--:"] * (len(head) - 4)
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rep.rows:
        fp = r.fastest_peer(rep.peers)
        g = r.gflops()
        cells = ([r.case, r.method, str(r.batch), _eps(r.eps), _ms(r.fastcert_s())]
                 + [_ms(r.median_s.get(p)) for p in rep.peers] + [_x(r.ratio(p)) for p in rep.peers]
                 + [f"{_x(fp[1])} ({fp[0]})" if fp else DASH, f"{g:.2f}" if g is not None else DASH,
                    f"{100 * g / rep.gemm_gflops:.1f}%" if g is not None and rep.gemm_gflops else DASH])
        lines.append("| " + " | ".join(cells) + " |")
    if rep.others:
        lines += ["", "Other timings:", "", "| impl | case | method | batch | median ms | GFLOP/s | % of GEMM |",
                  "|---|---|---|--:|--:|--:|--:|"]
        for t in rep.others:
            g = t.flops / t.median_s / 1e9 if t.median_s > 0 and math.isfinite(t.flops) and t.flops > 0 else None
            lines.append(f"| {t.impl} | {t.case} | {t.method} | {t.batch} | {_ms(t.median_s)} | "
                         + (f"{g:.2f}" if g is not None else DASH) + " | "
                         + (f"{100 * g / rep.gemm_gflops:.1f}%" if g is not None and rep.gemm_gflops else DASH) + " |")
    return "\n".join(lines) + "\n"


def _span(vals: list[tuple[float, str]]) -> str:
    lo, hi = min(vals), max(vals)
    return f"{lo[0]:.2f}x ({lo[1]}) .. {hi[0]:.2f}x ({hi[1]})"


def targets(rep: Report) -> str:
    """Issue #3's speed targets checked against the report's rows (Markdown table).

    Each target lists the smallest and largest ratio over the rows it covers (with their case and
    eps) and holds only if every such row meets it. Same bound: CROWN is computed by auto_LiRPA and
    the plain-torch reference; KW (Fast-Lin) by convex_adversarial."""
    def rows(method: str, batch: int) -> list[Row]:
        return [r for r in rep.rows if r.method == method and r.batch == batch and r.fastcert_s() is not None]

    out = ["| target | holds? | ratios (worst .. best) |", "|---|---|---|"]

    def add(name: str, need: float, vals: list[tuple[float, str]]) -> None:
        if not vals:
            out.append(f"| {name} | not measured | {DASH} |")
            return
        ok = min(vals)[0] >= need
        n_ok = sum(v >= need for v, _ in vals)
        out.append(f"| {name} | {'**yes**' if ok else f'no ({n_ok} of {len(vals)} rows)'} | {_span(vals)} |")

    def ratios(rs: list[Row], peers: Sequence[str]) -> list[tuple[float, str]]:
        vals = []
        for r in rs:
            got = [x for p in peers if (x := r.ratio(p)) is not None]
            if got:
                vals.append((min(got), f"{r.case} eps {_eps(r.eps)}"))
        return vals

    add("CROWN >= 10x auto_LiRPA, batch 32", 10, ratios(rows("crown", 32), ["auto_LiRPA"]))
    add("CROWN >= 3x the fastest same-bound peer, batch 32", 3,
        ratios(rows("crown", 32), ["auto_LiRPA", "torch-reference"]))
    add("CROWN >= 5x auto_LiRPA, batch 1", 5, ratios(rows("crown", 1), ["auto_LiRPA"]))
    add("IBP >= 2x auto_LiRPA, batch 1", 2, ratios(rows("ibp", 1), ["auto_LiRPA"]))
    floor = [t for t in rep.others if t.impl == "gemm-floor" and t.case == "mnist-mlp-3x1024" and t.batch == 32]
    ibp = [r for r in rows("ibp", 32) if r.case == "mnist-mlp-3x1024"]
    if floor and ibp:
        f = min(t.median_s for t in floor)
        worst = max(r.fastcert_s() or 0.0 for r in ibp)
        ok = worst <= 1.3 * f
        out.append(f"| IBP within 1.3x of the GEMM floor, mnist-mlp-3x1024 batch 32 | {'**yes**' if ok else 'no'} | "
                   f"{worst * 1e3:.2f} ms vs {f * 1e3:.2f} ms ({worst / f:.2f}x) |")
    add("(not a target) KW vs convex_adversarial, batch 32", 1, ratios(rows("kw", 32), ["convex_adversarial"]))
    add("(not a target) KW vs convex_adversarial, batch 1", 1, ratios(rows("kw", 1), ["convex_adversarial"]))
    return "\n".join(out) + "\n"


def plot(rep: Report, path: Path) -> Path:
    """Chart of fastcert's speed-up over each peer (PNG, matplotlib Agg).

    One panel per batch size, side by side, sharing the rows: one group of horizontal bars per
    (case, method, eps), one bar per peer that ran, log x axis; bars grow from the 1x line (to the
    right: fastcert faster), the ratio written at the end of each bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    batches = sorted({r.batch for r in rep.rows if r.fastcert_s() is not None})
    peers = [p for p in rep.peers if any(r.ratio(p) is not None for r in rep.rows)]
    colors = {p: PEER_COLORS.get(p, f"C{3 + i}") for i, p in enumerate(peers)}
    # rows of the chart: (case, method, eps) with at least one ratio; the peers shown in that group
    groups: dict[tuple[str, str, float], list[str]] = {}
    for r in rep.rows:
        shown = [p for p in peers if r.ratio(p) is not None]
        if shown:
            g = groups.setdefault((r.case, r.method, r.eps), [])
            g += [p for p in shown if p not in g]
    for g in groups.values():
        g.sort(key=peers.index)
    by_key = {r.key: r for r in rep.rows}
    bar_h, gap = 1.0, 0.8
    y0: dict[tuple[str, str, float], float] = {}
    y = 0.0
    for k, g in groups.items():
        y0[k] = y
        y += bar_h * len(g) + gap
    height = max(2.8, 0.16 * y + 1.4)
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(6.0 * max(1, len(batches)) + 3.2, height),
                             sharey=True, squeeze=False, layout="constrained")
    ratios = [r.ratio(p) for r in rep.rows for p in peers if r.ratio(p) is not None]
    lo, hi = min([0.5, *ratios]) / 2.5, max([2.0, *ratios]) * 3.0
    for ax, b in zip(axes[0], batches or [None]):
        for k, g in groups.items():
            r = by_key.get((k[0], k[1], b, k[2])) if b is not None else None
            for j, p in enumerate(g):
                v = r.ratio(p) if r is not None else None
                yc = y0[k] + bar_h * (j + 0.5)
                if v is None:
                    ax.text(lo * 1.15, yc, "n/a", va="center", ha="left", fontsize=7, color="gray")
                    continue
                # bars grow from the 1x line: right = fastcert faster, left = the peer faster
                ax.barh(yc, v - 1.0, height=bar_h * 0.85, left=1.0, color=colors[p], zorder=2)
                ax.text(v * 1.08 if v >= 1 else v / 1.08, yc, _x(v), va="center", ha="left" if v >= 1 else "right",
                        fontsize=7, zorder=3)
        prev_case = None
        for k, g in groups.items():  # a rule between cases
            if prev_case is not None and k[0] != prev_case:
                ax.axhline(y0[k] - gap / 2, color="gray", lw=0.6, alpha=0.6)
            prev_case = k[0]
        ax.axvline(1.0, color="black", lw=1.2, zorder=3)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.grid(axis="x", which="major", alpha=0.35, zorder=0)
        ax.set_title(f"batch {b}" if b is not None else "no data", fontweight="bold")
        ax.set_xlabel("speed-up of fastcert (peer time / fastcert time)")
        ax.tick_params(axis="y", length=0)
    ax0 = axes[0, 0]
    ax0.set_yticks([y0[k] + bar_h * len(g) / 2 for k, g in groups.items()])
    ax0.set_yticklabels([f"{k[0]}  {k[1]}  eps {_eps(k[2])}" for k in groups], fontsize=8)
    ax0.set_ylim(y, -gap / 2)
    title = "fastcert speed-up over the peers (median time per bounds call; right of 1x: fastcert faster)"
    if peers:  # the title as the legend's title: constrained layout keeps the two from overlapping
        leg = fig.legend(handles=[Patch(color=colors[p], label=p) for p in peers], loc="outside upper center",
                         ncol=len(peers), frameon=False, fontsize=9, title=title, title_fontsize=11)
        leg.get_title().set_fontweight("bold")
    else:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m benches.report``)."""
    ap = argparse.ArgumentParser(prog="python -m benches.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", type=Path, help="pytest-benchmark JSON (default: newest under .benchmarks/)")
    ap.add_argument("--benchmark-json", dest="json_opt", type=Path, help="same as the positional argument")
    ap.add_argument("--md", type=Path, help="write the Markdown table here instead of stdout")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "benchmarks.png", help="chart (default: %(default)s)")
    ap.add_argument("--no-png", action="store_true", help="do not draw the chart")
    args = ap.parse_args(argv)
    src = args.json or args.json_opt
    try:
        src = src or newest_json()
        rep = load(src)
    except (OSError, ValueError) as exc:
        print(f"benches.report: {exc}", file=sys.stderr)
        return 2
    if rep.ignored:
        print(f"benches.report: ignored {rep.ignored} benchmark(s) without extra_info['impl']", file=sys.stderr)
    md = markdown(rep) + "\n### Issue #3 targets against this run\n\n" + targets(rep)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
        print(f"wrote {args.md}", file=sys.stderr)
    else:
        sys.stdout.write(md)
    if not args.no_png:
        print(f"wrote {plot(rep, args.png)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
