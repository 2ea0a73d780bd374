"""The backward pass's reused scratch buffers (``linear_bounds._Workspace``) never leak one call's
values into another: interleaved calls on networks of different shapes, calls after
``fastcert.empty_cache()`` and calls from several threads at once all give the bounds of a call on a
fresh process state, bit for bit."""

from __future__ import annotations

import itertools
import threading

import fastcert
import pytest
import torch
from fastcert.algorithms import state
from torch import nn


def _mlp(seed: int, widths: list[int]) -> nn.Sequential:
    torch.manual_seed(seed)
    dims = [12, *widths]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], 5))
    return nn.Sequential(*layers).double()


def _cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(36, 7), nn.ReLU(), nn.Linear(7, 5)).double()


def _cases() -> list[tuple[nn.Module, torch.Tensor, float, str, str]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, model in enumerate([_mlp(0, [20, 20]), _mlp(1, [40, 8, 30]), _cnn(2), _mlp(3, [6])]):
        shape = (3, 2, 2) if isinstance(model[0], nn.Conv2d) else (12,)
        x = torch.rand(3 + i, *shape, generator=g, dtype=torch.float64)
        for method in ("crown", "fastlin", "crown-ibp"):
            for norm in ("inf", "2"):  # an L2 ball also back-substitutes the first layer's bounds
                out.append((model, x, 0.05 * (i + 1), method, norm))
    return out


def _run(case: tuple[nn.Module, torch.Tensor, float, str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    model, x, eps, method, norm = case
    r = fastcert.bounds(model, x, eps, method=method, norm=norm)
    return r.lower.clone(), r.upper.clone()


def test_interleaved_calls_match_fresh_state() -> None:
    cases = _cases()
    fresh = []
    for c in cases:
        fastcert.empty_cache()
        assert state.WS.bufs == {}
        fresh.append(_run(c))
    # now with the buffers kept (and grown / shrunk in use) across calls, in two different orders
    for order in (range(len(cases)), reversed(range(len(cases)))):
        for k in order:
            lo, up = _run(cases[k])
            assert torch.equal(lo, fresh[k][0]) and torch.equal(up, fresh[k][1]), k
    assert fastcert.empty_cache() > 0
    assert state.WS.bufs == {}


def test_results_do_not_alias_the_buffers() -> None:
    cases = _cases()
    r = fastcert.bounds(*cases[0][:3], method="crown", norm="2")
    lo, up = r.lower, r.upper
    keep = (lo.clone(), up.clone())
    for c in cases[1:]:
        _run(c)  # would overwrite any buffer the first result still pointed into
    assert torch.equal(lo, keep[0]) and torch.equal(up, keep[1])


@pytest.mark.parametrize("n_threads", [2, 4])
def test_threads_have_their_own_buffers(n_threads: int) -> None:
    cases = _cases()
    want = [_run(c) for c in cases]
    errors: list[str] = []

    def work(t: int) -> None:
        for rep in range(3):
            for k in range(len(cases)):
                kk = (k + t + rep) % len(cases)
                lo, up = _run(cases[kk])
                if not (torch.equal(lo, want[kk][0]) and torch.equal(up, want[kk][1])):
                    errors.append(f"thread {t} case {kk}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
