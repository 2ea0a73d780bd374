"""The network IR: a torch ``nn.Module`` converted once into a flat list of fastcert layers.

Supported (inside any nesting of ``nn.Sequential``): Linear, Conv2d (groups=1, dilation=1, zero
padding), ReLU, LeakyReLU, Tanh, Sigmoid, Flatten, BatchNorm1d/2d in eval mode, AvgPool2d,
:class:`fastcert.nn.Normalize`, and Identity / Dropout (eval mode, identity). Per-channel affine maps
(BatchNorm, Normalize) are folded into the Linear / Conv2d right before them, else kept as an
elementwise layer (never into the next layer: see docs/architecture.md). The layer list is built per
input shape (CNNs learn their spatial size from the first input) and cached.

Conversion is a snapshot: every parameter and buffer is copied (float64, CPU) by :func:`_convert`,
so later in-place changes to the torch module are never seen. A module is rebuilt from its
structure only when that structure is all it computes: a subclass that overrides ``forward``, a
forward hook or pre-hook (on any module, or global), an uninitialised lazy module or a weight
parametrization in training mode is refused by name rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from fastcert.layers import Activation, Conv2d, Dense, Diag, Layer, UnsupportedError
from fastcert.layers.affine import channel_expand
from fastcert.nn import Normalize

_U64 = 2.0**-53  # unit roundoff of float64

SUPPORTED = ("Linear, Conv2d (groups=1, dilation=1, zeros padding), ReLU, LeakyReLU, Tanh, Sigmoid, Flatten, "
             "BatchNorm1d/2d (eval), AvgPool2d, fastcert.nn.Normalize, Identity, Dropout (eval)")

# The classes fastcert rebuilds from their structure, most specific first; an instance must run the
# class's own forward (and, for Conv2d, its own _conv_forward), not an override.
_CLASSES: tuple[type, ...] = (nn.Sequential, nn.Linear, nn.Conv2d, nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.Sigmoid,
                              nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d, Normalize, nn.AvgPool2d, nn.Identity,
                              nn.Dropout)
_CALL = ("forward", "__call__", "_call_impl", "_wrapped_call_impl")
_EXTRA_CALL = {nn.Conv2d: ("_conv_forward",)}


@dataclass
class LayerOp:
    """A shape-free description of one module, before the input shape is known."""

    kind: str  # linear conv act flatten chaff avgpool
    where: str  # "position 3 ('features.2', Conv2d)" for error messages
    args: dict[str, Any] = field(default_factory=dict)


def _check_behaviour(m: nn.Module, where: str) -> type | None:
    """The supported class ``m`` is an instance of (None if none), after checking that ``m`` computes
    what that class computes: no overridden ``forward`` (on its class or the instance)."""
    base = next((c for c in _CLASSES if isinstance(m, c)), None)
    if base is None:
        return None
    for name in _CALL + _EXTRA_CALL.get(base, ()):
        if name in vars(m) or getattr(type(m), name) is not getattr(base, name):
            raise ValueError(f"{where}: {type(m).__name__} overrides {name} of {base.__module__}.{base.__name__}, "
                             f"so it may compute something other than the {base.__name__} fastcert would rebuild "
                             f"from its parameters. fastcert does not trace custom forward methods yet: use the "
                             f"plain {base.__name__} (and write the extra computation as supported layers)")
    return base


def _check_hooks(model: nn.Module) -> None:
    """Refuse uninitialised lazy modules, and forward hooks / pre-hooks (which can change any module's
    input or output), global or on any module of the tree."""
    for kind, hooks, reg in (("forward hooks", _torch_module._global_forward_hooks, "register_module_forward_hook"),
                             ("forward pre-hooks", _torch_module._global_forward_pre_hooks,
                              "register_module_forward_pre_hook")):
        if hooks:
            raise ValueError(f"global {kind} are registered (torch.nn.modules.module.{reg}): they can change every "
                             f"module's output, which fastcert cannot see; remove them (handle.remove()) before "
                             f"verifying")
    for name, m in model.named_modules():
        what = repr(name) if name else "the model"
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(f"module {what} ({type(m).__name__}) is a lazy module whose parameters are not "
                             f"initialised yet: run the model once on an input of the right shape first")
        for kind, attr in (("forward hooks", "_forward_hooks"), ("forward pre-hooks", "_forward_pre_hooks")):
            if getattr(m, attr, None):
                extra = (" (torch.nn.utils.weight_norm, spectral_norm and prune work through one: use "
                         "torch.nn.utils.parametrizations.weight_norm / spectral_norm instead, or prune.remove)"
                         if attr == "_forward_pre_hooks" else "")
                raise ValueError(f"module {what} ({type(m).__name__}) has {kind}{extra}; a hook can change the "
                                 f"module's input or output, which fastcert cannot see: remove it "
                                 f"(handle.remove()) before verifying")


def _walk(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaves of the nesting of ``nn.Sequential`` in the order ``forward`` runs them (a module
    that appears twice runs twice, so it is listed twice)."""
    if isinstance(model, nn.Sequential):
        _check_behaviour(model, f"{prefix!r}" if prefix else "the model")
        out: list[tuple[str, nn.Module]] = []
        for name, child in model._modules.items():  # not named_children(): that drops repeated modules
            path = f"{prefix}.{name}" if prefix else name
            if child is None:
                raise ValueError(f"nn.Sequential entry {path!r} is None; torch cannot run it either")
            out.extend(_walk(child, path))
        return out
    return [(prefix or type(model).__name__, model)]


