"""Handlers for nodes that combine tensors computed from the input: Add / Sub / Sum of two or more
such tensors (residual connections: an IR "add" op) and Concat (an IR "cat" op). Same handler
protocol as :mod:`fastcert.io.onnx.ops_tensor`. The inputs are flushed (queued elementwise maps
emitted) and brought to one IR layout first: a pending transpose becomes an exact permutation Dense
unless both addends carry the same one, and the IR shapes are matched with free reshapes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastcert.graph.ops import LayerOp
from fastcert.io.onnx.values import Val

if TYPE_CHECKING:
    from fastcert.io.onnx.convert import Converter


def _flush_all(cv: Converter, vs: list[Val]) -> list[Val]:
    """Each tensor flushed once (a tensor read twice, as in ``x + x``, is flushed once)."""
    done: dict[int, Val] = {}
    for v in vs:
        if id(v) not in done:
            done[id(v)] = cv.flush(v)
    return [done[id(v)] for v in vs]


def _add(cv: Converter, a: Val, b: Val, sign: int, op: str) -> Val:
    if a.logical != b.logical or a.batched != b.batched:
        raise cv.err(f"{op} of tensors of shapes {list(a.full())} and {list(b.full())}: fastcert {op.lower()}s tensors "
                     f"of the same shape only (no broadcasting between two tensors computed from the input)")
    a, b = _flush_all(cv, [a, b])
    same_p = (a.P is None and b.P is None) or (a.P is not None and b.P is not None and (a.P == b.P).all())
    if not same_p:
        a, b = cv.unpermute(a, f"{op} operand"), cv.unpermute(b, f"{op} operand")
    if cv.shapes[b.vid] != cv.shapes[a.vid]:
        b = cv.in_ir_shape(b, cv.shapes[a.vid], "to the other operand's layout")
    vid = cv.emit(LayerOp("add", cv.where, {"sign": sign}), (a.vid, b.vid), cv.shapes[a.vid])
    return Val("", vid, a.logical, a.batched, a.etype, a.P)


def op_add(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    return _add(cv, ins[0], ins[1], 1, "Add")


def op_sub(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    return _add(cv, ins[0], ins[1], -1, "Sub")


def op_sum(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    vs = [v for v in ins if v is not None]
    if not all(isinstance(v, Val) for v in vs):
        raise cv.err("Sum of constants and tensors computed from the input is not supported (only of such tensors; "
                     "use Add for a constant)")
    if len(vs) == 1:
        return cv.derive(vs[0])
    acc = vs[0]
    for v in vs[1:]:
        acc = _add(cv, acc, v, 1, "Sum")
    return acc


def op_concat(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    vs = [v for v in ins if v is not None]
    if not all(isinstance(v, Val) for v in vs):
        raise cv.err("Concat of constants with tensors computed from the input is not supported (only of such "
                     "tensors)")
    shapes = [v.full() for v in vs]
    nd = len(shapes[0])
    axis = int(at.get("axis", 0))
    axis = axis + nd if axis < 0 else axis
    if not 0 <= axis < nd or any(len(s) != nd for s in shapes) or \
            any(s[k] != shapes[0][k] for s in shapes for k in range(nd) if k != axis):
        raise cv.err(f"cannot concatenate tensors of shapes {[list(s) for s in shapes]} along axis {at.get('axis')}")
    if vs[0].batched and axis == 0:
        raise cv.err("Concat along the batch dimension (axis 0) is not supported; concatenate along a per-sample axis")
    if len(vs) == 1:
        return cv.derive(vs[0])
    dim = axis - 1 if vs[0].batched else axis
    vs = [cv.unpermute(v, "Concat operand") for v in _flush_all(cv, vs)]
    vs = [cv.in_ir_shape(v, v.logical, f"to {list(v.logical)}") for v in vs]
    out = list(vs[0].logical)
    out[dim] = sum(v.logical[dim] for v in vs)
    vid = cv.emit(LayerOp("cat", cv.where, {"dim": dim}), tuple(v.vid for v in vs), tuple(out))
    return Val("", vid, tuple(out), vs[0].batched, vs[0].etype)


HANDLERS = {"Sum": op_sum, "Concat": op_concat}  # also for one tensor computed from the input
MULTI_HANDLERS = {"Add": op_add, "Sub": op_sub, "Sum": op_sum, "Concat": op_concat}
