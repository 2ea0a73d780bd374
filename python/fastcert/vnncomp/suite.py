"""``fastcert bench-suite``: run every instance of a VNN-COMP benchmark folder and compare with the
published verdicts and with the competition tools' own results.

Inputs, all from the benchmark folder of ``instances.csv`` (the layout of ``../shared/data``):

* ``instances.csv``: ``onnx,vnnlib,timeout_s`` rows, paths relative to the folder (``X`` or ``X.gz``);
* ``verdicts.csv`` (optional): the published verdict per instance (``sat`` / ``unsat`` / ...);
* ``../results_csv/*.csv`` (optional): one file per competition tool with rows
  ``category,onnx,vnnlib,prep_time,result,run_time``; the rows of this benchmark (category = the folder
  name) on the instances run are summarised per tool. ``holds`` / ``unsat`` count as unsat,
  ``violated`` / ``sat`` as sat; a tool's time is its ``run_time`` column (the competition's own
  measurement on its own hardware, so compare orders of magnitude, not ratios).

Every instance is solved in the same process (:func:`fastcert.vnncomp.solve_instance`), each network
loaded once; ``startup_s`` per row is the time to load that instance (0-ish for a network already
loaded, plus parsing the specification). A verdict counts as *solved* when it is sat or unsat and came
within the (scaled) time limit. A *contradiction* is a sat answer on a published unsat instance or the
reverse; fastcert's sat answers carry a re-checked counterexample, so a contradiction there points at
the published verdict (2021 verdicts were not checked) as much as at fastcert, and is reported loudly
either way.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fastcert.vnncomp.instance import load_instance
from fastcert.vnncomp.pipeline import solve_instance

__all__ = ["InstanceRow", "SuiteProgress", "SuiteResult", "format_summary", "read_instances", "run_suite", "solve_row",
           "suite_plan", "summarize", "write_rows"]

_SAT = {"sat", "violated"}
_UNSAT = {"unsat", "holds"}


def _key(path: str) -> str:
    """A path as an instance key: forward slashes, no ``./``, no ``.gz``."""
    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.removesuffix(".gz")


@dataclass(frozen=True)
class InstanceRow:
    """One instance's outcome (a row of the results CSV)."""

    onnx: str
    vnnlib: str
    timeout_s: float
    verdict: str
    time_s: float
    startup_s: float
    published: str
    agrees: str  # "yes", "no" (a contradiction), "" (nothing to compare)
    solved: bool
    stage: str
    reason: str


@dataclass(frozen=True)
class SuiteResult:
    """Everything ``bench-suite`` reports. ``tools``: per competition tool, its summary on the same
    instances (see :func:`tool_summaries`)."""

    benchmark: str
    rows: list[InstanceRow]
    counts: dict[str, int]
    solved: int
    total_time_s: float
    median_time_s: float
    contradictions: list[InstanceRow]
    published: dict[str, int]
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout_scale: float = 1.0


