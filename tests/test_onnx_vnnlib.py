"""ONNX import (``fastcert.io.onnx_import``) and VNN-LIB / counterexample handling (``fastcert.io.vnnlib``).

Part 1 runs anywhere: small ONNX files exported from torch (``dynamo=False``) or built with
``onnx.helper`` into ``tmp_path``, and hand-written VNN-LIB strings (every syntax form, and malformed
ones). Part 2 reads ``../shared/data`` (skipped with a reason when absent): every VNN-COMP network
loads and matches onnxruntime on random points of one of its VNN-LIB boxes (MaxPool included),
every VNN-LIB file parses with boxes of the network's input size, and every shipped
counterexample is confirmed by ``check_counterexample``.

References: onnxruntime runs the graph in float64 where it implements every op in float64 (all but
Conv here; tolerance 1e-9 of the output scale), else in float32 (1e-5), and then onnx's own numpy
evaluator (``onnx.reference``) adds a float64 check (1e-9); without onnxruntime only the latter runs.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastcert
from fastcert.io.onnx_import import OnnxImportError, load_onnx
from fastcert.io.vnnlib import (
    Spec,
    VnnlibError,
    check_counterexample,
    load_vnnlib,
    parse_vnnlib,
    read_counterexample,
)
from shared_data import require_shared, shared_data_dir

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover
    onnx = None

needs_onnx = pytest.mark.skipif(onnx is None, reason="the onnx package is not installed (pip install onnx)")

try:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
except ImportError:  # pragma: no cover
    ort = None

# =========================================================================== helpers


def _export(model: nn.Module, x: torch.Tensor, path: Path | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model.eval(), (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], **kw)
    data = buf.getvalue()
    if path is not None:
        path.write_bytes(data)
    return data


def _to_double(model):
    """The same graph with every float32 tensor turned float64 (for a float64 onnxruntime run)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT:
            a64 = numpy_helper.to_array(init).astype(np.float64)
            g.initializer[i].CopyFrom(numpy_helper.from_array(a64, init.name))
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    del g.value_info[:]
    return m


def _references(data: bytes, info: dict, x_flat: np.ndarray) -> list[tuple[str, np.ndarray, float]]:
    """Reference outputs [B, n_out] (float64) for flat inputs [B, n_in]: ``(name, y, tolerance)``.

    onnxruntime in float64 where it has every kernel in float64 (not Conv), else onnxruntime in
    float32 (tolerance 1e-5 of the output scale) plus onnx's own numpy evaluator in float64."""
    model = onnx.load_from_string(data)
    m64 = _to_double(model)
    full = [d if isinstance(d, int) else 1 for d in info["onnx_input_shape"]]
    name = info["input_name"]
    refs = []
    if ort is not None:
        try:
            sess = ort.InferenceSession(m64.SerializeToString(), providers=["CPUExecutionProvider"])
            dt, tol, what = np.float64, 1e-9, "onnxruntime float64"
        except Exception:  # an op without a float64 kernel (Conv)
            sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            dt, tol, what = np.float32, 1e-5, "onnxruntime float32"
        ys = [sess.run(None, {name: x.reshape(full).astype(dt)})[0].reshape(-1) for x in x_flat]
        refs.append((what, np.stack(ys).astype(np.float64), tol))
    if not refs or refs[0][2] > 1e-9:
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(m64)
        ys = [ev.run(None, {name: x.reshape(full)})[0].reshape(-1) for x in x_flat]
        refs.append(("onnx.reference float64", np.stack(ys).astype(np.float64), 1e-9))
    return refs


def _check_against_references(net, shape, data: bytes, info: dict, x_flat: np.ndarray, what: str) -> None:
    ours = _ours(net, shape, x_flat)
    for name, ref, tol in _references(data, info, x_flat):
        _assert_close(ours, ref, tol, f"{what} vs {name}")


def _ours(net: fastcert.Network, shape: tuple[int, ...], x_flat: np.ndarray) -> np.ndarray:
    return net(torch.from_numpy(np.ascontiguousarray(x_flat, dtype=np.float64)).reshape(-1, *shape)).numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray, tol: float, what: str = "") -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol * scale, f"{what}: max |fastcert - reference| = {err:.3g} > {tol:g} * {scale:.3g}"


# =========================================================================== synthetic ONNX (no shared data)


