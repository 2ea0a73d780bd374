"""Differentiable bounds: :func:`differentiable_bounds` (the functional form for training code) and the
gradients that :func:`fastcert.bounds` attaches to its certified bounds.

Two modes, one algorithm (docs/architecture.md, "Two modes"):

- *certify* (:func:`fastcert.bounds`, :func:`fastcert.certify`): sound bounds with every rounding error
  accounted for; when grad mode is on and the model's parameters, ``x`` or ``eps`` require grad, the bounds
  also carry ``grad_fn``: the value is the certified bound, the gradient that of the same bound computed in
  nominal arithmetic (the rounding slack, a few ulps, is a constant of the graph).
- *optimize / train* (:func:`differentiable_bounds`): the nominal bound alone, differentiable, at the cost
  of one pass: a training loss or alpha-CROWN's objective, not a certificate.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from fastcert.algorithms.diff import DIFF_METHODS, graph_bounds_diff, region
from fastcert.checks import norm_key
from fastcert.errors import UnsupportedError
from fastcert.network import Network, as_network
from fastcert.options import BoundOptions

_P = {"inf": 0, "2": 2, "1": 1}  # as fastcert.api.NORMS
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, Network]]" = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    # conversion_key: values the converted network copies at conversion (a ClippedReLU's threshold)
    return tuple((name, id(m), type(m), m.training, m.conversion_key() if hasattr(m, "conversion_key") else None)
                 for name, m in model.named_modules())


def cached_network(model: nn.Module | Network) -> Network:
    """The converted network of ``model``, converted again only when its module tree changed (parameters
    and buffers are read live at every call, so training steps need no conversion)."""
    if isinstance(model, Network):
        return model
    fp = _fingerprint(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == fp:
        return hit[1]
    net = as_network(model)
    _CACHE[model] = (fp, net)
    return net


def wants_grad(model: Any, x: Any, eps: Any) -> bool:
    """Whether a bound of ``model`` at ``(x, eps)`` should record autograd: grad mode is on and the model's
    parameters, x or eps require grad."""
    if not torch.is_grad_enabled():
        return False
    if isinstance(x, Tensor) and x.requires_grad:
        return True
    if isinstance(eps, Tensor) and eps.requires_grad:
        return True
    return isinstance(model, nn.Module) and any(p.requires_grad for p in model.parameters())


def _eps_live(eps: Any, B: int, dt: torch.dtype) -> Tensor:
    """eps (a number or a [B] / scalar tensor, possibly requiring grad) as [B] in ``dt``."""
    if isinstance(eps, Tensor):
        e = eps.to(dt)
        return e.expand(B) if e.dim() == 0 else e.reshape(B)
    return torch.full((B,), float(eps), dtype=dt)


def _limit(v: Any, n: int, dt: torch.dtype) -> Tensor | None:
    if v is None:
        return None
    t = torch.as_tensor(v.detach() if isinstance(v, Tensor) else v, dtype=dt)
    return torch.broadcast_to(t, (n,)).contiguous() if t.dim() == 0 else t.reshape(-1)


def diff_region(net: Network, x: Tensor, eps: Any, x_min: Any = None, x_max: Any = None,
                norm: str = "inf") -> tuple[Any, Any]:
    """The op graph of ``net`` at x's shape and the optimize-mode region around x [B, *shape] (live)."""
    B = x.shape[0]
    dt = x.dtype
    shape = tuple(x.shape[1:])
    g = net.op_graph_for(shape)
    n = math.prod(shape)
    e = _eps_live(eps, B, dt)
    return g, region(x.reshape(B, -1), e, _limit(x_min, n, dt), _limit(x_max, n, dt), _P[norm_key(norm)])


