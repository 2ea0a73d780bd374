"""Input/output: datasets bundled with dependencies (no downloads), ONNX networks, VNN-LIB specs."""

from __future__ import annotations

from fastcert.io.datasets import load_digits_tensors
from fastcert.io.onnx_import import load_onnx
from fastcert.io.vnnlib import check_counterexample, load_vnnlib, read_counterexample

__all__ = ["check_counterexample", "load_digits_tensors", "load_onnx", "load_vnnlib", "read_counterexample"]
