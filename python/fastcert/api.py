"""Public entry points: :func:`bounds` and :func:`certify`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcert._ext import _C, torch_serial
from fastcert.algorithms.dispatch import network_bounds
from fastcert.algorithms.linear_bounds import METHODS, Problem
from fastcert.api_diff import attach_nominal_grad, check_diff_request, diff_bounds_of, wants_grad
from fastcert.checks import as_tensor, class_indices, norm_key, real_numbers
from fastcert.layers.base import empty_like_dtype
from fastcert.network import Network, as_network
from fastcert.options import BoundOptions
from fastcert.primitives.base import LOWER_SLOPE_MODES
from fastcert.rounding import round_down, round_up

NORMS = {"inf": 0, "2": 2, "1": 1}


@dataclass(frozen=True)
class BoundsResult:
    """Bounds of ``C f(x')`` over the input region: ``lower, upper: [B, S]`` (dtype of x)."""

    lower: torch.Tensor
    upper: torch.Tensor
    method: str
    norm: str
    time_s: float


@dataclass(frozen=True)
class CertifyResult:
    """Result of :func:`certify`.

    certified: [B] bool — every margin lower bound is > 0 (and the sample is correctly classified).
    margins:   [B, K] lower bounds of ``f_y(x') - f_j(x')``; ``+inf`` at ``j = y``.
    labels:    [B] int64, the labels that were certified (the prediction at x when none are given).
    labels_from_prediction: True when no labels were given, so ``labels`` are the model's own
    predictions and :attr:`certified_accuracy` measures robustness of the prediction, not accuracy.
    """

    certified: torch.Tensor
    margins: torch.Tensor
    labels: torch.Tensor
    method: str
    eps: Any
    norm: str
    time_s: float

    labels_from_prediction: bool = False

    @property
    def certified_accuracy(self) -> float:
        """Fraction of samples certified for their label; against the model's own predictions (certified
        robustness, not accuracy) when ``labels_from_prediction``."""
        return float(self.certified.double().mean()) if self.certified.numel() else float("nan")


def _eps_vector(eps: Any, B: int, dt: torch.dtype) -> torch.Tensor:
    """eps (a number or [B]) as [B] in ``dt``, rounded up (a ball no smaller than asked for); ValueError /
    TypeError naming the problem otherwise."""
    if isinstance(eps, float):  # the common case without torch operations on a [B] tensor
        if not math.isfinite(eps):
            raise ValueError("eps must be finite")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got min {float(eps)}")
        r = eps
        if dt == torch.float32:
            with np.errstate(over="ignore"):  # beyond float32: inf, refused as an overflow below
                r32 = np.float32(eps)
            if float(r32) < eps:
                r32 = np.nextafter(r32, np.float32(np.inf))
            r = float(r32)
        return torch.from_numpy(np.full(B, r, dtype=np.float32 if dt == torch.float32 else np.float64))
    e = real_numbers(eps, "eps", "a number or a [B] tensor of numbers")
    if e.dim() == 0:
        e = e.expand(B)
    if e.shape != (B,):
        raise ValueError(f"eps must be a scalar or have one entry per sample ([{B}]), got shape {tuple(e.shape)}")
    if not torch.isfinite(e).all():
        raise ValueError("eps must be finite")
    if (e < 0).any():
        raise ValueError(f"eps must be >= 0, got min {float(e.min())}")
    return round_up(e, dt)


def _domain_limit(bnd: Any, name: str, shape: tuple[int, ...], dt: torch.dtype) -> torch.Tensor | None:
    """x_min / x_max as a flat [prod(shape)] tensor in ``dt``, rounded outward (the domain never shrinks), or
    None when not given; ValueError / TypeError naming the problem otherwise."""
    if bnd is None:
        return None
    t = real_numbers(bnd, name, "a number or a tensor broadcastable to the per-sample shape")
    t = (round_up if name == "x_max" else round_down)(t, dt)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    try:
        t = torch.broadcast_to(t.reshape(t.shape if t.dim() else ()), shape).reshape(-1)
    except RuntimeError as exc:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the per-sample shape "
                         f"{shape}") from exc
    return t.contiguous()


