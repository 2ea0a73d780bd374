"""Independent float64 reference of the Wong & Kolter (ICML 2018) dual bound ("DualNetwork").

This module deliberately uses nothing from fastcert: it is a plain torch transcription of the
algorithm of *Provable defenses against adversarial examples via the convex outer adversarial
polytope* (Wong & Kolter, 2018) and of ``convex_adversarial.DualNetwork``, used by the tests as
ground truth. It is not rigorous w.r.t. floating-point rounding (no slack); it is exact up to
float64 round-off.

Network: an ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d`` (groups=1, zero padding given as
ints/tuples, any stride/dilation), ``nn.ReLU`` and ``nn.Flatten``. Write ``z_i`` for the input of
the i-th ReLU (a pre-activation) and ``g_i`` for the affine map (a run of Linear/Conv/Flatten
layers, possibly empty) that produces it from the previous ReLU output (or from ``x``).

Ball: ``{x : ||x - x0||_p <= eps}`` with p in {inf, 2, 1}; no clipping to an input domain.

Dual pass (one per bound): to lower-bound ``<Lam, z>`` for coefficient rows ``Lam``
(``nu: [b, S, *shape]``, b in {1, B}, broadcast against the batch), walk the layers backward:

* affine layer ``y = W v + b``:  ``const += <nu, b>``; ``nu <- W^T nu``
  (``F.linear`` with ``W`` for Linear, ``F.conv_transpose2d`` -- the exact adjoint of
  ``F.conv2d`` with the right ``output_padding`` -- for Conv2d, a reshape for Flatten);
* ReLU with pre-activation bounds ``l <= z <= u`` (computed earlier by this same dual):
  slope ``d = 1`` if ``l >= 0``, ``0`` if ``u <= 0``, else ``u / (u - l)``; the relaxation is
  ``d z <= relu(z) <= d (z - l)`` (the "parallel" KW relaxation), so for an unstable neuron a
  negative coefficient picks the upper line: ``const += sum_{j unstable} d_j l_j [-nu_j]_+``,
  then ``nu <- d * nu``;
* input: ``min_{||x - x0|| <= eps} <nu, x> = <nu, x0> - eps ||nu||_*`` (dual norm q: inf->1,
  2->2, 1->inf).

This is exactly the KW dual objective J(c) with ``nu_hat = -nu`` (their ``c`` is our ``Lam``):
``J = -sum_i nu_{i+1}^T b_i - x0^T nu_hat_1 - eps ||nu_hat_1||_q + sum_i sum_{j in I_i} l_ij
[nu_ij]_+``. Pre-activation bounds of ReLU i are obtained by running the dual pass with
``Lam = I`` over all neurons of ``z_i`` (``l = lower(I)``, ``u = -lower(-I)``; both come out of one
backward pass, since negating ``Lam`` negates every ``nu``), layer by layer, so the whole
computation is Fast-Lin with KW slopes and takes O(depth^2) backward passes.

Shapes: ``x0: [B, *in_shape]``, ``eps: float | [B]``, ``C: [S, K]`` or ``[B, S, K]`` where ``K``
is the number of network outputs; result ``[B, S]`` float64 (a lower bound of ``C f(x)``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kw_dual_bounds", "kw_dual_lower", "kw_dual_upper", "kw_preactivation_bounds"]

_NORMS = {"inf": "inf", "linf": "inf", "2": "2", "l2": "2", "1": "1", "l1": "1"}


def _norm_key(norm: str | float | int) -> str:
    key = "inf" if norm == float("inf") else str(norm).lower()
    if key not in _NORMS:
        raise ValueError(f"norm must be one of 'inf', '2', '1', got {norm!r}")
    return _NORMS[key]


def _check(layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise NotImplementedError("reference supports Conv2d with groups=1 and int/tuple zero padding only")
    elif not isinstance(layer, (nn.Linear, nn.ReLU, nn.Flatten)):
        raise NotImplementedError(f"reference does not support layer {type(layer).__name__}")


def _backward_layer(
    layer: nn.Module, nu: torch.Tensor, in_shape: torch.Size, out_shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adjoint of one affine/shape layer: returns (``W^T nu`` of shape ``[b, S, *in_shape]``,
    ``<nu, bias>`` of shape ``[b, S]`` or ``None``)."""
    b, s = nu.shape[:2]
    if isinstance(layer, nn.Linear):
        nu_flat = nu.reshape(b, s, -1)
        const = None if layer.bias is None else nu_flat @ layer.bias
        return (nu_flat @ layer.weight).reshape(b, s, *in_shape), const
    if isinstance(layer, nn.Conv2d):
        nu4 = nu.reshape(b * s, *out_shape)
        const = None if layer.bias is None else (nu4.sum(dim=(2, 3)) @ layer.bias).reshape(b, s)
        k, st, p, dil = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        out_pad = tuple(
            in_shape[1 + a] - ((out_shape[1 + a] - 1) * st[a] - 2 * p[a] + dil[a] * (k[a] - 1) + 1) for a in range(2)
        )
        back = F.conv_transpose2d(nu4, layer.weight, stride=st, padding=p, output_padding=out_pad, dilation=dil)
        return back.reshape(b, s, *in_shape), const
    # Flatten (and any other pure reshape): the adjoint is the inverse reshape
    return nu.reshape(b, s, *in_shape), None


