"""Speed of the differentiable bounds and of alpha-CROWN against auto_LiRPA 0.3 (issue #11 point 4).

- *forward + backward* of the IBP and CROWN-IBP bounds, as a training step computes them: the margin
  lower bounds ``lb [B, 9]`` of the case's network at batch 32 and 128, ``loss = lb.sum()``, and the
  gradients of the loss w.r.t. every parameter. fastcert: ``fastcert.differentiable_bounds(...,
  bound_upper=False)``; auto_LiRPA: ``BoundedModule.compute_bounds(..., bound_upper=False)`` then
  ``torch.autograd.grad`` (the lower bound alone on both sides). Checked before timing: the two bounds
  and the two gradients agree within 1e-4 of their largest magnitude (float32; the same bound).
- *alpha-CROWN*, 20 iterations: ``fastcert.bounds(method="alpha-crown")`` (optimization, then the
  certified bound with the optimized slopes) against auto_LiRPA's ``compute_bounds(method="alpha-CROWN",
  bound_upper=False)`` with ``optimize_bound_args={"iteration": 20}`` and
  ``bound_opts={'sparse_features_alpha': False, 'sparse_spec_alpha': False}`` (``../shared/PEERS.md``).
  Checked before timing: fastcert's certified lower bound is at least auto_LiRPA's nominal one on average
  (within 2e-5 of the largest magnitude), and no entry is more than 1e-3 of it below (the two float32 Adam
  trajectories do not end at the same point on every entry).

Everything in float32 on the synthetic cases of ``benches/cases.py``; auto_LiRPA skipped with the reason
when it does not import. Run (timings; then read ``.benchmarks/issue11.json``, see BENCHMARKS.md):

    OMP_WAIT_POLICY=PASSIVE python -m pytest benches/bench_diff.py --benchmark-only \
        --benchmark-json=.benchmarks/issue11.json

CI runs every case once with ``--benchmark-disable`` on 2 samples (correctness only).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import fastcert
import numpy as np
import pytest
import torch

from benches import peers
from benches.cases import CASES

DIFF_CASES = ("mnist-mlp-3x100", "mnist-mlp-6x256", "mnist-cnn-kw", "cifar-cnn-small")
ALPHA_CASES = ("mnist-mlp-3x100", "mnist-mlp-6x256", "mnist-cnn-kw")
EPS = 0.01
ALPHA_EPS = {"mnist-mlp-3x100": 0.02, "mnist-mlp-6x256": 0.01, "mnist-cnn-kw": 0.01}
IMPLS = ("fastcert", "auto_LiRPA")


def _disabled(config: Any) -> bool:
    return bool(config.getoption("benchmark_disable", False))


@functools.cache
def _case(case: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model, inputs = CASES[case]()
    model = model.float().eval()
    x = inputs(batch).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, peers.margin_spec(y, 10).float()


def _lirpa_module(model: torch.nn.Module, x: torch.Tensor, extra: dict | None = None) -> Any:
    ok, reason = peers.lirpa_status()
    if not ok:
        pytest.skip(reason)
    from auto_LiRPA import BoundedModule

    opts = dict(peers.LIRPA_BOUND_OPTS)
    opts.update(extra or {})
    return BoundedModule(model, torch.zeros_like(x), bound_opts=opts, device="cpu")


def _fastcert_step(model: torch.nn.Module, x: torch.Tensor, C: torch.Tensor, method: str):
    params = list(model.parameters())

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        lb, _ = fastcert.differentiable_bounds(model, x, EPS, method=method, C=C, bound_upper=False)
        return lb.detach(), list(torch.autograd.grad(lb.sum(), params))

    return step


def _lirpa_step(model: torch.nn.Module, x: torch.Tensor, C: torch.Tensor, method: str):
    bm = _lirpa_module(model, x)  # first: it applies the import shims
    from auto_LiRPA import BoundedTensor, PerturbationLpNorm

    params = list(model.parameters())  # BoundedModule shares the model's parameters
    name = {"ibp": "IBP", "crown-ibp": "CROWN-IBP"}[method]

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        xt = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=EPS))
        lb, _ = bm.compute_bounds(x=(xt,), C=C, method=name, bound_upper=False)
        return lb.detach(), list(torch.autograd.grad(lb.sum(), params))

    return step


def _close(a: torch.Tensor, b: torch.Tensor, rel: float, what: str) -> None:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    err = float((a - b).abs().max())
    assert err <= rel * scale, f"{what}: max difference {err:.3g} > {rel} x {scale:.3g}"


@functools.cache
def _checked_diff(case: str, batch: int, method: str) -> bool:
    """fastcert's and auto_LiRPA's bound and gradients agree (the same computation is timed)."""
    model, x, C = _case(case, batch)
    f_lb, f_g = _fastcert_step(copy.deepcopy(model), x, C, method)()
    l_lb, l_g = _lirpa_step(copy.deepcopy(model), x, C, method)()
    _close(f_lb, l_lb, 1e-4, f"{case} {method} bound")
    for i, (a, b) in enumerate(zip(f_g, l_g)):
        _close(a, b.reshape(a.shape), 1e-4, f"{case} {method} gradient of parameter {i}")
    return True


def _diff_params() -> list[Any]:
    return [pytest.param(c, m, b, i, id=f"{c}-{m}-b{b}-{i}")
            for c in DIFF_CASES for m in ("ibp", "crown-ibp") for b in (32, 128) for i in IMPLS]


@pytest.mark.parametrize(("case", "method", "batch", "impl"), _diff_params())
def test_forward_backward_speed(benchmark: Any, request: Any, case: str, method: str, batch: int,
                                impl: str) -> None:
    if _disabled(request.config):
        batch = 2
    _checked_diff(case, batch, method)
    model, x, C = _case(case, batch)
    m = copy.deepcopy(model)
    step = (_fastcert_step if impl == "fastcert" else _lirpa_step)(m, x, C, method)
    if not _disabled(request.config):
        step()  # warm-up (a correctness-only run, --benchmark-disable, calls it once below)
    benchmark.extra_info.update(case=case, method=method, batch=batch, impl=impl)
    benchmark.pedantic(step, rounds=5 if batch >= 128 else 10, warmup_rounds=1)


ALPHA = fastcert.BoundOptions(alpha=fastcert.AlphaOptions(iterations=20))


def _fastcert_alpha(model: torch.nn.Module, x: torch.Tensor, C: torch.Tensor, eps: float):
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    net = fastcert.Network.from_torch(m, tuple(x.shape[1:]))
    return lambda: fastcert.bounds(net, x, eps, method="alpha-crown", C=C, options=ALPHA).lower


def _lirpa_alpha(model: torch.nn.Module, x: torch.Tensor, C: torch.Tensor, eps: float):
    bm = _lirpa_module(copy.deepcopy(model), x, {"optimize_bound_args": {"iteration": 20}})
    from auto_LiRPA import BoundedTensor, PerturbationLpNorm


    def run() -> torch.Tensor:
        xt = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=eps))
        lb, _ = bm.compute_bounds(x=(xt,), C=C, method="alpha-CROWN", bound_upper=False)
        return lb.detach()

    return run


@functools.cache
def _checked_alpha(case: str, batch: int) -> bool:
    model, x, C = _case(case, batch)
    eps = ALPHA_EPS[case]
    ours = _fastcert_alpha(model, x, C, eps)()
    theirs = _lirpa_alpha(model, x, C, eps)()
    scale = float(theirs.abs().max())
    worst = float((theirs - ours).max())
    mean = float((ours - theirs).mean())
    # the same optimization from the same start: the mean at least as tight; single entries may differ by
    # where the two Adam trajectories (float32, different summation orders) end (measured: up to 2.4e-4 of
    # the scale on mnist-mlp-3x100, see BENCHMARKS.md)
    assert mean >= -2e-5 * scale, f"{case}: auto_LiRPA's alpha-CROWN tighter on average by {-mean:.3g}"
    assert worst <= 1e-3 * scale, f"{case}: auto_LiRPA's alpha-CROWN tighter by {worst:.3g} (scale {scale:.3g})"
    return True


def _alpha_params() -> list[Any]:
    return [pytest.param(c, b, i, id=f"{c}-b{b}-{i}") for c in ALPHA_CASES for b in (1, 32) for i in IMPLS]


@pytest.mark.parametrize(("case", "batch", "impl"), _alpha_params())
def test_alpha_crown_speed(benchmark: Any, request: Any, case: str, batch: int, impl: str) -> None:
    if _disabled(request.config):
        batch = 1  # correctness only (CI): batch 1 (benches/conftest.py deselects the b32 variants there)
    _checked_alpha(case, batch)
    model, x, C = _case(case, batch)
    run = (_fastcert_alpha if impl == "fastcert" else _lirpa_alpha)(model, x, C, ALPHA_EPS[case])
    if not _disabled(request.config):
        run()  # warm-up
    benchmark.extra_info.update(case=case, batch=batch, impl=impl)
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