def _snap(t: Any, what: str) -> torch.Tensor:
    """A float64 CPU copy of a parameter or buffer (never a view of it: conversion is a snapshot),
    after checking that it is a dense, real, floating-point, non-empty tensor of finite numbers."""
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        raise ValueError(f"{what} is not initialised (a lazy module): run the model once first")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} is a {type(t).__name__}, not a torch.Tensor")
    if t.layout != torch.strided:
        raise TypeError(f"{what} is a {t.layout} tensor; fastcert needs dense parameters: convert it with "
                        f".to_dense()")
    if t.is_complex():
        raise TypeError(f"{what} is complex ({t.dtype}); fastcert bounds real-valued networks only (it never drops "
                        f"an imaginary part): give the layer real float32/float64 parameters")
    if not t.is_floating_point():
        raise TypeError(f"{what} has dtype {t.dtype}; fastcert needs floating-point parameters (model.double() "
                        f"leaves integer tensors as they are): assign it a float32/float64 tensor")
    if t.device.type == "meta":
        raise ValueError(f"{what} is on the meta device, which holds no values: materialise the model first "
                         f"(model.to_empty(device='cpu') and load_state_dict)")
    if t.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(t.shape)}): a layer with no inputs, no outputs or no "
                         f"channels cannot be bounded; remove it")
    out = t.detach().to(device="cpu", dtype=torch.float64, copy=True)
    _check_finite(out, what)
    return out


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf; fastcert cannot bound a network with non-finite parameters")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _weights(m: nn.Module, where: str, w_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Snapshots of ``m.weight`` ([out, ...] with ``w_dim`` dims) and ``m.bias`` ([out] or None).
    A parametrized weight (torch.nn.utils.parametrize) is read through ``m.weight``, which evaluates
    the parametrization exactly as ``forward`` does."""
    pz = getattr(m, "parametrizations", None)
    if pz is not None and any(p.training for p in pz.modules()):
        raise ValueError(f"{where}: has a parametrized weight in training mode, where the parametrization may "
                         f"change at every forward (spectral_norm's power iteration): call model.eval() first")
    with torch.no_grad():
        W = _snap(m.weight, f"{where} weight")
        b = None if m.bias is None else _snap(m.bias, f"{where} bias")
    if W.dim() != w_dim or (b is not None and tuple(b.shape) != (W.shape[0],)):
        raise ValueError(f"{where}: weight of shape {tuple(W.shape)} and bias of shape "
                         f"{None if b is None else tuple(b.shape)} do not form a {type(m).__name__} layer")
    return W, b


def _conv_op(m: nn.Conv2d, where: str) -> LayerOp:
    if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"{where}: only Conv2d with groups=1, dilation=1, numeric zero padding is supported "
                         f"(got groups={m.groups}, dilation={m.dilation}, padding={m.padding!r}, "
                         f"padding_mode={m.padding_mode!r})")
    st, pad = _pair(m.stride), _pair(m.padding)
    if min(st) < 1 or min(pad) < 0:
        raise ValueError(f"{where}: stride {st} and padding {pad} must be >= 1 and >= 0 (torch refuses them too)")
    W, b = _weights(m, where, 4)
    return LayerOp("conv", where, {"W": W, "b": b, "stride": st, "padding": pad})


_NO_UNDERFLOW = 2.0**-1000  # products / quotients below this may have lost bits to float64's subnormal range


def _no_underflow(v: torch.Tensor, nonzero: torch.Tensor, what: str) -> None:
    """Refuse a computed float64 tensor ``v`` (a product or quotient of the ``nonzero`` entries) whose
    entries fall below 2^-1000: their rounding may be absolute (up to eta64 / 2), which the relative
    error model of the conversion does not carry (docs/architecture.md, "Underflow")."""
    bad = nonzero & (v.abs() < _NO_UNDERFLOW)
    if bool(bad.any()):
        k = int(bad.flatten().nonzero()[0])
        raise ValueError(f"{what}: entry {k} underflows float64 (|value| {float(v.flatten()[k].abs())!r} < 2^-1000), "
                         f"so its rounding error is not covered; rescale the layer's parameters")


def _batchnorm_op(m: nn.modules.batchnorm._BatchNorm, where: str) -> LayerOp:
    if m.training:
        raise ValueError(f"{where}: BatchNorm is in training mode, where its output depends on the batch; "
                         f"call model.eval() before verifying")
    if m.running_mean is None or m.running_var is None:
        raise ValueError(f"{where}: BatchNorm without running statistics (track_running_stats=False) "
                         f"cannot be verified")
    mean, var = _snap(m.running_mean, f"{where} running_mean"), _snap(m.running_var, f"{where} running_var")
    w = None if m.weight is None else _snap(m.weight, f"{where} weight")
    beta = None if m.bias is None else _snap(m.bias, f"{where} bias")
    if any(t is not None and tuple(t.shape) != (m.num_features,) for t in (mean, var, w, beta)):
        raise ValueError(f"{where}: running statistics / affine parameters do not all have shape "
                         f"({m.num_features},)")
    scale = 1.0 / torch.sqrt(var + float(m.eps))
    if w is not None:
        _no_underflow(scale * w, w != 0, f"{where} scale weight / sqrt(running_var + eps)")
        scale = scale * w
    _no_underflow(mean * scale, (mean != 0) & (scale != 0), f"{where} shift running_mean * scale")
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    _check_finite(scale, f"{where} scale")
    _check_finite(shift, f"{where} shift")
    babs = beta.abs() if beta is not None else torch.zeros_like(scale)
    # torch's float64 evaluation of BatchNorm vs this exact affine map: |err| <= a|x| + c
    a = 8 * _U64 * scale.abs()
    c = 8 * _U64 * (mean.abs() * scale.abs() + babs)
    # the per-sample ranks torch accepts: BatchNorm1d [B, C] or [B, C, L], BatchNorm2d [B, C, H, W]
    ranks = (1, 2) if isinstance(m, nn.BatchNorm1d) else (3,)
    return LayerOp("chaff", where, {"scale": scale, "shift": shift, "eval_a": a, "eval_c": c, "ranks": ranks})


def _normalize_op(m: Normalize, where: str) -> LayerOp:
    mean, std = _snap(m.mean, f"{where} mean"), _snap(m.std, f"{where} std")
    if mean.dim() != 1 or mean.shape != std.shape:
        raise ValueError(f"{where}: mean {tuple(mean.shape)} and std {tuple(std.shape)} must be [C] vectors")
    scale, shift = 1.0 / std, -mean / std
    _no_underflow(scale, std != 0, f"{where} scale 1/std")
    _no_underflow(shift, mean != 0, f"{where} shift -mean/std")
    _check_finite(scale, f"{where} scale 1/std")
    _check_finite(shift, f"{where} shift -mean/std")
    # torch computes (x - mean) / std: two roundings, plus ours of 1/std and mean/std
    a, c = 4 * _U64 / std, 4 * _U64 * mean.abs() / std
    return LayerOp("chaff", where, {"scale": scale, "shift": shift, "eval_a": a, "eval_c": c})


def _avgpool_op(m: nn.AvgPool2d, where: str) -> LayerOp:
    k, s, p = _pair(m.kernel_size), _pair(m.stride if m.stride not in (None, [], ()) else m.kernel_size), _pair(m.padding)
    if m.ceil_mode or (not m.count_include_pad and p != (0, 0)):
        raise ValueError(f"{where}: AvgPool2d with ceil_mode=True or count_include_pad=False and padding is "
                         f"not supported")
    if min(k) < 1 or min(s) < 1 or min(p) < 0 or p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{where}: AvgPool2d kernel {k}, stride {s}, padding {p}: torch needs kernel and stride "
                         f">= 1 and 0 <= padding <= kernel // 2")
    if m.divisor_override is not None and m.divisor_override == 0:
        raise ValueError(f"{where}: AvgPool2d divisor_override=0 divides by zero (torch refuses it too)")
    div = m.divisor_override if m.divisor_override is not None else k[0] * k[1]
    return LayerOp("avgpool", where, {"k": k, "stride": s, "padding": p, "div": float(div)})


def _leaf_op(m: nn.Module, base: type | None, where: str) -> LayerOp | None:
    """The op of one leaf module (None for an identity)."""
    if base is nn.Linear:
        W, b = _weights(m, where, 2)
        return LayerOp("linear", where, {"W": W, "b": b})
    if base is nn.Conv2d:
        return _conv_op(m, where)  # type: ignore[arg-type]
    if base is nn.LeakyReLU:
        alpha = float(m.negative_slope)  # type: ignore[arg-type]
        if not np.isfinite(alpha):
            raise ValueError(f"{where}: negative_slope {alpha} is not finite")
        return LayerOp("act", where, {"act": "leaky_relu", "alpha": alpha})
    if base in (nn.ReLU, nn.Tanh, nn.Sigmoid):
        return LayerOp("act", where, {"act": {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}[base],
                                  "alpha": 0.0})
    if base is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
        return LayerOp("flatten", where)
    if base in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _batchnorm_op(m, where)  # type: ignore[arg-type]
    if base is Normalize:
        return _normalize_op(m, where)  # type: ignore[arg-type]
    if base is nn.AvgPool2d:
        return _avgpool_op(m, where)  # type: ignore[arg-type]
    if base in (nn.Identity, nn.Dropout):
        if base is nn.Dropout and m.training:
            raise ValueError(f"{where}: Dropout is in training mode (random); call model.eval() before verifying")
        return None
    raise UnsupportedError(f"{where}: unsupported layer {type(m).__name__}. fastcert supports: {SUPPORTED}. "
                     f"Rewrite the model as an nn.Sequential of these")


def _convert(model: nn.Module) -> list[LayerOp]:
    """The shape-free op list of ``model``; every tensor in it is a float64 copy (a snapshot)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module (e.g. nn.Sequential), got {type(model).__name__}")
    _check_hooks(model)
    ops: list[LayerOp] = []
    for pos, (name, m) in enumerate(_walk(model)):
        where = f"position {pos} ({name!r}, {type(m).__name__})"
        op = _leaf_op(m, _check_behaviour(m, where), where)
        if op is not None:
            ops.append(op)
    if not ops:
        raise ValueError("the model has no layers fastcert can bound")
    return ops