def _dual_pass(
    layers: list[nn.Module],
    shapes: list[torch.Size],
    bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    x0: torch.Tensor,
    eps: torch.Tensor,
    norm: str,
    lam: torch.Tensor,
    upto: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds ``[B, S]`` of ``<lam, output of layers[:upto]>`` over the ball.
    ``lam: [b, S, *shapes[upto]]``; ``bounds[i]`` holds ``(l, u)`` for the input of ReLU ``layers[i]``.
    The upper bound is ``-lower(-lam)``: the same backward pass with ``nu -> -nu``, which only
    changes the sign of the input term and which part of ``nu`` the ReLU penalty sees."""
    nu = lam
    const = torch.zeros(x0.shape[0], lam.shape[1], dtype=torch.float64)
    pen_lo = torch.zeros_like(const)  # ReLU penalties (<= 0) of the lower / upper bound
    pen_up = torch.zeros_like(const)
    for i in reversed(range(upto)):
        layer = layers[i]
        if isinstance(layer, nn.ReLU):
            l, u = bounds[i]
            d, unstable = _relu_slopes(l, u)
            dl = (d * l * unstable).unsqueeze(1)  # [B, 1, *shape]; nonzero only on unstable neurons
            pen_lo = pen_lo + (dl * (-nu).clamp(min=0)).flatten(2).sum(2)
            pen_up = pen_up + (dl * nu.clamp(min=0)).flatten(2).sum(2)
            nu = d.unsqueeze(1) * nu
        else:
            nu, c = _backward_layer(layer, nu, shapes[i], shapes[i + 1])
            if c is not None:
                const = const + c
    nu = nu.flatten(2)  # [b, S, n_in]
    center = const + (nu * x0.flatten(1).unsqueeze(1)).sum(2)
    if norm == "inf":
        dual = nu.abs().sum(2)
    elif norm == "2":
        dual = nu.norm(dim=2)
    else:
        dual = nu.abs().amax(dim=2)
    radius = eps.unsqueeze(1) * dual
    return center - radius + pen_lo, center + radius - pen_up


def _relu_slopes(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KW slopes: 1 if l >= 0, 0 if u <= 0, u/(u-l) otherwise; plus the unstable mask (as float)."""
    unstable = (l < 0) & (u > 0)
    d = torch.where(l >= 0, torch.ones_like(l), torch.zeros_like(l))
    d = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(l)), d)
    return d, unstable.to(l.dtype)