@needs_onnx
def test_torch_mlp_with_normalization_and_activations(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        fastcert.Normalize([0.1, 0.7], [0.3, 0.2]), nn.Flatten(),
        nn.Linear(18, 16), nn.ReLU(), nn.BatchNorm1d(16),  # after the ReLU: exported as BatchNormalization
        nn.Linear(16, 12), nn.Sigmoid(), nn.Linear(12, 10), nn.Tanh(),
        nn.Linear(10, 8), nn.LeakyReLU(0.1), nn.Linear(8, 4))
    bn = model[4]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    data = _export(model, torch.rand(1, 2, 3, 3), tmp_path / "mlp.onnx")
    assert "BatchNormalization" in [n.op_type for n in onnx.load_from_string(data).graph.node]
    net, shape, info = load_onnx(tmp_path / "mlp.onnx")
    assert shape == (2, 3, 3) and info["n_inputs"] == 18 and info["n_outputs"] == 4
    layers = net.layers_for(shape)
    assert layers[0].kind == "diag" and getattr(layers[0], "eval_in", None) is not None  # the input Sub/Div
    x = torch.rand(16, 2, 3, 3, dtype=torch.float64)
    # exported constants are float32 (Normalize's float64 mean/std are rounded): 1e-6
    torch.testing.assert_close(net(x), model.double()(x), rtol=1e-6, atol=1e-6)
    _check_against_references(net, shape, data, info, x.reshape(16, -1).numpy(), "mlp")


