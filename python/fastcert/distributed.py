"""Data-set scale certification past one process: the robustness task split into batches over Ray workers
(issue #13 point 5).

Each worker is a Ray actor that loads the network once (from the same ``--model`` spec the single-process
run reads) and certifies the batches it is sent with :func:`fastcert.tasks.robustness_batch`, the function
the single-process run calls on the same batch boundaries: so the results are exactly the single-process
results. Rows stream back as batches finish (a progress bar over images), and are printed in image order.
With no address a local Ray is started with one CPU per worker and stopped afterwards; with an address
(``ray://host:10001`` or ``auto``) the run joins that cluster. Ray is an optional dependency
(``pip install fastcert[ray]``).
"""

from __future__ import annotations

import sys
import time
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


def run_robustness_ray(cfg: TaskConfig, address: str | None = None, workers: int = 2, out: TextIO = sys.stdout,
                       progress: bool = True) -> dict[str, Any]:
    """The robustness task over ``workers`` Ray actors (a local Ray when ``address`` is None); the same rows and
    summary as :func:`fastcert.tasks.run_robustness`, plus ``workers`` and ``ray_address`` in the summary."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    resolve(cfg)
    ray = _ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
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
    finally:
        if started:
            ray.shutdown()


__all__ = ["run_robustness_ray"]
