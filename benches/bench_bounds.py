"""Speed of fastcert's bound methods against the peers, in the same process, on the same inputs (issue #3).

Cases (``benches/cases.py``) x batch {1, 32} x L-inf eps {0.01, 0.05} x method {ibp, crown, crown-ibp, kw};
implementations: fastcert, auto_LiRPA 0.3 (ibp / crown / crown-ibp), convex_adversarial's DualNetwork
(kw), and the plain-torch reference in ``fastcert.reference`` (all four), everything in float32.

Before anything is timed, the case's bounds are checked: fastcert in float64 contains the float64
reference and is within 1e-5 (relative) of it (rigorous rounding slack), fastcert in float32 (what is timed) contains it too, and every
peer's float32 bounds are within 1e-3 (relative to the largest bound) of the float64 reference, so all
the tools timed compute the same bound. The float64 checks use the batch's first 4 samples (every
tool's bounds of a sample do not depend on the rest of its batch); the peers are checked on the
whole batch they are timed on. A peer that cannot be imported is skipped with the reason.

With ``--benchmark-disable`` (CI) every case runs once on the first 2 samples of its batch: the
plain-torch reference needs tens of seconds per call on the CNN cases at batch 32.

Run (timings, about 15 minutes; then ``python -m benches.report``):

    OMP_WAIT_POLICY=PASSIVE python -m pytest benches/bench_bounds.py --benchmark-only \
        --benchmark-json=.benchmarks/issue3.json -p no:randomly

fastcert itself needs no ``OMP_WAIT_POLICY`` (``benches/wait_policy.py`` measures it with and without);
the variable is set here for the torch-based peers, whose OpenMP workers otherwise spin next to each
other on a busy machine (/work/shared/PEERS.md's fair-timing rule).

CI runs every case once with ``--benchmark-disable`` (correctness only).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import fastcert
import pytest
import torch
from fastcert._ext import _C
from fastcert.reference import crown as ref

from benches import peers, roofline
from benches.cases import CASES

METHODS = ("ibp", "crown", "crown-ibp", "kw")
BATCHES = (1, 32)
EPSS = (0.01, 0.05)
IMPLS = ("fastcert", "auto_LiRPA", "convex_adversarial", "torch-reference")
SUPPORTS = {"fastcert": METHODS, **peers.PEER_METHODS}
REF_METHOD = {"ibp": "ibp", "crown": "crown", "crown-ibp": "crown-ibp", "kw": "fastlin"}


def _params() -> list[Any]:
    out = []
    for case in CASES:
        for method in METHODS:
            for batch in BATCHES:
                for eps in EPSS:
                    for impl in IMPLS:
                        if method in SUPPORTS[impl]:
                            out.append(pytest.param(case, method, batch, eps, impl,
                                                    id=f"{case}-{method}-b{batch}-eps{eps}-{impl}"))
    return out


@functools.cache
def _model(case: str) -> tuple[Any, Any]:
    return CASES[case]()


@functools.cache
def _setup(case: str, batch: int) -> tuple[Any, torch.Tensor, torch.Tensor, fastcert.Network]:
    model, make_x = _model(case)
    x = make_x(batch).float().contiguous()
    with torch.no_grad():
        y = model(x).argmax(1)
    C = peers.margin_spec(y, 10).contiguous()
    return model, x, C, fastcert.Network.from_torch(model)


@functools.cache
def _checked(case: str, batch: int, eps: float, method: str) -> tuple[torch.Tensor, torch.Tensor, roofline.Work]:
    """Float64 reference bounds of the case, after checking fastcert against them; plus the work count."""
    model, x, C, net = _setup(case, batch)
    m64 = _double(model)
    x, C = x[:4], C[:4]
    with torch.no_grad():
        rl, ru = ref.bounds(m64, x.double(), eps, "inf", REF_METHOD[method], C.double())
    r64 = fastcert.bounds(net, x.double(), eps, method=method, C=C.double())
    assert (r64.lower <= rl).all() and (r64.upper >= ru).all(), "fastcert float64 does not contain the reference"
    scale = max(1.0, float(rl.abs().max()), float(ru.abs().max()))
    assert float((rl - r64.lower).abs().max()) <= 1e-5 * scale and float((r64.upper - ru).abs().max()) <= 1e-5 * scale
    r32 = fastcert.bounds(net, x, eps, method=method, C=C)
    assert (r32.lower.double() <= rl).all() and (r32.upper.double() >= ru).all(), "fastcert float32 is not sound"
    full_x, full_C = _setup(case, batch)[1:3]
    return rl, ru, roofline.count(net, full_x, eps, method, full_C)


@functools.cache
def _double(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).double()


def _runner(impl: str, case: str, batch: int) -> Any:
    net = _setup(case, batch)[3]
    if impl == "fastcert":
        def run(xx: torch.Tensor, eps: float, method: str, CC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            r = fastcert.bounds(net, xx, eps, method=method, C=CC)
            return r.lower, r.upper

        return run
    if impl == "auto_LiRPA":
        ok, reason = peers.lirpa_status()
        if not ok:
            pytest.skip(f"auto_LiRPA peer not available: {reason}")
    if impl == "convex_adversarial":
        ok, reason = peers.kw_status()
        if not ok:
            pytest.skip(f"convex_adversarial peer not available: {reason}")
    return _peer(impl, case, batch).bounds


@functools.cache
def _peer(impl: str, case: str, batch: int) -> Any:
    model, x, _, _ = _setup(case, batch)
    return peers.PEERS[impl](model, x)


def _rounds(f: Any) -> int:
    """Enough rounds for a stable median in about 3 s per benchmark (3 to 50; this call is the warm-up).

    A call over 5 s (the plain-torch reference on the CNNs at batch 32: 20-70 s) is timed once: its
    ratio to the others is large enough that one round does not change the verdict, and three would
    add about half an hour to the run. The JSON records the rounds of every row."""
    t0 = time.perf_counter()
    f()
    dt = time.perf_counter() - t0
    if dt > 5.0:
        return 1
    return int(min(50, max(3, 3.0 / max(dt, 1e-6))))


@pytest.mark.parametrize(("case", "method", "batch", "eps", "impl"), _params())
def test_bounds_speed(benchmark: Any, case: str, method: str, batch: int, eps: float, impl: str) -> None:
    rl, ru, work = _checked(case, batch, eps, method)
    run_batch = min(2, batch) if benchmark.disabled else batch
    _, x, C, _ = _setup(case, run_batch)
    run = _runner(impl, case, run_batch)
    if impl != "fastcert":  # the peer computes the same bound (to float32 rounding), on the whole batch
        pl, pu = run(x, eps, method, C)
        k = min(4, run_batch, rl.shape[0])
        fl = fastcert.bounds(_setup(case, run_batch)[3], x.double(), eps, method=method, C=C.double())
        scale = max(1.0, float(rl.abs().max()), float(ru.abs().max()))
        assert float((fl.lower[:k] - rl[:k]).abs().max()) <= 1e-5 * scale, "fastcert's bounds depend on the batch"
        scale = max(1.0, float(fl.lower.abs().max()), float(fl.upper.abs().max()))
        err = max(float((pl.double() - fl.lower).abs().max()), float((pu.double() - fl.upper).abs().max())) / scale
        assert err <= 1e-3, f"{impl} {method} differs from fastcert (float64, = the reference) by {err:.2e} (relative)"
    benchmark.extra_info.update(case=case, method=method, batch=batch, eps=eps, impl=impl, flops=work.flops,
                                bytes=work.bytes)
    f = functools.partial(run, x, eps, method, C)
    with torch.no_grad():
        rounds = 1 if benchmark.disabled else _rounds(f)
        benchmark.pedantic(f, rounds=rounds, iterations=1, warmup_rounds=0)


def _sgemm(M: int, K: int, N: int) -> Any:
    a = torch.rand(M, K, generator=torch.Generator().manual_seed(0))
    w = torch.rand(N, K, generator=torch.Generator().manual_seed(1))
    b = torch.zeros(N)
    out = torch.empty(M, N)
    av, wv, bv, ov = a, w, b, out
    return lambda: _C.dense_forward(av, wv, bv, ov)


def test_gemm_rate(benchmark: Any) -> None:
    """The machine's single-GEMM rate through fastcert's BLAS (2048^3 SGEMM): the roofline's ceiling."""
    n = 2048
    benchmark.extra_info.update(case="gemm-rate", impl="gemm", flops=2.0 * n ** 3, dtype="float32")
    f = _sgemm(n, n, n)
    benchmark.pedantic(f, rounds=1 if benchmark.disabled else 10, iterations=1,
                       warmup_rounds=0 if benchmark.disabled else 1)


