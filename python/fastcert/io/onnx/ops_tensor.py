"""Handlers for nodes on one tensor computed from the input that emit no affine layer of their own:
elementwise constant maps (queued, see :mod:`fastcert.io.onnx.values`), activations, Cast, and the
shape bookkeeping ops (Reshape, Flatten, Squeeze, Unsqueeze, Transpose: no op, or a free reshape).

Each handler is ``f(cv, node, ins, at) -> Val``: ``cv`` the :class:`~fastcert.io.onnx.convert.Converter`,
``ins`` the node's inputs (numpy constants, :class:`~fastcert.io.onnx.values.Val` s, None for absent ones),
``at`` its attributes; it returns the record of the node's first output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastcert.graph.ops import LayerOp
from fastcert.primitives import registry as activations
from fastcert.io.onnx.fold import reshape_target, squeeze
from fastcert.io.onnx.read import float_tables, type_name
from fastcert.io.onnx.values import U64, Val

if TYPE_CHECKING:
    from fastcert.io.onnx.convert import Converter


def _dyn(ins: list[Any]) -> Val:
    return next(v for v in ins if isinstance(v, Val))


def op_identity(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    return cv.derive(ins[0])


def op_dropout(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    if len(ins) > 2 and ins[2] is not None:
        if isinstance(ins[2], Val) or bool(np.asarray(ins[2]).reshape(-1)[0]):
            raise cv.err("Dropout in training mode (random) cannot be verified")
    if not isinstance(ins[0], Val):
        raise cv.err("Dropout of a constant with a training_mode computed from the input is not supported")
    return cv.derive(ins[0])


def op_cast(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    """Exact (an identity) when every value of the tensor's type is a value of the target type:
    FLOAT16 -> FLOAT / DOUBLE, FLOAT -> DOUBLE, or the same type. A narrowing Cast (DOUBLE -> FLOAT,
    anything -> FLOAT16 / BFLOAT16 / FLOAT8) rounds every entry to the target's grid (and can overflow
    to inf): not an affine map, so it is refused rather than bounded as the identity."""
    v = ins[0]
    to, src = at.get("to"), v.etype
    floats, exact = float_tables()
    if to is None:
        raise cv.err("Cast without a 'to' attribute")
    if to not in floats:
        raise cv.err(f"Cast of the tensor to {type_name(to)} (not a floating-point type) is not supported")
    if to in exact.get(src, ()):
        return cv.derive(v, etype=int(to))
    raise cv.err(f"Cast of the tensor from {type_name(src)} to {type_name(to)} rounds it to a narrower "
                 f"floating-point type; fastcert bounds the network in float64 and cannot bound that rounding "
                 f"(it is not an affine map). Remove the Cast (export the network in one precision) or cast "
                 f"only to an equal or wider type")


def _act(cv: Converter, v: Val, params: dict) -> Val:
    v = cv.flush(v)
    vid = cv.emit(LayerOp("act", cv.where, params), (v.vid,), cv.shapes[v.vid])
    return Val("", vid, v.logical, v.batched, v.etype, v.P)


def _registered(op: str) -> Any:
    """The handler of an activation op of the primitive registry (Relu, Sigmoid, Tanh, LeakyRelu, Atan ...)."""
    def handler(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
        params = activations.from_onnx(op, at, cv.where)
        assert params is not None
        return _act(cv, ins[0], params)
    handler.__name__ = f"op_{op.lower()}"
    return handler


def op_clip(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    """Clip(x, min, max): bounds from constant inputs (opset >= 11) or attributes; a missing one is infinite."""
    bounds = []
    for k, name in ((1, "min"), (2, "max")):
        b = ins[k] if len(ins) > k else None
        if isinstance(b, Val):
            raise cv.err(f"Clip with a {name} computed from the input is not supported (constant bounds are)")
        if b is None:
            b = at.get(name)
        elif np.asarray(b).size != 1:
            raise cv.err(f"Clip with a non-scalar {name} of shape {list(np.shape(b))} is not supported")
        bounds.append(None if b is None else float(np.asarray(b).reshape(())))
    if bounds[0] is None and bounds[1] is None:
        return cv.derive(ins[0])
    return _act(cv, ins[0], {"act": "hardtanh", **activations.clamp_params(bounds[0], bounds[1], cv.where)})


def _const_operand(cv: Converter, ins: list[Any], what: str) -> tuple[Val, np.ndarray, bool]:
    """(the tensor, the constant operand without its batch axis, True when the tensor is first)."""
    a, b = ins[0], ins[1]
    v, c = (a, b) if isinstance(a, Val) else (b, a)
    if not np.issubdtype(np.asarray(c).dtype, np.floating) and not np.issubdtype(np.asarray(c).dtype, np.integer):
        raise cv.err(f"{what} with a non-numeric constant")
    c = np.asarray(c, dtype=np.float64)
    # the constant may not broadcast the tensor to a larger shape (that would change the batch layout)
    full = v.full()
    try:
        ok = c.ndim <= len(full) and np.broadcast_shapes(c.shape, full) == full
    except ValueError:
        ok = False
    if not ok:
        raise cv.err(f"its constant of shape {list(c.shape)} would broadcast the tensor of shape {list(full)} to a "
                     f"larger shape")
    if v.batched and c.ndim == len(full):
        c = c[0]  # drop the (size-1) batch axis
    return v, c, v is a


def op_add(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, c, _ = _const_operand(cv, ins, "Add")
    if not np.any(c):
        return cv.derive(v)  # x + 0 is exact
    return cv.elementwise(v, 1.0, c, 4 * U64, 4 * U64 * np.abs(c), "shift")


def op_sub(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, c, first = _const_operand(cv, ins, "Sub")
    if first:
        if not np.any(c):
            return cv.derive(v)
        return cv.elementwise(v, 1.0, -c, 4 * U64, 4 * U64 * np.abs(c), "shift")
    return cv.elementwise(v, -1.0, c, 4 * U64, 4 * U64 * np.abs(c))  # c - x


def op_neg(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    return cv.elementwise(ins[0], -1.0, 0.0, 0.0, 0.0)


def op_mul(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, c, _ = _const_operand(cv, ins, "Mul")
    if np.all(c == 1.0):
        return cv.derive(v)
    return cv.elementwise(v, c, 0.0, 4 * U64 * np.abs(c), 0.0, "scale")


def op_div(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, c, first = _const_operand(cv, ins, "Div")
    if not first:
        raise cv.err("division of a constant by the tensor (c / x) is nonlinear and not supported")
    if np.any(c == 0):
        raise cv.err("division by a constant that contains 0")
    if np.all(c == 1.0):
        return cv.derive(v)
    return cv.elementwise(v, 1.0 / c, 0.0, 4 * U64 / np.abs(c), 0.0, "scale")


def op_batchnorm(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    if at.get("training_mode", 0):
        raise cv.err("BatchNormalization in training mode cannot be verified")
    if not isinstance(ins[0], Val) or any(v is None or isinstance(v, Val) for v in ins[1:5]):
        raise cv.err("BatchNormalization needs the tensor as input and constant scale, bias, mean and variance")
    v = ins[0]
    gamma, beta, mean, var = (np.asarray(w, dtype=np.float64).reshape(-1) for w in ins[1:5])
    eps = float(at.get("epsilon", 1e-5))
    if not v.logical or v.logical[0] != gamma.size:
        raise cv.err(f"has {gamma.size} channels but its input has shape {list(v.full())}")
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    # the same evaluation-error model as the torch BatchNorm conversion (graph/from_torch.py)
    a = 8 * U64 * np.abs(scale)
    c = 8 * U64 * (np.abs(mean) * np.abs(scale) + np.abs(beta))
    shp = (-1,) + (1,) * (len(v.logical) - 1)
    return cv.elementwise(v, *(w.reshape(shp) for w in (scale, shift, a, c)))


# --------------------------------------------------------------------------- shape bookkeeping


def _reshaped(cv: Converter, v: Val, new_full: tuple[int, ...]) -> Val:
    """``v`` read with the ONNX shape ``new_full`` (batch dimension included when batched)."""
    if int(np.prod(new_full, dtype=np.int64)) != v.n:
        raise cv.err(f"cannot reshape {list(v.full())} to {list(new_full)}")
    if v.batched:
        if not new_full or new_full[0] != 1:
            raise cv.err(f"reshape from {list(v.full())} to {list(new_full)} mixes the batch dimension with the "
                         f"others")
        new_full = new_full[1:]
    # a reshape keeps the row-major order of the entries, so P (indexed by it) stays valid
    return cv.derive(v, logical=tuple(int(s) for s in new_full))


def op_flatten(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v = ins[0]
    full = v.full()
    ax = at.get("axis", 1)
    ax = ax + len(full) if ax < 0 else ax
    return _reshaped(cv, v, (int(np.prod(full[:ax], dtype=np.int64)), int(np.prod(full[ax:], dtype=np.int64))))


def op_reshape(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v = ins[0]
    if not isinstance(v, Val):
        raise cv.err("Reshape to a shape computed from the input is not supported (only constant targets)")
    if len(ins) < 2 or ins[1] is None:
        if "shape" not in at:  # opset 1-4 has it as an attribute
            raise cv.err("Reshape needs a constant target shape")
        target = np.asarray(at["shape"])
    else:
        target = ins[1]
    return _reshaped(cv, v, reshape_target(v.full(), target, at.get("allowzero", 0), cv.err))


def op_squeeze(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v = _dyn(ins)
    if v is not ins[0]:
        raise cv.err("Squeeze with axes computed from the input is not supported")
    axes = at.get("axes", ins[1] if len(ins) > 1 else None)
    full = v.full()
    if axes is None and v.batched:
        axes = [i for i in range(1, len(full)) if full[i] == 1]  # keep the batch dimension
    return _reshaped(cv, v, squeeze(full, axes, False, None, cv.err))


def op_unsqueeze(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v = _dyn(ins)
    if v is not ins[0]:
        raise cv.err("Unsqueeze with axes computed from the input is not supported")
    axes = at.get("axes", ins[1] if len(ins) > 1 else None)
    if axes is None:
        raise cv.err("Unsqueeze without axes")
    return _reshaped(cv, v, squeeze(v.full(), axes, True, None, cv.err))


def op_transpose(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    """An index permutation of the tensor: recorded in ``P`` (queued constants, already in IR order, are
    not touched), later folded into a Dense's columns, the first Conv (NHWC input) or an exact 0/1
    permutation Dense."""
    v = ins[0]
    nd = len(v.full())
    perm = [p + nd if p < 0 else p for p in at.get("perm", range(nd)[::-1])]
    if sorted(perm) != list(range(nd)):
        raise cv.err(f"invalid perm {perm}")
    if v.batched:
        if perm[0] != 0:
            raise cv.err(f"Transpose with perm {perm} moves the batch dimension")
        perm = [p - 1 for p in perm[1:]]
    if perm == list(range(len(v.logical))):
        return cv.derive(v)
    base = np.arange(v.n) if v.P is None else v.P
    P = np.ascontiguousarray(base.reshape(v.logical).transpose(perm).ravel())
    return cv.derive(v, logical=tuple(v.logical[p] for p in perm),
                     P=None if np.array_equal(P, np.arange(v.n)) else P)


def op_pad(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    pads = at.get("pads", None)
    if pads is None and len(ins) > 1 and ins[1] is not None:
        pads = ins[1]
    if pads is None or isinstance(pads, Val) or not isinstance(ins[0], Val) or any(isinstance(w, Val) for w in ins[2:]):
        raise cv.err("Pad needs the tensor as input and constant pads")
    if np.any(np.asarray(pads) != 0):
        raise cv.err(f"Pad with non-zero pads {np.asarray(pads).tolist()} is not supported (only all-zero pads, a "
                     f"no-op; use the padding of Conv / AveragePool instead)")
    return cv.derive(ins[0])


HANDLERS = {
    "Identity": op_identity, "Dropout": op_dropout, "Cast": op_cast, "Clip": op_clip,
    **{op: _registered(op) for op in activations.REGISTRY.onnx_ops()}, "Add": op_add, "Sub": op_sub, "Neg": op_neg, "Mul": op_mul,
    "Div": op_div, "BatchNormalization": op_batchnorm, "Flatten": op_flatten, "Reshape": op_reshape,
    "Squeeze": op_squeeze, "Unsqueeze": op_unsqueeze, "Transpose": op_transpose, "Pad": op_pad,
}