@needs_onnx
def test_torch_cnn_with_padding_strides_batchnorm_avgpool(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 4, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(6),
        nn.Conv2d(6, 5, (2, 3), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 3 * 1, 7))
    model[2].running_mean.uniform_(-1, 1)
    model[2].running_var.uniform_(0.5, 2)
    data = _export(model, torch.rand(1, 3, 12, 12))
    net, shape, info = load_onnx(data)
    assert shape == (3, 12, 12)
    x = torch.rand(8, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(net(x), model.double()(x), rtol=1e-6, atol=1e-6)
    _check_against_references(net, shape, data, info, x.reshape(8, -1).numpy(), "cnn")


class _NHWC(nn.Module):
    """A TensorFlow-style net: NHWC input transposed to NCHW for the convolutions, back to NHWC before
    the dense layers (as in the marabou-cifar10 nets), with a scalar input scaling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 5, 2, stride=1)
        self.fc = nn.Linear(5 * 3 * 3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25
        x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.fc(x)


@needs_onnx
def test_nhwc_input_transpose_folded_into_first_conv():
    torch.manual_seed(2)
    model = _NHWC().eval()
    data = _export(model, torch.rand(1, 8, 8, 3))
    net, shape, info = load_onnx(data)
    assert shape == (1, 8, 24)  # [H, W, C] read as a [1, H, W*C] image: same flat order as the ONNX input
    assert any("NHWC" in n for n in info["notes"])
    x = torch.rand(5, 8, 8, 3, dtype=torch.float64)
    torch.testing.assert_close(net(x.reshape(5, *shape)), model.double()(x), rtol=1e-6, atol=1e-6)
    # the IR is still boundable: interval bounds over a box contain the sampled outputs
    b = fastcert.bounds(net, x[:1].reshape(1, *shape), 0.01, method="ibp")
    y = model.double()(x[:1])
    assert torch.all(b.lower <= y) and torch.all(y <= b.upper)


@needs_onnx
def test_gzipped_file_and_bytes(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    data = _export(model, torch.rand(1, 6))
    (tmp_path / "m.onnx.gz").write_bytes(gzip.compress(data))
    x = torch.rand(4, 6, dtype=torch.float64)
    for src in (tmp_path / "m.onnx.gz", str(tmp_path / "m.onnx.gz"), gzip.compress(data), data,
                onnx.load_from_string(data)):
        net, shape, _ = load_onnx(src)
        assert shape == (6,)
        torch.testing.assert_close(net(x), model.double()(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        load_onnx(b"this is not a protobuf \x00\xff")


@needs_onnx
def test_maxpool_loads_and_matches_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    net, shape, _ = load_onnx(_export(model, torch.rand(1, 1, 5, 5)))
    x = torch.rand(4, *shape, dtype=torch.float64)
    torch.testing.assert_close(net(x), model.double()(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(OnnxImportError, match=r"MaxPool with dilations"):
        load_onnx(_export(nn.Sequential(nn.MaxPool2d(2, dilation=2), nn.Flatten()), torch.rand(1, 1, 5, 5)))


class _Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.relu(self.fc(x))


@needs_onnx
def test_unsupported_graphs_raise_clear_errors():
    with pytest.raises(OnnxImportError, match=r"node 2 \(.*Softmax\): unsupported ONNX operator Softmax"):
        load_onnx(_export(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Softmax(dim=1)), torch.rand(1, 4)))
    # residual connections load (tests/test_onnx_graph.py); a product of two branches is refused by name
    with pytest.raises(OnnxImportError, match=r"node 2 \(.*Mul\): Mul of 2 tensors computed from the input is "
                                              r"nonlinear.*fastcert supports: Gemm"):
        load_onnx(_export(_Product(), torch.rand(1, 4)))
    with pytest.raises(ValueError, match=r"node 0 .*group=2"):
        load_onnx(_export(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), torch.rand(1, 2, 5, 5)))


def _model(nodes, inits, in_shape, out_name="y", opset=13):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@needs_onnx
def test_handbuilt_gemm_matmul_elementwise_transpose_of_constants():
    rng = np.random.default_rng(0)
    W1 = rng.normal(size=(5, 4)).astype(np.float32)  # Gemm B with transB=0: [K=5, M=4] after a transpose
    c1 = rng.normal(size=(4,)).astype(np.float32)
    W2 = rng.normal(size=(4, 3)).astype(np.float32)
    b2 = rng.normal(size=(3,)).astype(np.float32)
    mean = rng.normal(size=(1, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["mean"], value=numpy_helper.from_array(mean)),
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Div", ["s", "two"], ["d"]),
        helper.make_node("Transpose", ["W1t"], ["W1"], perm=[1, 0]),  # a constant: folded
        helper.make_node("Gemm", ["d", "W1", "c1"], ["g"], alpha=2.0, beta=0.5),
        helper.make_node("Identity", ["g"], ["gi"]),
        helper.make_node("LeakyRelu", ["gi"], ["r"], alpha=0.2),
        helper.make_node("MatMul", ["r", "W2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["a"]),  # becomes the bias of the MatMul
        helper.make_node("Mul", ["a", "three"], ["t"]),
        helper.make_node("Sub", ["one", "t"], ["y"]),  # 1 - t
    ]
    inits = {"W1t": W1.T, "c1": c1, "W2": W2, "b2": b2, "two": [2.0], "three": [3.0], "one": [1.0]}
    model = _model(nodes, inits, ["N", 5])
    net, shape, info = load_onnx(model)
    assert shape == (5,)
    kinds = [L.kind for L in net.layers_for(shape)]
    # input Sub/Div stays elementwise; Add is the MatMul's bias; 1 - 3*t folds into that Dense
    assert kinds == ["diag", "dense", "leaky_relu", "dense"], kinds
    x = rng.uniform(-1, 1, size=(6, 5))
    d = (x - mean.astype(np.float64)) / 2.0
    g = 2.0 * d @ W1.astype(np.float64) + 0.5 * c1
    r = np.where(g > 0, g, float(np.float32(0.2)) * g)  # ONNX float attributes are float32
    ref = 1.0 - 3.0 * (r @ W2.astype(np.float64) + b2)
    np.testing.assert_allclose(_ours(net, shape, x), ref, rtol=1e-12, atol=1e-12)


@needs_onnx
def test_elementwise_error_models():
    """Input Sub then Div is exactly fastcert.Normalize (same scale, shift and error model); a chain the
    special case does not cover (BatchNormalization then Div) gets the composed, larger model."""
    mean, std = np.array([0.25, -0.5], np.float32), np.array([0.5, 3.0], np.float32)
    nodes = [helper.make_node("Sub", ["x", "m"], ["s"]), helper.make_node("Div", ["s", "d"], ["n"]),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    W = np.ones((1, 8), np.float32)
    net, shape, _ = load_onnx(_model(nodes, {"m": mean.reshape(2, 1, 1), "d": std.reshape(2, 1, 1), "W": W},
                                     ["N", 2, 2, 2]))
    ref = fastcert.Network.from_torch(nn.Sequential(fastcert.Normalize(mean.astype(np.float64), std.astype(np.float64)),
                                                    nn.Flatten(), nn.Linear(8, 1, bias=False)), (2, 2, 2))
    ours, theirs = net.layers_for(shape)[0], ref.layers_for((2, 2, 2))[0]
    for u, v in [(ours.W64, theirs.W64), (ours.b64, theirs.b64), *zip(ours.eval_in, theirs.eval_in)]:
        torch.testing.assert_close(u, v, rtol=1e-15, atol=0)  # equal up to the rounding of -m/s vs (1/s)(-m)
    bn = [helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["s"], epsilon=0.0),
          helper.make_node("Div", ["s", "d"], ["n"]), helper.make_node("Flatten", ["n"], ["f"]),
          helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    inits = {"g": [1.0, 1.0], "b": -mean, "mu": [0.0, 0.0], "var": [1.0, 1.0], "d": std.reshape(2, 1, 1), "W": W}
    net2, _, _ = load_onnx(_model(bn, inits, ["N", 2, 2, 2]))
    L = net2.layers_for(shape)[0]
    torch.testing.assert_close(L.W64, ours.W64, rtol=0, atol=0)
    assert torch.all(L.eval_in[0] > ours.eval_in[0]) and torch.all(L.eval_in[1] > ours.eval_in[1])


@needs_onnx
def test_handbuilt_pad_averagepool_and_unbatched_vector():
    rng = np.random.default_rng(1)
    Wc = rng.normal(size=(2, 1, 2, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], pads=[0, 0, 0, 0]),
             helper.make_node("Pad", ["c", "pads"], ["p"], mode="constant"),
             helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["a"], ["y"], axis=1)]
    model = _model(nodes, {"Wc": Wc}, [1, 1, 5, 5])
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(8, dtype=np.int64), "pads"))
    net, shape, _ = load_onnx(model)
    x = torch.from_numpy(rng.uniform(size=(3, 1, 5, 5)))
    ref = torch.nn.functional.avg_pool2d(torch.nn.functional.conv2d(x, torch.from_numpy(Wc).double()), 2)
    torch.testing.assert_close(net(x), ref.reshape(3, -1), rtol=1e-12, atol=1e-12)
    # non-zero pads are refused
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1]), "pads"))
    with pytest.raises(OnnxImportError, match=r"node 1 \(.*Pad\): Pad with non-zero pads"):
        load_onnx(model)
    # W @ x on an unbatched vector (the test_small layout), then ReLU
    W = rng.normal(size=(3, 2)).astype(np.float32)
    m2 = _model([helper.make_node("MatMul", ["W", "x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], {"W": W}, [2])
    net2, shape2, info2 = load_onnx(m2)
    assert shape2 == (2,) and info2["n_outputs"] == 3 and not info2["batched"]
    xv = rng.normal(size=(4, 2))
    np.testing.assert_allclose(_ours(net2, shape2, xv), np.maximum(xv @ W.T.astype(np.float64), 0), rtol=1e-12)


# =========================================================================== VNN-LIB strings

_DECL = "".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + \
    "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
_BOX = "(assert (>= X_0 -1)) (assert (<= X_0 1))\n(assert (>= X_1 0.0))(assert (<= X_1 0.5))\n" \
       "(assert (<= X_2 2e-1)) (assert (>= X_2 -2E-1)) ; a comment (with parentheses\n"


def test_vnnlib_top_level_box_and_single_output_atom():
    s = parse_vnnlib("; header comment\n" + _DECL + _BOX + "(assert (<= Y_0 -1))", 3, 3)
    assert isinstance(s, Spec) and len(s) == 1
    p = s[0]
    np.testing.assert_array_equal(p.lo, [-1, 0, -0.2])
    np.testing.assert_array_equal(p.hi, [1, 0.5, 0.2])
    assert p.lo.dtype == np.float64 and len(p.constraints) == 1
    A, b = p.constraints[0]
    np.testing.assert_array_equal(A, [[1, 0, 0]])
    np.testing.assert_array_equal(b, [-1])


def test_vnnlib_disjunction_with_boxes_inside():  # the test_tiny / test_small form
    s = parse_vnnlib("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                     "(assert (or\n    (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100))\n))", 1, 1)
    assert len(s) == 1
    np.testing.assert_array_equal(s[0].lo, [-1])
    np.testing.assert_array_equal(s[0].hi, [1])
    A, b = s[0].constraints[0]
    np.testing.assert_array_equal(A, [[-1]])
    np.testing.assert_array_equal(b, [-100])


def test_vnnlib_output_disjunction_conjunction_and_linear_combinations():
    out = ("(assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2))))\n"  # mnistfc form: 2 conjunctions of 1 row
           "(assert (<= (+ Y_0 (* 2 Y_1) (- Y_2) 1) (/ 1 2)))\n"     # a linear row, shared by both
           "(assert (> (- Y_0 Y_1) 1e-3))")                          # strict: read as >=
    s = parse_vnnlib(_DECL + _BOX + out, 3, 3)
    assert len(s) == 1 and len(s[0].constraints) == 2
    for (A, b), first in zip(s[0].constraints, ([-1, 0, 1], [0, -1, 1])):
        np.testing.assert_allclose(A, [[1, 2, -1], [-1, 1, 0], first])
        np.testing.assert_allclose(b, [-0.5, -1e-3, 0])
    # an equality is two rows; marabou form: a conjunction of rows
    s2 = parse_vnnlib(_DECL + _BOX + "(assert (= Y_0 0.25)) (assert (>= Y_1 Y_0))", 3, 3)
    A, b = s2[0].constraints[0]
    np.testing.assert_array_equal(A, [[1, 0, 0], [-1, 0, 0], [1, -1, 0]])
    np.testing.assert_array_equal(b, [0.25, -0.25, 0])


def test_vnnlib_several_boxes_times_output_disjunction():  # the acasxu prop_6 form
    box = "(and (<= X_0 {h}) (>= X_0 {l}) (<= X_1 1) (>= X_1 0) (<= X_2 1) (>= X_2 0))"
    text = (_DECL + f"(assert (or {box.format(l=0, h=0.5)} {box.format(l=0.5, h=1)}))\n"
            "(assert (or (and (<= Y_1 Y_0)) (and (<= Y_2 Y_0)) (and (<= Y_1 Y_2) (<= Y_0 Y_2))))")
    s = parse_vnnlib(text, 3, 3)
    assert len(s) == 2 and [len(p.constraints) for p in s] == [3, 3]
    assert s[0].hi[0] == 0.5 and s[1].lo[0] == 0.5
    assert s[1].constraints[2][0].shape == (2, 3)
    # the same disjuncts written out term by term group into the same properties
    terms = [f"(and {box.format(l=l, h=h)[5:-1]} (<= Y_1 Y_0))" for l, h in ((0, 0.5), (0.5, 1))] + \
            [f"(and {box.format(l=0, h=0.5)[5:-1]} (<= Y_2 Y_0))"]
    s2 = parse_vnnlib(_DECL + f"(assert (or {' '.join(terms)}))", 3, 3)
    assert len(s2) == 2 and [len(p.constraints) for p in s2] == [2, 1]


def test_vnnlib_bounds_intersect_and_sizes(tmp_path):
    s = parse_vnnlib(_DECL + _BOX + "(assert (<= X_0 0.25)) (assert (>= X_0 -5)) (assert (<= Y_0 0))", 3, 3)
    assert s[0].lo[0] == -1 and s[0].hi[0] == 0.25
    # sizes default to the declarations; the network may have more outputs than the spec mentions
    assert parse_vnnlib(_DECL + _BOX + "(assert (<= Y_0 0))").n_outputs == 3
    assert parse_vnnlib(_DECL + _BOX + "(assert (<= Y_0 0))", 3, 10)[0].constraints[0][0].shape == (1, 10)
    # files: plain and gzipped (detected by content, whatever the name)
    text = _DECL + _BOX + "(assert (<= Y_0 Y_1))"
    (tmp_path / "a.vnnlib").write_text(text)
    (tmp_path / "b.vnnlib.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "c.vnnlib").write_bytes(gzip.compress(text.encode()))
    for name in ("a.vnnlib", "b.vnnlib.gz", "c.vnnlib"):
        s = load_vnnlib(tmp_path / name, 3, 3)
        np.testing.assert_array_equal(s[0].constraints[0][0], [[1, -1, 0]])


@pytest.mark.parametrize("text, n, match", [
    (_DECL + _BOX + "(assert (<= Y_0 0)", (3, 3), "never closed"),
    (_DECL + _BOX + "(assert (<= Y_0 0)))", (3, 3), r"unbalanced '\)'"),
    (_DECL + "(assert (<= X_0 1)) (assert (<= Y_0 0))", (3, 3), "X_0 has no lower bound"),
    (_DECL + _BOX.replace("(<= X_1 0.5)", "(<= X_1 -0.5)") + "(assert (<= Y_0 0))", (3, 3),
     "X_1 has an empty range"),
    (_DECL + _BOX + "(assert (<= Y_0 0))", (2, 3), "declares X_2 but the network has 2 inputs"),
    (_DECL + _BOX + "(assert (<= Y_0 0))", (3, 2), "declares Y_2 but the network has 2 outputs"),
    (_DECL + _BOX + "(assert (<= Y_7 0))", (3, 3), "Y_7 is used but not declared"),
    (_DECL + _BOX + "(assert (<= Y_0 X_1))", (3, 3), "mixing inputs and outputs"),
    (_DECL + _BOX + "(assert (<= X_0 X_1)) (assert (<= Y_0 0))", (3, 3), "relating several inputs"),
    (_DECL + _BOX + "(assert (<= (* Y_0 Y_1) 0))", (3, 3), "nonlinear"),
    (_DECL + _BOX + "(assert (not (<= Y_0 0)))", (3, 3), "'not' is not supported"),
    (_DECL + _BOX + "(assert (<= Y_0 zero))", (3, 3), "unknown symbol 'zero'"),
    (_DECL + _BOX + "(define-fun f () Real 0)", (3, 3), "unsupported command 'define-fun'"),
    ("(declare-const Z_0 Real)", (3, 3), "neither X_<i>"),
    (_DECL + _BOX, (3, 3), None),  # no output constraint: every x in the box violates (a 0-row conjunction)
], ids=["unclosed", "extra-paren", "no-lower-bound", "empty-range", "too-many-inputs", "too-many-outputs",
        "undeclared", "mixed-x-y", "x-relation", "nonlinear", "not", "unknown-symbol", "unknown-command",
        "bad-variable-name", "no-output-constraint"])
def test_vnnlib_malformed_gives_clear_errors(text, n, match):
    if match is None:
        s = parse_vnnlib(text, *n)
        assert s[0].constraints[0][0].shape == (0, 3)
        return
    with pytest.raises(VnnlibError, match=match):
        parse_vnnlib(text, *n)


def test_counterexample_reader_and_checker(tmp_path):
    torch.manual_seed(3)
    lin = nn.Sequential(nn.Linear(3, 3)).double()
    net = fastcert.Network.from_torch(lin, (3,))
    x = np.array([0.5, 0.25, 0.0])
    y = lin(torch.from_numpy(x)[None]).detach().numpy()[0]
    j, k = int(np.argmax(y)), int(np.argmin(y))
    spec = parse_vnnlib(_DECL + _BOX + f"(assert (or (and (>= Y_{k} Y_{j})) (and (>= Y_{j} Y_{k}))))", 3, 3)
    ce = "sat\n((X_0 0.5)\n(X_1 0.25)\n(X_2 0.0)\n" + "".join(f"(Y_{i} {float(v)!r})\n" for i, v in enumerate(y)) + ")"
    (tmp_path / "ce.gz").write_bytes(gzip.compress(ce.encode()))
    xr, yr = read_counterexample(tmp_path / "ce.gz")
    np.testing.assert_array_equal(xr, x)
    np.testing.assert_array_equal(yr, y)
    ok, why = check_counterexample(net, spec, xr)
    assert ok and "conjunction 1" in why, why
    assert check_counterexample(net, spec, x + [0, 0, 0.2 + 5e-7])[0]  # within VNN-COMP's 1e-6
    ok, why = check_counterexample(net, spec, x + [0, 0, 0.2 + 1e-5])
    assert not ok and "outside every input box" in why
    spec_false = parse_vnnlib(_DECL + _BOX + f"(assert (>= Y_{k} Y_{j}))", 3, 3)
    ok, why = check_counterexample(net, spec_false, x)
    assert not ok and "output constraint does not hold" in why
    assert not check_counterexample(net, spec, x[:2])[0]
    with pytest.raises(VnnlibError, match="X_1 is missing"):
        read_counterexample(b"((X_0 1) (X_2 3))")
    with pytest.raises(VnnlibError, match="bad value"):
        read_counterexample(b"((X_0 one))")


# =========================================================================== shared data (VNN-COMP benchmarks)

BENCHMARKS = ["vnncomp2021/mnistfc", "vnncomp2021/eran", "vnncomp2021/verivital", "vnncomp2021/marabou-cifar10",
              "vnncomp2022/mnist_fc", "vnncomp2022/acasxu", "vnncomp2022/oval21", "vnncomp2022/test"]


def _find(bench_dir: Path, rel: str) -> Path:
    p = (bench_dir / rel).resolve()
    return p if p.exists() else p.with_name(p.name + ".gz")


def _instances(bench: str) -> list[tuple[str, str]]:
    """(onnx path, vnnlib path) relative to the shared folder, from the benchmark's instances.csv."""
    root = shared_data_dir()
    if root is None:
        return []
    d = root / bench
    out = []
    with open(d / "instances.csv") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0].strip() not in ("onnx", "onnx_path"):  # a header line
                out.append(tuple(str(_find(d, r.strip()).relative_to(root)) for r in row[:2]))
    return out


