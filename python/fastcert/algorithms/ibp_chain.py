"""IBP of a chain in one core call (``_C.ibp_chain``, csrc/ibp/chain.cpp): the same kernels, in the same order,
as the Python-driven path of :func:`fastcert.algorithms.linear_bounds.linear_bounds` with ``method="ibp"``,
without its per-call cost (~25 kernel calls and ~40 tensor allocations driven from Python: about a third of an
IBP call at batch 32 on the CNN bench cases, issue #10 point 5b).

Chains of dense, conv2d and plain ReLU layers with a dense last layer qualify; anything else (diagonal /
BatchNorm layers, other activations, a specification rounded from float64, a batch too large for the memory
budget) takes the Python path, which computes the same bounds (tested: ``tests/test_ibp_chain.py``)."""

from __future__ import annotations

from typing import Any

import torch

from fastcert._ext import _C
from fastcert.algorithms.slack import eval_underflow, raise_overflow
from fastcert.layers.base import Layer, underflow_slack_tiny
from fastcert.options import BoundOptions
from fastcert.primitives.base import Elementwise
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.linear import Dense
from fastcert.primitives.relu import ReLU
from fastcert.rounding import gamma_for, gamma_n

_RELU = ("relu",)


def _plain_affine(L: Layer) -> bool:
    return type(L) in (Dense, Conv2d) and getattr(L, "eval_in", None) is None and \
        getattr(L, "eval_out", None) is None


def qualifies(layers: list[Layer]) -> bool:
    """Whether ``_C.ibp_chain`` computes this chain's IBP bounds: dense / conv2d / plain ReLU layers, an affine
    first and a dense last layer, no two activations in a row (what the Python path's evaluation slack fuses)."""
    if not layers or not _plain_affine(layers[0]) or type(layers[-1]) is not Dense:
        return False
    prev_act = False
    for L in layers:
        act = isinstance(L, ReLU) and not isinstance(L, Elementwise)
        if not (act or _plain_affine(L)) or (act and prev_act):
            return False
        prev_act = act
    return True


def chain_step(L: Layer, dt: torch.dtype) -> tuple:
    """The constants of layer L's steps in ``dtype`` (see csrc/ibp/chain.cpp), derived once per dtype."""
    if isinstance(L, ReLU):
        return _RELU
    cache = L.__dict__.setdefault("_ibp_chain_steps", {})
    t = cache.get(dt)
    if t is not None:
        return t
    p = L.params(dt)  # type: ignore[attr-defined]
    gamma, tiny = gamma_n(L.fan_in, dt), underflow_slack_tiny(L.fan_in, dt)  # type: ignore[attr-defined]
    rowabs64 = L.params(torch.float64).rowabs  # type: ignore[attr-defined]
    uf64 = eval_underflow(L)
    if isinstance(L, Dense):
        W, absW, bias, absb, rowabs, rownorm = p.W, p.absW, p.bias, p.absbias, p.rowabs, p.rownorm
        t = ("dense", W, absW, bias, rowabs, rownorm, absb, gamma, tiny, rowabs64, uf64,
             gamma_n(L.back_depth, dt), gamma_n(L.n_out, dt), L.back_len, gamma_n(L.n_in, dt))
    else:
        assert isinstance(L, Conv2d)
        # never the last layer here: in float32 the cheaper window-max magnitude (as interval_affine's
        # exact_g=False), unless a kernel sum overflows the dtype
        S = L.finite_kernel_sums(dt) if dt == torch.float32 else None
        wsum = torch.empty(0, dtype=dt) if S is None else S
        _, H, Wd = L.in_shape
        t = ("conv2d", p.W, p.absW, L.channel_bias(dt), gamma, tiny, H, Wd, L.stride[0], L.stride[1],
             L.padding[0], L.padding[1], wsum, rowabs64, uf64, L.n_out)
    cache[dt] = t
    return t


def ibp_chain(layers: list[Layer], prob: Any, C: torch.Tensor, opts: BoundOptions
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """IBP bounds of ``C f(x)`` over ``prob``'s region in one core call, or None where the chain does not
    qualify (:func:`qualifies`) or the specification's rows would exceed ``opts.lambda_bytes`` in one piece
    (the Python path splits the batch). C: [B, S, K] contiguous -> ([B, S], [B, S])."""
    if not qualifies(layers):
        return None
    dt = prob.x0.dtype
    B, S = C.shape[0], C.shape[1]
    if B * S * max(layers[-1].n_in, layers[-1].n_out) * prob.x0.element_size() > opts.lambda_bytes:
        return None
    steps = [chain_step(L, dt) for L in layers]
    lo, hi = torch.empty(B, S, dtype=dt), torch.empty(B, S, dtype=dt)
    code = _C.ibp_chain(steps, prob.l0, prob.u0, C, prob.eps, gamma_for(layers, torch.float64), lo, hi)
    if code != -1:
        raise_overflow([L for L in layers if L.is_affine], code, dt)
    return lo, hi
