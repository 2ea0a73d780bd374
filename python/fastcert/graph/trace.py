"""The torch front end for models with a ``forward`` method: ``torch.fx`` symbolic tracing.

:func:`convert` walks a plain ``nn.Sequential`` tree (the fast path) and traces anything else. The
tracer keeps supported modules (and every ``torch.nn`` module, refused by name if unsupported) as single
calls and traces through the rest, so residual blocks (``x + f(x)``), ``torch.cat``, ``flatten`` /
``view`` / ``reshape``, ``F.relu`` and the like become graph ops. Anything else (a constant added to a
tensor, indexing, control flow on values) is refused naming the traced node, its op and the supported
list.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastcert.errors import UnsupportedError
from fastcert.graph.from_torch import SUPPORTED, check_hooks, convert_tree, is_leaf, leaf_op, plain_tree
from fastcert.graph.ops import LayerOp
from fastcert.primitives import registry as activations

_SIZE = object()  # the value of x.size(...) / x.shape: only usable as the batch entry of view / reshape

_ADD = {operator.add: 1, torch.add: 1, "add": 1, operator.sub: -1, torch.sub: -1, "sub": -1}
_CAT = (torch.cat, torch.concat)
_IDENTITY = ("contiguous", "clone")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m)


def convert(model: nn.Module) -> list[LayerOp]:
    """The shape-free op list of ``model`` (a snapshot of its parameters)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module (e.g. nn.Sequential), got {type(model).__name__}")
    check_hooks(model)
    if plain_tree(model):
        return convert_tree(model)
    return trace_ops(model)


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError ...)
        raise UnsupportedError(f"cannot trace {type(model).__name__}.forward with torch.fx ({type(exc).__name__}: "
                               f"{exc}); fastcert reads models whose forward is a fixed graph of: {SUPPORTED}") from exc