def test_gemm_rate_all_cores(benchmark: Any) -> None:
    """The same SGEMM with OpenBLAS on every core: the ceiling for the kernels that split their rows
    over OpenMP threads (CROWN / KW back-substitution). The report uses the fastest GEMM rate."""
    import os

    n = 2048
    threads = os.cpu_count() or 1
    benchmark.extra_info.update(case="gemm-rate", impl="gemm", flops=2.0 * n ** 3, dtype="float32",
                                threads=threads)
    f = _sgemm(n, n, n)
    fastcert.set_blas_threads(threads)
    try:
        benchmark.pedantic(f, rounds=1 if benchmark.disabled else 10, iterations=1,
                           warmup_rounds=0 if benchmark.disabled else 1)
    finally:
        fastcert.set_blas_threads(1)


def test_ibp_gemm_floor(benchmark: Any) -> None:
    """The bare GEMMs IBP must do on mnist-mlp-3x1024 at batch 32 (W c and |W| r per layer but the last,
    C W for the last), same BLAS: the floor the IBP target is measured against."""
    _, x, _, net = _setup("mnist-mlp-3x1024", 32)
    layers = [L for L in net.layers_for(tuple(x.shape[1:])) if L.is_affine]
    fs = [_sgemm(32, L.n_in, L.n_out) for L in layers[:-1] for _ in range(2)]
    fs.append(_sgemm(32 * 9, layers[-1].n_out, layers[-1].n_in))  # the spec through the last layer
    flops = sum(2.0 * 2 * 32 * L.n_in * L.n_out for L in layers[:-1]) + 2.0 * 32 * 9 * 10 * 1024

    def floor() -> None:
        for f in fs:
            f()

    benchmark.extra_info.update(case="mnist-mlp-3x1024", method="ibp", batch=32, eps=0.0, impl="gemm-floor",
                                flops=flops, bytes=0.0)
    benchmark.pedantic(floor, rounds=1 if benchmark.disabled else 30, iterations=1,
                       warmup_rounds=0 if benchmark.disabled else 2)