def _region_box(flat: torch.Tensor, e: torch.Tensor | None, tmin: torch.Tensor | None,
                tmax: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The box ``[max(down(x - e), x_min), min(up(x + e), x_max)]``: flat [B, n] -> (lo, hi) [B, n], in one pass
    of the core (``_C.region_box``), raising the first of its errors in the order of the checks: x not finite,
    x +- eps overflowing, x below x_min, x above x_max. With e None (eps was refused) only the first check."""
    dt = flat.dtype
    lo, hi = torch.empty_like(flat), torch.empty_like(flat)
    none = empty_like_dtype(dt)
    ev = torch.zeros(flat.shape[0], dtype=dt) if e is None else e
    flags = _C.region_box(flat, ev, none if tmin is None else tmin, none if tmax is None else tmax, lo, hi)
    if flags & 1:
        raise ValueError("x contains NaN or inf; fastcert bounds finite inputs only")
    if e is not None:
        if flags & 2:
            raise ValueError(f"eps is too large: x +- eps overflows {dt}; use a smaller eps (or float64)")
        if flags & 4:
            raise ValueError("x lies below x_min somewhere: the centre of the ball must lie in the input domain")
        if flags & 8:
            raise ValueError("x lies above x_max somewhere: the centre of the ball must lie in the input domain")
    return lo, hi


def make_region(x: torch.Tensor, eps: Any, norm: str, x_min: Any, x_max: Any) -> Problem:
    """The input region of ``x: [B, *shape]``: the ``norm`` ball of radius eps (a number or [B]) around each
    sample, within ``[x_min, x_max]`` when given. Its box ``lo, hi: [B, n]`` is rounded outward (never smaller
    than asked for). Refuses, in this order: x not finite, a bad eps, x +- eps overflowing the dtype, a bad
    x_min or x outside it, a bad x_max or x outside it (ValueError / TypeError naming the fix)."""
    B = x.shape[0]
    dt = x.dtype
    shape = tuple(x.shape[1:])
    flat = x.detach().reshape(B, -1).contiguous()
    e = tmin = None
    try:
        e = _eps_vector(eps, B, dt)
        tmin = _domain_limit(x_min, "x_min", shape, dt)
        tmax = _domain_limit(x_max, "x_max", shape, dt)
    except (TypeError, ValueError):
        _region_box(flat, e, tmin, None)  # the checks that come before the failing one raise first
        raise
    lo, hi = _region_box(flat, e, tmin, tmax)
    return Problem(flat, e, NORMS[norm], lo, hi)


def prepare(model: nn.Module | Network, x: Any, method: str) -> tuple[Network, torch.Tensor, int]:
    """Check the method, the model's mode and x; returns (the converted network, x as a tensor, outputs K)."""
    if method not in METHODS and method != "alpha-crown":
        raise ValueError(f"unknown method {method!r}; choose one of {sorted([*METHODS, 'alpha-crown'])}")
    if isinstance(model, nn.Module) and model.training:
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn:
            raise ValueError("the model is in training mode and has BatchNorm layers: call model.eval() first")
    net = as_network(model)
    x = as_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be batched: [B, *input_shape], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0): pass at least one sample")
    g = net.graph_for(tuple(x.shape[1:]))
    return net, x, g.n(g.output)