def _networks() -> list:
    nets: dict[str, str] = {}
    for b in BENCHMARKS:
        for onnx_rel, vnn_rel in _instances(b):
            nets.setdefault(onnx_rel, vnn_rel)
    if not nets:
        return [pytest.param(None, None, id="no-shared-data")]
    return [pytest.param(o, v, id=o.replace("vnncomp20", "v").replace("/onnx/", "/").replace(".onnx", "")
                         .replace(".gz", "")) for o, v in sorted(nets.items())]


@functools.lru_cache(maxsize=None)
def _load_net(onnx_rel: str):
    return load_onnx(require_shared(onnx_rel))


@functools.lru_cache(maxsize=None)
def _io_sizes(onnx_rel: str) -> tuple[int, int]:
    """Input and output sizes from the ONNX declarations (works for nets fastcert refuses, too)."""
    data = require_shared(onnx_rel).read_bytes()
    g = onnx.load_from_string(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).graph
    inits = {i.name for i in g.initializer}
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.input if v.name not in inits]
    out = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    batched = len(dims[0]) >= 2
    return int(np.prod([d or 1 for d in (dims[0][1:] if batched else dims[0])])), int(np.prod([d or 1 for d in out]))


@functools.lru_cache(maxsize=None)
def _spec(vnn_rel: str, n_in: int, n_out: int) -> Spec:
    return load_vnnlib(require_shared(vnn_rel), n_in, n_out)


