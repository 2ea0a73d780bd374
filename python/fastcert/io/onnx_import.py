"""Import a feed-forward ONNX network into fastcert's IR.

``load_onnx(path_or_bytes) -> (network, input_shape, info)``

The graph must be a single chain from one input to one output (no residual connections). Nodes are
interpreted in order; a node whose inputs are all constant is evaluated with numpy (constant folding:
``Transpose`` / ``Reshape`` / ``Shape`` / ``Gather`` / ``Concat`` / arithmetic ...), every other node
must consume the one non-constant tensor and becomes IR ops:

=====================================  =======================================================
ONNX                                   IR
=====================================  =======================================================
Gemm (transA=0, transB, alpha, beta)   Dense ``alpha*B'`` (+ ``beta*C`` as its bias)
MatMul (x @ W, or W @ x for 1-D x)     Dense (a following constant Add becomes its bias)
Conv (group=1, dilation 1, sym. pads)  Conv2d
AveragePool / GlobalAveragePool        AvgPool (a Conv2d with channel-diagonal weights)
MaxPool (2-D, dilation 1)              MaxPool2d
Relu, LeakyRelu, Sigmoid, Tanh         Activation
Add / Sub / Mul / Div / Neg by consts  elementwise ``Diag`` (merged while consecutive; folded
BatchNormalization                     into the previous Dense/Conv2d by the IR where exact)
Flatten, Reshape, Squeeze, Unsqueeze   shape bookkeeping only (tensors are flat in the IR)
Transpose                              an index permutation, folded into the next Dense's
                                       columns (or, for an NHWC input, into the first Conv)
Identity, Dropout, Pad                 nothing (Pad only with all-zero pads)
Cast to an equal or wider float type   nothing (FLOAT16 -> FLOAT -> DOUBLE is exact; a narrowing Cast
                                       of the tensor, e.g. to FLOAT16, is refused: see Rounding)
=====================================  =======================================================

MaxPool (2-D, no dilation) becomes a max-pooling node (the network is then a graph). Anything else raises :class:`OnnxImportError`
(a ``ValueError``) naming the node, its op type and its position.

**Input layout.** The returned ``input_shape`` is the per-sample shape the :class:`~fastcert.Network`
expects. Its row-major flattening is always the row-major flattening of the ONNX input tensor, so
VNN-LIB's ``X_i`` index it directly: pass ``x.reshape(B, *input_shape)``. It equals the ONNX input
shape without its batch dimension, except for an NHWC input whose first node transposes it to NCHW
for a convolution (the marabou-cifar10 nets): there the transpose is folded exactly into the first
convolution by reading the ``[H, W, C]`` input as a ``[1, H, W*C]`` image (kernel ``(kh, kw*C)``,
stride ``(sh, sw*C)``, padding ``(ph, pw*C)``), and ``input_shape`` is ``(1, H, W*C)``.

**Batch dimension.** An input of rank >= 2 has a batch dimension first (size 1 or symbolic); a rank-1
input (``test_nano``: shape ``[1]``) has none and is one sample.

**Rounding.** Elementwise constant maps carry the evaluation-error model of :class:`fastcert.Normalize`
(``|err| <= a|x| + c`` for a float64 evaluation of the original ops): a lone Add/Sub/Mul/Div gets
Normalize's model with std 1 or mean 0, ``Sub`` then ``Div``/``Mul`` exactly Normalize's, and longer
chains the sound composition of their models; BatchNormalization carries the model of the torch
BatchNorm conversion. Operations that are exact identities (``x + 0``, ``x * 1``, ``x / 1``) are
dropped. A constant Add right after a bias-free Gemm/MatMul/Conv becomes its bias (exact); other
elementwise maps after an affine layer are folded into it by the IR (``network._fold``), which
records the evaluation error.

**Cast.** The imported network is bounded in float64 (a FLOAT or FLOAT16 model is read as the same
graph evaluated in float64; the rounding of a lower-precision *evaluation* is not covered, see
docs/architecture.md). A ``Cast`` of the tensor is exact when the target type holds every value of the
tensor's current type (the same type, FLOAT16 -> FLOAT / DOUBLE, FLOAT -> DOUBLE) and is then dropped;
a narrowing ``Cast`` (DOUBLE -> FLOAT, anything -> FLOAT16 / BFLOAT16 / FLOAT8) is an explicit
rounding of the function, not an affine map, and raises :class:`OnnxImportError` naming the node and
both types. A ``Cast`` of a constant is evaluated with the real rounding, as onnxruntime does (to
FLOAT16 / BFLOAT16 through FLOAT); float -> integer casts of constants must be finite and in range.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastcert.network import Network, LayerOp

__all__ = ["OnnxImportError", "load_onnx", "SUPPORTED_OPS"]

_U = 2.0**-53  # unit roundoff of float64

SUPPORTED_OPS = ("Gemm, MatMul, Add, Sub, Mul, Div, Neg, Relu, LeakyRelu, Sigmoid, Tanh, Conv, AveragePool, "
                 "GlobalAveragePool, BatchNormalization, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Pad "
                 "(all-zero pads), Constant, Identity, Dropout, Cast (to an equal or wider float type), and "
                 "constant subgraphs (Shape, Gather, Concat, Slice, ...)")


class OnnxImportError(ValueError):
    """The ONNX file is malformed or uses something fastcert cannot represent."""


# --------------------------------------------------------------------------- reading


def _read_model(src: Any):
    try:
        import onnx
    except ImportError as e:  # pragma: no cover
        raise ImportError("fastcert.io.load_onnx needs the onnx package: pip install onnx") from e

    if isinstance(src, onnx.ModelProto):
        return src, "<ModelProto>"
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "<bytes>"
    elif isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
        with open(name, "rb") as f:
            data = f.read()
    else:
        raise TypeError(f"load_onnx expects a path, bytes or an onnx.ModelProto, got {type(src).__name__}")
    if data[:2] == b"\x1f\x8b":  # gzip magic (.onnx.gz), whatever the file name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise OnnxImportError(f"{name}: corrupt gzip data ({e})") from e
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise OnnxImportError(f"{name}: not a valid ONNX model ({type(e).__name__}: {e})") from e
    return model, name


def _attrs(node) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


# --------------------------------------------------------------------------- the converter


@dataclass
class _Dyn:
    """The one non-constant tensor: its ONNX per-sample shape (``logical``; without the batch
    dimension when ``batched``) and where its entries live in the IR's flat tensor:
    ``logical_flat[k] = ir_flat[P[k]]`` (``P`` None: the identity)."""

    name: str
    logical: tuple[int, ...]
    batched: bool
    P: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(np.prod(self.logical, dtype=np.int64))

    def full(self) -> tuple[int, ...]:
        return ((1,) if self.batched else ()) + self.logical


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


class _Converter:
    def __init__(self, model, name: str) -> None:
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
        dyn_inputs = [i for i in g.input if i.name not in self.consts]
        if len(dyn_inputs) != 1:
            raise OnnxImportError(f"{name}: fastcert needs exactly one non-constant graph input, found "
                                  f"{len(dyn_inputs)} ({[i.name for i in dyn_inputs]})")
        inp = dyn_inputs[0]
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            raise OnnxImportError(f"{name}: input {inp.name!r} has no declared shape")
        dims: list[Any] = []
        for d in tt.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
        self.onnx_input_shape = dims
        batched = len(dims) >= 2
        if batched and isinstance(dims[0], int) and dims[0] != 1:
            raise OnnxImportError(f"{name}: input {inp.name!r} has a fixed batch dimension of {dims[0]} (shape "
                                  f"{dims}); fastcert expects a batch dimension of 1 or a symbolic one")
        sample = dims[1:] if batched else dims
        if any(not isinstance(d, int) or d <= 0 for d in sample):
            raise OnnxImportError(f"{name}: input {inp.name!r} has shape {dims}; every dimension after the batch "
                                  f"dimension must be a fixed positive size")
        from onnx import TensorProto

        if tt.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise OnnxImportError(f"{name}: input {inp.name!r} is not a floating-point tensor")
        self.input_name = inp.name
        self.dyn = _Dyn(inp.name, tuple(int(d) for d in sample), batched)
        self.dyn_type = int(tt.elem_type)  # the ONNX element type of the tensor (changed only by Cast)
        self.ir_input_shape: tuple[int, ...] = self.dyn.logical
        self.ir_shape: tuple[int, ...] = self.dyn.logical
        self.ops: list[LayerOp] = []
        self.pend: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # s, t, a, c (IR order)
        self.pend_where: list[str] = []
        self.pend_kinds: list[str] = []
        self.notes: list[str] = []
        self.where = ""
        self.fresh_affine = False  # ops[-1] is a Dense/Conv whose output is the current tensor, untouched

    # ---- errors
    def err(self, msg: str) -> OnnxImportError:
        return OnnxImportError(f"{self.where}: {msg}")

    # ---- IR emission
    def _emit(self, op: LayerOp, shape: tuple[int, ...]) -> None:
        self.ops.append(op)
        self.ir_shape = shape
        self.fresh_affine = op.kind in ("linear", "conv")

    def _emit_flatten(self, where: str) -> None:
        if len(self.ir_shape) != 1:
            self._emit(LayerOp("flatten", where), (int(np.prod(self.ir_shape)),))

    def _to_ir(self, v_logical: np.ndarray) -> np.ndarray:
        """A per-element array in the tensor's ONNX layout -> the IR's flat order."""
        v = np.array(v_logical, dtype=np.float64).reshape(-1)  # a writable copy
        if self.dyn.P is None:
            return v
        out = np.empty_like(v)
        out[self.dyn.P] = v
        return out

    def _elementwise(self, s: Any, t: Any, a: Any, c: Any, kind: str = "") -> None:
        """Queue ``y = s*x + t`` (logical-layout arrays broadcastable to the tensor) with the evaluation-
        error model ``|err| <= a|x| + c``, composed with what is already queued. ``kind``: "shift" for
        a lone ``x + t`` (Add / Sub), "scale" for a lone ``x * s`` (Mul / Div)."""
        shp = self.dyn.logical
        try:
            arrs = [np.broadcast_to(_f64(v), shp) for v in (s, t, a, c)]
        except ValueError as e:
            raise self.err(f"cannot broadcast its constant to the tensor shape {list(self.dyn.full())}") from e
        s2, t2, a2, c2 = (self._to_ir(v) for v in arrs)
        if not (np.isfinite(s2).all() and np.isfinite(t2).all()):
            raise self.err("its constant gives a non-finite scale or shift")
        if self.pend is None:
            self.pend = (s2, t2, a2, c2)
        elif self.pend_kinds == ["shift"] and kind == "scale":
            # (x - m) / d or (x - m) * k: exactly fastcert.Normalize, whose model covers the two roundings
            # of the original ops and ours of s2 and s2*t1 (4u)
            t1 = self.pend[1]
            self.pend = (s2, s2 * t1, 4 * _U * np.abs(s2), 4 * _U * np.abs(s2 * t1))
        else:
            s1, t1, a1, c1 = self.pend
            s, t = s2 * s1, s2 * t1 + t2
            # err <= |s2| err1 + err2 + our rounding of the merged s and t
            a = np.abs(s2) * a1 + a2 * np.abs(s1) + 4 * _U * np.abs(s)
            c = np.abs(s2) * c1 + a2 * np.abs(t1) + c2 + 4 * _U * (np.abs(s2 * t1) + np.abs(t2))
            self.pend = (s, t, a, c)
        self.pend_where.append(self.where)
        self.pend_kinds.append(kind)

    def _flush(self) -> None:
        if self.pend is None:
            return
        s, t, a, c = self.pend
        where = self.pend_where[0] if len(self.pend_where) == 1 else \
            f"{self.pend_where[0]} .. {self.pend_where[-1]} (merged elementwise ops)"
        self.pend, self.pend_where, self.pend_kinds = None, [], []
        prev = self.ops[-1] if self.ops and self.fresh_affine else None
        # a constant Add right after an affine layer without a bias is its bias (exact)
        if prev is not None and prev.args.get("b") is None and np.all(s == 1.0):
            if prev.kind == "linear":
                prev.args["b"] = torch.from_numpy(t.copy())
                prev.where += f" (+ bias from {where})"
                return
            pc = self._per_channel(self.ir_shape, t)  # conv: per output channel
            if pc is not None:
                prev.args["b"] = torch.from_numpy(pc[0])
                prev.where += f" (+ bias from {where})"
                return
        vec = self._per_channel(self.ir_shape, s, t, a, c)
        if vec is None:
            self._emit_flatten(f"{where} (flatten for a per-element map)")
            vec = [s, t, a, c]
        sv, tv, av, cv = (torch.from_numpy(np.array(v)) for v in vec)
        self._emit(LayerOp("chaff", where, {"scale": sv, "shift": tv, "eval_a": av, "eval_c": cv}), self.ir_shape)
        self.fresh_affine = False

    @staticmethod
    def _per_channel(shape: tuple[int, ...], *vs: np.ndarray) -> list[np.ndarray] | None:
        """Per-channel vectors (channel = first IR dimension) if every array is constant per channel."""
        C = shape[0] if shape else 1
        out = []
        for v in vs:
            m = v.reshape(C, -1)
            if not (m == m[:, :1]).all():
                return None
            out.append(np.ascontiguousarray(m[:, 0]))
        return out

    # ---- dense / conv
    def _dense(self, W: np.ndarray, b: np.ndarray | None, out_logical: tuple[int, ...]) -> None:
        """``y = W x + b`` on the tensor flattened in its ONNX layout. W: [M, n]."""
        self._flush()
        W = _f64(W)
        if W.shape[1] != self.dyn.n:
            raise self.err(f"weight matrix has {W.shape[1]} input features but the tensor has {self.dyn.n} "
                           f"(shape {list(self.dyn.full())})")
        if self.dyn.P is not None:  # fold the pending permutation into the columns (exact)
            Wp = np.empty_like(W)
            Wp[:, self.dyn.P] = W
            W = Wp
            self.notes.append(f"{self.where}: a transpose of its input folded into the weight columns")
        self._check_finite(W, "weights")
        if b is not None:
            b = np.array(np.broadcast_to(_f64(b).reshape(-1), (W.shape[0],)))
            self._check_finite(b, "bias")
        self._emit_flatten(f"{self.where} (flatten)")
        self._emit(LayerOp("linear", self.where, {"W": torch.from_numpy(np.ascontiguousarray(W)),
                                             "b": None if b is None else torch.from_numpy(b)}), (W.shape[0],))
        self.dyn.logical, self.dyn.P = out_logical, None

    def _check_finite(self, a: np.ndarray, what: str) -> None:
        if not np.isfinite(a).all():
            raise self.err(f"{what} contain NaN or inf; fastcert cannot bound a network with non-finite parameters")

    def _spatial_input(self, what: str) -> tuple[int, int, int]:
        """Make sure the IR holds the tensor as [C, H, W] in ONNX layout (flushing queued elementwise
        maps) and return that shape."""
        d = self.dyn
        if not d.batched or len(d.logical) != 3:
            raise self.err(f"{what} needs an [N, C, H, W] input, got shape {list(d.full())}")
        if d.P is not None:
            raise self.err(f"{what} on a transposed tensor is only supported for an NHWC network input "
                           f"transposed to NCHW right before the first Conv")
        if self.ir_shape != d.logical and not self.ops:
            # nothing emitted yet (a Reshape of the input): choose the IR input shape
            self.ir_input_shape = self.ir_shape = d.logical
        self._flush()
        if self.ir_shape != d.logical:
            raise self.err(f"{what} on a tensor that the IR holds as {list(self.ir_shape)} (after a reshape, or a "
                           f"per-element affine map that is not per-channel): the IR cannot reshape a flat tensor "
                           f"back into an image")
        return d.logical  # type: ignore[return-value]

    def _is_nhwc_input(self) -> bool:
        d = self.dyn
        if self.ops or d.P is None or len(d.logical) != 3 or len(self.ir_input_shape) != 3:
            return False
        C, H, W = d.logical
        if self.ir_input_shape != (H, W, C):
            return False
        return bool(np.array_equal(d.P, np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1).ravel()))

    # ---- graph walk
    def run(self) -> tuple[list[LayerOp], tuple[int, ...], dict]:
        g = self.model.graph
        for pos, node in enumerate(g.node):
            label = node.name or (node.output[0] if node.output else "")
            self.where = f"node {pos} ({label!r}, {node.op_type})"
            self._node(node)
        if len(g.output) != 1:
            raise OnnxImportError(f"{self.src}: fastcert needs exactly one graph output, found {len(g.output)}")
        out = g.output[0].name
        self.where = f"graph output {out!r}"
        if out in self.consts:
            raise self.err("the output does not depend on the input")
        if out != self.dyn.name:
            raise self.err(f"the output is not the end of the chain of operations on the input "
                           f"(last tensor computed from the input: {self.dyn.name!r})")
        self._flush()
        if self.dyn.P is not None:  # a trailing transpose: an exact permutation layer
            n = self.dyn.n
            W = np.zeros((n, n))
            W[np.arange(n), self.dyn.P] = 1.0
            self._emit_flatten(f"{self.where} (flatten)")
            self._emit(LayerOp("linear", f"{self.where} (output transpose)", {"W": torch.from_numpy(W), "b": None}), (n,))
            self.dyn.P = None
        if not self.ops:
            raise OnnxImportError(f"{self.src}: the graph has no layers fastcert can bound (it is an identity)")
        info = {
            "source": self.src,
            "input_name": self.input_name,
            "onnx_input_shape": self.onnx_input_shape,
            "input_shape": self.ir_input_shape,
            "batched": self.dyn.batched,
            "output_name": out,
            "n_inputs": int(np.prod(self.ir_input_shape)),
            "n_outputs": self.dyn.n,
            "output_shape": list(self.dyn.full()),
            "opset": {(o.domain or "ai.onnx"): int(o.version) for o in self.model.opset_import},
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "n_nodes": len(g.node),
            "notes": self.notes,
        }
        return self.ops, self.ir_input_shape, info

    def _inputs(self, node) -> list[Any]:
        """Each input: a numpy constant, the marker ``_DYN`` for the dynamic tensor, or None (absent)."""
        vals: list[Any] = []
        for name in node.input:
            if name == "":
                vals.append(None)
            elif name in self.consts:
                vals.append(self.consts[name])
            elif name == self.dyn.name:
                vals.append(_DYN)
            else:
                raise self.err(f"input {name!r} is neither a constant nor the current tensor computed from the "
                               f"graph input (branching / residual graphs and unsorted node lists are not "
                               f"supported)")
        return vals

    def _node(self, node) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self.err(f"operator {node.domain}.{op} from a custom domain is not supported")
        at = _attrs(node)
        ins = self._inputs(node)
        n_dyn = sum(v is _DYN for v in ins)
        if op == "Constant":
            self._set_const(node, self._constant(at))
            return
        if n_dyn == 0:
            self._set_const(node, self._fold(op, ins, at))
            return
        if n_dyn > 1:
            raise self.err(f"{op} with two non-constant inputs (e.g. a residual connection or x*x) is not supported")
        if op == "Shape":
            full = np.array(self.dyn.full(), dtype=np.int64)
            start, end = at.get("start", 0), at.get("end", None)
            self._set_const(node, full[start:end])
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            if op in ("GlobalMaxPool", "MaxRoundPool", "MaxUnpool"):
                raise self.err(f"{op} is not supported (MaxPool and AveragePool are)")
            raise self.err(f"unsupported ONNX operator {op}. fastcert supports: {SUPPORTED_OPS}")
        handler(node, ins, at)
        self.dyn.name = node.output[0]

    def _set_const(self, node, value: np.ndarray) -> None:
        self.consts[node.output[0]] = np.asarray(value)

    def _constant(self, at: dict) -> np.ndarray:
        if "value" in at:
            return np.asarray(at["value"])
        for k, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                      ("value_ints", np.int64)):
            if k in at:
                return np.asarray(at[k], dtype=dt)
        raise self.err(f"Constant with attributes {sorted(at)} is not supported")

    # ---- constant folding (every input constant)
    def _fold(self, op: str, ins: list[Any], at: dict) -> np.ndarray:
        x = ins[0] if ins else None
        try:
            if op in ("Identity", "Dropout"):
                return x
            if op == "Shape":
                return np.array(x.shape, dtype=np.int64)[at.get("start", 0):at.get("end", None)]
            if op == "Cast":
                return self._fold_cast(np.asarray(x), at)
            if op == "Transpose":
                return np.transpose(x, at.get("perm"))
            if op in ("Add", "Sub", "Mul", "Div"):
                a, b = ins
                r = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op)
                if r is not None:
                    return r(a, b)
                return (a // b) if np.issubdtype(np.result_type(a, b), np.integer) else a / b
            if op == "Neg":
                return -x
            if op == "Sqrt":
                return np.sqrt(x)
            if op == "Reciprocal":
                return 1.0 / x
            if op == "Reshape":
                return x.reshape(_reshape_target(x.shape, ins[1], at.get("allowzero", 0)))
            if op == "Flatten":
                ax = at.get("axis", 1)
                ax = ax + x.ndim if ax < 0 else ax
                return x.reshape(int(np.prod(x.shape[:ax])), -1)
            if op in ("Squeeze", "Unsqueeze"):
                axes = at.get("axes", None)
                if axes is None and len(ins) > 1 and ins[1] is not None:
                    axes = ins[1]
                return _squeeze(x.shape, axes, op == "Unsqueeze", x)
            if op == "Concat":
                return np.concatenate([v for v in ins if v is not None], axis=at["axis"])
            if op == "Gather":
                return np.take(x, ins[1], axis=at.get("axis", 0))
            if op == "Slice":
                return _slice(x, ins, at)
            if op == "ConstantOfShape":
                v = at.get("value", np.zeros(1, dtype=np.float32))
                return np.full(tuple(int(s) for s in x), v.reshape(-1)[0], dtype=v.dtype)
        except OnnxImportError:
            raise
        except Exception as e:  # numpy shape errors etc.
            raise self.err(f"cannot evaluate this constant expression ({type(e).__name__}: {e})") from e
        raise self.err(f"unsupported ONNX operator {op} (on constants). fastcert supports: {SUPPORTED_OPS}")

    def _fold_cast(self, x: np.ndarray, at: dict) -> np.ndarray:
        """``Cast`` of a constant, rounded as onnxruntime rounds it: to FLOAT16 / BFLOAT16 from a wider type
        through FLOAT (onnxruntime converts DOUBLE -> FLOAT -> FLOAT16, which differs from one rounding at
        ties); float -> integer truncates toward zero and is refused for NaN, inf and out-of-range values
        (undefined in ONNX; onnxruntime gives INT_MIN)."""
        import onnx
        from onnx import TensorProto

        to = at.get("to")
        if to is None:
            raise self.err("Cast without a 'to' attribute")
        if to == TensorProto.STRING or x.dtype.kind in "OSU":
            raise self.err(f"Cast of a {x.dtype} constant to {_type_name(to)}: string casts are not supported")
        if to not in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE,
                      TensorProto.BOOL) and to in _float_tables()[0]:
            raise self.err(f"Cast of a constant to {_type_name(to)} is not supported (only FLOAT16, BFLOAT16, FLOAT, "
                           f"DOUBLE and integer types)")
        dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
        if to in (TensorProto.FLOAT16, TensorProto.BFLOAT16) and x.dtype.itemsize > 4:
            x = x.astype(np.float32)  # as onnxruntime: through FLOAT
        if np.issubdtype(dt, np.integer) and x.dtype.kind == "f":
            info = np.iinfo(dt)
            xf = x.astype(np.float64)
            if not np.isfinite(xf).all() or np.any(np.trunc(xf) < info.min) or np.any(np.trunc(xf) > info.max):
                raise self.err(f"Cast of a constant with NaN, inf or values outside the range of "
                               f"{_type_name(to)} (undefined in ONNX)")
        return x.astype(dt)

    # ---- operators on the dynamic tensor
    def _op_Identity(self, node, ins, at) -> None:
        pass

    def _op_Dropout(self, node, ins, at) -> None:
        if len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2]).reshape(-1)[0]):
            raise self.err("Dropout in training mode (random) cannot be verified")

    def _op_Cast(self, node, ins, at) -> None:
        """Exact (an identity) when every value of the tensor's type is a value of the target type:
        FLOAT16 -> FLOAT / DOUBLE, FLOAT -> DOUBLE, or the same type. A narrowing Cast (DOUBLE -> FLOAT,
        anything -> FLOAT16 / BFLOAT16 / FLOAT8) rounds every entry to the target's grid (and can overflow
        to inf): not an affine map, so it is refused rather than bounded as the identity."""
        to, src = at.get("to"), self.dyn_type
        floats, exact = _float_tables()
        if to is None:
            raise self.err("Cast without a 'to' attribute")
        if to not in floats:
            raise self.err(f"Cast of the tensor to {_type_name(to)} (not a floating-point type) is not supported")
        if to in exact.get(src, ()):
            self.dyn_type = int(to)
            return
        raise self.err(f"Cast of the tensor from {_type_name(src)} to {_type_name(to)} rounds it to a narrower "
                       f"floating-point type; fastcert bounds the network in float64 and cannot bound that rounding "
                       f"(it is not an affine map). Remove the Cast (export the network in one precision) or cast "
                       f"only to an equal or wider type")

    def _act(self, kind: str, alpha: float = 0.0) -> None:
        self._flush()
        self._emit(LayerOp("act", self.where, {"act": kind, "alpha": float(alpha)}), self.ir_shape)

    def _op_Relu(self, node, ins, at) -> None:
        self._act("relu")

    def _op_Sigmoid(self, node, ins, at) -> None:
        self._act("sigmoid")

    def _op_Tanh(self, node, ins, at) -> None:
        self._act("tanh")

    def _op_LeakyRelu(self, node, ins, at) -> None:
        self._act("leaky_relu", at.get("alpha", 0.01))

    def _const_operand(self, ins: list[Any], what: str) -> tuple[np.ndarray, bool]:
        """(the constant operand, True when the tensor is the first operand)."""
        a, b = ins[0], ins[1]
        c = b if a is _DYN else a
        if not _is_float(c) and not np.issubdtype(np.asarray(c).dtype, np.integer):
            raise self.err(f"{what} with a non-numeric constant")
        c = _f64(c)
        d = self.dyn
        # the constant may not broadcast the tensor to a larger shape (that would change the batch layout)
        full = d.full()
        try:
            ok = c.ndim <= len(full) and np.broadcast_shapes(c.shape, full) == full
        except ValueError:
            ok = False
        if not ok:
            raise self.err(f"its constant of shape {list(c.shape)} would broadcast the tensor of shape "
                           f"{list(full)} to a larger shape")
        if d.batched and c.ndim == len(full):
            c = c[0]  # drop the (size-1) batch axis
        return c, a is _DYN

    def _op_Add(self, node, ins, at) -> None:
        c, _ = self._const_operand(ins, "Add")
        if not np.any(c):
            return  # x + 0 is exact
        self._elementwise(1.0, c, 4 * _U, 4 * _U * np.abs(c), "shift")

    def _op_Sub(self, node, ins, at) -> None:
        c, first = self._const_operand(ins, "Sub")
        if first:
            if not np.any(c):
                return
            self._elementwise(1.0, -c, 4 * _U, 4 * _U * np.abs(c), "shift")
        else:  # c - x
            self._elementwise(-1.0, c, 4 * _U, 4 * _U * np.abs(c))

    def _op_Neg(self, node, ins, at) -> None:
        self._elementwise(-1.0, 0.0, 0.0, 0.0)

    def _op_Mul(self, node, ins, at) -> None:
        c, _ = self._const_operand(ins, "Mul")
        if np.all(c == 1.0):
            return
        self._elementwise(c, 0.0, 4 * _U * np.abs(c), 0.0, "scale")

    def _op_Div(self, node, ins, at) -> None:
        c, first = self._const_operand(ins, "Div")
        if not first:
            raise self.err("division of a constant by the tensor (c / x) is nonlinear and not supported")
        if np.any(c == 0):
            raise self.err("division by a constant that contains 0")
        if np.all(c == 1.0):
            return
        self._elementwise(1.0 / c, 0.0, 4 * _U / np.abs(c), 0.0, "scale")

    def _op_BatchNormalization(self, node, ins, at) -> None:
        if at.get("training_mode", 0):
            raise self.err("BatchNormalization in training mode cannot be verified")
        if any(v is None or v is _DYN for v in ins[1:5]):
            raise self.err("BatchNormalization needs constant scale, bias, mean and variance")
        gamma, beta, mean, var = (_f64(v).reshape(-1) for v in ins[1:5])
        eps = float(at.get("epsilon", 1e-5))
        d = self.dyn
        if not d.logical or d.logical[0] != gamma.size:
            raise self.err(f"has {gamma.size} channels but its input has shape {list(d.full())}")
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        # the same evaluation-error model as the torch BatchNorm conversion (network.py)
        a = 8 * _U * np.abs(scale)
        c = 8 * _U * (np.abs(mean) * np.abs(scale) + np.abs(beta))
        shp = (-1,) + (1,) * (len(d.logical) - 1)
        self._elementwise(*(v.reshape(shp) for v in (scale, shift, a, c)))

    def _reshape_to(self, new_full: tuple[int, ...]) -> None:
        d = self.dyn
        if int(np.prod(new_full, dtype=np.int64)) != d.n:
            raise self.err(f"cannot reshape {list(d.full())} to {list(new_full)}")
        if d.batched:
            if not new_full or new_full[0] != 1:
                raise self.err(f"reshape from {list(d.full())} to {list(new_full)} mixes the batch dimension with "
                               f"the others")
            d.logical = tuple(int(s) for s in new_full[1:])
        else:
            d.logical = tuple(int(s) for s in new_full)

    def _op_Flatten(self, node, ins, at) -> None:
        full = self.dyn.full()
        ax = at.get("axis", 1)
        ax = ax + len(full) if ax < 0 else ax
        self._reshape_to((int(np.prod(full[:ax], dtype=np.int64)), int(np.prod(full[ax:], dtype=np.int64))))

    def _op_Reshape(self, node, ins, at) -> None:
        if len(ins) < 2 or ins[1] is None or ins[1] is _DYN:
            if "shape" in at:  # opset 1-4
                target = np.asarray(at["shape"])
            else:
                raise self.err("Reshape needs a constant target shape")
        else:
            target = ins[1]
        self._reshape_to(_reshape_target(self.dyn.full(), target, at.get("allowzero", 0), self.err))

    def _op_Squeeze(self, node, ins, at) -> None:
        axes = at.get("axes", ins[1] if len(ins) > 1 else None)
        full = self.dyn.full()
        if axes is None and self.dyn.batched:
            axes = [i for i in range(1, len(full)) if full[i] == 1]  # keep the batch dimension
        self._reshape_to(_squeeze(full, axes, False, None, self.err))

    def _op_Unsqueeze(self, node, ins, at) -> None:
        axes = at.get("axes", ins[1] if len(ins) > 1 else None)
        if axes is None:
            raise self.err("Unsqueeze without axes")
        self._reshape_to(_squeeze(self.dyn.full(), axes, True, None, self.err))

    def _op_Transpose(self, node, ins, at) -> None:
        d = self.dyn
        nd = len(d.full())
        perm = list(at.get("perm", range(nd)[::-1]))
        perm = [p + nd if p < 0 else p for p in perm]
        if sorted(perm) != list(range(nd)):
            raise self.err(f"invalid perm {perm}")
        if d.batched:
            if perm[0] != 0:
                raise self.err(f"Transpose with perm {perm} moves the batch dimension")
            perm = [p - 1 for p in perm[1:]]
        if perm == list(range(len(d.logical))):
            return
        # (queued elementwise constants are already in IR order: the permutation does not touch them)
        base = np.arange(d.n) if d.P is None else d.P
        d.P = np.ascontiguousarray(base.reshape(d.logical).transpose(perm).ravel())
        d.logical = tuple(d.logical[p] for p in perm)
        if np.array_equal(d.P, np.arange(d.n)):
            d.P = None

    def _op_Pad(self, node, ins, at) -> None:
        pads = at.get("pads", None)
        if pads is None and len(ins) > 1 and ins[1] is not None:
            pads = ins[1]
        if pads is None or _DYN is pads:
            raise self.err("Pad needs constant pads")
        if np.any(np.asarray(pads) != 0):
            raise self.err(f"Pad with non-zero pads {np.asarray(pads).tolist()} is not supported (only all-zero pads, "
                           f"a no-op; use the padding of Conv / AveragePool instead)")

    def _op_Gemm(self, node, ins, at) -> None:
        if ins[0] is not _DYN:
            raise self.err("Gemm with the tensor as its second operand is not supported")
        if at.get("transA", 0):
            raise self.err("Gemm with transA=1 on the tensor (it would transpose the batch dimension) is not "
                           "supported")
        B = _f64(ins[1])
        if B.ndim != 2:
            raise self.err(f"Gemm weight must be a matrix, got shape {list(B.shape)}")
        W = B if at.get("transB", 0) else B.T  # [M, K]
        W = float(at.get("alpha", 1.0)) * W
        bias = None
        if len(ins) > 2 and ins[2] is not None:
            C = _f64(ins[2])
            if C.size not in (1, W.shape[0]) or (C.ndim == 2 and C.shape[0] != 1):
                raise self.err(f"Gemm bias of shape {list(C.shape)} does not broadcast per output "
                               f"({W.shape[0]} outputs)")
            bias = float(at.get("beta", 1.0)) * np.broadcast_to(C.reshape(-1), (W.shape[0],))
        d = self.dyn
        full = d.full()
        if len(full) != 2:
            raise self.err(f"Gemm needs a 2-D input, got shape {list(full)}")
        if full[1] != W.shape[1]:
            raise self.err(f"Gemm weight has {W.shape[1]} input features but the input has shape {list(full)}")
        self._dense(W, bias, (W.shape[0],) if d.batched else (full[0], W.shape[0]))

    def _op_MatMul(self, node, ins, at) -> None:
        d = self.dyn
        full = d.full()
        if ins[0] is _DYN:
            Wc = _f64(ins[1])
            if Wc.ndim == 1:
                Wc2, tail = Wc[:, None], ()
            elif Wc.ndim == 2:
                Wc2, tail = Wc, (Wc.shape[1],)
            else:
                raise self.err(f"MatMul with a {Wc.ndim}-D constant (batched matmul) is not supported")
            K = Wc2.shape[0]
            if not full or full[-1] != K:
                raise self.err(f"MatMul: the input of shape {list(full)} does not match the weight of shape "
                               f"{list(Wc.shape)}")
            lead = full[:-1]
            if int(np.prod(lead[1:] if d.batched else lead, dtype=np.int64)) != 1:
                raise self.err(f"MatMul on an input of shape {list(full)}: only one row per sample is supported")
            out_full = lead + tail
            self._dense(Wc2.T, None, out_full[1:] if d.batched else out_full)
        else:  # W @ x: only for an unbatched vector (or column) x
            Wc = _f64(ins[0])
            if Wc.ndim != 2 or d.batched or len(full) not in (1, 2) or full[0] != Wc.shape[1] or \
                    (len(full) == 2 and full[1] != 1):
                raise self.err(f"MatMul of a constant of shape {list(Wc.shape)} with the tensor of shape "
                               f"{list(full)} is only supported for an unbatched vector or column")
            self._dense(Wc, None, (Wc.shape[0],) + full[1:])

    def _op_Conv(self, node, ins, at) -> None:
        if ins[0] is not _DYN or ins[1] is _DYN or (len(ins) > 2 and ins[2] is _DYN):
            raise self.err("Conv needs the tensor as input and constant weights")
        W = _f64(ins[1])
        b = _f64(ins[2]).reshape(-1) if len(ins) > 2 and ins[2] is not None else None
        if W.ndim != 4:
            raise self.err(f"only 2-D convolutions are supported (weight shape {list(W.shape)})")
        if at.get("group", 1) != 1:
            raise self.err(f"Conv with group={at['group']} is not supported (only group=1)")
        if any(v != 1 for v in at.get("dilations", [1, 1])):
            raise self.err(f"Conv with dilations {at['dilations']} is not supported")
        self._check_finite(W, "weights")
        if b is not None:
            self._check_finite(b, "bias")
        kh, kw = W.shape[2:]
        if tuple(at.get("kernel_shape", (kh, kw))) != (kh, kw):
            raise self.err(f"kernel_shape {at['kernel_shape']} does not match the weight shape {list(W.shape)}")
        st = tuple(int(s) for s in at.get("strides", (1, 1)))
        nhwc = self._is_nhwc_input()
        if nhwc:
            C, H, Wd = self.dyn.logical
        else:
            C, H, Wd = self._spatial_input("Conv")
        if W.shape[1] != C:
            raise self.err(f"Conv expects {W.shape[1]} input channels but its input has shape {list(self.dyn.full())}")
        pad = self._pads(at, (H, Wd), (kh, kw), st)
        OC = W.shape[0]
        if nhwc:
            # x_chw[c, h, w] = X[0, h, w*C + c] with X the [1, H, W*C] view of the NHWC input: the
            # convolution becomes one over X with kernel (kh, kw*C), stride (sh, sw*C), padding (ph, pw*C)
            self.ir_input_shape = self.ir_shape = (1, H, Wd * C)
            self.dyn.P = None
            self._flush()
            if len(self.ir_shape) != 3:
                raise self.err("a per-channel elementwise map of an NHWC input before its first Conv is not "
                               "supported")
            W = np.ascontiguousarray(W.transpose(0, 2, 3, 1).reshape(OC, 1, kh, kw * C))
            st, pad = (st[0], st[1] * C), (pad[0], pad[1] * C)
            self.notes.append(f"{self.where}: NHWC input transpose folded into this Conv (input read as "
                              f"[1, {H}, {Wd * C}])")
        OH = (self.ir_shape[1] + 2 * pad[0] - W.shape[2]) // st[0] + 1
        OW = (self.ir_shape[2] + 2 * pad[1] - W.shape[3]) // st[1] + 1
        if OH < 1 or OW < 1:
            raise self.err(f"kernel {kh}x{kw} does not fit the padded input {list(self.dyn.full())}")
        self._emit(LayerOp("conv", self.where, {"W": torch.from_numpy(W), "b": None if b is None else torch.from_numpy(b),
                                           "stride": st, "padding": pad}), (OC, OH, OW))
        self.dyn.logical, self.dyn.P = (OC, OH, OW), None

    def _pads(self, at: dict, hw: tuple[int, int], k: tuple[int, int], st: tuple[int, ...]) -> tuple[int, int]:
        ap = at.get("auto_pad", "NOTSET")
        if ap in ("SAME_UPPER", "SAME_LOWER"):
            tot = [max((-(-hw[i] // st[i]) - 1) * st[i] + k[i] - hw[i], 0) for i in range(2)]
            if any(t % 2 for t in tot):
                raise self.err(f"auto_pad={ap} needs asymmetric padding here, which is not supported")
            return tot[0] // 2, tot[1] // 2
        if ap == "VALID":
            return 0, 0
        if ap not in ("NOTSET", ""):
            raise self.err(f"auto_pad={ap!r} is not supported")
        p = [int(v) for v in at.get("pads", (0, 0, 0, 0))]
        if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
            raise self.err(f"asymmetric pads {p} are not supported (only [p_h, p_w, p_h, p_w])")
        return p[0], p[1]

    def _op_AveragePool(self, node, ins, at) -> None:
        C, H, Wd = self._spatial_input("AveragePool")
        k = tuple(int(v) for v in at["kernel_shape"])
        st = tuple(int(v) for v in at.get("strides", (1, 1)))
        if len(k) != 2:
            raise self.err(f"only 2-D pooling is supported (kernel_shape {list(k)})")
        if any(v != 1 for v in at.get("dilations", [1, 1])):
            raise self.err("AveragePool with dilations is not supported")
        pad = self._pads(at, (H, Wd), k, st)  # type: ignore[arg-type]
        if pad != (0, 0) and not at.get("count_include_pad", 0):
            raise self.err("AveragePool with padding and count_include_pad=0 is not supported")
        OH = (H + 2 * pad[0] - k[0]) // st[0] + 1
        OW = (Wd + 2 * pad[1] - k[1]) // st[1] + 1
        if at.get("ceil_mode", 0) and ((H + 2 * pad[0] - k[0]) % st[0] or (Wd + 2 * pad[1] - k[1]) % st[1]):
            raise self.err("AveragePool with ceil_mode=1 (with a partial window) is not supported")
        if OH < 1 or OW < 1:
            raise self.err(f"kernel {list(k)} does not fit the input {list(self.dyn.full())}")
        self._emit(LayerOp("avgpool", self.where, {"k": k, "stride": st, "padding": pad, "div": float(k[0] * k[1])}),
                   (C, OH, OW))
        self.dyn.logical = (C, OH, OW)

    def _op_MaxPool(self, node, ins, at) -> None:
        C, H, Wd = self._spatial_input("MaxPool")
        k = tuple(int(v) for v in at["kernel_shape"])
        st = tuple(int(v) for v in at.get("strides", (1, 1)))
        if len(k) != 2:
            raise self.err(f"only 2-D pooling is supported (kernel_shape {list(k)})")
        if any(v != 1 for v in at.get("dilations", [1, 1])) or len(node.output) > 1 or at.get("storage_order", 0):
            raise self.err("MaxPool with dilations, storage_order or an indices output is not supported")
        pad = self._pads(at, (H, Wd), k, st)  # type: ignore[arg-type]
        OH = (H + 2 * pad[0] - k[0]) // st[0] + 1
        OW = (Wd + 2 * pad[1] - k[1]) // st[1] + 1
        if at.get("ceil_mode", 0) and ((H + 2 * pad[0] - k[0]) % st[0] or (Wd + 2 * pad[1] - k[1]) % st[1]):
            raise self.err("MaxPool with ceil_mode=1 (with a partial window) is not supported")
        if OH < 1 or OW < 1 or pad[0] > k[0] // 2 or pad[1] > k[1] // 2:
            raise self.err(f"kernel {list(k)} with pads {list(pad)} does not fit the input {list(self.dyn.full())}")
        self._emit(LayerOp("maxpool", self.where, {"k": k, "stride": st, "padding": pad}), (C, OH, OW))
        self.dyn.logical = (C, OH, OW)

    def _op_GlobalAveragePool(self, node, ins, at) -> None:
        C, H, Wd = self._spatial_input("GlobalAveragePool")
        self._emit(LayerOp("avgpool", self.where, {"k": (H, Wd), "stride": (1, 1), "padding": (0, 0),
                                              "div": float(H * Wd)}), (C, 1, 1))
        self.dyn.logical = (C, 1, 1)


class _DynMarker:
    def __repr__(self) -> str:
        return "<tensor>"


_DYN = _DynMarker()


def _type_name(t: Any) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(int(t))
    except (ValueError, TypeError):
        return f"element type {t!r}"


@functools.lru_cache(maxsize=None)
def _float_tables() -> tuple[frozenset, dict[int, frozenset]]:
    """(the ONNX floating-point element types, {type: the types that hold all its values})."""
    from onnx import TensorProto as T

    floats = frozenset(getattr(T, n) for n in ("FLOAT16", "BFLOAT16", "FLOAT", "DOUBLE", "FLOAT8E4M3FN",
                                               "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1",
                                               "FLOAT8E8M0") if hasattr(T, n))
    # the target types that hold every value of the source type (a Cast between them is exact)
    exact = {T.FLOAT16: frozenset({T.FLOAT16, T.FLOAT, T.DOUBLE}), T.BFLOAT16: frozenset({T.BFLOAT16, T.FLOAT, T.DOUBLE}),
             T.FLOAT: frozenset({T.FLOAT, T.DOUBLE}), T.DOUBLE: frozenset({T.DOUBLE})}
    return floats, exact



def _reshape_target(full, target, allowzero: int = 0, err=None) -> tuple[int, ...]:
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


def _squeeze(full, axes, unsqueeze: bool, x=None, err=None):
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


def _slice(x: np.ndarray, ins: list[Any], at: dict) -> np.ndarray:
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


def load_onnx(src: Any) -> tuple[Network, tuple[int, ...], dict]:
    """Load an ONNX network (a path, ``bytes`` or an ``onnx.ModelProto``; gzipped data is detected by
    its magic bytes, so ``.onnx.gz`` works) into a :class:`fastcert.Network`.

    Returns ``(network, input_shape, info)``: ``input_shape`` is the per-sample shape the network is
    built for (its row-major flattening is the ONNX input's, see the module docs), ``info`` a dict with
    ``input_name``, ``onnx_input_shape`` (as declared, batch included), ``output_name``, ``n_inputs``,
    ``n_outputs``, ``opset``, ``producer`` and ``notes`` (what was folded where).

    Raises :class:`OnnxImportError` (a ``ValueError``) naming the node, its op type and its position
    for anything fastcert cannot represent.
    """
    model, name = _read_model(src)
    conv = _Converter(model, name)
    ops, input_shape, info = conv.run()
    net = Network(ops, input_shape)
    return net, input_shape, info
