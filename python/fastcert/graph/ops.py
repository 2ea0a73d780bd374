"""Shape-free op lists (what the front ends produce) and the chain builder.

A front end (torch: :mod:`fastcert.graph.from_torch`; ONNX: :mod:`fastcert.io.onnx_import`) turns a model
into a list of :class:`LayerOp`; :func:`build_chain` turns a chain of them into the layer list the chain
engine runs, for one input shape, and :func:`fastcert.graph.ir.build_graph` any of them into a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastcert.layers.base import Layer
from fastcert.primitives.affine import channel_expand
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.linear import Dense
from fastcert.primitives.registry import build as build_activation

_U64 = 2.0**-53  # unit roundoff of float64


@dataclass
class LayerOp:
    """A shape-free description of one module, before the input shape is known."""

    kind: str  # linear conv act flatten reshape chaff avgpool | graph only: add cat maxpool identity
    where: str  # "position 3 ('features.2', Conv2d)" for error messages
    args: dict[str, Any] = field(default_factory=dict)
    # the values this op reads: 0 is the network input, k the output of op k-1; None: the previous op's
    inputs: tuple[int, ...] | None = None
    # the torch module it was converted from (read live by the differentiable bounds); None for ONNX
    module: Any = field(default=None, compare=False, repr=False)


CHAIN_KINDS = frozenset({"linear", "conv", "act", "flatten", "reshape", "chaff", "avgpool", "identity"})


def is_chain(ops: list[LayerOp]) -> bool:
    """Whether the ops form a chain the chain engine runs: each reads the previous one's output and
    every op is one of CHAIN_KINDS (elementwise activations, affine maps and reshapes)."""
    return all(op.kind in CHAIN_KINDS and (op.inputs is None or op.inputs == (k,)) for k, op in enumerate(ops))



_NO_UNDERFLOW = 2.0**-1000  # products / quotients below this may have lost bits to float64's subnormal range


def no_underflow(v: torch.Tensor, nonzero: torch.Tensor, what: str) -> None:
    """Refuse a computed float64 tensor ``v`` (a product or quotient of the ``nonzero`` entries) whose
    entries fall below 2^-1000: their rounding may be absolute (up to eta64 / 2), which the relative
    error model of the conversion does not carry (docs/architecture.md, "Underflow")."""
    bad = nonzero & (v.abs() < _NO_UNDERFLOW)
    if bool(bad.any()):
        k = int(bad.flatten().nonzero()[0])
        raise ValueError(f"{what}: entry {k} underflows float64 (|value| {float(v.flatten()[k].abs())!r} < 2^-1000), "
                         f"so its rounding error is not covered; rescale the layer's parameters")


def shape_key(input_shape: Any, what: str = "input_shape") -> tuple[int, ...]:
    """A per-sample shape as a tuple of positive ints (a zero-size input cannot be bounded)."""
    try:
        dims = list(input_shape)
    except TypeError:
        raise TypeError(f"{what} must be a tuple of ints (the per-sample shape, without the batch dimension), "
                        f"got {input_shape!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims) or not dims:
        raise TypeError(f"{what} must be a non-empty tuple of ints (the per-sample shape, without the batch "
                        f"dimension), got {input_shape!r}")
    key = tuple(int(d) for d in dims)
    if min(key) < 1:
        raise ValueError(f"{what} {key} has a zero-size (or negative) dimension: there is nothing to bound; pass "
                         f"inputs with at least one feature")
    return key


def reshape_target(shape: tuple[int, ...], target: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The per-sample shape ``target`` (one entry may be -1) for a tensor of per-sample shape ``shape``."""
    n = int(np.prod(shape))
    t = [int(d) for d in target]
    if t.count(-1) > 1 or any(d < -1 or d == 0 for d in t):
        raise ValueError(f"{where}: cannot reshape per-sample shape {shape} to {tuple(target)}")
    if -1 in t:
        rest = int(np.prod([d for d in t if d != -1])) if len(t) > 1 else 1
        if n % rest:
            raise ValueError(f"{where}: cannot reshape per-sample shape {shape} ({n} entries) to {tuple(target)}")
        t[t.index(-1)] = n // rest
    if int(np.prod(t)) != n:
        raise ValueError(f"{where}: cannot reshape per-sample shape {shape} ({n} entries) to {tuple(target)}")
    return tuple(t)


def make_layer(op: LayerOp, shape: tuple[int, ...]) -> Layer:
    """The primitive of one affine / elementwise op on an input of per-sample ``shape``."""
    layers = build_chain([op], shape, finish=False)
    return layers[0]


def build_chain_default(ops: list[LayerOp], input_shape: tuple[int, ...]) -> list[Layer]:
    return build_chain(ops, input_shape)