@needs_onnx
@pytest.mark.shared_data
@pytest.mark.parametrize("onnx_rel, vnn_rel", _networks())
def test_shared_network_matches_onnxruntime(onnx_rel, vnn_rel):
    if onnx_rel is None:
        require_shared("vnncomp2021")
    path = require_shared(onnx_rel)
    net, shape, info = _load_net(onnx_rel)
    assert info["n_inputs"] == int(np.prod(shape))
    assert (info["n_inputs"], info["n_outputs"]) == _io_sizes(onnx_rel)
    spec = _spec(vnn_rel, info["n_inputs"], info["n_outputs"])
    p = spec[0]
    rng = np.random.default_rng(0)
    x = np.concatenate([p.lo[None], p.hi[None], rng.uniform(p.lo, p.hi, size=(6, p.lo.size))])
    data = path.read_bytes()
    _check_against_references(net, shape, gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data, info, x, onnx_rel)


@needs_onnx
@pytest.mark.shared_data
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_shared_vnnlib_files_parse_with_the_network_sizes(bench):
    d = require_shared(bench)
    inst = _instances(bench)
    sizes = {v: _io_sizes(o) for o, v in inst}
    files = sorted(p for p in d.rglob("*") if p.name.endswith((".vnnlib", ".vnnlib.gz")))
    root = shared_data_dir()
    assert root is not None and files
    n_default = next(iter(sizes.values()))  # a file no instance uses here: the benchmark's usual sizes
    for f in files:
        rel = str(f.relative_to(root))
        n_in, n_out = sizes.get(rel, n_default)
        s = _spec(rel, n_in, n_out)
        assert len(s) >= 1, rel
        for p in s:
            assert p.lo.shape == p.hi.shape == (n_in,) and np.all(p.lo <= p.hi), rel
            assert p.constraints and all(A.shape == (b.size, n_out) for A, b in p.constraints), rel
    # the known shapes of each benchmark's specs (MANIFEST)
    if bench.endswith(("mnistfc", "mnist_fc", "eran", "verivital", "oval21")):
        assert all(len(s) == 1 and len(s[0].constraints) == 9 for s in (_spec(v, *sizes[v]) for v in sizes))
    if bench.endswith("marabou-cifar10"):
        assert all(len(s) == 1 and s[0].constraints[0][0].shape == (9, 10) for s in (_spec(v, *sizes[v])
                                                                                        for v in sizes))
    if bench.endswith("acasxu"):
        p6 = _spec("vnncomp2022/acasxu/vnnlib/prop_6.vnnlib.gz", 5, 5)
        assert len(p6) == 2 and [len(p.constraints) for p in p6] == [4, 4]


