"""Constant folding: ONNX nodes whose inputs are all constants are evaluated with numpy (shape
arithmetic such as ``Shape -> Gather -> Concat -> Reshape``, transposed weights, casts of constants).

Every function takes ``err``: a callable turning a message into the exception to raise (the
converter's, which prefixes the node)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fastcert.io.onnx.read import OnnxImportError, float_tables, type_name

Err = Callable[[str], Exception]


def constant(at: dict, err: Err) -> np.ndarray:
    """The value of a ``Constant`` node from its attributes."""
    if "value" in at:
        return np.asarray(at["value"])
    for k, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                  ("value_ints", np.int64)):
        if k in at:
            return np.asarray(at[k], dtype=dt)
    raise err(f"Constant with attributes {sorted(at)} is not supported")


def _arith(op: str, ins: list[Any]) -> np.ndarray:
    a, b = ins
    r = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op)
    if r is not None:
        return r(a, b)
    return (a // b) if np.issubdtype(np.result_type(a, b), np.integer) else a / b


def _shape_op(op: str, x: np.ndarray, ins: list[Any], at: dict) -> np.ndarray:
    if op == "Reshape":
        return x.reshape(reshape_target(x.shape, ins[1], at.get("allowzero", 0)))
    if op == "Flatten":
        ax = at.get("axis", 1)
        ax = ax + x.ndim if ax < 0 else ax
        return x.reshape(int(np.prod(x.shape[:ax])), -1)
    axes = at.get("axes", None)  # Squeeze / Unsqueeze
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = ins[1]
    return squeeze(x.shape, axes, op == "Unsqueeze", x)


def fold(op: str, ins: list[Any], at: dict, err: Err, supported: str) -> np.ndarray:
    """Evaluate ``op`` on constant inputs (None for an absent optional input)."""
    x = ins[0] if ins else None
    try:
        if op in ("Identity", "Dropout"):
            return x
        if op == "Shape":
            return np.array(x.shape, dtype=np.int64)[at.get("start", 0):at.get("end", None)]
        if op == "Cast":
            return fold_cast(np.asarray(x), at, err)
        if op == "Transpose":
            return np.transpose(x, at.get("perm"))
        if op in ("Add", "Sub", "Mul", "Div"):
            return _arith(op, ins)
        if op in ("Neg", "Sqrt", "Reciprocal"):
            return {"Neg": np.negative, "Sqrt": np.sqrt, "Reciprocal": lambda v: 1.0 / v}[op](x)
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return _shape_op(op, x, ins, at)
        if op == "Concat":
            return np.concatenate([v for v in ins if v is not None], axis=at["axis"])
        if op == "Gather":
            return np.take(x, ins[1], axis=at.get("axis", 0))
        if op == "Slice":
            return slice_const(x, ins, at)
        if op == "ConstantOfShape":
            v = at.get("value", np.zeros(1, dtype=np.float32))
            return np.full(tuple(int(s) for s in x), v.reshape(-1)[0], dtype=v.dtype)
    except OnnxImportError:
        raise
    except Exception as e:  # numpy shape errors etc.
        raise err(f"cannot evaluate this constant expression ({type(e).__name__}: {e})") from e
    raise err(f"unsupported ONNX operator {op} (on constants). fastcert supports: {supported}")


def fold_cast(x: np.ndarray, at: dict, err: Err) -> np.ndarray:
    """``Cast`` of a constant, rounded as onnxruntime rounds it: to FLOAT16 / BFLOAT16 from a wider type
    through FLOAT (onnxruntime converts DOUBLE -> FLOAT -> FLOAT16, which differs from one rounding at
    ties); float -> integer truncates toward zero and is refused for NaN, inf and out-of-range values
    (undefined in ONNX; onnxruntime gives INT_MIN)."""
    import onnx
    from onnx import TensorProto

    to = at.get("to")
    if to is None:
        raise err("Cast without a 'to' attribute")
    if to == TensorProto.STRING or x.dtype.kind in "OSU":
        raise err(f"Cast of a {x.dtype} constant to {type_name(to)}: string casts are not supported")
    if to not in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE,
                  TensorProto.BOOL) and to in float_tables()[0]:
        raise err(f"Cast of a constant to {type_name(to)} is not supported (only FLOAT16, BFLOAT16, FLOAT, "
                  f"DOUBLE and integer types)")
    dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
    if to in (TensorProto.FLOAT16, TensorProto.BFLOAT16) and x.dtype.itemsize > 4:
        x = x.astype(np.float32)  # as onnxruntime: through FLOAT
    if np.issubdtype(dt, np.integer) and x.dtype.kind == "f":
        info = np.iinfo(dt)
        xf = x.astype(np.float64)
        if not np.isfinite(xf).all() or np.any(np.trunc(xf) < info.min) or np.any(np.trunc(xf) > info.max):
            raise err(f"Cast of a constant with NaN, inf or values outside the range of {type_name(to)} (undefined "
                      f"in ONNX)")
    return x.astype(dt)


def reshape_target(full: Any, target: Any, allowzero: int = 0, err: Err | None = None) -> tuple[int, ...]:
    """The shape ONNX ``Reshape`` gives a tensor of shape ``full`` for ``target`` (0: copy, -1: infer)."""
    t = [int(v) for v in np.asarray(target).reshape(-1)]
    full = [int(v) for v in full]
    if not allowzero:
        t = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(t)]
    n = int(np.prod(full, dtype=np.int64))
    if t.count(-1) > 1:
        raise (err or OnnxImportError)(f"Reshape target {t} has more than one -1")
    if -1 in t:
        rest = int(np.prod([v for v in t if v != -1], dtype=np.int64))
        if rest == 0 or n % rest:
            raise (err or OnnxImportError)(f"cannot reshape {full} to {t}")
        t[t.index(-1)] = n // rest
    return tuple(t)


def squeeze(full: Any, axes: Any, unsqueeze: bool, x: np.ndarray | None = None, err: Err | None = None) -> Any:
    """The shape after ONNX ``Squeeze`` / ``Unsqueeze`` of ``axes`` (or ``x`` reshaped to it)."""
    full = [int(v) for v in full]
    if axes is None:
        new = [v for v in full if v != 1]
    else:
        axes = [int(a) for a in np.asarray(axes).reshape(-1)]
        if unsqueeze:
            nd = len(full) + len(axes)
            axes = sorted(a + nd if a < 0 else a for a in axes)
            new = list(full)
            for a in axes:
                new.insert(a, 1)
        else:
            nd = len(full)
            axes = [a + nd if a < 0 else a for a in axes]
            if any(full[a] != 1 for a in axes):
                raise (err or OnnxImportError)(f"Squeeze of axes {axes} of a tensor of shape {full}: not size 1")
            new = [v for i, v in enumerate(full) if i not in axes]
    return x.reshape(new) if x is not None else tuple(new)


def slice_const(x: np.ndarray, ins: list[Any], at: dict) -> np.ndarray:
    """ONNX ``Slice`` of a constant (opset < 10: attributes; later: inputs)."""
    if "starts" in at:  # opset < 10
        starts, ends, axes, steps = at["starts"], at["ends"], at.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else None
        steps = ins[4] if len(ins) > 4 else None
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends = [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).reshape(-1)]
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        sl[a] = slice(s, e, st)
    return x[tuple(sl)]