def build_chain(ops: list[LayerOp], input_shape: tuple[int, ...], finish: bool = True) -> list[Layer]:
    shape = shape_key(input_shape, "the per-sample input shape")
    layers: list[Layer] = []
    for op in ops:
        a = op.args
        if op.kind in ("linear", "conv") and a["W"].numel() == 0:
            raise ValueError(f"{op.where}: its weight has zero size {tuple(a['W'].shape)} (no inputs, outputs or "
                             f"kernel entries); a zero-size layer cannot be bounded")
        if op.kind == "linear":
            n = int(np.prod(shape))
            if len(shape) != 1:
                raise ValueError(f"{op.where}: Linear applied to a tensor of shape {shape}; add nn.Flatten() before it")
            if a["W"].shape[1] != n:
                raise ValueError(f"{op.where}: Linear expects {a['W'].shape[1]} input features but receives {n} "
                                 f"(input shape {shape})")
            layers.append(Dense(a["W"], a["b"], shape, name=op.where))
        elif op.kind in ("conv", "avgpool"):
            if len(shape) != 3:
                raise ValueError(f"{op.where}: needs a [C, H, W] input, got shape {shape}")
            if op.kind == "conv":
                W, b, st, pad = a["W"], a["b"], a["stride"], a["padding"]
            else:
                C = shape[0]
                W = torch.zeros(C, C, *a["k"], dtype=torch.float64)
                W[torch.arange(C), torch.arange(C)] = 1.0 / a["div"]
                b, st, pad = None, a["stride"], a["padding"]
            layers.append(Conv2d(W, b, st, pad, shape, name=op.where))  # type: ignore[arg-type]
        elif op.kind == "act":
            layers.append(build_activation(a["act"], shape, a, op.where))
        elif op.kind == "flatten":
            shape = (int(np.prod(shape)),)
            continue
        elif op.kind == "reshape":
            shape = reshape_target(shape, a["shape"], op.where)
            continue
        elif op.kind == "identity":
            continue
        elif op.kind == "chaff":
            C = shape[0]
            ranks = a.get("ranks")
            if ranks is not None and len(shape) not in ranks:
                need = " or ".join({1: "[B, C]", 2: "[B, C, L]", 3: "[B, C, H, W]"}[r] for r in ranks)
                raise ValueError(f"{op.where}: needs a {need} input (torch refuses any other), but its input has "
                                 f"per-sample shape {shape}")
            if a["scale"].numel() != C:
                raise ValueError(f"{op.where}: has {a['scale'].numel()} channels but its input has shape {shape} "
                                 f"({C} channels)")
            d = Diag(channel_expand(a["scale"], shape), channel_expand(a["shift"], shape), shape, name=op.where)
            d.chan = (a["scale"], a["shift"])  # type: ignore[attr-defined]
            d.eval_in = (channel_expand(a["eval_a"], shape), channel_expand(a["eval_c"], shape))
            layers.append(d)
        shape = layers[-1].out_shape
    if not finish:
        return layers
    layers = _fold(layers)
    if not layers[-1].is_affine:  # specs act on an affine output; an identity layer is exact
        n = layers[-1].n_out
        layers.append(Dense(torch.eye(n, dtype=torch.float64), None, (n,), name="output identity"))
    return layers


def _fold(layers: list[Layer]) -> list[Layer]:
    """Fold each Diag (BatchNorm / Normalize) into the Dense / Conv2d right before it (exact in real
    arithmetic: ``s*(Wx+b)+t``), recording on the merged layer how far torch's own float64 evaluation
    of the unfolded pair may differ (``eval_out``: ``a|y| + c`` per output). A Diag with no affine
    layer before it stays an elementwise layer: folding it into the *next* layer would hide torch's
    rounding of ``x - mean``, which can survive a cancellation in that layer's weights."""
    out: list[Layer] = []
    for L in layers:
        prev = out[-1] if out else None
        if (isinstance(L, Diag) and isinstance(prev, (Dense, Conv2d)) and L.in_shape == prev.out_shape
                and getattr(prev, "eval_out", None) is None
                and (isinstance(prev, Dense) or hasattr(L, "chan"))):
            s, t = L.W64, L.b64
            assert t is not None
            ea, ec = L.eval_in  # type: ignore[attr-defined]
            fname = prev.name + " (+ " + L.name + ")"
            if isinstance(prev, Dense):
                W = prev.W64 * s[:, None]
                no_underflow(W, prev.W64 != 0, f"{fname} folded weight")
                if prev.b64 is not None:
                    no_underflow(s * prev.b64, prev.b64 != 0, f"{fname} folded bias")
                b = t + (s * prev.b64 if prev.b64 is not None else 0)
                merged: Layer = Dense(W, b, prev.in_shape, name=fname)
            else:
                cs, ct = L.chan  # type: ignore[attr-defined]
                W = prev.W64 * cs[:, None, None, None]
                no_underflow(W, prev.W64 != 0, f"{fname} folded weight")
                if prev.b64 is not None:
                    no_underflow(cs * prev.b64, prev.b64 != 0, f"{fname} folded bias")
                b = ct + (cs * prev.b64 if prev.b64 is not None else 0)
                merged = Conv2d(W, b, prev.stride, prev.padding, prev.in_shape, name=fname)
            pb = prev.bias_flat64()
            sb = (s * pb).abs() if pb is not None else torch.zeros_like(s)
            # torch: y = BN(z), err <= ea|z| + ec with |z| <= (|y| + |t|)/|s|, i.e. ea/|s| (|y| + |t|);
            # plus the rounding of our folded bias s*b + t
            rel = torch.where(s != 0, ea / torch.where(s != 0, s.abs(), torch.ones_like(s)), torch.zeros_like(s))
            merged.eval_out = (rel, rel * t.abs() + ec + 4 * _U64 * (sb + t.abs()))  # type: ignore[attr-defined]
            out[-1] = merged
            continue
        out.append(L)
    return out

