"""Benches collection: a correctness-only run (``--benchmark-disable``, as CI runs them) deselects the batch-32
variants of the alpha-CROWN bench, which in that mode would repeat the batch-1 variant's check and run on the
same single sample (they are kept, and timed, whenever benchmarks are enabled)."""

from __future__ import annotations

from typing import Any


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if not config.getoption("benchmark_disable", False):
        return
    keep, drop = [], []
    for it in items:
        (drop if "test_alpha_crown_speed[" in it.nodeid and "-b32-" in it.nodeid else keep).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
