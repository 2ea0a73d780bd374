"""Certified and adversarial training losses on fastcert's differentiable bounds (issue #12, first part).

Every loss is an ordinary differentiable function of the model's parameters: use it in any torch loop
with any optimizer (``loss.backward(); opt.step()``). The bounds come from
:func:`fastcert.differentiable_bounds` (fastcert's kernels, forward and backward, in nominal arithmetic:
a training signal, not a certificate -- certify the trained model with :func:`fastcert.certify`).

Shapes: ``x`` [B, *input_shape] (float32/float64), ``y`` [B] class indices (int64), logits [B, K].

The *worst-case logits* of all the certified losses (Gowal et al. 2018, eq. 5; Wong & Kolter 2018, Thm. 2;
Zhang et al. 2020, eq. 5) are ``z_hat[b, j] = -lower(z_y - z_j)`` over the ball: 0 at ``j = y``, an upper
bound of ``z_j - z_y`` elsewhere; ``cross_entropy(z_hat, y)`` bounds the cross-entropy of every point of
the ball (softmax cross-entropy is shift-invariant and increasing in each ``z_j - z_y``).

What is here: :func:`worst_case_logits`, :func:`ibp_loss`, :func:`crown_ibp_loss`, :func:`robust_loss`
(Kolter-Wong, exact or with random projections), :func:`pgd_loss`, :func:`mtl_ibp_loss`, the MMR regularizer
(:func:`mmr_regularizer`, :func:`mmr_loss`) and the Local-Lipschitz loss (:func:`local_lip_loss`,
:func:`local_lipschitz`, the sound L2 certificate :func:`local_lip_certify`) from :mod:`fastcert.regularizers`,
and the schedules (:class:`LinearRamp`, :func:`gowal_schedule`, :func:`crown_ibp_schedule`);
``robust_loss(..., proj=k)`` estimates the KW bound with convex_adversarial's random projections. Not yet:
convex_adversarial's cascades.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcert.api_diff import cached_network, differentiable_bounds
from fastcert.checks import norm_key
from fastcert.losscommon import adversarial_points, check_labels, check_weight
from fastcert.regularizers import (LocalLipState, local_lip_certify, local_lip_loss, local_lipschitz, mmr_loss,
                                   mmr_regularizer, project_thresholds)

__all__ = [
    "LinearRamp",
    "LocalLipState",
    "local_lip_certify",
    "local_lip_loss",
    "local_lipschitz",
    "mmr_loss",
    "mmr_regularizer",
    "project_thresholds",
    "crown_ibp_loss",
    "crown_ibp_schedule",
    "gowal_schedule",
    "ibp_loss",
    "margin_spec",
    "mtl_ibp_loss",
    "pgd_loss",
    "robust_loss",
    "worst_case_logits",
]


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearRamp:
    """``start`` until step ``begin``, then linear to ``end`` at step ``begin + length``, then ``end``:
    exact at both breakpoints (``ramp(begin) == start``, ``ramp(begin + length) == end``). Steps are
    whatever the caller counts (optimizer steps in the papers). ``length == 0``: a step function."""

    start: float
    end: float
    begin: int
    length: int

    def __post_init__(self) -> None:
        if self.begin < 0 or self.length < 0:
            raise ValueError(f"LinearRamp: begin ({self.begin}) and length ({self.length}) must be >= 0")

    def __call__(self, step: int) -> float:
        if step <= self.begin:
            return float(self.start)
        if step >= self.begin + self.length:
            return float(self.end)
        t = (step - self.begin) / self.length
        return float(self.start + (self.end - self.start) * t)


def gowal_schedule(eps: float, warmup: int, ramp: int, kappa_end: float = 0.5) -> tuple[LinearRamp, LinearRamp]:
    """The IBP schedules of Gowal et al. 2018 (Sec. 4 / App. A): eps from 0 to ``eps`` and kappa from 1 to
    ``kappa_end`` (0.5 in the paper), both linearly over the ``ramp`` steps after ``warmup`` steps of clean
    training. Returns (eps(step), kappa(step))."""
    return LinearRamp(0.0, eps, warmup, ramp), LinearRamp(1.0, kappa_end, warmup, ramp)


def crown_ibp_schedule(eps: float, warmup: int, ramp: int, kappa_end: float = 0.0,
                       beta_end: float = 0.0) -> tuple[LinearRamp, LinearRamp, LinearRamp]:
    """CROWN-IBP's schedules (Zhang et al., ICLR 2020, Sec. 4): eps from 0 to ``eps``, kappa from 1 to
    ``kappa_end`` and beta (the weight of the CROWN-IBP bound against the IBP bound) from 1 to ``beta_end``,
    linearly over the same ``ramp`` steps after ``warmup``. Returns (eps, kappa, beta)."""
    return (LinearRamp(0.0, eps, warmup, ramp), LinearRamp(1.0, kappa_end, warmup, ramp),
            LinearRamp(1.0, beta_end, warmup, ramp))


# ------------------------------------------------------------------------------------------------
# the worst-case logits
# ------------------------------------------------------------------------------------------------


def margin_spec(y: Tensor, K: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, K, K] rows ``e_y - e_j`` (row y is zero): ``C z`` are the margins ``z_y - z_j``."""
    y = check_labels(y, None, K)
    eye = torch.eye(K, dtype=dtype)
    return eye[y][:, None, :] - eye[None, :, :]