def diff_bounds_of(net: Network, x: Tensor, eps: Any, C: Tensor, method: str, x_min: Any = None, x_max: Any = None,
                   norm: str = "inf", lower_slope: str | None = None, alphas: dict[int, Any] | None = None,
                   tangent: str = "bisect", rows: Any = None, upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """The optimize-mode bounds of an already checked problem: x [B, *shape] (live), C [B, S, K] ->
    (lower, upper) [B, S] in x's dtype, differentiable (upper None when not asked). ``method="alpha-crown"``
    with ``rows``: CROWN with those (optimized) slopes."""
    g, reg = diff_region(net, x, eps, x_min, x_max, norm)
    if method == "alpha-crown":
        method = "crown"
    return graph_bounds_diff(g, reg, C.detach().to(x.dtype), method, x.dtype, lower_slope, alphas, tangent, rows,
                             upper)


class _NominalGrad(torch.autograd.Function):
    """The certified bounds as values; their gradient is that of the same bound in nominal arithmetic,
    computed when (and only when) autograd asks for it: the forward pass costs what a bound without
    gradients costs, the backward pass runs the optimize-mode computation and differentiates it."""

    @staticmethod
    def forward(ctx: Any, lo: Tensor, up: Tensor, recompute: Any, *leaves: Tensor) -> tuple[Tensor, Tensor]:
        ctx.recompute = recompute
        ctx.leaves = leaves
        return lo.clone(), up.clone()

    @staticmethod
    def backward(ctx: Any, g_lo: Tensor, g_up: Tensor) -> tuple[Any, ...]:
        with torch.enable_grad():
            dl, du = ctx.recompute()
            want = [i for i, t in enumerate(ctx.leaves) if ctx.needs_input_grad[3 + i]]
            grads = torch.autograd.grad((dl, du), [ctx.leaves[i] for i in want], (g_lo, g_up), allow_unused=True)
        out: list[Any] = [None] * len(ctx.leaves)
        for i, gr in zip(want, grads):
            out[i] = gr
        return (None, None, None, *out)


def attach_nominal_grad(lo: Tensor, up: Tensor, model: Any, x: Any, eps: Any, recompute: Any) -> tuple[Tensor, Tensor]:
    """``lo, up`` (certified, [B, S]) with a ``grad_fn`` w.r.t. the model's parameters, ``x`` and ``eps`` that
    requires grad; ``recompute()`` returns the nominal bounds as a differentiable function of them."""
    leaves: list[Tensor] = []
    if isinstance(model, nn.Module):
        leaves += [p for p in model.parameters() if p.requires_grad]
    for t in (x, eps):
        if isinstance(t, Tensor) and t.requires_grad:
            leaves.append(t)
    return _NominalGrad.apply(lo, up, recompute, *leaves)


def check_diff_request(method: str, norm: str, options: BoundOptions | None) -> None:
    """Refuse, with the reason and the fix, what the optimize mode does not compute."""
    if method not in DIFF_METHODS and method != "alpha-crown":
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(DIFF_METHODS)}")
    norm_key(norm)
    if options is not None and options.intermediate != "intersect":
        raise UnsupportedError(f"differentiable bounds compute intermediate bounds as BoundOptions("
                               f"intermediate='intersect') does (got {options.intermediate!r}); drop the option or "
                               f"call fastcert.bounds under torch.no_grad()")


def differentiable_bounds(model: nn.Module | Network, x: Any, eps: Any, norm: str = "inf",
                          method: str = "crown-ibp", C: Any = None, x_min: Any = None, x_max: Any = None,
                          lower_slope: str | None = None, bound_upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """Bounds of ``C f(x')`` over ``||x' - x||_norm <= eps`` (within ``[x_min, x_max]``) as a differentiable
    function of the model's parameters, ``x`` and ``eps``: for training losses inside ``forward``.

    norm: "inf", "2" or "1". x: [B, *input_shape] (float32/float64); eps: a number, or a scalar / [B] tensor (may require grad);
    C: [S, K] or [B, S, K] (default identity). method: ibp | crown-ibp | crown | fastlin | kw.
    Returns (lower, upper): [B, S], computed in nominal arithmetic by fastcert's kernels (no rounding
    slack: use :func:`fastcert.bounds` for a certificate). ``bound_upper=False`` (as auto_LiRPA's
    ``compute_bounds(bound_upper=False)``): the lower bound alone, upper None -- the back-substitution then
    carries half the rows, what a training loss on margins needs. Example::

        lb, _ = fastcert.differentiable_bounds(model, x, eps, method="crown-ibp", C=margin_spec, bound_upper=False)
        loss = torch.nn.functional.cross_entropy(-lb_padded, y); loss.backward()
    """
    from fastcert.api import make_region, prepare, spec_matrix

    if method == "alpha-crown":
        raise ValueError("differentiable_bounds computes a bound for fixed relaxations; for alpha-CROWN (slopes "
                         "optimized, then certified) call fastcert.bounds(..., method='alpha-crown'), whose bounds "
                         "carry the gradient of the bound with the optimized slopes")
    check_diff_request(method, norm, None)
    net, xd, K = prepare(cached_network(model), x, method)
    xt = x if isinstance(x, Tensor) else xd
    make_region(xd, eps.detach() if isinstance(eps, Tensor) else eps, norm_key(norm), x_min, x_max)  # checks only
    Ct = spec_matrix(C, xd, K)[0]
    return diff_bounds_of(net, xt, eps, Ct, method, x_min, x_max, norm, lower_slope, upper=bound_upper)


__all__ = ["attach_nominal_grad", "cached_network", "check_diff_request", "diff_bounds_of", "diff_region", "differentiable_bounds", "wants_grad"]
