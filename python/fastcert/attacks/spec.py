"""The specification attack of the VNN-COMP / MIP pipeline (:mod:`fastcert.mip.property`): minimise
``max_i (A_i f(x) - b_i)`` over an input box, for many (box, conjunction) targets at once, with the one
PGD loop of :mod:`fastcert.attacks.search`; and :class:`TorchTwin`, the differentiable float64 twin of
a :class:`fastcert.Network` it attacks.

The steps are sign-gradient steps scaled per coordinate by the box's width, times a decaying schedule
(``"cosine"``: 0.25 -> 0.02, ``"linear"``: 0.21 -> 0.01); restart 0 starts at the box centre (or at the
point given), the others uniformly in the box. The values come from the search's own forward passes:
callers re-execute and prove every point they report (:func:`fastcert.confirm.confirm_point`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fastcert.attacks.region import Region
from fastcert.attacks.search import SCHEDULES, descend

__all__ = ["SpecAttackResult", "TorchTwin", "minimize_spec"]

Tensor = torch.Tensor


class TorchTwin(nn.Module):
    """A plain-torch (autograd) evaluation of a fastcert network's graph, for gradient attacks.

    ``forward(x: [N, *input_shape]) -> [N, n_out]``: :meth:`fastcert.graph.ir.Graph.torch_forward`, the
    graph's own forward in differentiable torch ops (fastcert's ``Network.forward`` runs compiled kernels
    without gradients). Equal up to rounding, so counterexamples are always re-checked with
    ``Network.forward``."""

    def __init__(self, net: object, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.graph = net.graph_for(self.input_shape)  # type: ignore[attr-defined]

    def forward(self, x: Tensor) -> Tensor:
        return self.graph.torch_forward(x)


@dataclass(frozen=True)
class SpecAttackResult:
    """Per target t: ``values[t]`` the lowest ``max_i (A_i f(x) - b_i)`` the search saw (float64, its own
    forward passes; inf when it saw none) at ``x[t]`` (float64 [n], in the target's box)."""

    values: np.ndarray
    x: list[np.ndarray]


def minimize_spec(model: nn.Module, shape: tuple[int, ...],
                  targets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], *, restarts: int,
                  steps: int, seed: int, deadline: float | None = None, schedule: str = "cosine",
                  starts: Sequence[np.ndarray | None] | None = None) -> SpecAttackResult:
    """PGD on every target ``(lo [n], hi [n], A [m, K], b [m])`` (m >= 1): minimise ``max_i (A_i f(x) - b_i)``
    over ``lo <= x <= hi``; ``model`` maps ``[N, *shape]`` to ``[N, K]`` in float64 (e.g. :class:`TorchTwin`).

    All ``restarts x len(targets)`` runs go in one batch; the whole batch stops as soon as one run goes
    below 0 (one counterexample decides a property), after ``steps`` steps, or at ``deadline``.
    starts: per target, restart 0's starting point (clipped into the box) or None for the centre."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    T = len(targets)
    if T == 0:
        return SpecAttackResult(np.zeros(0), [])
    m = max(int(A.shape[0]) for _, _, A, _ in targets)
    if min(int(A.shape[0]) for _, _, A, _ in targets) == 0:
        raise ValueError("minimize_spec: a target has an empty conjunction (it holds everywhere: nothing to attack)")
    lo = torch.stack([torch.from_numpy(np.asarray(t[0], dtype=np.float64)) for t in targets])
    hi = torch.stack([torch.from_numpy(np.asarray(t[1], dtype=np.float64)) for t in targets])
    A = torch.stack([torch.from_numpy(_pad(np.asarray(t[2], dtype=np.float64), m)) for t in targets])
    b = torch.stack([torch.from_numpy(_pad(np.asarray(t[3], dtype=np.float64), m)) for t in targets])
    tid = torch.arange(T).repeat(restarts)  # restart-major rows: row r T + t is restart r of target t
    lo_r, hi_r = lo[tid], hi[tid]
    width = hi_r - lo_r
    gen = torch.Generator().manual_seed(int(seed))
    x = lo_r + width * torch.rand(lo_r.shape, generator=gen, dtype=torch.float64)
    x[:T] = 0.5 * (lo + hi)
    if starts is not None:
        for t, s in enumerate(starts):
            if s is not None:
                x[t] = torch.from_numpy(np.asarray(s, dtype=np.float64).reshape(-1))
    x = torch.minimum(torch.maximum(x, lo_r), hi_r)
    N = x.shape[0]
    reg = Region(x.clone(), torch.full((N,), math.inf, dtype=torch.float64), lo_r, hi_r, "inf")

    def value(logits: Tensor, idx: Tensor) -> Tensor:
        t = tid[idx]
        return (torch.einsum("nmk,nk->nm", A[t], logits) - b[t]).amax(1)

    best_p, best_v = descend(model, tuple(shape), reg, torch.arange(N), x, value, None, steps, width, 0.0, 1,
                             stop_any=True, schedule=SCHEDULES[schedule], deadline=deadline)
    values = np.full(T, math.inf)
    xs = [(0.5 * (lo[t] + hi[t])).numpy().copy() for t in range(T)]
    for n in range(N):
        t, v = int(tid[n]), float(best_v[n])
        if v < values[t]:
            values[t] = v
            xs[t] = best_p[n].detach().numpy().copy()
    return SpecAttackResult(values, xs)


def _pad(a: np.ndarray, m: int) -> np.ndarray:
    """Rows of a conjunction padded to m by repeating row 0 (the max over the rows is unchanged)."""
    if a.shape[0] == m:
        return a
    return np.concatenate([a, np.repeat(a[:1], m - a.shape[0], axis=0)], axis=0)