def spec_matrix(C: Any, x: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The specification ``C`` ([S, K], [B, S, K] or None: identity) as a contiguous [B, S, K] tensor in x's
    dtype, and, when a float64 C is rounded to float32, the exact one ([B, S, K] float64; else None)."""
    B = x.shape[0]
    if C is None:
        return torch.eye(K, dtype=x.dtype).expand(B, K, K).contiguous(), None
    C_in = as_tensor(C, "C")
    Ct = C_in.to(x.dtype)
    if Ct.dim() == 2:
        Ct = Ct.unsqueeze(0).expand(B, *Ct.shape)
    if Ct.dim() != 3 or Ct.shape[0] != B or Ct.shape[2] != K:
        raise ValueError(f"C must be [S, {K}] or [{B}, S, {K}] for a network with {K} outputs and batch {B}, "
                         f"got shape {tuple(Ct.shape)}")
    Ct = Ct.contiguous()
    if not _C.all_finite(Ct):
        raise ValueError("C contains NaN or inf")
    # a float64 C used by a float32 computation is rounded: the bounds then add |C - C_rounded| max|f|
    C64 = None
    if C_in.dtype == torch.float64 and x.dtype != torch.float64:
        C64 = C_in.unsqueeze(0).expand(B, *C_in.shape) if C_in.dim() == 2 else C_in
    return Ct, C64


@torch_serial()  # the input region's and the bounds' torch operations on one thread (see _ext.py)
def bounds(model: nn.Module | Network, x: Any, eps: Any, norm: str = "inf", method: str = "crown", C: Any = None,
           x_min: Any = None, x_max: Any = None, lower_slope: str | None = None,
           options: BoundOptions | None = None) -> BoundsResult:
    """Sound lower/upper bounds of ``C @ f(x')`` for all ``x'`` with ``||x' - x||_norm <= eps`` (and
    ``x_min <= x' <= x_max`` when given).

    x: [B, *input_shape] (torch or numpy, float32/float64; the computation runs in that dtype).
    eps: scalar or [B]. C: [S, K] or [B, S, K] (default: identity, i.e. bounds of the logits).
    lower_slope: for ``crown`` / ``crown-ibp`` only, the ReLU lower-slope rule: "adaptive" (default,
    1 if u >= -l else 0), "parallel" (u/(u-l), as Fast-Lin), "zero" or "one" (also LeakyReLU / Hardtanh).
    options: :class:`fastcert.BoundOptions` (tangent points of S-shaped activations, memory budgets).
    Returns :class:`BoundsResult` with ``lower, upper: [B, S]``.
    """
    t0 = time.perf_counter()
    x_in = x
    net, x, K = prepare(model, x, method)
    nk = norm_key(norm)
    prob = make_region(x, eps, nk, x_min, x_max)
    Ct, C64 = spec_matrix(C, x, K)
    if lower_slope is not None:
        if method not in ("crown", "crown-ibp"):
            raise ValueError(f"lower_slope applies to method='crown' or 'crown-ibp' only (method {method!r} fixes "
                             f"its own slopes)")
        if lower_slope not in LOWER_SLOPE_MODES:
            raise ValueError(f"lower_slope must be one of {sorted(LOWER_SLOPE_MODES)}, got {lower_slope!r}")
    if options is not None and not isinstance(options, BoundOptions):
        raise TypeError(f"options must be a fastcert.BoundOptions, got {type(options).__name__}")
    rows = None
    if method == "alpha-crown":
        lo, up, rows = alpha_crown_bounds(net, x, eps, prob, Ct, C64, nk, x_min, x_max, options)
    else:
        lo, up = network_bounds(net, tuple(x.shape[1:]), prob, Ct, method, lower_slope, C_exact=C64, opts=options)
    if wants_grad(model, x_in, eps):
        # the certified value; its gradient, computed only if autograd asks, is that of the same bound in
        # nominal arithmetic (the rounding slack is a constant): docs/architecture.md, "Two modes"
        x_live = x_in if isinstance(x_in, torch.Tensor) and x_in.dtype == x.dtype else x

        def recompute() -> tuple[torch.Tensor, torch.Tensor]:
            check_diff_request(method, nk, options)
            return diff_bounds_of(net, x_live, eps, Ct, method, x_min, x_max, nk, lower_slope,
                                  tangent=(options or BoundOptions()).tangent, rows=rows)

        lo, up = attach_nominal_grad(lo, up, model, x_live, eps, recompute)
    return BoundsResult(lo, up, method, nk, time.perf_counter() - t0)


def alpha_crown_bounds(net: Network, x: torch.Tensor, eps: Any, prob: Problem, Ct: torch.Tensor,
                       C64: torch.Tensor | None, norm: str, x_min: Any, x_max: Any,
                       options: BoundOptions | None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """alpha-CROWN (:mod:`fastcert.algorithms.alpha`): slopes optimized in the optimize mode, then the
    certified bound with them (graph engine, on the op graph) and the certified CROWN bound, the tighter
    per entry. x: [B, *shape]; Ct: [B, S, K]. Returns (lower, upper, the slopes)."""
    from fastcert.algorithms.alpha import network_alpha_crown

    p64 = prob
    if x.dtype != torch.float64:  # the certified passes run in float64 (see alpha_crown)
        p64 = make_region(x.detach().double(), eps.detach() if isinstance(eps, torch.Tensor) else eps, norm,
                          x_min, x_max)
    shape = tuple(x.shape[1:])
    lo, up, cands, _ = network_alpha_crown(net, shape, prob, Ct, C64, options, graph=net.op_graph_for(shape),
                                           prob64=p64)
    return lo, up, cands[0]


def certify(model: nn.Module | Network, x: Any, eps: Any, norm: str = "inf", labels: Any = None,
            method: str = "crown", x_min: Any = None, x_max: Any = None,
            options: BoundOptions | None = None) -> CertifyResult:
    """Certify that no ``x'`` in the ball changes the classification.

    x: [B, *input_shape]; labels: [B] ints in [0, K) (default: the prediction at x).
    A sample is certified when it is classified as its label at x and every margin lower bound
    ``f_y - f_j`` (j != y) over the ball is > 0. See :class:`CertifyResult` for the fields.
    """
    t0 = time.perf_counter()
    net, x, K = prepare(model, x, method)
    B = x.shape[0]
    with torch.no_grad():
        logits = net.forward(x)
    pred = logits.argmax(dim=1)
    if labels is None:
        y = pred
    else:
        y = class_indices(labels, B, K, "labels")
    # C rows e_y - e_j for every j (the j = y row is zero and is reported as +inf)
    C = -torch.eye(K, dtype=x.dtype).unsqueeze(0).repeat(B, 1, 1)
    C[torch.arange(B), :, y] += 1
    res = bounds(net, x, eps, norm=norm, method=method, C=C, x_min=x_min, x_max=x_max, options=options)
    margins = res.lower.clone()
    margins[torch.arange(B), y] = torch.inf
    certified = (margins > 0).all(dim=1) & (pred == y)
    return CertifyResult(certified, margins, y, method, eps, norm_key(norm), time.perf_counter() - t0,
                         labels_from_prediction=labels is None)