def _ce_rows(bench: str) -> list[dict]:
    root = shared_data_dir()
    if root is None or not (root / bench / "verdicts.csv").exists():
        return []
    with open(root / bench / "verdicts.csv") as f:
        return [r for r in csv.DictReader(f) if r["counterexample_file"]]


@needs_onnx
@pytest.mark.shared_data
@pytest.mark.parametrize("bench", [b for b in BENCHMARKS if b != "vnncomp2022/test"])
def test_shared_counterexamples_are_confirmed(bench):
    d = require_shared(bench)
    rows = _ce_rows(bench)
    if bench.endswith("oval21"):
        assert not rows  # all unsat
        return
    assert rows
    root = shared_data_dir()
    assert root is not None
    for r in rows:
        onnx_rel = str(_find(d, r["onnx"]).relative_to(root))
        vnn_rel = str(_find(d, r["vnnlib"]).relative_to(root))
        net, shape, info = _load_net(onnx_rel)
        spec = _spec(vnn_rel, info["n_inputs"], info["n_outputs"])
        x, y = read_counterexample(_find(d, r["counterexample_file"]))
        ok, why = check_counterexample(net, spec, x)
        assert ok, f"{r['onnx']} {r['vnnlib']}: {why}"
        # the file's outputs: the helper's float64 evaluator (2021) or the tools' (2022, often float32)
        if y is not None:
            _assert_close(_ours(net, shape, x[None])[0], y, 1e-9 if "counterexamples_helper" in
                          r["counterexample_file"] else 1e-5, r["counterexample_file"])
        # moved just outside the box, it is rejected
        p = spec[0]
        i = int(np.argmax(p.hi - p.lo))
        x2 = x.copy()
        x2[i] = p.hi[i] + 1e-4
        if len(spec) == 1:
            ok2, why2 = check_counterexample(net, spec, x2)
            assert not ok2 and "outside" in why2


