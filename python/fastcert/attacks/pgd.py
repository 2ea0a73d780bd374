"""Public attacks: :func:`pgd`, :func:`fgsm`, :func:`robust_error`, :func:`minimize_linear` (see
the :mod:`fastcert.attacks` docstring for the guarantees and the algorithm)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcert.attacks.region import Region, ball_region
from fastcert.attacks.search import ValueFn, forward_logits, search
from fastcert.attacks.validate import (
    as_input,
    attack_norm,
    check_int,
    check_model,
    classes,
    domain_box,
    exact_upcast,
    per_sample,
)

LOSSES = ("margin", "ce")
Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackResult:
    """Result of :func:`pgd` / :func:`fgsm` (every field re-evaluated at ``x_adv``).

    x_adv:   [B, *input_shape] the best point found per sample (lowest margin; x itself when nothing
             better was found), dtype and device of x, inside the region.
    success: [B] bool, ``margin < 0`` (untargeted: some class strictly beats the label; targeted:
             ``f_t > f_y``).
    margin:  [B] ``f_y - max_{j != y} f_j`` (untargeted) or ``f_y - f_t`` (targeted) at x_adv, one
             float subtraction of the logits (its sign, hence ``success``, is exact).
    logits:  [B, K] the model's output at x_adv.
    labels:  [B] int64 the labels attacked (the prediction at x when none were given).
    targets: [B] int64 or None.
    eps:     [B] float64 the radii.
    """

    x_adv: Tensor
    success: Tensor
    margin: Tensor
    logits: Tensor
    labels: Tensor
    targets: Tensor | None
    eps: Tensor
    norm: str
    steps: int
    restarts: int
    time_s: float

    @property
    def success_rate(self) -> float:
        """Fraction of samples attacked successfully (the empirical robust error for untargeted runs)."""
        return float(self.success.double().mean()) if self.success.numel() else float("nan")


@dataclass(frozen=True)
class LinearAttackResult:
    """Result of :func:`minimize_linear` (every field re-evaluated at ``x_adv``).

    x_adv:  [B, S, *input_shape] per sample and spec row, the point with the lowest ``C[b, s] . f``.
    values: [B, S] ``C[b, s] . f(x_adv[b, s])`` computed in x's dtype: the value at a point of the
            region, so (up to the rounding of this dot product) an upper bound on the minimum.
    logits: [B, S, K] the model's output at x_adv.
    C:      [B, S, K] the specification, in the dtype of x.
    """

    x_adv: Tensor
    values: Tensor
    logits: Tensor
    C: Tensor
    eps: Tensor
    norm: str
    steps: int
    restarts: int
    time_s: float


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------


def _common(model: Any, x: Any, eps: Any, norm: Any, x_min: Any, x_max: Any, steps: int, restarts: int,
            step_size: Any, l1_sparsity: float,
            batch_size: int | None) -> tuple[nn.Module, Tensor, Tensor, str, Region, Tensor, int, Tensor]:
    x = as_input(x)
    model = exact_upcast(model, x.dtype)
    check_model(model, x.dtype)
    nk = attack_norm(norm)
    B = x.shape[0]
    e = per_sample(eps, B, "eps")
    check_int(steps, "steps", 0)
    check_int(restarts, "restarts", 1)
    if batch_size is not None:
        check_int(batch_size, "batch_size", 1)
    if isinstance(l1_sparsity, bool) or not isinstance(l1_sparsity, (int, float)) or not 0 < l1_sparsity <= 1:
        raise ValueError(f"l1_sparsity must be a fraction in (0, 1], got {l1_sparsity!r}")
    st = e * (2.5 / max(steps, 1)) if step_size is None else per_sample(step_size, B, "step_size")
    lo, hi = domain_box(x_min, x, "x_min"), domain_box(x_max, x, "x_max")
    if lo is not None and hi is not None and (lo > hi).any():
        raise ValueError("x_min > x_max somewhere: the input domain is empty")
    reg = ball_region(x, e, nk, lo, hi)
    l1_k = max(1, math.ceil(l1_sparsity * reg.x.shape[1]))
    with torch.no_grad():
        try:
            clean = forward_logits(model, x, tuple(x.shape[1:]), B)
        except RuntimeError as exc:
            raise ValueError(f"the model cannot be run on x of shape {tuple(x.shape)} ({x.dtype}, {x.device}): "
                             f"{exc}".strip()) from exc
    if not clean.is_floating_point():
        raise TypeError(f"the model's output has dtype {clean.dtype}; attacks need floating-point logits")
    return model, x, e, nk, reg, st.to(device=x.device, dtype=x.dtype)[:, None], l1_k, clean


def _margin_fns(y: Tensor, t: Tensor | None, loss: str) -> tuple[ValueFn, ValueFn | None]:
    def margin(logits: Tensor, idx: Tensor) -> Tensor:
        yy = y[idx]
        fy = logits.gather(1, yy[:, None]).squeeze(1)
        if t is not None:
            return fy - logits.gather(1, t[idx][:, None]).squeeze(1)
        other = logits.scatter(1, yy[:, None], -math.inf).amax(1)
        return fy - other

    if loss == "margin":
        return margin, None

    def ce(logits: Tensor, idx: Tensor) -> Tensor:
        if t is not None:
            return nn.functional.cross_entropy(logits, t[idx], reduction="none")
        return -nn.functional.cross_entropy(logits, y[idx], reduction="none")

    return margin, ce


def _attack(model: Any, x: Any, eps: Any, norm: Any, labels: Any, targets: Any, steps: int, restarts: int,
            step_size: Any, x_min: Any, x_max: Any, seed: int, loss: str, l1_sparsity: float, early_stop: bool,
            batch_size: int | None) -> AttackResult:
    t0 = time.perf_counter()
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    model, x, e, nk, reg, st, l1_k, clean = _common(model, x, eps, norm, x_min, x_max, steps, restarts, step_size,
                                             l1_sparsity, batch_size)
    B, K = clean.shape
    if K < 2:
        raise ValueError(f"the model has {K} output; a classification attack needs at least 2 classes "
                         f"(use minimize_linear for a scalar output)")
    y = clean.argmax(1) if labels is None else classes(labels, B, K, "labels", x.device)
    t = None
    if targets is not None:
        t = classes(targets, B, K, "targets", x.device)
        if (t == y).any():
            raise ValueError("a target equals its sample's label (the label, or the prediction at x when no labels "
                             "are given): pick targets different from the labels")
    value_fn, loss_fn = _margin_fns(y, t, loss)
    shape = tuple(x.shape[1:])
    best_p, _ = search(model, shape, reg, value_fn, loss_fn, steps, restarts, st, seed,
                        0.0 if early_stop else None, l1_k, batch_size)
    x_adv = best_p.reshape(x.shape).detach()
    with torch.no_grad():
        logits = forward_logits(model, x_adv, shape, B).detach()
        margin = value_fn(logits, torch.arange(B, device=x.device))
    return AttackResult(x_adv, margin < 0, margin, logits, y, t, e, nk, steps, restarts, time.perf_counter() - t0)


def pgd(model: nn.Module, x: Any, eps: Any, norm: Any = "inf", labels: Any = None, targets: Any = None, *,
        steps: int = 40, restarts: int = 1, step_size: Any = None, x_min: Any = None, x_max: Any = None,
        seed: int = 0, loss: str = "margin", l1_sparsity: float = 0.01, early_stop: bool = False,
        batch_size: int | None = None) -> AttackResult:
    """Projected gradient descent with random restarts over ``{x' : ||x' - x||attack_norm <= eps,
    x_min <= x' <= x_max}``.

    model: nn.Module mapping [N, *input_shape] to logits [N, K] (called as-is, in x's dtype; a float32
    model with float64 x runs as an exact float64 copy, the function fastcert.certify bounds).
    x: [B, *input_shape] float32/float64 (torch or numpy). eps: scalar or [B] (>= 0).
    norm: "inf", "2" or "1". labels: [B] ints (default: the prediction at x).
    targets: [B] ints != labels for a targeted attack (minimises ``f_y - f_t``), else untargeted
    (minimises ``f_y - max_{j != y} f_j``).
    steps: gradient steps per run; restarts: runs (run 0 starts at x, the others at random points).
    step_size: scalar or [B] (default ``2.5 * eps / steps``). x_min / x_max: the input domain,
    scalars or tensors broadcastable to x (per-feature or per-sample). seed: the random starts'
    seed. loss: "margin" (CW-style margin) or "ce" (cross-entropy); the point kept is always the
    one with the lowest margin. l1_sparsity: fraction of coordinates in an L1 step (see the module
    docstring). early_stop: skip samples already successful in later runs (their margin is then
    not minimised further). batch_size: rows per forward pass (default: the whole batch).

    Returns :class:`AttackResult`; every field is re-evaluated by running the model on ``x_adv``.
    """
    return _attack(model, x, eps, norm, labels, targets, steps, restarts, step_size, x_min, x_max, seed, loss,
                   l1_sparsity, early_stop, batch_size)


def fgsm(model: nn.Module, x: Any, eps: Any, norm: Any = "inf", labels: Any = None, targets: Any = None, *,
         x_min: Any = None, x_max: Any = None, loss: str = "margin", l1_sparsity: float = 0.01) -> AttackResult:
    """Fast gradient (sign) method: one step of size eps from x (L-inf: ``-eps sign(g)``; L2:
    ``-eps g/||g||_2``; L1: the sparse SLIDE step), projected onto the region; the better of x and
    that point is returned. Arguments and result as in :func:`pgd`."""
    return _attack(model, x, eps, norm, labels, targets, 1, 1, eps, x_min, x_max, 0, loss, l1_sparsity, False, None)


def robust_error(model: nn.Module, x: Any, labels: Any, eps: Any, norm: Any = "inf", **kwargs: Any) -> float:
    """Empirical robust error: the fraction of samples that are misclassified at x or for which
    :func:`pgd` (``**kwargs`` passed on; early stopping on) finds an adversarial example. A lower
    bound of the true robust error (and ``1 - `` it an upper bound of robust accuracy)."""
    kwargs.setdefault("early_stop", True)
    return pgd(model, x, eps, norm, labels, **kwargs).success_rate


def minimize_linear(model: nn.Module, x: Any, eps: Any, norm: Any, C: Any, *, steps: int = 40, restarts: int = 1,
                    step_size: Any = None, x_min: Any = None, x_max: Any = None, seed: int = 0,
                    stop_below: float | None = None, l1_sparsity: float = 0.01,
                    batch_size: int | None = None) -> LinearAttackResult:
    """Search, for every sample b and row s of C, for a point of the region minimising
    ``C[b, s] . f(x')`` (PGD as in :func:`pgd`; maximise by passing ``-C``).

    x: [B, *input_shape]; C: [S, K] or [B, S, K] (numpy or torch; used in x's dtype).
    stop_below: a row stops searching (runs and steps) once a value below it is found, e.g. 0 to
    look for a violation of ``C f > 0``. Other arguments as in :func:`pgd`.
    Returns :class:`LinearAttackResult` (``values [B, S]`` re-evaluated at ``x_adv [B, S, ...]``)."""
    t0 = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if stop_below is not None and (isinstance(stop_below, bool) or not isinstance(stop_below, (int, float))):
        raise TypeError(f"stop_below must be a number or None, got {type(stop_below).__name__}")
    model, x, e, nk, reg, st, l1_k, clean = _common(model, x, eps, norm, x_min, x_max, steps, restarts, step_size,
                                             l1_sparsity, batch_size)
    B, K = clean.shape
    Ct = torch.from_numpy(C) if isinstance(C, np.ndarray) else C
    if not isinstance(Ct, torch.Tensor):
        raise TypeError(f"C must be a torch.Tensor or numpy array, got {type(C).__name__}")
    if not (Ct.is_floating_point() or Ct.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"C must be a real (float or int) matrix, got dtype {Ct.dtype}")
    Ct = Ct.detach().to(device=x.device, dtype=x.dtype)
    if Ct.dim() == 2:
        Ct = Ct.unsqueeze(0).expand(B, *Ct.shape)
    if Ct.dim() != 3 or Ct.shape[0] != B or Ct.shape[2] != K or Ct.shape[1] == 0:
        raise ValueError(f"C must be [S, {K}] or [{B}, S, {K}] (S >= 1) for a model with {K} outputs and batch {B}, "
                         f"got shape {tuple(Ct.shape)}")
    if not torch.isfinite(Ct).all():
        raise ValueError("C contains NaN or inf")
    S = Ct.shape[1]
    rows = torch.arange(B, device=x.device).repeat_interleave(S)
    rreg = reg.rows(rows)
    Cr = Ct.reshape(B * S, K)

    def value(logits: Tensor, idx: Tensor) -> Tensor:
        return (logits * Cr[idx]).sum(-1)

    shape = tuple(x.shape[1:])
    best_p, _ = search(model, shape, rreg, value, None, steps, restarts, st[rows], seed, stop_below, l1_k,
                        batch_size)
    x_adv = best_p.reshape(B * S, *shape).detach()
    with torch.no_grad():
        logits = forward_logits(model, x_adv, shape, B * S).detach()
        vals = value(logits, torch.arange(B * S, device=x.device))
    return LinearAttackResult(x_adv.reshape(B, S, *shape), vals.reshape(B, S), logits.reshape(B, S, K),
                              Ct.contiguous(), e, nk, steps, restarts, time.perf_counter() - t0)