def _num_classes(model: Any, x: Tensor) -> int:
    """The model's number of outputs: from its converted graph (cached; no forward pass) when fastcert can
    convert it, else from a one-sample forward pass (PGD training accepts any model)."""
    from fastcert.errors import UnsupportedError

    try:
        g = cached_network(model).graph_for(tuple(x.shape[1:]))
        return int(g.n(g.output))
    except (UnsupportedError, ValueError, TypeError):
        with torch.no_grad():
            return int(model(x[:1]).shape[-1])


def _checked(model: Any, x: Tensor, y: Tensor) -> Tensor:
    """y checked against x's batch and the model's number of outputs (before any loss is computed)."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise TypeError(f"x must be a [B, *input_shape] tensor, got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    y = check_labels(y, None, _num_classes(model, x))
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for a batch of {x.shape[0]} inputs")
    return y


def worst_case_logits(model: nn.Module, x: Tensor, y: Tensor, eps: Any, method: str = "ibp", norm: str = "inf",
                      x_min: Any = None, x_max: Any = None) -> Tensor:
    """``z_hat`` [B, K]: ``-lower(z_y - z_j)`` over ``||x' - x||_norm <= eps`` (within [x_min, x_max]) by
    ``method`` (ibp, crown-ibp, crown, fastlin, kw), differentiable; ``z_hat[b, y_b] = 0``."""
    K = _num_classes(model, x)
    C = margin_spec(y, K, x.dtype)
    lb, _ = differentiable_bounds(model, x, eps, norm=norm, method=method, C=C, x_min=x_min, x_max=x_max,
                                  bound_upper=False)
    return -lb


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------


def ibp_loss(model: nn.Module, x: Tensor, y: Tensor, eps: Any, kappa: float = 0.5, norm: str = "inf",
             x_min: Any = None, x_max: Any = None) -> Tensor:
    """IBP training loss of Gowal et al. 2018 ("On the effectiveness of interval bound propagation",
    eq. 12): ``kappa * CE(z(x), y) + (1 - kappa) * CE(z_hat_IBP(x, eps), y)``, mean over the batch.
    ``kappa`` and ``eps`` follow :func:`gowal_schedule` in the paper."""
    kappa = check_weight("kappa", kappa)
    y = _checked(model, x, y)
    if kappa == 1.0:
        return F.cross_entropy(model(x), y)
    robust = F.cross_entropy(worst_case_logits(model, x, y, eps, "ibp", norm, x_min, x_max), y)
    if kappa == 0.0:
        return robust
    return kappa * F.cross_entropy(model(x), y) + (1 - kappa) * robust


def crown_ibp_loss(model: nn.Module, x: Tensor, y: Tensor, eps: Any, kappa: float = 0.0, beta: float = 1.0,
                   norm: str = "inf", x_min: Any = None, x_max: Any = None) -> Tensor:
    """CROWN-IBP training loss (Zhang et al., ICLR 2020, eq. 7): the margin lower bound is
    ``beta * lower_CROWN-IBP + (1 - beta) * lower_IBP`` and the loss ``kappa * CE(z, y) + (1 - kappa) *
    CE(-bound, y)``; ``beta`` goes from 1 to 0 and ``kappa`` from 1 to ``kappa_end`` with the eps ramp
    (:func:`crown_ibp_schedule`). The IBP bound is computed only when ``beta < 1``."""
    kappa, beta = check_weight("kappa", kappa), check_weight("beta", beta)
    y = _checked(model, x, y)
    K = _num_classes(model, x)
    C = margin_spec(y, K, x.dtype)
    kw = dict(norm=norm, C=C, x_min=x_min, x_max=x_max, bound_upper=False)
    lb = 0.0
    if beta > 0:
        lb = beta * differentiable_bounds(model, x, eps, method="crown-ibp", **kw)[0]
    if beta < 1:
        lb = lb + (1 - beta) * differentiable_bounds(model, x, eps, method="ibp", **kw)[0]
    robust = F.cross_entropy(-lb, y)  # type: ignore[operator]
    if kappa == 0.0:
        return robust
    return kappa * F.cross_entropy(model(x), y) + (1 - kappa) * robust


def robust_loss(model: nn.Module, epsilon: float, X: Tensor, y: Tensor, size_average: bool = True,
                norm: str = "inf", x_min: Any = None, x_max: Any = None, proj: int | None = None,
                seed: int = 0) -> tuple[Tensor, Tensor]:
    """The Kolter-Wong robust loss with convex_adversarial's meaning (Wong & Kolter, ICML 2018, Thm. 2 and
    eq. 14; ``convex_adversarial.robust_loss``): ``f = z_hat`` from the dual (KW) bound of the margins,
    returns ``(cross_entropy(f, y), err)`` with ``err`` the fraction of samples not certified
    (``f.max(1)[1] != y``); ``size_average=False``: per-sample loss [B] and error [B] (float).

    ``proj=None``: exact (fastcert's KW kernels; every L1 term summed). ``proj=k``: the intermediate bounds
    estimated from ``k`` Cauchy random projections with the median estimator (Wong et al., NeurIPS 2018,
    "Scaling provable adversarial defenses", Sec. 3.2; :mod:`fastcert.kw_proj`: L-inf, ``nn.Sequential`` of
    Linear / Conv2d / Flatten / ReLU), the objective exact: memory and time scale with ``k``, not the widths;
    ``err`` is then an estimate too (certify with :func:`fastcert.certify`). Projections are drawn from
    ``seed``."""
    y = _checked(model, X, y)
    if proj is not None:
        from fastcert.kw_proj import kw_bounds_projected

        if norm_key(norm) != "inf":
            raise ValueError("robust_loss(proj=k) estimates L-inf bounds (as convex_adversarial's); use proj=None "
                             "for other norms")
        K = _num_classes(model, X)
        f = -kw_bounds_projected(model, X, epsilon, margin_spec(y, K, X.dtype), proj, x_min, x_max, seed)
    else:
        f = worst_case_logits(model, X, y, epsilon, "kw", norm, x_min, x_max)
    err = (f.max(1)[1] != y).to(X.dtype)
    if size_average:
        return F.cross_entropy(f, y), err.mean()
    return F.cross_entropy(f, y, reduction="none"), err


def pgd_loss(model: nn.Module, x: Tensor, y: Tensor, eps: Any, norm: str = "inf", steps: int = 10,
             restarts: int = 1, step_size: Any = None, x_min: Any = None, x_max: Any = None,
             seed: int = 0) -> Tensor:
    """PGD adversarial training (Madry et al., ICLR 2018, eq. 2.1): ``CE(z(x_adv), y)`` with ``x_adv`` found
    by ``steps`` steps of projected gradient ascent on the cross-entropy (``fastcert.attacks.pgd``,
    ``restarts`` random restarts, seeded) inside the ball and [x_min, x_max]."""
    y = _checked(model, x, y)
    xa = adversarial_points(model, x, y, eps, norm, steps, restarts, step_size, x_min, x_max, seed)
    return F.cross_entropy(model(xa), y)


def mtl_ibp_loss(model: nn.Module, x: Tensor, y: Tensor, eps: Any, alpha: float = 0.5, norm: str = "inf",
                 steps: int = 10, step_size: Any = None, x_min: Any = None, x_max: Any = None,
                 seed: int = 0) -> Tensor:
    """MTL-IBP (De Palma et al., "Expressive losses for verified robustness via convex combinations",
    ICLR 2024, eq. 4): ``(1 - alpha) * CE(z(x_adv), y) + alpha * CE(z_hat_IBP(x, eps), y)``, x_adv a PGD
    point of the same ball (as :func:`pgd_loss`)."""
    alpha = check_weight("alpha", alpha)
    y = _checked(model, x, y)
    xa = adversarial_points(model, x, y, eps, norm, steps, 1, step_size, x_min, x_max, seed)
    adv = F.cross_entropy(model(xa), y)
    if alpha == 0.0:
        return adv
    return (1 - alpha) * adv + alpha * F.cross_entropy(worst_case_logits(model, x, y, eps, "ibp", norm, x_min,
                                                                         x_max), y)
