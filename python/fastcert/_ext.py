"""Loads the compiled core ``fastcert._C`` once, with a clear error when it is missing."""

from __future__ import annotations

import ctypes
import os

_REBUILD = (
    "Rebuild it from the repository root with:\n"
    "    pip install torch==2.13.0 && pip install .\n"
    "(or, for development, pip install --no-build-isolation -e .)"
)


def _preload_openblas() -> None:
    # The extension links libscipy_openblas.so from the scipy-openblas32 wheel (RPATH points
    # there); loading it explicitly first also works when the package was moved.
    try:
        import scipy_openblas32 as sob
    except ImportError as exc:  # pragma: no cover - install-time error
        raise ImportError("fastcert needs the 'scipy-openblas32' package at run time. " + _REBUILD) from exc
    path = os.path.join(sob.get_lib_dir(), sob.get_library(fullname=True))
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


_preload_openblas()
try:
    from fastcert import _C  # noqa: E402
except ImportError as exc:  # pragma: no cover - install-time error
    raise ImportError(f"fastcert's compiled core (fastcert._C) could not be imported: {exc}\n{_REBUILD}") from exc


def build_info() -> dict:
    """What the compiled core was built with: BLAS, OpenMP, CUDA, compiler."""
    return dict(_C.build_info())


__all__ = ["_C", "build_info"]
