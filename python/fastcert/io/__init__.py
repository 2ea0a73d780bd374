"""Input/output: datasets (bundled digits; MNIST / Fashion-MNIST IDX and CIFAR-10 binary readers for local
folders; no downloads), ONNX networks, VNN-LIB specs.

The names below are loaded on first use, so that importing one reader (e.g. the ONNX converter, which
:class:`fastcert.Network` uses) does not import the others."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"load_digits_tensors": "fastcert.io.datasets", "load_idx_dataset": "fastcert.io.datasets",
         "load_cifar10": "fastcert.io.datasets", "read_idx": "fastcert.io.datasets", "load_onnx": "fastcert.io.onnx_import",
         "check_counterexample": "fastcert.io.vnnlib", "load_vnnlib": "fastcert.io.vnnlib",
         "read_counterexample": "fastcert.io.vnnlib"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastcert.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
