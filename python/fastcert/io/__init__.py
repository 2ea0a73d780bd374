"""Data loading helpers (datasets bundled with dependencies; no downloads)."""

from __future__ import annotations

from fastcert.io.datasets import load_digits_tensors

__all__ = ["load_digits_tensors"]
