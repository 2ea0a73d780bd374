"""Adversarial attacks: PGD with random restarts and FGSM over L-inf / L2 / L1 balls intersected
with an input-domain box. They give *empirical* robust error (an upper bound on robust accuracy,
the counterpart of :func:`fastcert.certify`'s lower bound) and counterexamples before a MIP.

Quick start::

    from fastcert import attacks
    res = attacks.pgd(model, x, eps=0.1, norm="inf", labels=y, x_min=0.0, x_max=1.0)
    res.success          # [B] bool: the model, re-run on res.x_adv, misclassifies (margin < 0)
    res.margin           # [B] f_y - max_{j != y} f_j at res.x_adv
    attacks.robust_error(model, x, y, 0.1, "inf", x_min=0.0, x_max=1.0)     # a float in [0, 1]
    attacks.minimize_linear(model, x, 0.1, "inf", C).values                  # [B, S] c_s . f(x')

Guarantees
----------
- **Every returned point lies in the region** ``{x' : ||x' - x||_p <= eps, x_min <= x' <= x_max}``
  in exact arithmetic (x, eps, x_min, x_max taken as the values they hold; eps and the box as
  float64). A final check evaluates ``x' - x`` exactly (TwoSum) and bounds the norm with
  outward-rounded sums; a point that fails it (a rounding overshoot of the projection) is pulled
  towards x by the smallest factor that passes, and falls back to x itself.
- **Every reported value is re-evaluated**: ``x_adv`` is passed through the model once more (one
  batch, ``torch.no_grad``) and ``margin`` / ``success`` / ``logits`` / ``values`` come from that
  run, never from the loss seen during the search.
- **Deterministic under a seed**: random starts come from a private CPU ``torch.Generator``
  (``seed``); the global RNG is never touched. Row ``i``'s random start depends only on the seed,
  ``i`` and the batch size.
- The model is called as-is in the dtype of x (its parameters must have that dtype); its
  train/eval mode and its parameters' ``requires_grad`` are left alone; gradients are taken with
  respect to the input only. Returned tensors do not require grad. x may live on any device the
  model runs on (random numbers are drawn on the CPU and moved there).

Algorithm
---------
PGD (Madry et al. 2018) minimises an objective over the region; run 0 starts at x itself, runs
1.. at uniformly random points of the ball (then clipped to the box). Per sample the best iterate
of all runs (lowest *margin*, whatever the loss) is kept, and x itself is a candidate too, so a
sample misclassified at x is always a success. The step size is constant (default
``2.5 * eps / steps``). Steps per norm (g: gradient of the loss; coordinates at a box face
whose descent direction leaves the box are masked out of the L2 / L1 steps):

- L-inf: ``-step * sign(g)``.
- L2: ``-step * g / ||g||_2``.
- L1: the sparse steepest-descent step of SLIDE (Tramer & Boneh 2019): the sign of the
  ``k = ceil(l1_sparsity * n)`` largest ``|g_i|`` (default ``l1_sparsity=0.01``: the 99th
  percentile, as in Foolbox's ``SparseL1DescentAttack``), normalised to unit L1 norm, times
  ``step``. The exact L1 steepest-descent direction is a single coordinate (``k = 1``, which is
  what the default gives below 100 inputs); a few coordinates per step move faster on large inputs.
  On a small adversarially trained digits MLP, k = 1 found more adversarial examples than 5% / 10% /
  20% / all coordinates (75% vs 71% / 59% / 39% / 9% at L1 eps 2).

Projections are the exact Euclidean projections onto **ball intersected with box**:
- L-inf: clipping to ``[max(x - eps, x_min), min(x + eps, x_max)]`` (rounded inwards).
- L1: Duchi et al. (2008)'s sorting projection, generalised to the box: the KKT point is
  ``t_i = sign(d_i) * clip(|d_i| - theta, 0, cap_i)`` (cap_i: room to the box face in the
  direction of d_i); ``sum_i t_i`` is piecewise linear in theta with breakpoints ``|d_i| - cap_i``
  and ``|d_i|``, so sorting the 2n breakpoints and a cumulative sum give theta exactly (then one
  Newton step on the directly evaluated sum removes the cumulative sum's rounding). With no box it
  is exactly Duchi et al.'s algorithm.
- L2: ``t = clip(s * d, l, u)`` with ``s in (0, 1]``; sorting the saturation points ``cap_i / |d_i|``
  gives s in closed form.
The final membership check above then makes every returned point feasible.

FGSM is one such step of size eps from x (for L2 the normalised gradient step, for L1 the SLIDE
step above); the result is the better of x and that point.

Targeted attacks (``targets``) minimise ``f_y - f_t`` (the pairwise margin that
:func:`fastcert.certify` bounds from below in ``margins[:, t]``); ``success`` means ``f_t > f_y``
at x_adv (the label no longer wins; compare ``logits.argmax(1) == targets`` if you need t to be the
top class). Untargeted ``success`` means ``f_y - max_{j != y} f_j < 0``: some class strictly beats
the label, a misclassification under any tie-breaking.
"""

from __future__ import annotations

from fastcert.attacks.pgd import (
           LOSSES,
           AttackResult,
           LinearAttackResult,
           fgsm,
           minimize_linear,
           pgd,
           robust_error,
)
from fastcert.attacks.spec import SpecAttackResult, TorchTwin, minimize_spec

__all__ = ["LOSSES", "AttackResult", "LinearAttackResult", "SpecAttackResult", "TorchTwin", "fgsm", "minimize_linear",
           "minimize_spec", "pgd", "robust_error"]
