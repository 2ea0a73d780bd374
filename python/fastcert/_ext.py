"""Loads the compiled core ``fastcert._C`` once, with a clear error when it is missing."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

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
    global _BLAS
    _BLAS = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    # OpenBLAS's own thread pool measured 10-400x slower than one thread on this 2-core class of
    # machine (wake-up latency against our OpenMP threads; see BENCHMARKS.md), so fastcert's BLAS
    # runs single-threaded unless FASTCERT_BLAS_THREADS says otherwise. This touches only the
    # scipy-openblas32 copy that fastcert links, not numpy's or torch's BLAS.
    set_blas_threads(int(os.environ.get("FASTCERT_BLAS_THREADS", "1")))


_BLAS = None


def set_blas_threads(n: int) -> None:
    """Number of threads of fastcert's OpenBLAS (default 1; env FASTCERT_BLAS_THREADS)."""
    if n < 1:
        raise ValueError("set_blas_threads: n must be >= 1")
    assert _BLAS is not None
    _BLAS.scipy_openblas_set_num_threads(ctypes.c_int(n))


_preload_openblas()
try:
    from fastcert import _C  # noqa: E402
except ImportError as exc:  # pragma: no cover - install-time error
    raise ImportError(f"fastcert's compiled core (fastcert._C) could not be imported: {exc}\n{_REBUILD}") from exc


def build_info() -> dict:
    """What the compiled core was built with: BLAS, OpenMP, CUDA, compiler."""
    info = dict(_C.build_info())
    assert _BLAS is not None
    info["blas_threads"] = int(_BLAS.scipy_openblas_get_num_threads())
    return info


@contextlib.contextmanager
def torch_serial() -> Iterator[None]:
    """Run a bound computation's torch operations on one thread; the core's kernels keep the caller's
    thread count (``torch.get_num_threads()``) on fastcert's own pool.

    Why: torch's OpenMP workers spin-wait after each parallel torch operation unless the user exported
    ``OMP_WAIT_POLICY=PASSIVE`` before torch started; next to them fastcert's pool (and on a busy
    machine, other processes) lose their cores, and a preempted team member stalls the team for a
    scheduler tick. The torch operations of a bound computation are small elementwise steps and copies
    between the kernels, so one thread costs them little, and then no torch worker is woken. Only the
    calling thread's setting changes (OpenMP's thread count is a per-thread setting), and it is restored
    on exit; nested uses keep the outer count. The computation is also a burst of the pool
    (``_C.pool_burst``): its idle workers keep polling through the short Python steps between the kernels
    (at most ~2 ms after the last kernel) instead of falling asleep and taking tens of microseconds to wake."""
    import torch

    prev = _C.set_pool_threads(0)
    n = prev if prev > 0 else torch.get_num_threads()
    _C.set_pool_threads(n)
    if n > 1:
        torch.set_num_threads(1)
    _C.pool_burst(True)
    try:
        yield
    finally:
        _C.pool_burst(False)
        if n > 1:
            torch.set_num_threads(n)
        _C.set_pool_threads(prev)


__all__ = ["_C", "build_info", "set_blas_threads", "torch_serial"]
