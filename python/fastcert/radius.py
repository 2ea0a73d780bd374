"""Certified radius by bisection over eps (the ``robustness`` task of the CROWN / RecurJac reference code).

For each sample the largest eps at which a bound method certifies the margin of its label over a target
class (or over every other class), found by the reference's search, vectorised over the batch with one eps
per sample: start at ``eps_init``; after a certified step the eps becomes the certified one (doubled while
no step has failed yet, the midpoint of the bracket afterwards); after a failed step it becomes the midpoint
of the bracket. Every step is one call of :func:`fastcert.bounds` with per-sample eps, so the radius is a
certified eps of the method (sound whenever the method is) and the true robust radius lies above it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastcert.api import bounds, prepare
from fastcert.checks import class_indices, norm_key
from fastcert.network import Network
from fastcert.options import BoundOptions
from fastcert.rounding import next_down
from fastcert.rounding import next_up as _up

TARGETS = ("untargeted", "runnerup", "least", "random")
#: certification by a Lipschitz bound instead of a bound method (the reference's ``--jacbndalg``)
LIPSCHITZ_METHODS = ("recurjac", "fastlip", "spectral")
#: the quadratic bound of two-layer ReLU networks (the reference's ``--quad``)
QUAD = "quad"


@dataclass(frozen=True)
class RadiusResult:
    """Result of :func:`certified_radius`.

    radius:  [B] the largest eps at which the method certified (0 where it never did: e.g. a sample
             misclassified at x). Equal to ``lower``.
    lower:   [B] certified bracket, lower end (certified at this eps; 0 when nothing was).
    upper:   [B] certified bracket, upper end: the smallest eps tried at which the method failed (``inf`` when
             every step certified); the method's own radius lies in ``[lower, upper)``.
    labels:  [B] int64, the class whose margin is certified (the prediction at x unless labels were given).
    targets: [B] int64, the target class (-1 for ``untargeted``: every other class).
    """

    radius: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    method: str
    norm: str
    steps: int
    time_s: float

    @property
    def mean_radius(self) -> float:
        """The average certified radius over the batch (the reference's final "average" line)."""
        return float(self.radius.double().mean())


def target_classes(logits: torch.Tensor, labels: torch.Tensor, target: Any, seed: int = 0) -> torch.Tensor:
    """The target class per sample: logits [B, K], labels [B] -> [B] int64 (-1: untargeted).

    ``runnerup``: the largest logit other than the label's; ``least``: the smallest logit; ``random``: a
    class other than the label, uniform, from ``torch.Generator().manual_seed(seed)``; an int or a [B]
    sequence: that class (refused where it equals the label: a margin against itself is not a property)."""
    B, K = logits.shape
    if isinstance(target, str):
        if target == "untargeted":
            return torch.full((B,), -1, dtype=torch.int64)
        if K < 2:
            raise ValueError(f"target {target!r} needs a network with at least 2 outputs, this one has {K}")
        if target == "runnerup":
            z = logits.detach().clone()
            z[torch.arange(B), labels] = -torch.inf
            return z.argmax(1)
        if target == "least":
            z = logits.detach().clone()
            z[torch.arange(B), labels] = torch.inf
            return z.argmin(1)
        if target == "random":
            g = torch.Generator().manual_seed(int(seed))
            r = torch.randint(0, K - 1, (B,), generator=g)
            return r + (r >= labels).long()  # uniform over the K - 1 classes other than the label
        raise ValueError(f"target must be one of {TARGETS}, a class index or a [B] tensor of class indices; "
                         f"got {target!r}")
    t = class_indices(target if not isinstance(target, int) else [target] * B, B, K, "target")
    same = t == labels
    if same.any():
        i = int(same.nonzero()[0])
        raise ValueError(f"target class {int(t[i])} equals the label of sample {i}: the margin of a class over "
                         f"itself is not a property (pick another target or 'untargeted')")
    return t


def margin_rows(labels: torch.Tensor, targets: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """C [B, S, K] with rows e_y - e_t: every other class (S = K - 1) when untargeted, else the target's."""
    B = labels.shape[0]
    if bool((targets >= 0).all()):
        C = torch.zeros(B, 1, K, dtype=dtype)
        C[torch.arange(B), 0, labels] = 1
        C[torch.arange(B), 0, targets] = -1
        return C
    others = torch.arange(K).expand(B, K)
    others = others[others != labels[:, None]].reshape(B, K - 1)
    C = torch.zeros(B, K - 1, K, dtype=dtype)
    C[torch.arange(B)[:, None], torch.arange(K - 1)[None, :], others] = -1
    C[torch.arange(B), :, labels] = 1
    return C



def lipschitz_margin(net: Network, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor, norm: str, method: str,
                     lipsteps: int = 10, x_min: Any = None, x_max: Any = None, direction: str = "backward",
                     shift: int = 1) -> torch.Tensor:
    """A lower bound of ``C f`` over the ball of radius eps ([B] float64) around x, from its value at x and
    Lipschitz bounds: with ``0 = e_0 < e_1 < ... < e_K = eps`` (K = ``lipsteps``, equal steps) and ``L_k`` the
    Lipschitz constant over the ball of radius ``e_k``, every point at distance r <= eps is reached from x along
    a segment whose piece in ``[e_{k-1}, e_k]`` lies in ball k, so ``g(x') >= g(x) - sum_k (e_k - e_{k-1}) L_k``
    (the reference's numerical integration). ``spectral`` is global: one step. Returns [B, S] float64."""
    from fastcert.jacobian import lipschitz

    g0 = bounds(net, x, 0.0, norm=norm, method="ibp", C=C).lower.to(torch.float64)  # C f(x), rounded down
    K = 1 if method == "spectral" else lipsteps
    dec = torch.zeros_like(g0)
    prev = torch.zeros_like(eps)
    for k in range(1, K + 1):
        e_k = eps if k == K else eps * k / K
        L = lipschitz(net, x, e_k, norm=norm, method=method, C=C, x_min=x_min, x_max=x_max, direction=direction,
                      shift=shift).constant
        seg = _up((e_k - prev).clamp_min(0))[:, None]
        dec = _up(dec + _up(seg * L))
        prev = e_k
    return next_down(g0 - dec)


def quad_margin(net: Network, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor, norm: str, x_min: Any = None,
                x_max: Any = None) -> torch.Tensor:
    """Certified lower bounds [B, S] (float64) of ``C f`` over the ball of radius eps ([B]) by the quadratic bound
    of a two-layer ReLU network (:mod:`fastcert.quad`), on CROWN's pre-activation box."""
    from fastcert.algorithms.graph_bounds import graph_bounds
    from fastcert.api import make_region
    from fastcert.quad import quad_lower, two_layer

    g = net.op_graph_for(tuple(x.shape[1:]))
    two_layer(g)
    prob = make_region(x, eps, norm, x_min, x_max)
    boxes: list[Any] = []
    graph_bounds(g, prob, C.to(x.dtype).contiguous(), "crown", boxes_out=boxes)
    return quad_lower(g, prob, C.to(torch.float64), boxes[1])


def _eps_init(eps_init: Any) -> torch.Tensor:
    """``eps_init`` as a float64 tensor of one or B finite values > 0."""
    bad = ValueError(f"eps_init must be a finite number > 0 (or one per sample), got {eps_init!r}")
    if isinstance(eps_init, bool):
        raise bad
    try:
        e = torch.as_tensor(eps_init, dtype=torch.float64).detach().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise bad from None
    if e.numel() == 0 or not bool(torch.isfinite(e).all()) or not bool((e > 0).all()):
        raise bad
    return e


def certified_radius(model: nn.Module | Network, x: Any, norm: str = "inf", method: str = "crown",
                     target: Any = "untargeted", steps: int = 15, labels: Any = None, eps_init: Any = 0.005,
                     x_min: Any = None, x_max: Any = None, seed: int = 0, eps_max: float | None = None,
                     options: BoundOptions | None = None, lipsteps: int = 10, progress: bool = False,
                     direction: str = "backward", shift: int = 1) -> RadiusResult:
    """The certified radius of each sample of ``x`` for ``method``, by ``steps`` steps of the reference's
    search (doubling from ``eps_init`` until a step fails, then bisection).

    x: [B, *input_shape]; labels: [B] class indices (default: the prediction at x); target: "untargeted"
    (every other class), "runnerup", "least", "random" (seeded by ``seed``), a class index or [B] classes;
    method: any of :func:`fastcert.bounds`' methods ("ibp", "fastlin", "crown", "crown-ibp", "kw",
    "alpha-crown"), "quad" (two-layer ReLU networks: :func:`quad_margin`), or "recurjac" / "fastlip" /
    "spectral": certification by a Lipschitz bound (:func:`lipschitz_margin`,
    ``lipsteps`` sub-intervals, as the reference's ``--jacbndalg`` / ``--lipsteps``; ``direction`` / ``shift``:
    its recursion's order, ``--lipsdir`` / ``--lipsshift``, see :func:`fastcert.jacobian_bounds`); x_min /
    x_max: the input domain the balls are clipped to; eps_init: a number or one per sample ([B], e.g. a cheaper method's
    radius, to warm-start a costlier one). A sample whose label is not the prediction at x gets radius 0 (bracket
    [0, 0]). ``eps_max``: no eps above it is tried (a sample
    certified there keeps ``upper = inf``). Returns :class:`RadiusResult` (tensors of shape [B]).
    """
    t0 = time.perf_counter()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    e0 = _eps_init(eps_init)
    if eps_max is not None and not (isinstance(eps_max, (int, float)) and float(e0.max()) <= eps_max < float("inf")):
        raise ValueError(f"eps_max must be a finite number >= eps_init ({float(e0.max())}), got {eps_max!r}")
    if isinstance(lipsteps, bool) or not isinstance(lipsteps, int) or lipsteps < 1:
        raise ValueError(f"lipsteps must be a positive int, got {lipsteps!r}")
    nk = norm_key(norm)
    lip = method in LIPSCHITZ_METHODS
    net, xt, K = prepare(model, x, "ibp" if lip or method == QUAD else method)
    B = xt.shape[0]
    with torch.no_grad():
        logits = net.forward(xt.detach())
    pred = logits.argmax(1)
    y = pred if labels is None else class_indices(labels, B, K, "labels")
    if K < 2:
        raise ValueError(f"a certified radius needs a network with at least 2 outputs, this one has {K}")
    tgt = target_classes(logits, y, target, seed)
    C = margin_rows(y, tgt, K, xt.dtype)
    lo = torch.zeros(B, dtype=torch.float64)
    hi = torch.full((B,), torch.inf, dtype=torch.float64)
    ok0 = pred == y
    hi[~ok0] = 0.0  # misclassified at x: no eps certifies
    if e0.numel() not in (1, B):
        raise ValueError(f"eps_init must be a number or one per sample ({B}), got {e0.numel()} values")
    eps = torch.where(ok0, e0.expand(B), 0.0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"radius {method}", unit="step", file=sys.stderr, leave=False)
    with torch.no_grad():
        for _ in range(steps):
            # eps in float64: bounds rounds it up to x's dtype (a ball no smaller than the one reported)
            if lip:
                low = lipschitz_margin(net, xt.detach(), eps, C, nk, method, lipsteps, x_min, x_max, direction,
                                       shift)
            elif method == QUAD:
                low = quad_margin(net, xt.detach(), eps, C, nk, x_min, x_max)
            else:
                low = bounds(net, xt.detach(), eps, norm=nk, method=method, C=C, x_min=x_min, x_max=x_max,
                             options=options).lower
            cert = (low > 0).all(1) & ok0
            lo = torch.where(cert, eps, lo)
            hi = torch.where(cert | ~ok0, hi, torch.minimum(hi, eps))
            eps = torch.where(torch.isinf(hi), 2 * lo, (lo + hi) / 2)
            if eps_max is not None:
                eps = eps.clamp_max(eps_max)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(mean_radius=f"{float(lo.mean()):.4g}")
    if bar is not None:
        bar.close()
    return RadiusResult(lo.clone(), lo, hi, y, tgt, method, nk, steps, time.perf_counter() - t0)


__all__ = ["LIPSCHITZ_METHODS", "QUAD", "RadiusResult", "TARGETS", "certified_radius", "lipschitz_margin",
           "margin_rows", "quad_margin", "target_classes"]
