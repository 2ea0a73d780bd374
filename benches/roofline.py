"""Floating-point operations and bytes a bound method must do on a case (the roofline's x-axis).

Counts are of the work the *algorithm* needs, not of what any implementation happens to do:

- ``ibp``: two products per affine layer and sample (``W c`` and ``|W| r``); the last layer is fused
  with the specification, ``C W`` once plus ``S`` rows against the box.
- back-substitution (``crown``, ``kw``, the intermediate bounds): a row pushed back through an affine
  layer costs that layer's multiply-adds (a dense layer ``n_in n_out``; a convolution
  ``OC OH OW C KH KW``), each counted as 2 flops. The rows are the neurons that must be bounded:
  for ``crown`` each sample's neurons that interval arithmetic cannot prove stable (per sample, as
  fastcert reports them), twice (lower and upper); for ``kw`` / Fast-Lin every neuron, once (its
  relaxation is symmetric, so one pass gives both bounds). The first product of an intermediate
  bound is a gather of the layer's own rows and costs nothing. The rows of a convolution's neurons
  in a Conv/activation chain are non-zero only on their receptive field, so through each earlier
  convolution they cost the transposed convolution of that window (``C h w`` outputs of ``C_in KH KW``
  multiply-adds), not of the whole image (``linear_bounds.patch_geometry``; auto_LiRPA's patches),
  where the window is smaller than the image. (fastcert's own choice, ``patches_cheaper``, also
  weighs that a window pass bounds whole channels; on these cases both choose windows.)
- the specification (``S`` rows) through every layer, once for symmetric relaxations, twice otherwise.

Bytes: every product reads its weights once and reads/writes its coefficient rows once
(``rows * (n_in + n_out) * itemsize``); elementwise passes read/write their rows once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fastcert.algorithms.linear_bounds import (
    METHODS,
    linear_bounds,
    patch_geometry,
    patch_row_macs,
    patch_steps,
)
from fastcert.api import make_region
from fastcert.layers.base import Layer
from fastcert.network import Network
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.linear import Dense


def macs(L: Layer) -> int:
    """Multiply-adds of applying layer L (or its transpose) to one vector."""
    if isinstance(L, Dense):
        return L.n_in * L.n_out
    if isinstance(L, Conv2d):
        OC, OH, OW = L.out_shape
        W = L.W64
        return OC * OH * OW * int(W.shape[1]) * int(W.shape[2]) * int(W.shape[3])
    if isinstance(L, Diag):
        return L.n_out
    return 0


def n_weights(L: Layer) -> int:
    if isinstance(L, (Dense, Conv2d)):
        return int(L.W64.numel())
    if isinstance(L, Diag):
        return L.n_out
    return 0


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float
    rows: dict[int, float]  # activation index -> mean rows per sample bounded there


def count(net: Network, x: torch.Tensor, eps: float, method: str, C: torch.Tensor) -> Work:
    """The flops and bytes ``method`` must do for ``C f(x')`` on the L-inf ball (see module docstring)."""
    layers = net.layers_for(tuple(x.shape[1:]))
    B, S = C.shape[0], C.shape[1]
    item = x.element_size()
    flops = 0.0
    byts = 0.0
    aff = [i for i, L in enumerate(layers) if L.is_affine]
    # the interval pass: every method runs it (CROWN/KW use it for the stable-neuron test and the
    # first layer); the last affine layer is fused with C for IBP only
    for i in aff:
        L = layers[i]
        if method == "ibp" and i == aff[-1]:
            continue
        flops += B * 2 * 2 * macs(L)
        byts += 2 * n_weights(L) * item + B * 2 * (L.n_in + L.n_out) * item
    cfg = METHODS[method]
    if cfg is None:
        L = layers[aff[-1]]
        flops += 2 * S * macs(L) * B + B * 2 * S * 2 * L.n_in  # C W, then 2S rows against the box
        byts += n_weights(L) * item + B * 2 * S * L.n_in * item
        return Work(flops, byts, {})
    stats: dict = {}
    prob = make_region(x.to(torch.float64), eps, "inf", None, None)
    linear_bounds(layers, prob, C.to(torch.float64), method, stats=stats)
    dirs = 1 if cfg[0] == "parallel" else 2
    rows = {i: float(r.double().mean()) for i, r in stats.get("rows", {}).items()}
    for i, rmean in rows.items():
        R = B * rmean * dirs
        steps = patch_steps(layers, i)
        if steps is not None:
            win, full = patch_row_macs(layers, i, steps)
            if win < full:  # windowed rows: each step's transposed convolution on a window
                flops += 2 * R * win
                geo = patch_geometry(layers, i, steps)
                for k, j in enumerate(steps):
                    C_a, h, w = geo[k][:3]
                    C_n, hn, wn = geo[k + 1][:3]
                    byts += (n_weights(layers[j - 1]) + R * (C_a * h * w + C_n * hn * wn)) * item
                continue
        for j in range(i - 1):  # layers i-2 .. 0 (layer i-1's rows are gathered)
            L = layers[j]
            flops += 2 * R * macs(L)
            byts += (n_weights(L) + R * (L.n_in + L.n_out)) * item
    R = B * S * dirs
    for L in layers:
        flops += 2 * R * macs(L)
        byts += (n_weights(L) + R * (L.n_in + L.n_out)) * item
    return Work(flops, byts, rows)
