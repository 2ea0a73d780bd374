"""The one projected-gradient-descent loop of fastcert: :func:`descend` (one run over a batch of
rows) and :func:`search` (restarts). :func:`fastcert.attacks.pgd`, :func:`~fastcert.attacks.minimize_linear` and the
specification attack of the MIP / VNN-COMP pipeline (:func:`fastcert.attacks.minimize_spec`) all run it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from fastcert.attacks.projections import descent, project, random_start
from fastcert.attacks.region import Region, make_feasible

Tensor = torch.Tensor
ValueFn = Callable[[Tensor, Tensor], Tensor]  # (logits [M, K], row indices [M]) -> [M]


def forward_logits(model: nn.Module, p: Tensor, shape: tuple[int, ...], N: int) -> Tensor:
    """The model on the flat rows p [N, n] (reshaped to [N, *shape]) -> logits [N, K], checked."""
    out = model(p.reshape(N, *shape))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != N:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must map [N, *input_shape] to logits [N, K]; got {got} for N = {N}")
    return out


def search(model: nn.Module, shape: tuple[int, ...], reg: Region, value_fn: ValueFn, loss_fn: ValueFn | None,
           steps: int, restarts: int, step: Tensor, seed: int, stop_below: float | None, l1_k: int,
           batch_size: int | None) -> tuple[Tensor, Tensor]:
    """Minimise value_fn (following the gradient of loss_fn, or of value_fn when None) per row.

    Returns (best points [N, n], their values [N]) from the search's own forward passes."""
    N = reg.x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    all_idx = torch.arange(N, device=reg.x.device)
    with torch.no_grad():
        best_v = value_fn(forward_logits(model, reg.x, shape, N), all_idx).detach()
    best_p = reg.x.clone()
    chunk = batch_size or N
    for run in range(restarts):
        starts = None if run == 0 else random_start(reg, gen, N)  # drawn for every row: reproducible per row
        active = all_idx
        if stop_below is not None:
            active = all_idx[~(best_v < stop_below)]
        for c0 in range(0, active.numel(), chunk):
            idx = active[c0:c0 + chunk]
            sub = reg.rows(idx)
            p0 = sub.x if starts is None else starts[idx]
            p, v = descend(model, shape, sub, idx, p0, value_fn, loss_fn, steps, step[idx], stop_below, l1_k)
            better = v < best_v[idx]
            best_v[idx] = torch.where(better, v, best_v[idx])
            best_p[idx] = torch.where(better[:, None], p, best_p[idx])
    return best_p, best_v


Schedule = Callable[[int, int], float]  # (step index t, steps) -> step-size multiplier


def cosine_schedule(t: int, steps: int) -> float:
    """Cosine decay of the step from 0.25 to 0.02 (times the per-coordinate step)."""
    return 0.02 + 0.23 * 0.5 * (1 + math.cos(math.pi * t / steps))


def linear_schedule(t: int, steps: int) -> float:
    """Linear decay of the step from 0.21 to 0.01 (times the per-coordinate step)."""
    return 0.2 * (1.0 - t / steps) + 0.01


SCHEDULES: dict[str, Schedule] = {"cosine": cosine_schedule, "linear": linear_schedule}


def descend(model: nn.Module, shape: tuple[int, ...], reg: Region, idx: Tensor, p: Tensor, value_fn: ValueFn,
            loss_fn: ValueFn | None, steps: int, step: Tensor, stop_below: float | None, l1_k: int, *,
            stop_any: bool = False, schedule: Schedule | None = None,
            deadline: float | None = None) -> tuple[Tensor, Tensor]:
    """One projected-gradient run from ``p [M, n]`` (rows ``idx`` of the caller's problem) over ``reg``.

    step: [M, 1] (a radius per row) or [M, n] (per coordinate), times ``schedule(t, steps)`` when given.
    Stops after ``steps`` steps, when every row (``stop_any``: some row) has a value below
    ``stop_below``, or at ``deadline`` (``time.perf_counter()``). Returns (best points [M, n], their
    values [M]) by the run's own forward passes (callers re-check what they report)."""
    M = p.shape[0]
    best_p = p
    best_v = torch.full((M,), math.inf, dtype=p.dtype, device=p.device)
    for it in range(steps + 1):
        if it == steps:
            with torch.no_grad():
                v = value_fn(forward_logits(model, p, shape, M), idx)
            grad = None
        else:
            v, grad = _value_and_grad(model, shape, p, idx, value_fn, loss_fn)
        v = v.detach().to(p.dtype)
        better = v < best_v  # NaN never wins
        best_v = torch.where(better, v, best_v)
        best_p = torch.where(better[:, None], p, best_p)
        if it == steps or _stop(best_v, stop_below, stop_any) or (deadline is not None and
                                                                  time.perf_counter() > deadline):
            break
        with torch.no_grad():
            grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
            st = step if schedule is None else step * schedule(it, steps)
            p = make_feasible(project(p + st * descent(grad, p, reg, l1_k), reg), reg)
    return best_p, best_v


def _stop(best_v: Tensor, stop_below: float | None, stop_any: bool) -> bool:
    if stop_below is None:
        return False
    below = best_v < stop_below
    return bool(below.any()) if stop_any else bool(below.all())


def _value_and_grad(model: nn.Module, shape: tuple[int, ...], p: Tensor, idx: Tensor, value_fn: ValueFn,
                    loss_fn: ValueFn | None) -> tuple[Tensor, Tensor]:
    """The value at p [M, n] and the gradient of the loss (the value when ``loss_fn`` is None); a zero
    gradient when the model blocks it (the search then stays at its starting points)."""
    M = p.shape[0]
    pg = p.detach().requires_grad_(True)
    grad = None
    with torch.enable_grad():
        logits = forward_logits(model, pg, shape, M)
        v = value_fn(logits, idx)
        loss = v if loss_fn is None else loss_fn(logits, idx)
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), pg, allow_unused=True)
    return v, (torch.zeros_like(p) if grad is None else grad)