@needs_onnx
@pytest.mark.shared_data
@pytest.mark.parametrize("onnx_rel, vnn_rel, method", [
    ("vnncomp2022/acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx.gz", "vnncomp2022/acasxu/vnnlib/prop_3.vnnlib.gz",
     "crown"),
    ("vnncomp2021/eran/nets/ffnnSIGMOID__Point_6x200.onnx",  # input normalization kept as a Diag
     "vnncomp2021/eran/specs/mnist/mnist_spec_idx_1211_eps_0.01200.vnnlib.gz", "ibp"),
    ("vnncomp2021/marabou-cifar10/nets/cifar10_small.onnx",  # NHWC folded into the first Conv
     "vnncomp2021/marabou-cifar10/specs/networkcifar10_small_index1783_eps0.012_target9_orig8.vnnlib.gz", "crown"),
], ids=["acasxu-crown", "eran-sigmoid-ibp", "marabou-nhwc-crown"])
def test_shared_bounds_over_a_vnnlib_box_contain_the_outputs(onnx_rel, vnn_rel, method):
    """The imported IR is boundable: bounds over a VNN-LIB box contain sampled outputs and the
    float64 reference at the box corners."""
    net, shape, info = _load_net(onnx_rel)
    p = _spec(vnn_rel, info["n_inputs"], info["n_outputs"])[0]
    lo, hi = torch.from_numpy(p.lo).reshape(shape), torch.from_numpy(p.hi).reshape(shape)
    b = fastcert.bounds(net, ((lo + hi) / 2)[None], float((p.hi - p.lo).max()), method=method, x_min=lo, x_max=hi)
    x = np.concatenate([p.lo[None], p.hi[None], np.random.default_rng(0).uniform(p.lo, p.hi, size=(32, p.lo.size))])
    y = torch.from_numpy(_ours(net, shape, x))
    assert torch.all(b.lower <= y) and torch.all(y <= b.upper)
    data = require_shared(onnx_rel).read_bytes()
    for name, ref, _ in _references(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data, info, x[:2]):
        assert torch.all(b.lower <= torch.from_numpy(ref)) and torch.all(torch.from_numpy(ref) <= b.upper), name