class _Builder:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.ops: list[LayerOp] = []
        self.val: dict[fx.Node, Any] = {}
        self.n_placeholders = 0

    def where(self, nd: fx.Node) -> str:
        tgt = nd.target if isinstance(nd.target, str) else getattr(nd.target, "__name__", repr(nd.target))
        return f"traced node {nd.name!r} ({nd.op} {tgt})"

    def emit(self, op: LayerOp, inputs: tuple[int, ...]) -> int:
        op.inputs = inputs
        self.ops.append(op)
        return len(self.ops)

    def tensor(self, a: Any, nd: fx.Node) -> int:
        v = self.val.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(v, int):
            raise UnsupportedError(f"{self.where(nd)}: argument {a!r} is not a tensor computed from the input (a "
                                   f"constant, parameter or size); fastcert supports: {SUPPORTED}")
        return v

    def refuse(self, nd: fx.Node) -> UnsupportedError:
        return UnsupportedError(f"{self.where(nd)} is not supported (args {nd.args}, kwargs {nd.kwargs}); fastcert "
                                f"supports: {SUPPORTED}")

    def node(self, nd: fx.Node) -> Any:
        if nd.op == "placeholder":
            self.n_placeholders += 1
            if self.n_placeholders > 1:
                raise UnsupportedError(f"{type(self.model).__name__}.forward takes more than one input ({nd.name!r}); "
                                       f"fastcert bounds networks of one input tensor")
            return 0
        if nd.op == "call_module":
            m = self.model.get_submodule(str(nd.target))
            where = f"module {nd.target!r} ({type(m).__name__})"
            op = leaf_op(m, where)
            src = self.tensor(nd.args[0], nd) if nd.args else None
            if len(nd.args) != 1 or nd.kwargs or src is None:
                raise UnsupportedError(f"{where} is called with {len(nd.args)} arguments {dict(nd.kwargs)}; fastcert "
                                       f"supports modules called on one tensor")
            return src if op is None else self.emit(op, (src,))
        if nd.op in ("call_function", "call_method"):
            return self.call(nd)
        if nd.op == "get_attr":
            return ("attr", nd.target)
        raise self.refuse(nd)

    def call(self, nd: fx.Node) -> Any:
        t, args, kw = nd.target, nd.args, dict(nd.kwargs)
        where = self.where(nd)
        if (nd.op == "call_method") == isinstance(t, str):
            act = activations.from_call(t, args, kw, where)
            if act is not None:
                if not args:
                    raise self.refuse(nd)
                return self.emit(LayerOp("act", where, act), (self.tensor(args[0], nd),))
        if t in _ADD and (nd.op == "call_method") == isinstance(t, str):
            if len(args) != 2 or kw:
                raise self.refuse(nd)
            zero = [isinstance(a, (int, float)) and not isinstance(a, bool) and a == 0 for a in args]
            if zero[1] or (zero[0] and _ADD[t] > 0):  # x + 0, x - 0, 0 + x (sum() starts at 0): x itself
                return self.tensor(args[1 if zero[0] else 0], nd)
            return self.emit(LayerOp("add", where, {"sign": _ADD[t]}),
                             (self.tensor(args[0], nd), self.tensor(args[1], nd)))
        if t in _CAT:
            xs = args[0]
            dim = args[1] if len(args) > 1 else kw.get("dim", 0)
            if not isinstance(xs, (list, tuple)) or not isinstance(dim, int) or dim == 0:
                raise UnsupportedError(f"{where}: torch.cat along dimension {dim} (0 is the batch) is not supported; "
                                       f"concatenate along a per-sample dimension")
            return self.emit(LayerOp("cat", where, {"full_dim": dim}), tuple(self.tensor(x, nd) for x in xs))
        if t in ("size",) or (t is getattr and len(args) > 1 and args[1] == "shape"):
            return _SIZE
        if t is operator.getitem and self.val.get(args[0]) is _SIZE:
            return _SIZE
        if t in (torch.flatten, "flatten"):
            start = args[1] if len(args) > 1 else kw.get("start_dim", 0 if t is torch.flatten else 0)
            end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
            if start != 1 or end != -1:
                raise UnsupportedError(f"{where}: flatten(start_dim={start}, end_dim={end}) is not supported; use "
                                       f"flatten(1) (keep the batch dimension)")
            return self.emit(LayerOp("flatten", where), (self.tensor(args[0], nd),))
        if t in ("view", "reshape", torch.reshape):
            dims = list(args[1:]) if t != torch.reshape else list(args[1])
            if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)):
                dims = list(dims[0])
            if not dims or not (dims[0] is not None and (self.val.get(dims[0]) is _SIZE if isinstance(dims[0], fx.Node)
                                                          else dims[0] == -1)) or \
                    not all(isinstance(d, int) for d in dims[1:]):
                raise UnsupportedError(f"{where}: reshape to {dims} is not supported; keep the batch dimension first "
                                       f"(x.view(x.size(0), ...) or x.reshape(-1, ...) with fixed per-sample sizes)")
            if dims[0] == -1 and -1 in dims[1:]:
                raise self.refuse(nd)
            return self.emit(LayerOp("reshape", where, {"shape": tuple(int(d) for d in dims[1:])}),
                             (self.tensor(args[0], nd),))
        if t is F.max_pool2d:
            k = args[1] if len(args) > 1 else kw["kernel_size"]
            st = args[2] if len(args) > 2 else kw.get("stride", None)
            pad = args[3] if len(args) > 3 else kw.get("padding", 0)
            return self.emit(LayerOp("maxpool", where, {"k": k, "stride": st if st not in (None, [], ()) else k,
                                                        "padding": pad}), (self.tensor(args[0], nd),))
        if t in _IDENTITY:
            return self.tensor(args[0], nd)
        raise self.refuse(nd)


def trace_ops(model: nn.Module) -> list[LayerOp]:
    """Trace ``model.forward`` with torch.fx into a shape-free op list (see the module docstring)."""
    g = _trace(model)
    b = _Builder(model)
    out: Any = None
    for nd in g.nodes:
        if nd.op == "output":
            out = nd.args[0]
            break
        b.val[nd] = b.node(nd)
    if not isinstance(out, fx.Node) or not isinstance(b.val.get(out), int):
        raise UnsupportedError(f"{type(model).__name__}.forward returns {out!r}; fastcert bounds networks that return "
                               f"one tensor computed from the input")
    v = b.val[out]
    if v == 0:
        raise ValueError("the model's output is its input (no layers fastcert can bound)")
    if v != len(b.ops):  # the output is not the last op: read it once more (dead ops are pruned)
        b.emit(LayerOp("identity", "output"), (v,))
    return b.ops


__all__ = ["convert", "trace_ops"]
