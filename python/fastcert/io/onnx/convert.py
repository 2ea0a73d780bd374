"""The ONNX graph walk: one IR value per ONNX tensor name.

Nodes are read in (topological) order. A node whose inputs are all constants is evaluated with numpy
(:mod:`fastcert.io.onnx.fold`); every other node goes to its handler (the ``SINGLE`` / ``MULTI``
registries of :mod:`fastcert.io.onnx.registry`), which reads :class:`~fastcert.io.onnx.values.Val` records and
emits shape-free :class:`~fastcert.graph.ops.LayerOp` s with explicit ``inputs``. A chain of nodes
gives a chain of ops (each reading the one before), which the chain engine runs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import torch

from fastcert.graph.ops import LayerOp
from fastcert.io.onnx import fold as fold_mod
from fastcert.io.onnx.read import OnnxImportError, attrs, read_input
from fastcert.io.onnx.registry import MULTI, SINGLE
from fastcert.io.onnx.values import Val, compose, per_channel

SUPPORTED_OPS = ("Gemm, MatMul, Conv, AveragePool, GlobalAveragePool, MaxPool, Relu, LeakyRelu, Sigmoid, Tanh, Atan, "
                 "Clip (constant bounds), "
                 "Add / Sub / Mul / Div / Neg by constants, BatchNormalization, Add / Sub / Sum of two tensors "
                 "computed from the input (residual connections), Concat of such tensors, Flatten, Reshape, Squeeze, "
                 "Unsqueeze, Transpose, Pad (all-zero pads), Constant, Identity, Dropout, Cast (to an equal or wider "
                 "float type), and constant subgraphs (Shape, Gather, Concat, Slice, ...)")


class Converter:
    """Walks one ONNX graph (see the module docstring). ``run()`` -> ``(ops, input_shape, info)``."""

    def __init__(self, model: Any, name: str) -> None:
        from onnx import numpy_helper

        self.model = model
        self.src = name
        g = model.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for sp in getattr(g, "sparse_initializer", []):
            raise OnnxImportError(f"{name}: sparse initializer {sp.values.name!r} is not supported")
        for k, a in self.consts.items():
            if np.iscomplexobj(a):  # a float64 copy would drop the imaginary part
                raise OnnxImportError(f"{name}: initializer {k!r} has the complex dtype {a.dtype}; fastcert bounds "
                                      f"real-valued networks only")
        self.inp = read_input(g, self.consts, name)
        self.vals: dict[str, Val] = {self.inp.name: Val(self.inp.name, 0, self.inp.sample, self.inp.batched,
                                                         self.inp.elem_type)}
        self.shapes: list[tuple[int, ...]] = [self.inp.sample]  # per IR value: the per-sample shape the IR holds
        self.ops: list[LayerOp] = []
        self.notes: list[str] = []
        self.where = ""
        # how many times each tensor is read (by nodes and as a graph output): fan-out is > 1
        self.uses = Counter(n for nd in g.node for n in nd.input if n) + Counter(o.name for o in g.output)

    # ---- errors and emission
    def err(self, msg: str) -> OnnxImportError:
        return OnnxImportError(f"{self.where}: {msg}")

    def emit(self, op: LayerOp, inputs: tuple[int, ...], shape: tuple[int, ...]) -> int:
        """Append ``op`` reading IR values ``inputs`` with output per-sample ``shape``; its value id."""
        op.inputs = tuple(inputs)
        self.ops.append(op)
        self.shapes.append(tuple(int(s) for s in shape))
        return len(self.ops)

    def set_input_shape(self, shape: tuple[int, ...]) -> None:
        """Choose the IR's input shape (same row-major flattening); only before any op reads it."""
        assert not self.ops and int(np.prod(shape)) == int(np.prod(self.shapes[0]))
        self.shapes[0] = tuple(shape)

    def store(self, old: Val, new: Val) -> Val:
        """Record ``new`` (the same tensor, materialized) in place of ``old`` so later readers reuse it."""
        if self.vals.get(old.name) is old:
            self.vals[old.name] = new
        return new

    # ---- elementwise maps, materialization
    def derive(self, v: Val, **changes: Any) -> Val:
        """A tensor computed from ``v`` without emitting an op (an elementwise constant map, a reshape, a
        transpose, a Cast). When ``v`` has other readers, its queued maps are emitted first (so they
        are emitted once), and the result may no longer turn a queued Add into a bias."""
        shared = self.uses[v.name] > 1
        if shared and v.pend is not None:
            v = self.flush(v)
        return dataclasses.replace(v, affine=None if shared else v.affine, **changes)

    def elementwise(self, v: Val, s: Any, t: Any, a: Any, c: Any, kind: str = "") -> Val:
        """``v`` followed by ``y = s*x + t`` (ONNX-layout arrays broadcastable to the tensor) with the
        evaluation-error model ``|err| <= a|x| + c``, queued (merged with what is queued)."""
        try:
            arrs = [np.broadcast_to(np.asarray(w, dtype=np.float64), v.logical) for w in (s, t, a, c)]
        except ValueError as e:
            raise self.err(f"cannot broadcast its constant to the tensor shape {list(v.full())}") from e
        s2, t2, a2, c2 = (v.to_ir(w) for w in arrs)
        if not (np.isfinite(s2).all() and np.isfinite(t2).all()):
            raise self.err("its constant gives a non-finite scale or shift")
        v = self.derive(v)
        return dataclasses.replace(v, pend=compose(v.pend, s2, t2, a2, c2, kind, self.where))

    def flush(self, v: Val) -> Val:
        """``v`` with its queued elementwise maps emitted: as the bias of the bias-free Linear / Conv
        right before them (a lone shift; exact), else as one Diag ("chaff") op, per channel when the
        maps are constant per channel of the IR shape, else per entry on the flattened tensor."""
        p = v.pend
        if p is None:
            return v
        where = p.label()
        shape = self.shapes[v.vid]
        prev = self.ops[v.affine] if v.affine is not None else None
        if prev is not None and prev.args.get("b") is None and np.all(p.s == 1.0):
            b = p.t.copy() if prev.kind == "linear" else (per_channel(shape, p.t) or [None])[0]
            if b is not None:
                prev.args["b"] = torch.from_numpy(b)
                prev.where += f" (+ bias from {where})"
                return self.store(v, dataclasses.replace(v, pend=None, affine=None))
        vec = per_channel(shape, p.s, p.t, p.a, p.c)
        vid = v.vid
        if vec is None:
            vid = self._flat(vid, f"{where} (flatten for a per-element map)")
            vec = [p.s, p.t, p.a, p.c]
        sv, tv, av, cv = (torch.from_numpy(np.array(w)) for w in vec)
        vid = self.emit(LayerOp("chaff", where, {"scale": sv, "shift": tv, "eval_a": av, "eval_c": cv}), (vid,),
                        self.shapes[vid])
        return self.store(v, dataclasses.replace(v, vid=vid, pend=None, affine=None))

    def _flat(self, vid: int, where: str) -> int:
        """IR value ``vid`` flattened (a flatten op when its shape is not already flat)."""
        shape = self.shapes[vid]
        if len(shape) == 1:
            return vid
        return self.emit(LayerOp("flatten", where), (vid,), (int(np.prod(shape)),))

    def in_ir_shape(self, v: Val, shape: tuple[int, ...], why: str) -> Val:
        """``v`` flushed, with the IR holding it as ``shape`` (a reshape op, free, when it does not)."""
        v = self.flush(v)
        if self.shapes[v.vid] == tuple(shape):
            return v
        vid = self.emit(LayerOp("reshape", f"{self.where} (reshape {why})", {"shape": tuple(shape)}), (v.vid,), shape)
        return dataclasses.replace(v, vid=vid, affine=None)

    def unpermute(self, v: Val, why: str) -> Val:
        """``v`` flushed with its pending transpose applied: an exact 0/1 permutation Dense."""
        v = self.flush(v)
        if v.P is None:
            return v
        n = v.n
        W = np.zeros((n, n))
        W[np.arange(n), v.P] = 1.0
        vid = self._flat(v.vid, f"{self.where} (flatten)")
        vid = self.emit(LayerOp("linear", f"{self.where} ({why} transpose)", {"W": torch.from_numpy(W), "b": None}),
                        (vid,), (n,))
        return self.store(v, dataclasses.replace(v, vid=vid, P=None, affine=None))

    def dense(self, v: Val, W: np.ndarray, b: np.ndarray | None, out_logical: tuple[int, ...]) -> Val:
        """``y = W x + b`` on ``v`` flattened in its ONNX layout. W: [M, n] -> a Val of ``out_logical``."""
        v = self.flush(v)
        W = np.asarray(W, dtype=np.float64)
        if W.shape[1] != v.n:
            raise self.err(f"weight matrix has {W.shape[1]} input features but the tensor has {v.n} "
                           f"(shape {list(v.full())})")
        if v.P is not None:  # fold the pending permutation into the columns (exact)
            Wp = np.empty_like(W)
            Wp[:, v.P] = W
            W = Wp
            self.notes.append(f"{self.where}: a transpose of its input folded into the weight columns")
        self.check_finite(W, "weights")
        if b is not None:
            b = np.array(np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), (W.shape[0],)))
            self.check_finite(b, "bias")
        vid = self._flat(v.vid, f"{self.where} (flatten)")
        vid = self.emit(LayerOp("linear", self.where, {"W": torch.from_numpy(np.array(W, order="C")),
                                                       "b": None if b is None else torch.from_numpy(b)}),
                        (vid,), (W.shape[0],))
        return Val("", vid, tuple(out_logical), v.batched, v.etype, affine=vid - 1)

    def check_finite(self, a: np.ndarray, what: str) -> None:
        if not np.isfinite(a).all():
            raise self.err(f"{what} contain NaN or inf; fastcert cannot bound a network with non-finite parameters")

    def spatial_input(self, v: Val, what: str) -> tuple[Val, tuple[int, int, int]]:
        """``v`` flushed, with the IR holding it as [C, H, W] in ONNX layout, and that shape."""
        if not v.batched or len(v.logical) != 3:
            raise self.err(f"{what} needs an [N, C, H, W] input, got shape {list(v.full())}")
        if v.P is not None:
            raise self.err(f"{what} on a transposed tensor is only supported for an NHWC network input "
                           f"transposed to NCHW right before the first Conv")
        if v.vid == 0 and not self.ops and self.shapes[0] != v.logical:
            self.set_input_shape(v.logical)  # the input reshaped before any op reads it: read it so
        v = self.in_ir_shape(v, v.logical, f"to {list(v.logical)}")
        return v, v.logical  # type: ignore[return-value]

    def is_nhwc_input(self, v: Val) -> bool:
        """Whether ``v`` is the [H, W, C] network input transposed to [C, H, W], before any op."""
        if self.ops or v.vid != 0 or v.P is None or len(v.logical) != 3 or len(self.shapes[0]) != 3:
            return False
        C, H, W = v.logical
        if self.shapes[0] != (H, W, C):
            return False
        return bool(np.array_equal(v.P, np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1).ravel()))

    # ---- graph walk
    def run(self) -> tuple[list[LayerOp], tuple[int, ...], dict]:
        g = self.model.graph
        for pos, node in enumerate(g.node):
            label = node.name or (node.output[0] if node.output else "")
            self.where = f"node {pos} ({label!r}, {node.op_type})"
            self._node(node)
        if len(g.output) != 1:
            raise OnnxImportError(f"{self.src}: fastcert needs exactly one graph output, found {len(g.output)}")
        out = self._output(g.output[0].name)
        info = {
            "source": self.src,
            "input_name": self.inp.name,
            "onnx_input_shape": self.inp.dims,
            "input_shape": self.shapes[0],
            "batched": out.batched,
            "output_name": g.output[0].name,
            "n_inputs": int(np.prod(self.shapes[0])),
            "n_outputs": out.n,
            "output_shape": list(out.full()),
            "opset": {(o.domain or "ai.onnx"): int(o.version) for o in self.model.opset_import},
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "n_nodes": len(g.node),
            "notes": self.notes,
        }
        return self.ops, self.shapes[0], info

    def _output(self, name: str) -> Val:
        """The graph output, flushed and untransposed; the last op's output (an identity op reads it
        when it is not)."""
        self.where = f"graph output {name!r}"
        if name in self.consts:
            raise self.err("the output does not depend on the input")
        v = self.vals.get(name)
        if v is None:
            raise self.err("no node computes it")
        v = self.unpermute(self.flush(v), "output")
        if v.vid == 0:
            raise OnnxImportError(f"{self.src}: the graph has no layers fastcert can bound (it is an identity)")
        if v.vid != len(self.ops):
            self.emit(LayerOp("identity", f"{self.where} (output)"), (v.vid,), self.shapes[v.vid])
        return v

    def _inputs(self, node: Any) -> list[Any]:
        """Each input: a numpy constant, the :class:`Val` of a tensor computed from the input, or None."""
        vals: list[Any] = []
        for name in node.input:
            if name == "":
                vals.append(None)
            elif name in self.consts:
                vals.append(self.consts[name])
            elif name in self.vals:
                vals.append(self.vals[name])
            else:
                raise self.err(f"input {name!r} is neither a constant nor computed by an earlier node (ONNX node "
                               f"lists are topologically sorted; this one is not, or the tensor is undefined)")
        return vals

    def _node(self, node: Any) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self.err(f"operator {node.domain}.{op} from a custom domain is not supported")
        at = attrs(node)
        ins = self._inputs(node)
        n_dyn = sum(isinstance(v, Val) for v in ins)
        if op == "Constant":
            self.consts[node.output[0]] = np.asarray(fold_mod.constant(at, self.err))
            return
        if n_dyn == 0:
            self.consts[node.output[0]] = np.asarray(fold_mod.fold(op, ins, at, self.err, SUPPORTED_OPS))
            return
        if op == "Shape":
            full = np.array(next(v for v in ins if isinstance(v, Val)).full(), dtype=np.int64)
            self.consts[node.output[0]] = full[at.get("start", 0):at.get("end", None)]
            return
        handler = (MULTI if n_dyn > 1 else SINGLE).get(op)
        if handler is None:
            raise self._refusal(op, n_dyn)
        out = handler(self, node, ins, at)
        self.vals[node.output[0]] = dataclasses.replace(out, name=node.output[0])

    def _refusal(self, op: str, n_dyn: int) -> OnnxImportError:
        if op in ("GlobalMaxPool", "MaxRoundPool", "MaxUnpool"):
            return self.err(f"{op} is not supported (MaxPool and AveragePool are)")
        if n_dyn > 1 and op in SINGLE:
            what = "nonlinear (a product or quotient of two tensors)" if op in ("Mul", "Div", "MatMul", "Gemm", "Pow") \
                else "not supported"
            return self.err(f"{op} of {n_dyn} tensors computed from the input is {what}; fastcert combines such "
                            f"tensors only with {', '.join(sorted(MULTI))}. fastcert supports: {SUPPORTED_OPS}")
        return self.err(f"unsupported ONNX operator {op}. fastcert supports: {SUPPORTED_OPS}")
