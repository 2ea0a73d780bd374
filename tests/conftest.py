"""Test-session settings. OMP_WAIT_POLICY must be set before any OpenMP runtime starts: with GNU
OpenMP's default spin-wait, kernels on this shared 2-core machine stall for scheduler ticks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (shared_data, strategies)

import pytest  # noqa: E402

try:  # hypothesis profile: deterministic, no deadline (the first call of a kernel may be slow)
    from hypothesis import settings

    settings.register_profile("fastcert", derandomize=True, deadline=None, print_blob=True)
    settings.load_profile("fastcert")
except ImportError:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine (cuda tests run only where one exists)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