def _shape_key(input_shape: Any, what: str = "input_shape") -> tuple[int, ...]:
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


def _build(ops: list[LayerOp], input_shape: tuple[int, ...]) -> list[Layer]:
    shape = _shape_key(input_shape, "the per-sample input shape")
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
            layers.append(Activation(a["act"], shape, a["alpha"], name=op.where))
        elif op.kind == "flatten":
            shape = (int(np.prod(shape)),)
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
                _no_underflow(W, prev.W64 != 0, f"{fname} folded weight")
                if prev.b64 is not None:
                    _no_underflow(s * prev.b64, prev.b64 != 0, f"{fname} folded bias")
                b = t + (s * prev.b64 if prev.b64 is not None else 0)
                merged: Layer = Dense(W, b, prev.in_shape, name=fname)
            else:
                cs, ct = L.chan  # type: ignore[attr-defined]
                W = prev.W64 * cs[:, None, None, None]
                _no_underflow(W, prev.W64 != 0, f"{fname} folded weight")
                if prev.b64 is not None:
                    _no_underflow(cs * prev.b64, prev.b64 != 0, f"{fname} folded bias")
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


class Network:
    """A verified-ready view of a torch model.

    Build once with :meth:`from_torch` and reuse. A Network is a snapshot: every parameter and
    buffer (weights, biases, BatchNorm statistics, Normalize mean/std, slopes, pool sizes) is copied
    (float64) at conversion, with or without ``input_shape``, so later changes to the torch model,
    in place or not, are never seen; convert again to see them. (Passing the torch module itself to
    :func:`fastcert.bounds` / :func:`~fastcert.certify` / :func:`~fastcert.verify` converts it anew
    on every call, so that path always sees the live module.)
    """

    def __init__(self, ops: list[LayerOp], input_shape: tuple[int, ...] | None = None) -> None:
        self._ops = ops
        self._compiled: dict[tuple[int, ...], list[Layer]] = {}
        self.input_shape = None if input_shape is None else _shape_key(input_shape)
        if self.input_shape is not None:
            self.layers_for(self.input_shape)

    @classmethod
    def from_torch(cls, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> "Network":
        """Convert ``model`` (an ``nn.Sequential``, nesting allowed) into a snapshot of its current
        parameters. ``input_shape`` excludes the batch dimension; when omitted it is taken from the
        first input (and each new shape gets its own layer list, built from the same snapshot).

        Raises ValueError / TypeError naming the module for anything whose output the structure
        does not determine: an unsupported layer, a subclass that overrides ``forward``, forward
        hooks or pre-hooks (global or on any module; ``torch.nn.utils.weight_norm`` is one),
        parameters that are complex, integer, sparse, empty, non-finite or on the meta device, and
        layer / input shapes torch itself would refuse."""
        return cls(_convert(model), input_shape)

    @classmethod
    def from_onnx(cls, src: Any) -> "Network":
        """Load an ONNX network (path, bytes or ModelProto; ``.onnx.gz`` works too).
        See :mod:`fastcert.io.onnx_import` for the supported operators."""
        from fastcert.io.onnx_import import load_onnx

        return load_onnx(src)[0]

    def layers_for(self, input_shape: tuple[int, ...]) -> list[Layer]:
        key = _shape_key(input_shape, "the per-sample input shape")
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

