"""fastcert's own thread pool (csrc/pool.cpp) and ``fastcert._ext.torch_serial``: results independent of the
thread count, workers computing in the caller's floating-point environment, thread settings restored."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastcert
from fastcert._ext import _C, torch_serial

N_PAR = (1 << 18) + 4099  # above the kernels' parallel threshold, not a multiple of any grain


def _prep(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
    c, r, h = np.empty_like(l), np.empty_like(l), np.empty_like(l)
    _C.interval_prep(l, u, c, r, h)
    return c, r, h


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_parallel_loops_equal_serial(threads: int) -> None:
    rng = np.random.default_rng(0)
    l = rng.standard_normal(N_PAR)
    u = l + rng.random(N_PAR)
    prev = _C.set_pool_threads(1)
    try:
        ref = _prep(l, u)
        _C.set_pool_threads(threads)
        assert _C.omp_max_threads() == threads
        got = _prep(l, u)
    finally:
        _C.set_pool_threads(prev)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_bounds_do_not_depend_on_the_thread_count(threads: int) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 300), torch.nn.ReLU(),
                            torch.nn.Linear(300, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10)).double().eval()
    x = torch.rand(24, 64, dtype=torch.float64)
    prev = _C.set_pool_threads(1)
    try:
        ref = fastcert.bounds(m, x, 0.02, method="crown")
        _C.set_pool_threads(threads)
        got = fastcert.bounds(m, x, 0.02, method="crown")
    finally:
        _C.set_pool_threads(prev)
    assert torch.equal(ref.lower, got.lower) and torch.equal(ref.upper, got.upper)


def test_workers_compute_in_the_callers_floating_point_environment() -> None:
    """Pool workers created while flush-to-zero was on must not keep it: each job carries the caller's
    environment. (Under OpenMP the workers kept the mode they were created with.) Child process: the
    pool is created there under flush-to-zero."""
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from fastcert._ext import _C
        if not torch.set_flush_denormal(True):
            print("NOFTZ"); raise SystemExit
        _C.set_pool_threads(2)
        n = {N_PAR}
        l = np.zeros(n); u = np.full(n, 4 * 5e-324)
        c = np.empty(n); r = np.empty(n); h = np.empty(n)
        _C.interval_prep(l, u, c, r, h)          # starts the pool's workers, under flush-to-zero
        torch.set_flush_denormal(False)
        _C.interval_prep(l, u, c, r, h)          # (u - l) / 2 = 2 * 5e-324: subnormal, flushed under FTZ
        print("OK" if (c == 2 * 5e-324).all() else "FLUSHED %d" % int((c == 0).sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    res = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    if res == "NOFTZ":  # pragma: no cover - CPU without flush-to-zero
        pytest.skip("this CPU cannot flush denormals")
    assert res == "OK", res


def test_torch_serial_restores_and_nests() -> None:
    n0 = torch.get_num_threads()
    prev = _C.set_pool_threads(0)
    _C.set_pool_threads(prev)
    with torch_serial():
        assert torch.get_num_threads() == 1
        assert _C.omp_max_threads() == n0  # the kernels keep the caller's count
        with torch_serial():
            assert torch.get_num_threads() == 1
            assert _C.omp_max_threads() == n0
        assert _C.omp_max_threads() == n0
    assert torch.get_num_threads() == n0
    assert _C.set_pool_threads(prev) == prev
    with pytest.raises(RuntimeError):
        with torch_serial():
            raise RuntimeError("inside")
    assert torch.get_num_threads() == n0


def _idle_cpu_seconds(window: float = 0.15) -> float:
    """Process CPU time (all threads) spent while the calling thread sleeps for ``window`` seconds."""
    import time

    c0 = time.process_time()
    time.sleep(window)
    return time.process_time() - c0


def test_burst_workers_sleep_after_the_burst_and_after_its_polling_window() -> None:
    """A burst (``_C.pool_burst``, opened by ``torch_serial`` around each bound computation) keeps idle workers
    polling between kernels, but never for long: ~2 ms after their last job even while the burst is open, ~10 us
    once it is closed. Workers that kept spinning would cost a whole core each while the process does nothing:
    measured here as process CPU time while the caller sleeps (a spinning worker: ~0.15 s in 0.15 s)."""
    rng = np.random.default_rng(1)
    l = rng.standard_normal(N_PAR)
    u = l + 1
    prev = _C.set_pool_threads(3)
    try:
        _C.pool_burst(True)
        try:
            ref = _prep(l, u)  # a parallel job: the workers poll after it
            _C.pool_burst(True)  # bursts nest
            _C.pool_burst(False)
            got = _prep(l, u)
            busy = _idle_cpu_seconds()  # the burst is still open: the workers stop polling ~2 ms after the job
        finally:
            _C.pool_burst(False)
        _prep(l, u)
        idle = _idle_cpu_seconds()  # closed
    finally:
        _C.set_pool_threads(prev)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
    assert busy < 0.05, f"pool workers used {busy:.3f} s of CPU in 0.15 s with a burst open and no job"
    assert idle < 0.05, f"pool workers used {idle:.3f} s of CPU in 0.15 s after the burst closed"


def test_torch_serial_opens_and_closes_a_burst() -> None:
    """Every computation bracketed by ``torch_serial`` closes its burst, also when it raises: afterwards the
    workers sleep (CPU time of the idle process ~0)."""
    prev = _C.set_pool_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with torch_serial():
                _prep(np.zeros(N_PAR), np.ones(N_PAR))
                raise RuntimeError("inside")
        _prep(np.zeros(N_PAR), np.ones(N_PAR))
        idle = _idle_cpu_seconds()
    finally:
        _C.set_pool_threads(prev)
    assert idle < 0.05, f"pool workers used {idle:.3f} s of CPU in 0.15 s after torch_serial returned"
