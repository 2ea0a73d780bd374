"""Data-set scale certification past one process: the robustness task split into batches, and VNN-COMP
benchmark folders (``fastcert bench-suite --ray``) split into instances, over Ray workers (issue #13 point 5).

Each worker is a Ray actor that loads the network once (from the same ``--model`` spec the single-process
run reads) and certifies the batches it is sent with :func:`fastcert.tasks.robustness_batch`, the function
the single-process run calls on the same batch boundaries: so the results are exactly the single-process
results. Rows stream back as batches finish (a progress bar over images), and are printed in image order.
With no address a local Ray is started with one CPU per worker and stopped afterwards; with an address
(``ray://host:10001`` or ``auto``) the run joins that cluster. Ray is an optional dependency
(``pip install fastcert[ray]``).

Suites: each actor keeps the networks it has loaded and is handed the next instance as soon as it is free;
an instance's verdict is the single-process one wherever it does not depend on the clock (a run close to
its time limit can end differently on a worker's one thread).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, TextIO

from fastcert.tasks import TaskConfig, batches, progress_bar, resolve, robustness_line, robustness_summary


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised where ray is absent
        raise RuntimeError("the Ray runner needs Ray: pip install 'fastcert[ray]' (or pip install ray)") from exc
    return ray


class _Worker:
    """One actor: the network and the data selection, loaded once."""

    def __init__(self, cfg_dict: dict[str, Any]) -> None:
        import torch

        from fastcert.tasks import prepare_task

        torch.set_num_threads(1)
        self.cfg = TaskConfig(**cfg_dict)
        self.model, self.x, self.y, self.mdesc, self.ddesc = prepare_task(self.cfg)

    def describe(self) -> tuple[str, str, int]:
        return self.mdesc, self.ddesc, len(self.x)

    def run(self, a: int, b: int) -> list[dict[str, Any]]:
        from fastcert.tasks import robustness_batch

        return robustness_batch(self.model, self.x[a:b], self.y[a:b], self.cfg, a)


@contextlib.contextmanager
def _session(address: str | None, workers: int) -> Iterator[Any]:
    """Ray, started locally with one CPU per worker (no address) or joined at ``address``; a Ray started
    here is stopped at the end."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    ray = _ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class _SuiteWorker:
    """One actor of a suite run: solves instances of one folder, keeping the networks it loaded."""

    def __init__(self, folder: str, verdicts: dict, timeout_scale: float, seed: int, use_mip: bool) -> None:
        import torch

        torch.set_num_threads(1)
        self.folder, self.verdicts = folder, verdicts
        self.kw = {"timeout_scale": timeout_scale, "seed": seed, "use_mip": use_mip}
        self.cache: dict = {}

    def run(self, onnx: str, vnn: str, timeout_s: float) -> Any:
        from pathlib import Path

        from fastcert.vnncomp.suite import solve_row

        return solve_row(Path(self.folder), onnx, vnn, timeout_s, self.verdicts, cache=self.cache, **self.kw)


def run_suite_ray(instances_csv: Any, *, timeout_scale: float = 1.0, limit: int | None = None, seed: int = 0,
                  use_mip: bool = True, progress: bool = True, address: str | None = None,
                  workers: int = 2) -> Any:
    """:func:`fastcert.vnncomp.suite.run_suite` over ``workers`` Ray actors (a local Ray when ``address`` is
    None): each instance on one actor, the next one handed to whichever actor is free; the rows come back in
    instance order."""
    from fastcert.vnncomp.suite import SuiteProgress, suite_plan, summarize

    folder, todo, verdicts = suite_plan(instances_csv, limit)
    with _session(address, workers) as ray:
        Actor = ray.remote(num_cpus=1)(_SuiteWorker)
        # an absolute folder: the actors may run elsewhere (on a cluster the files must exist on every node)
        actors = [Actor.remote(str(folder.resolve()), verdicts, timeout_scale, seed, use_mip) for _ in range(workers)]
        rows: dict[int, Any] = {}
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(todo))
        bar = SuiteProgress(folder, len(todo), progress, f" ({workers} Ray workers)")
        for actor in actors:
            if queue:
                k, job = queue.pop(0)
                pending[actor.run.remote(*job)] = (k, actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k, actor = pending.pop(ref)
                rows[k] = ray.get(ref)
                bar.add(rows[k])
                if queue:
                    k2, job = queue.pop(0)
                    pending[actor.run.remote(*job)] = (k2, actor)
        bar.close()
    return summarize(folder, [rows[k] for k in range(len(todo))], verdicts, timeout_scale)


def run_robustness_ray(cfg: TaskConfig, address: str | None = None, workers: int = 2, out: TextIO = sys.stdout,
                       progress: bool = True) -> dict[str, Any]:
    """The robustness task over ``workers`` Ray actors (a local Ray when ``address`` is None); the same rows and
    summary as :func:`fastcert.tasks.run_robustness`, plus ``workers`` and ``ray_address`` in the summary."""
    resolve(cfg)
    with _session(address, workers) as ray:
        t0 = time.perf_counter()
        Actor = ray.remote(num_cpus=1)(_Worker)
        actors = [Actor.remote(asdict(cfg)) for _ in range(workers)]
        mdesc, ddesc, n = ray.get(actors[0].describe.remote())
        bounds_ab = batches(n, cfg.batch)
        pending = {}
        for k, (a, b) in enumerate(bounds_ab):
            pending[actors[k % workers].run.remote(a, b)] = (a, b)
        done: dict[int, list[dict[str, Any]]] = {}
        bar = progress_bar(n, f"robustness ({workers} Ray workers)", progress)
        next_a = 0
        rows: list[dict[str, Any]] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                a, b = pending.pop(ref)
                done[a] = ray.get(ref)
                bar.update(b - a)
            while next_a in done:  # print in image order as soon as the next batch is in
                batch_rows = done.pop(next_a)
                for row in batch_rows:
                    rows.append(row)
                    print(robustness_line(row, cfg), file=out)
                next_a += len(batch_rows)
        bar.close()
        res = robustness_summary(rows, cfg, mdesc, ddesc, time.perf_counter() - t0, out)
        res["workers"] = workers
        res["ray_address"] = address
        return res


__all__ = ["run_robustness_ray", "run_suite_ray"]