def _prepare(
    net: nn.Sequential, x0: torch.Tensor, eps: float | torch.Tensor
) -> tuple[list[nn.Module], list[torch.Size], torch.Tensor, torch.Tensor]:
    net64 = copy.deepcopy(net).double().eval()
    layers = list(net64)
    for layer in layers:
        _check(layer)
    x0 = x0.detach().to(torch.float64)
    shapes = [x0.shape[1:]]
    with torch.no_grad():
        z = x0[:1]
        for layer in layers:
            z = layer(z)
            shapes.append(z.shape[1:])
    eps_t = torch.as_tensor(eps, dtype=torch.float64).detach().reshape(-1).expand(x0.shape[0]).clone()
    return layers, shapes, x0, eps_t


def _all_bounds(
    layers: list[nn.Module], shapes: list[torch.Size], x0: torch.Tensor, eps: torch.Tensor, norm: str
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """KW bounds of the input of every ReLU, in order (each uses the bounds of the earlier ones)."""
    bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ReLU):
            shape, n = shapes[i], shapes[i].numel()
            lam = torch.eye(n, dtype=torch.float64).reshape(1, n, *shape)
            low, up = _dual_pass(layers, shapes, bounds, x0, eps, norm, lam, i)
            bounds[i] = (low.reshape(-1, *shape), up.reshape(-1, *shape))
    return bounds


@torch.no_grad()
def kw_preactivation_bounds(
    net: nn.Sequential, x0: torch.Tensor, eps: float | torch.Tensor, norm: str = "inf"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """KW ``(l, u)`` (``[B, *shape]`` float64) of the input of every ReLU, in network order."""
    layers, shapes, x0, eps_t = _prepare(net, x0, eps)
    bounds = _all_bounds(layers, shapes, x0, eps_t, _norm_key(norm))
    return [bounds[i] for i in sorted(bounds)]


@torch.no_grad()
def kw_dual_bounds(
    net: nn.Sequential,
    x0: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "inf",
    C: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wong-Kolter dual (lower, upper) bounds of ``C f(x)`` over the ``norm`` ball of radius
    ``eps`` around ``x0``: two ``[B, S]`` float64 tensors. ``C: [S, K]`` or ``[B, S, K]``;
    ``None`` means the identity (bounds of the ``K`` outputs)."""
    layers, shapes, x0, eps_t = _prepare(net, x0, eps)
    norm = _norm_key(norm)
    bounds = _all_bounds(layers, shapes, x0, eps_t, norm)
    out_shape = shapes[-1]
    if C is None:
        C = torch.eye(out_shape.numel(), dtype=torch.float64)
    C = C.detach().to(torch.float64)
    lam = C.unsqueeze(0) if C.dim() == 2 else C
    if C.dim() not in (2, 3) or lam.shape[-1] != out_shape.numel() or lam.shape[0] not in (1, x0.shape[0]):
        raise ValueError(f"C has shape {tuple(C.shape)}, incompatible with output {tuple(out_shape)} and batch")
    lam = lam.reshape(lam.shape[0], lam.shape[1], *out_shape)
    return _dual_pass(layers, shapes, bounds, x0, eps_t, norm, lam, len(layers))


def kw_dual_lower(
    net: nn.Sequential,
    x0: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "inf",
    C: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wong-Kolter dual lower bound of ``C f(x)``: ``[B, S]`` float64 (see :func:`kw_dual_bounds`)."""
    return kw_dual_bounds(net, x0, eps, norm, C)[0]


def kw_dual_upper(
    net: nn.Sequential,
    x0: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "inf",
    C: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wong-Kolter dual upper bound of ``C f(x)``: literally ``-kw_dual_lower(-C)``."""
    if C is None:
        C = torch.eye(_prepare(net, x0[:1], 0.0)[1][-1].numel(), dtype=torch.float64)
    return -kw_dual_lower(net, x0, eps, norm, -C.to(torch.float64))