def read_instances(csv_path: str | os.PathLike[str]) -> list[tuple[str, str, float]]:
    """``(onnx, vnnlib, timeout_s)`` rows of a VNN-COMP ``instances.csv`` (blank lines skipped)."""
    out = []
    with open(csv_path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{csv_path}:{n}: expected 'onnx,vnnlib,timeout' (3 columns), got {len(row)}")
            try:
                t = float(row[2])
            except ValueError:
                raise ValueError(f"{csv_path}:{n}: timeout {row[2]!r} is not a number") from None
            out.append((row[0].strip(), row[1].strip(), t))
    if not out:
        raise ValueError(f"{csv_path}: no instances")
    return out


def read_verdicts(folder: Path) -> dict[tuple[str, str], str]:
    """Published verdicts from ``folder/verdicts.csv`` (empty when absent)."""
    path = folder / "verdicts.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(_key(r["onnx"]), _key(r["vnnlib"])): r["verdict"].strip() for r in csv.DictReader(f)}


def tool_summaries(folder: Path, keys: set[tuple[str, str]],
                   verdicts: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
    """Per tool of ``folder/../results_csv/*.csv``, on the instances ``keys`` of this benchmark:
    ``n`` (rows found), ``solved``, ``sat``, ``unsat``, ``wrong`` (against a published sat/unsat),
    ``time_solved_s`` (sum of run_time over solved rows) and ``time_total_s`` (over all rows)."""
    rdir = folder.parent / "results_csv"
    if not rdir.is_dir():
        return {}
    cat = folder.name
    prefix = f"benchmarks/{cat}/"
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(rdir.glob("*.csv")):
        s = {"n": 0, "solved": 0, "sat": 0, "unsat": 0, "wrong": 0, "time_solved_s": 0.0, "time_total_s": 0.0}
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if len(row) < 6 or row[0].strip() != cat:
                    continue
                onnx, vnn = _key(row[1]), _key(row[2])
                onnx = onnx.split(prefix, 1)[-1]
                vnn = vnn.split(prefix, 1)[-1]
                if (onnx, vnn) not in keys:
                    continue
                res = row[4].strip().lower()
                try:
                    rt = float(row[5])
                except ValueError:
                    rt = 0.0
                s["n"] += 1
                s["time_total_s"] += rt
                v = "sat" if res in _SAT else "unsat" if res in _UNSAT else ""
                if v:
                    s["solved"] += 1
                    s[v] += 1
                    s["time_solved_s"] += rt
                    pub = verdicts.get((onnx, vnn), "")
                    if pub in ("sat", "unsat") and pub != v:
                        s["wrong"] += 1
        if s["n"]:
            out[path.stem] = s
    return out


def solve_row(folder: Path, onnx: str, vnn: str, timeout_s: float, verdicts: dict[tuple[str, str], str], *,
              timeout_scale: float = 1.0, seed: int = 0, use_mip: bool = True,
              cache: dict | None = None) -> InstanceRow:
    """One instance of the folder, solved and compared with its published verdict (``cache``: networks
    already loaded, shared across calls)."""
    limit_s = timeout_s * timeout_scale
    inst = load_instance(onnx, vnn, base=folder, cache={} if cache is None else cache)
    res = solve_instance(inst, limit_s, seed=seed, use_mip=use_mip)
    pub = verdicts.get((_key(onnx), _key(vnn)), "")
    agrees = ""
    if pub in ("sat", "unsat") and res.verdict in ("sat", "unsat"):
        agrees = "yes" if pub == res.verdict else "no"
    solved = res.verdict in ("sat", "unsat") and res.time_s <= limit_s
    return InstanceRow(onnx, vnn, limit_s, res.verdict, res.time_s, inst.load_s, pub, agrees, solved, res.stage,
                       res.reason)


def suite_plan(instances_csv: str | os.PathLike[str], limit: int | None = None) -> tuple[Path, list, dict]:
    """(the benchmark folder, its first ``limit`` instances, its published verdicts)."""
    path = Path(instances_csv)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}; pass a benchmark folder's instances.csv")
    return path.parent, read_instances(path)[: limit if limit else None], read_verdicts(path.parent)


class SuiteProgress:
    """The progress bar of a suite run (verdict counts as postfix; contradictions printed at once)."""

    def __init__(self, folder: Path, n: int, progress: bool, what: str = "") -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.counts = {"sat": 0, "unsat": 0, "timeout": 0, "unknown": 0}
        self.bar = tqdm(total=n, desc=f"bench-suite {folder.name}{what}", unit="inst", file=sys.stderr,
                        disable=not progress)

    def add(self, row: InstanceRow) -> None:
        self.counts[row.verdict] += 1
        if row.agrees == "no":
            self.tqdm.write(f"!!! CONTRADICTION: {row.onnx} {row.vnnlib}: fastcert says {row.verdict}, published "
                            f"{row.published} ({row.reason})", file=sys.stderr)
        c = self.counts
        self.bar.set_postfix(sat=c["sat"], unsat=c["unsat"], open=c["timeout"] + c["unknown"])
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_suite(instances_csv: str | os.PathLike[str], *, timeout_scale: float = 1.0, limit: int | None = None,
              seed: int = 0, use_mip: bool = True, progress: bool = True) -> SuiteResult:
    """Solve the instances of ``instances_csv`` (the first ``limit``), each with its timeout times
    ``timeout_scale``, and compare with the published verdicts and tools. See the module docstring."""
    folder, todo, verdicts = suite_plan(instances_csv, limit)
    cache: dict[tuple, tuple] = {}
    rows: list[InstanceRow] = []
    bar = SuiteProgress(folder, len(todo), progress)
    for onnx, vnn, t in todo:
        rows.append(solve_row(folder, onnx, vnn, t, verdicts, timeout_scale=timeout_scale, seed=seed,
                              use_mip=use_mip, cache=cache))
        bar.add(rows[-1])
    bar.close()
    return summarize(folder, rows, verdicts, timeout_scale)


def summarize(folder: Path, rows: list[InstanceRow], verdicts: dict[tuple[str, str], str],
              timeout_scale: float) -> SuiteResult:
    """The :class:`SuiteResult` of the rows (in instance order)."""
    counts = {"sat": 0, "unsat": 0, "timeout": 0, "unknown": 0}
    for r in rows:
        counts[r.verdict] += 1
    times = [r.time_s for r in rows]
    keys = {(_key(r.onnx), _key(r.vnnlib)) for r in rows}
    published: dict[str, int] = {}
    for k in keys:
        v = verdicts.get(k, "")
        published[v or "none"] = published.get(v or "none", 0) + 1
    return SuiteResult(
        benchmark=str(folder), rows=rows, counts=counts, solved=sum(r.solved for r in rows),
        total_time_s=sum(times), median_time_s=statistics.median(times) if times else 0.0,
        contradictions=[r for r in rows if r.agrees == "no"], published=published,
        tools=tool_summaries(folder, keys, verdicts), timeout_scale=timeout_scale,
    )


def write_rows(res: SuiteResult, path: str | os.PathLike[str]) -> None:
    """The per-instance rows as CSV (header: the :class:`InstanceRow` fields)."""
    names = list(InstanceRow.__dataclass_fields__)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in res.rows:
            d = asdict(r)
            d["time_s"] = f"{r.time_s:.3f}"
            d["startup_s"] = f"{r.startup_s:.3f}"
            w.writerow(d)


def format_summary(res: SuiteResult, out: TextIO) -> None:
    """A human-readable summary: fastcert's counts beside each competition tool's on the same instances."""
    n = len(res.rows)
    pub = ", ".join(f"{k} {v}" for k, v in sorted(res.published.items()))
    print(f"benchmark {res.benchmark}: {n} instances (published: {pub})", file=out)
    c = res.counts
    print(f"fastcert (time limits x{res.timeout_scale:g}): sat {c['sat']}, unsat {c['unsat']}, timeout "
          f"{c['timeout']}, unknown {c['unknown']}; solved {res.solved}/{n}; total {res.total_time_s:.1f} s, median "
          f"{res.median_time_s:.2f} s per instance", file=out)
    if res.tools:
        print(f"\n{'tool':20s} {'solved':>6s} {'sat':>4s} {'unsat':>5s} {'wrong':>5s} {'t_solved_s':>10s} "
              f"{'t_total_s':>10s}", file=out)
        ours = {"n": n, "solved": res.solved, "sat": c["sat"], "unsat": c["unsat"], "wrong": len(res.contradictions),
                "time_solved_s": sum(r.time_s for r in res.rows if r.solved), "time_total_s": res.total_time_s}
        for name, s in sorted([(f"fastcert (x{res.timeout_scale:g})", ours), *res.tools.items()], key=lambda kv: -kv[1]["solved"]):
            print(f"{name:20s} {s['solved']:6d} {s['sat']:4d} {s['unsat']:5d} {s['wrong']:5d} "
                  f"{s['time_solved_s']:10.1f} {s['time_total_s']:10.1f}", file=out)
        print("(tools: the competition's own run_time on its hardware and full time limits; 'wrong' = against "
              "the published verdict)", file=out)
    if res.contradictions:
        print(f"\n!!! {len(res.contradictions)} CONTRADICTION(S) WITH PUBLISHED VERDICTS:", file=out)
        for r in res.contradictions:
            print(f"!!!   {r.onnx} {r.vnnlib}: fastcert {r.verdict}, published {r.published} ({r.reason})", file=out)
    else:
        print("\nno contradiction with the published sat/unsat verdicts", file=out)


def suite_json(res: SuiteResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready summary (no per-instance rows; those go to ``--out``)."""
    d = {k: v for k, v in asdict(res).items() if k not in ("rows", "contradictions")}
    d["n"] = len(res.rows)
    d["contradictions"] = [asdict(r) for r in res.contradictions]
    d["time_unix"] = time.time()
    if extra:
        d.update(extra)
    return d
