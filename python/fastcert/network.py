"""The network IR: a torch ``nn.Module`` converted once into a flat list of fastcert layers.

Supported (inside any nesting of ``nn.Sequential``): Linear, Conv2d (groups=1, dilation=1, zero
padding), ReLU, LeakyReLU, Tanh, Sigmoid, Flatten, BatchNorm1d/2d in eval mode, AvgPool2d,
:class:`fastcert.nn.Normalize`, and Identity / Dropout (eval mode, identity). Per-channel affine maps
(BatchNorm, Normalize) are folded into the Linear / Conv2d right before them, else kept as an
elementwise layer (never into the next layer: see docs/architecture.md). The layer list is built per input shape (CNNs learn their spatial size
from the first input) and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcert.layers import Activation, Conv2d, Dense, Diag, Layer
from fastcert.layers.affine import channel_expand
from fastcert.nn import Normalize

_U64 = 2.0**-53  # unit roundoff of float64

SUPPORTED = ("Linear, Conv2d (groups=1, dilation=1, zeros padding), ReLU, LeakyReLU, Tanh, Sigmoid, Flatten, "
             "BatchNorm1d/2d (eval), AvgPool2d, fastcert.nn.Normalize, Identity, Dropout (eval)")


@dataclass
class _Op:
    """A shape-free description of one module, before the input shape is known."""

    kind: str  # linear conv act flatten chaff avgpool
    where: str  # "position 3 ('features.2', Conv2d)" for error messages
    args: dict[str, Any] = field(default_factory=dict)


def _walk(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            out.extend(_walk(child, f"{prefix}.{name}" if prefix else name))
        return out
    return [(prefix or type(model).__name__, model)]


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf; fastcert cannot bound a network with non-finite parameters")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _convert(model: nn.Module) -> list[_Op]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module (e.g. nn.Sequential), got {type(model).__name__}")
    mods = _walk(model)
    ops: list[_Op] = []
    for pos, (name, m) in enumerate(mods):
        where = f"position {pos} ({name!r}, {type(m).__name__})"
        if isinstance(m, nn.Linear):
            _check_finite(m.weight, f"{where} weight")
            if m.bias is not None:
                _check_finite(m.bias, f"{where} bias")
            ops.append(_Op("linear", where, {"W": m.weight.detach(), "b": None if m.bias is None else m.bias.detach()}))
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"{where}: only Conv2d with groups=1, dilation=1, numeric zero padding is supported "
                                 f"(got groups={m.groups}, dilation={m.dilation}, padding={m.padding!r}, "
                                 f"padding_mode={m.padding_mode!r})")
            _check_finite(m.weight, f"{where} weight")
            if m.bias is not None:
                _check_finite(m.bias, f"{where} bias")
            ops.append(_Op("conv", where, {"W": m.weight.detach(), "b": None if m.bias is None else m.bias.detach(),
                                           "stride": _pair(m.stride), "padding": _pair(m.padding)}))
        elif isinstance(m, nn.ReLU):
            ops.append(_Op("act", where, {"act": "relu", "alpha": 0.0}))
        elif isinstance(m, nn.LeakyReLU):
            ops.append(_Op("act", where, {"act": "leaky_relu", "alpha": float(m.negative_slope)}))
        elif isinstance(m, nn.Tanh):
            ops.append(_Op("act", where, {"act": "tanh", "alpha": 0.0}))
        elif isinstance(m, nn.Sigmoid):
            ops.append(_Op("act", where, {"act": "sigmoid", "alpha": 0.0}))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
            ops.append(_Op("flatten", where))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.training:
                raise ValueError(f"{where}: BatchNorm is in training mode, where its output depends on the batch; "
                                 f"call model.eval() before verifying")
            if m.running_mean is None or m.running_var is None:
                raise ValueError(f"{where}: BatchNorm without running statistics (track_running_stats=False) "
                                 f"cannot be verified")
            var = m.running_var.detach().double()
            scale = 1.0 / torch.sqrt(var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight.detach().double()
            shift = -m.running_mean.detach().double() * scale
            if m.bias is not None:
                shift = shift + m.bias.detach().double()
            _check_finite(scale, f"{where} scale")
            _check_finite(shift, f"{where} shift")
            beta = m.bias.detach().double().abs() if m.bias is not None else torch.zeros_like(scale)
            # torch's float64 evaluation of BatchNorm vs this exact affine map: |err| <= a|x| + c
            a = 8 * _U64 * scale.abs()
            c = 8 * _U64 * (m.running_mean.detach().double().abs() * scale.abs() + beta)
            ops.append(_Op("chaff", where, {"scale": scale, "shift": shift, "eval_a": a, "eval_c": c}))
        elif isinstance(m, Normalize):
            std = m.std.double()
            scale, shift = 1.0 / std, -m.mean.double() / std
            _check_finite(scale, f"{where} scale 1/std")
            _check_finite(shift, f"{where} shift -mean/std")
            # torch computes (x - mean) / std: two roundings, plus ours of 1/std and mean/std
            a, c = 4 * _U64 / std, 4 * _U64 * m.mean.double().abs() / std
            ops.append(_Op("chaff", where, {"scale": scale, "shift": shift, "eval_a": a, "eval_c": c}))
        elif isinstance(m, nn.AvgPool2d):
            k, s, p = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding)
            if m.ceil_mode or (not m.count_include_pad and p != (0, 0)):
                raise ValueError(f"{where}: AvgPool2d with ceil_mode=True or count_include_pad=False and padding is "
                                 f"not supported")
            div = m.divisor_override if m.divisor_override else k[0] * k[1]
            ops.append(_Op("avgpool", where, {"k": k, "stride": s, "padding": p, "div": float(div)}))
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            if isinstance(m, nn.Dropout) and m.training:
                raise ValueError(f"{where}: Dropout is in training mode (random); call model.eval() before verifying")
        else:
            raise ValueError(f"{where}: unsupported layer {type(m).__name__}. fastcert supports: {SUPPORTED}. "
                             f"Rewrite the model as an nn.Sequential of these")
    if not ops:
        raise ValueError("the model has no layers fastcert can bound")
    return ops


def _build(ops: list[_Op], input_shape: tuple[int, ...]) -> list[Layer]:
    shape = tuple(int(s) for s in input_shape)
    layers: list[Layer] = []
    for op in ops:
        a = op.args
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
            layers.append(Activation(a["act"], shape, a["alpha"], name=op.where))
        elif op.kind == "flatten":
            shape = (int(np.prod(shape)),)
            continue
        elif op.kind == "chaff":
            C = shape[0]
            if a["scale"].numel() != C:
                raise ValueError(f"{op.where}: has {a['scale'].numel()} channels but its input has shape {shape} "
                                 f"({C} channels)")
            d = Diag(channel_expand(a["scale"], shape), channel_expand(a["shift"], shape), shape, name=op.where)
            d.chan = (a["scale"], a["shift"])  # type: ignore[attr-defined]
            d.eval_in = (channel_expand(a["eval_a"], shape), channel_expand(a["eval_c"], shape))
            layers.append(d)
        shape = layers[-1].out_shape
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
            if isinstance(prev, Dense):
                W = prev.W64 * s[:, None]
                b = t + (s * prev.b64 if prev.b64 is not None else 0)
                merged: Layer = Dense(W, b, prev.in_shape, name=prev.name + " (+ " + L.name + ")")
            else:
                cs, ct = L.chan  # type: ignore[attr-defined]
                W = prev.W64 * cs[:, None, None, None]
                b = ct + (cs * prev.b64 if prev.b64 is not None else 0)
                merged = Conv2d(W, b, prev.stride, prev.padding, prev.in_shape,
                                name=prev.name + " (+ " + L.name + ")")
            pb = prev.bias_flat64()
            sb = (s * pb).abs() if pb is not None else torch.zeros_like(s)
            # torch: y = BN(z), err <= ea|z| + ec with |z| <= (|y| + |t|)/|s|, i.e. ea/|s| (|y| + |t|);
            # plus the rounding of our folded bias s*b + t
            rel = torch.where(s != 0, ea / s.abs().clamp_min(1e-300), torch.zeros_like(s))
            merged.eval_out = (rel, rel * t.abs() + ec + 4 * _U64 * (sb + t.abs()))  # type: ignore[attr-defined]
            out[-1] = merged
            continue
        out.append(L)
    return out


class Network:
    """A verified-ready view of a torch model.

    Build once with :meth:`from_torch` and reuse: the weights are copied (float64) at conversion, so
    later changes to the torch model are not seen.
    """

    def __init__(self, ops: list[_Op], input_shape: tuple[int, ...] | None = None) -> None:
        self._ops = ops
        self._compiled: dict[tuple[int, ...], list[Layer]] = {}
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        if self.input_shape is not None:
            self.layers_for(self.input_shape)

    @classmethod
    def from_torch(cls, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> "Network":
        """Convert ``model`` (an ``nn.Sequential``, nesting allowed). ``input_shape`` excludes the batch
        dimension; when omitted it is taken from the first input."""
        return cls(_convert(model), input_shape)

    @classmethod
    def from_onnx(cls, src: Any) -> "Network":
        """Load an ONNX network (path, bytes or ModelProto; ``.onnx.gz`` works too).
        See :mod:`fastcert.io.onnx_import` for the supported operators."""
        from fastcert.io.onnx_import import load_onnx

        return load_onnx(src)[0]

    def layers_for(self, input_shape: tuple[int, ...]) -> list[Layer]:
        key = tuple(int(s) for s in input_shape)
        if self.input_shape is not None and key != self.input_shape:
            raise ValueError(f"input has per-sample shape {key} but the network was built for {self.input_shape}")
        layers = self._compiled.get(key)
        if layers is None:
            layers = _build(self._ops, key)
            self._compiled[key] = layers
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the network with fastcert's kernels. x: [B, *input_shape] -> [B, n_out]."""
        layers = self.layers_for(tuple(x.shape[1:]))
        h = x.reshape(x.shape[0], -1).contiguous()
        for L in layers:
            h = L.forward(h)
        return h

    __call__ = forward

    def summary(self, input_shape: tuple[int, ...]) -> str:
        return "\n".join(f"{i:3d}  {L.describe()}   [{L.name}]" for i, L in enumerate(self.layers_for(input_shape)))


def gamma_n(n: int, dtype: torch.dtype) -> float:
    """Rounding factor for a sum of ``n`` rounded products in ``dtype``: 1.01 (n+2)u / (1-(n+2)u).

    A dot product of length n computed in any order with any blocking has error at most
    ``gamma_n * sum |a_i b_i|``; the +2 and the 1% margin absorb the few further roundings around it.
    """
    u = torch.finfo(dtype).eps / 2
    k = (n + 2) * u
    if k >= 0.5:
        raise ValueError(f"a sum of {n} terms is too long for a sound rounding analysis in {dtype}")
    return 1.01 * k / (1.0 - k)


def gamma_for(layers: list[Layer], dtype: torch.dtype) -> float:
    """The largest per-operation factor of the network (``gamma_n`` of its longest sum), doubled.

    Used for the bound on the rounding error of a standard (float64) evaluation of the network.
    """
    return 2.0 * gamma_n(10 + max(max(L.n_in, L.n_out) for L in layers), dtype)


def as_network(model: "nn.Module | Network") -> Network:
    return model if isinstance(model, Network) else Network.from_torch(model)

