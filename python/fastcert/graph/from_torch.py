"""The torch front end: an ``nn.Module`` converted once into a shape-free op list (a snapshot).

``nn.Sequential`` (any nesting) and single supported modules are read by walking their children; any
other module is traced with ``torch.fx``, so ``forward`` methods with residual connections
(``x + f(x)``), ``torch.cat``, ``flatten`` / ``view`` / ``reshape`` and functional activations work.
Conversion is a snapshot: every parameter and buffer is copied (float64, CPU), so later in-place
changes to the torch module are never seen. A module is rebuilt from its structure only when that
structure is all it computes: a supported class whose ``forward`` is overridden, a forward hook or
pre-hook, an uninitialised lazy module or a weight parametrization in training mode is refused by
name rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from fastcert.errors import UnsupportedError
from fastcert.graph.ops import LayerOp, no_underflow
from fastcert.nn import Normalize
from fastcert.primitives import registry as activations

_U64 = 2.0**-53  # unit roundoff of float64

SUPPORTED = ("Linear, Conv2d (groups=1, dilation=1, zeros padding), ReLU, LeakyReLU, Tanh, Sigmoid, "
             "fastcert.nn.Arctan, Hardtanh, ReLU6, fastcert.nn.ClippedReLU, Flatten, "
             "BatchNorm1d/2d (eval), AvgPool2d, MaxPool2d (dilation 1), fastcert.nn.Normalize, Identity, "
             "Dropout (eval); in a forward method also: the sum / difference of two tensors, torch.cat, "
             "flatten / view / reshape, the functional forms of the activations and torch.clamp with number bounds")

# The classes fastcert rebuilds from their structure, most specific first; an instance must run the
# class's own forward (and, for Conv2d, its own _conv_forward), not an override.
_CLASSES: tuple[type, ...] = (nn.Sequential, nn.Linear, nn.Conv2d) + activations.MODULE_TYPES + (
                              nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d, Normalize, nn.AvgPool2d, nn.MaxPool2d,
                              nn.Identity, nn.Dropout)
_CALL = ("forward", "__call__", "_call_impl", "_wrapped_call_impl")
_EXTRA_CALL = {nn.Conv2d: ("_conv_forward",)}


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


def check_hooks(model: nn.Module) -> None:
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
        no_underflow(scale * w, w != 0, f"{where} scale weight / sqrt(running_var + eps)")
        scale = scale * w
    no_underflow(mean * scale, (mean != 0) & (scale != 0), f"{where} shift running_mean * scale")
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
    no_underflow(scale, std != 0, f"{where} scale 1/std")
    no_underflow(shift, mean != 0, f"{where} shift -mean/std")
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


def _maxpool_op(m: nn.MaxPool2d, where: str) -> LayerOp:
    k = _pair(m.kernel_size)
    st = _pair(m.stride if m.stride not in (None, [], ()) else m.kernel_size)
    if _pair(m.dilation) != (1, 1) or m.ceil_mode or m.return_indices:
        raise UnsupportedError(f"{where}: MaxPool2d with dilation {m.dilation}, ceil_mode={m.ceil_mode}, "
                               f"return_indices={m.return_indices} is not supported (dilation 1, ceil_mode=False, "
                               f"return_indices=False are)")
    return LayerOp("maxpool", where, {"k": k, "stride": st, "padding": _pair(m.padding)})


def _leaf_op(m: nn.Module, base: type | None, where: str) -> LayerOp | None:
    """The op of one leaf module (None for an identity)."""
    if base is nn.Linear:
        W, b = _weights(m, where, 2)
        return LayerOp("linear", where, {"W": W, "b": b})
    if base is nn.Conv2d:
        return _conv_op(m, where)  # type: ignore[arg-type]
    act = activations.from_module(m, where)
    if act is not None:
        return LayerOp("act", where, act)
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
    if base is nn.MaxPool2d:
        return _maxpool_op(m, where)  # type: ignore[arg-type]
    if base in (nn.Identity, nn.Dropout):
        if base is nn.Dropout and m.training:
            raise ValueError(f"{where}: Dropout is in training mode (random); call model.eval() before verifying")
        return None
    raise UnsupportedError(f"{where}: unsupported layer {type(m).__name__}. fastcert supports: {SUPPORTED}. "
                     f"(as modules or, in a forward method, their functional forms)")


def plain_tree(model: nn.Module) -> bool:
    """Whether ``model`` is a supported leaf or an ``nn.Sequential`` tree whose containers all run
    Sequential's own forward (then walking its children is what it computes)."""
    if not isinstance(model, nn.Sequential):
        return is_leaf(model)
    if any(n in vars(model) or getattr(type(model), n) is not getattr(nn.Sequential, n) for n in _CALL):
        return False
    return all(c is not None and plain_tree(c) for c in model._modules.values())


def leaf_op(m: nn.Module, where: str) -> LayerOp | None:
    """The op of a leaf module, after checking it runs its class's own forward (None: an identity)."""
    op = _leaf_op(m, _check_behaviour(m, where), where)
    if op is not None:
        op.module = m
    return op


def is_leaf(m: nn.Module) -> bool:
    """Whether the fx tracer keeps ``m`` as one call (a supported class, or any torch.nn module, refused by
    name if unsupported) rather than tracing into its forward."""
    if isinstance(m, nn.Sequential):
        return False
    return any(isinstance(m, c) for c in _CLASSES) or type(m).__module__.startswith("torch.nn")


def convert_tree(model: nn.Module) -> list[LayerOp]:
    """The shape-free op list of ``model``; every tensor in it is a float64 copy (a snapshot)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module (e.g. nn.Sequential), got {type(model).__name__}")
    check_hooks(model)
    ops: list[LayerOp] = []
    for pos, (name, m) in enumerate(_walk(model)):
        where = f"position {pos} ({name!r}, {type(m).__name__})"
        op = leaf_op(m, where)
        if op is not None:
            ops.append(op)
    if not ops:
        raise ValueError("the model has no layers fastcert can bound")
    return ops

