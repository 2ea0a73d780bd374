"""Reading an ONNX model: the file (plain or gzipped), node attributes, the one graph input, and the
ONNX element-type tables the Cast rules use."""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from typing import Any

from fastcert.errors import UnsupportedError


class OnnxImportError(UnsupportedError):
    """The ONNX file is malformed or uses something fastcert cannot represent (a ``ValueError``)."""


def read_model(src: Any) -> tuple[Any, str]:
    """``(onnx.ModelProto, a name for messages)`` from a path, bytes or a ModelProto."""
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


def attrs(node: Any) -> dict[str, Any]:
    """A node's attributes as python / numpy values (tensors as numpy arrays, strings decoded)."""
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


@dataclass(frozen=True)
class GraphInput:
    """The one non-constant graph input: its name, declared dims (ints or symbolic names), whether its
    first dimension is a batch dimension, its per-sample shape and its ONNX element type."""

    name: str
    dims: list[Any]
    batched: bool
    sample: tuple[int, ...]
    elem_type: int


def read_input(graph: Any, consts: dict[str, Any], src: str) -> GraphInput:
    """The graph's one non-constant input (an input that is also an initializer is a constant)."""
    from onnx import TensorProto

    dyn_inputs = [i for i in graph.input if i.name not in consts]
    if len(dyn_inputs) != 1:
        raise OnnxImportError(f"{src}: fastcert needs exactly one non-constant graph input, found "
                              f"{len(dyn_inputs)} ({[i.name for i in dyn_inputs]})")
    inp = dyn_inputs[0]
    tt = inp.type.tensor_type
    if not tt.HasField("shape"):
        raise OnnxImportError(f"{src}: input {inp.name!r} has no declared shape")
    dims: list[Any] = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    batched = len(dims) >= 2
    if batched and isinstance(dims[0], int) and dims[0] != 1:
        raise OnnxImportError(f"{src}: input {inp.name!r} has a fixed batch dimension of {dims[0]} (shape "
                              f"{dims}); fastcert expects a batch dimension of 1 or a symbolic one")
    sample = dims[1:] if batched else dims
    if any(not isinstance(d, int) or d <= 0 for d in sample):
        raise OnnxImportError(f"{src}: input {inp.name!r} has shape {dims}; every dimension after the batch "
                              f"dimension must be a fixed positive size")
    if tt.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
        raise OnnxImportError(f"{src}: input {inp.name!r} is not a floating-point tensor")
    return GraphInput(inp.name, dims, batched, tuple(int(d) for d in sample), int(tt.elem_type))


def type_name(t: Any) -> str:
    """The ONNX name of element type ``t`` ("FLOAT16"), or a description of an unknown one."""
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(int(t))
    except (ValueError, TypeError):
        return f"element type {t!r}"


@functools.lru_cache(maxsize=None)
def float_tables() -> tuple[frozenset, dict[int, frozenset]]:
    """(the ONNX floating-point element types, {type: the types that hold all its values})."""
    from onnx import TensorProto as T

    floats = frozenset(getattr(T, n) for n in ("FLOAT16", "BFLOAT16", "FLOAT", "DOUBLE", "FLOAT8E4M3FN",
                                               "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1",
                                               "FLOAT8E8M0") if hasattr(T, n))
    # the target types that hold every value of the source type (a Cast between them is exact)
    exact = {T.FLOAT16: frozenset({T.FLOAT16, T.FLOAT, T.DOUBLE}), T.BFLOAT16: frozenset({T.BFLOAT16, T.FLOAT, T.DOUBLE}),
             T.FLOAT: frozenset({T.FLOAT, T.DOUBLE}), T.DOUBLE: frozenset({T.DOUBLE})}
    return floats, exact
