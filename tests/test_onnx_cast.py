"""ONNX ``Cast`` in the importer (issue #9, point 5).

A Cast of the tensor is the identity only when it cannot round (same or wider float type); a narrowing
Cast is refused naming the node and both types. A Cast of a constant is folded with onnxruntime's
rounding (DOUBLE -> FLOAT16 / BFLOAT16 through FLOAT). Accepted graphs are compared with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastcert
from fastcert.io.onnx_import import OnnxImportError, load_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

ort.set_default_logger_severity(3)

_NP = {T.FLOAT: np.float32, T.DOUBLE: np.float64, T.FLOAT16: np.float16}


def _graph(nodes, inits: dict, in_type: int, in_shape, out_type: int):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, in_shape)],
                          [helper.make_tensor_value_info("y", out_type, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].astype(np.float64)


def test_issue_reproducer_cast_to_float16_is_refused() -> None:
    """MatMul -> Cast(FLOAT16) -> Cast(DOUBLE) -> Relu -> MatMul: read as the identity, the CROWN bounds at
    eps 0 excluded onnxruntime's output (the FLOAT16 rounding is 2**-11 relative)."""
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(size=(4, 6)), rng.normal(size=(6, 2))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("Cast", ["h"], ["h16"], to=T.FLOAT16),
             helper.make_node("Cast", ["h16"], ["h64"], to=T.DOUBLE),
             helper.make_node("Relu", ["h64"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    model = _graph(nodes, {"W1": W1, "W2": W2}, T.DOUBLE, [1, 4], T.DOUBLE)
    x = rng.normal(size=(1, 4))
    exact = np.maximum(x @ W1, 0) @ W2
    assert np.abs(_ort(model, x) - exact).max() > 1e-6  # the rounding is real
    with pytest.raises(OnnxImportError, match=r"node 1 \('h16', Cast\): Cast of the tensor from DOUBLE to FLOAT16 "
                                              r"rounds it to a narrower floating-point type"):
        load_onnx(model)


# (input type, the chain of Cast targets right after the input, None if accepted else (node, from, to))
_CASES = [
    (T.FLOAT, [T.FLOAT], None),
    (T.FLOAT, [T.DOUBLE], None),
    (T.FLOAT, [T.DOUBLE, T.DOUBLE], None),
    (T.FLOAT16, [T.FLOAT], None),
    (T.FLOAT16, [T.FLOAT16, T.DOUBLE], None),
    (T.FLOAT16, [T.FLOAT, T.DOUBLE], None),
    (T.DOUBLE, [T.DOUBLE], None),
    (T.FLOAT, [T.FLOAT16], (0, "FLOAT", "FLOAT16")),
    (T.FLOAT, [T.BFLOAT16], (0, "FLOAT", "BFLOAT16")),
    (T.FLOAT, [T.DOUBLE, T.FLOAT], (1, "DOUBLE", "FLOAT")),
    (T.DOUBLE, [T.FLOAT], (0, "DOUBLE", "FLOAT")),
    (T.FLOAT16, [T.BFLOAT16], (0, "FLOAT16", "BFLOAT16")),
    (T.FLOAT16, [T.DOUBLE, T.FLOAT16], (1, "DOUBLE", "FLOAT16")),
    (T.FLOAT, [T.FLOAT8E4M3FN], (0, "FLOAT", "FLOAT8E4M3FN")),
]


@pytest.mark.parametrize("in_type,chain,refused", _CASES,
                         ids=["->".join(T.DataType.Name(t) for t in [c[0], *c[1]]) for c in _CASES])
def test_cast_of_the_tensor_exact_or_refused(in_type: int, chain: list[int], refused) -> None:
    rng = np.random.default_rng(1)
    last = chain[-1]
    W = rng.normal(size=(5, 3)).astype(_NP.get(last, np.float32))
    nodes, prev = [], "x"
    for k, to in enumerate(chain):
        nodes.append(helper.make_node("Cast", [prev], [f"c{k}"], to=to, name=f"cast{k}"))
        prev = f"c{k}"
    nodes += [helper.make_node("MatMul", [prev, "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    model = _graph(nodes, {"W": W}, in_type, ["N", 5], last)
    if refused is not None:
        k, src, dst = refused
        with pytest.raises(OnnxImportError, match=rf"node {k} \('cast{k}', Cast\): Cast of the tensor from {src} to "
                                                  rf"{dst} rounds it"):
            load_onnx(model)
        return
    net, shape, _ = load_onnx(model)
    x = rng.normal(size=(6, 5)).astype(_NP[in_type])  # representable in the input type: the Casts are exact
    ours = net(torch.from_numpy(x.astype(np.float64))).numpy()
    ref = _ort(model, x)
    tol = {T.FLOAT: 1e-5, T.DOUBLE: 1e-12, T.FLOAT16: 2e-2}[last]  # onnxruntime evaluates in the last type
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(ours, np.maximum(x.astype(np.float64) @ W.astype(np.float64), 0), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("to", [T.INT64, T.INT32, T.BOOL, T.STRING], ids=["INT64", "INT32", "BOOL", "STRING"])
def test_cast_of_the_tensor_to_a_non_float_type_is_refused(to: int) -> None:
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=to, name="tocast"), helper.make_node("Relu", ["c"], ["y"])]
    model = _graph(nodes, {}, T.FLOAT, ["N", 3], T.FLOAT)
    with pytest.raises(OnnxImportError, match=rf"node 0 \('tocast', Cast\): Cast of the tensor to "
                                              rf"{T.DataType.Name(to)} \(not a floating-point type\)"):
        load_onnx(model)


def test_exact_cast_keeps_crown_bounds_around_onnxruntime() -> None:
    """DOUBLE -> Cast(DOUBLE) is dropped; at eps 0 the CROWN bounds contain onnxruntime's float64 output."""
    rng = np.random.default_rng(2)
    W1, W2 = rng.normal(size=(4, 6)), rng.normal(size=(6, 2))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Cast", ["h"], ["c"], to=T.DOUBLE),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    model = _graph(nodes, {"W1": W1, "W2": W2}, T.DOUBLE, [1, 4], T.DOUBLE)
    net, _, _ = load_onnx(model)
    x = rng.normal(size=(1, 4))
    b = fastcert.bounds(net, torch.from_numpy(x), 0.0, method="crown")
    y = _ort(model, x)
    assert np.all(b.lower.numpy() <= y) and np.all(y <= b.upper.numpy())


# --------------------------------------------------------------------------- constant folding

# doubles next to FLOAT16 / BFLOAT16 rounding ties: one rounding to the 16-bit type and onnxruntime's two
# (DOUBLE -> FLOAT -> 16-bit) give different values for the first two of each
_TIES = {
    T.FLOAT16: [1 + 2**-11 + 2**-40, 2 + 2**-10 + 2**-39, 1 + 2**-11 - 2**-40, 0.1, -3.3, 60000.0, 2**-25 + 2**-50],
    T.BFLOAT16: [1 + 2**-8 + 2**-40, 4 + 2**-6 + 2**-38, 1 + 2**-8 - 2**-40, 0.1, -3.3, 1e30, 2**-134 + 2**-160],
}


@pytest.mark.parametrize("to", [T.FLOAT16, T.BFLOAT16], ids=["FLOAT16", "BFLOAT16"])
@pytest.mark.parametrize("src", [np.float64, np.float32], ids=["from-DOUBLE", "from-FLOAT"])
def test_cast_of_a_constant_rounds_as_onnxruntime(to: int, src) -> None:
    """x * Cast(Cast(c, 16-bit), DOUBLE): the folded scale equals onnxruntime's, not c (the identity) and not
    numpy's single rounding of c."""
    c = np.array(_TIES[to], dtype=src)
    n = c.size
    nodes = [helper.make_node("Cast", ["c"], ["c16"], to=to), helper.make_node("Cast", ["c16"], ["c64"], to=T.DOUBLE),
             helper.make_node("Mul", ["x", "c64"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["y"])]
    W = np.eye(n)
    model = _graph(nodes, {"c": c, "W": W}, T.DOUBLE, ["N", n], T.DOUBLE)
    net, _, _ = load_onnx(model)
    x = np.ones((1, n))
    ref = _ort(model, x)
    ours = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-15, atol=0)
    if src is np.float64:
        assert np.any(ref != c)  # the Cast does round these constants


def test_cast_of_a_constant_to_an_integer() -> None:
    """Float -> INT64 truncates toward zero (a Reshape target); NaN / out-of-range values are refused."""
    def model(shape_vals):
        nodes = [helper.make_node("Cast", ["sf"], ["si"], to=T.INT64, name="shapecast"),
                 helper.make_node("Reshape", ["x", "si"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
        return _graph(nodes, {"sf": np.array(shape_vals, np.float32), "W": np.ones((4, 1), np.float32)}, T.FLOAT,
                      [1, 2, 2], T.FLOAT)
    net, shape, info = load_onnx(model([1.0, 4.9]))
    assert shape == (2, 2) and info["n_outputs"] == 1
    for bad in ([1.0, np.nan], [1.0, 1e30], [1.0, -np.inf]):
        with pytest.raises(OnnxImportError, match=r"node 0 \('shapecast', Cast\): Cast of a constant with NaN, inf "
                                                  r"or values outside the range of INT64"):
            load_onnx(model(bad))


def test_cast_of_a_constant_to_float8_or_string_is_refused() -> None:
    for to, match in ((T.FLOAT8E4M3FN, "to FLOAT8E4M3FN is not supported"), (T.STRING, "string casts")):
        nodes = [helper.make_node("Cast", ["c"], ["c8"], to=to, name="k"), helper.make_node("Mul", ["x", "c8"], ["y"])]
        with pytest.raises(OnnxImportError, match=rf"node 0 \('k', Cast\): .*{match}"):
            load_onnx(_graph(nodes, {"c": np.array([2.0], np.float32)}, T.FLOAT, ["N", 1], T.FLOAT))
