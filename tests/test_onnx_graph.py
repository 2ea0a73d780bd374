"""ONNX graphs that are not chains (issue #10 point 1): residual Add, Sub of two branches, Concat of
branches, Sum, fan-out (one tensor read by several nodes), reshapes back into images, transposes
meeting in an Add / Concat, and the refusals that remain.

Each model is exported from torch (``dynamo=False``) or built with ``onnx.helper``; the imported
network is compared in float64 (1e-12) with torch / a numpy reference / onnxruntime (float64 models
with float64 kernels; ``onnx.reference`` where onnxruntime has no float64 Conv), and IBP, CROWN and
CROWN-IBP bounds over an L-inf box must contain the float64 reference outputs at the box corners and
at sampled points (no tolerance).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastcert
from fastcert.io.onnx_import import OnnxImportError, load_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

ort.set_default_logger_severity(3)
METHODS = ["ibp", "crown", "crown-ibp"]


# =========================================================================== helpers


def _export(model: nn.Module, x: torch.Tensor, **kw) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model.eval(), (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], **kw)
    return buf.getvalue()


def _graph(nodes, inits: dict, in_shape, opset: int = 17):
    """A float64 model: input x, output y, float64 initializers (ints stay ints)."""
    arrs = [numpy_helper.from_array(np.asarray(v, dtype=np.int64 if np.asarray(v).dtype.kind == "i" else np.float64),
                                    k) for k, v in inits.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.DOUBLE, in_shape)],
                          [helper.make_tensor_value_info("y", T.DOUBLE, None)], arrs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, x: np.ndarray) -> np.ndarray:
    """onnxruntime on a float64 model, one sample at a time: x [B, *onnx sample shape] -> [B, n_out]."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"x": xi[None]})[0].reshape(-1) for xi in x])


def _ref_eval(model, x: np.ndarray) -> np.ndarray:
    ev = ReferenceEvaluator(model)
    return np.stack([np.asarray(ev.run(None, {"x": xi[None]})[0]).reshape(-1) for xi in x])


def _ours(net, shape, x: np.ndarray) -> np.ndarray:
    return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(-1, *shape)).numpy()


def _close(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-12) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol * scale, f"max |fastcert - reference| = {err:.3g} > {tol:g} * {scale:.3g}"


def _check_bounds(net, shape, f, x0: np.ndarray, eps: float, n: int = 400, seed: int = 0,
                  methods: list[str] = METHODS) -> None:
    """Bounds of every method (CROWN relaxes ReLU only for now: sigmoid nets get ``["ibp"]``) over the L-inf ball of x0 [1, n_in] contain ``f`` (the float64
    reference: [B, n_in] -> [B, n_out]) at the corners of each axis and at sampled points."""
    rng = np.random.default_rng(seed)
    d = x0.shape[1]
    pts = [x0 + eps * rng.choice([-1.0, 1.0], size=(n // 2, d)), x0 + rng.uniform(-eps, eps, size=(n // 2, d)), x0]
    xs = np.concatenate(pts)
    y = torch.from_numpy(f(xs))
    for m in methods:
        b = fastcert.bounds(net, torch.from_numpy(x0).reshape(1, *shape), eps, method=m)
        assert torch.all(b.lower <= y) and torch.all(y <= b.upper), m
        assert torch.all(b.upper - b.lower < 1e3), m  # not vacuous


def _torch_ref(model: nn.Module, in_shape: tuple[int, ...]):
    m64 = model.double().eval()

    def f(xs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m64(torch.from_numpy(xs).reshape(-1, *in_shape)).reshape(xs.shape[0], -1).numpy()
    return f


# =========================================================================== torch exports


class _ResMLP(nn.Module):
    """x + f(x), then (h - g(h)) and a head: residual Add and Sub of two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.f1, self.f2 = nn.Linear(6, 8), nn.Linear(8, 6)
        self.g = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.f2(torch.relu(self.f1(x)))
        h = torch.relu(h) - self.g(h)
        return self.head(h)


class _ResCNN(nn.Module):
    """A ResNet-style block (conv-BN-relu-conv + skip, then relu), max pooling, a concatenated
    branch pair and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.c1, self.bn, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 2, 3, padding=1)
        self.fc = nn.Linear(5 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        h = torch.relu(s + self.c2(torch.relu(self.bn(self.c1(s)))))
        h = nn.functional.max_pool2d(h, 2)
        h = torch.cat([torch.relu(self.a(h)), self.b(h)], dim=1)
        return self.fc(h.flatten(1))


class _DenseNet(nn.Module):
    """convex_adversarial's DenseSequential pattern: every layer reads the concatenation of all
    earlier outputs (fan-out of each tensor to every later Concat)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(5, 4), nn.Linear(9, 4), nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = torch.relu(self.l1(x))
        z = torch.cat([x, h1], 1)
        h2 = torch.relu(self.l2(z))
        return self.l3(torch.cat([z, h2], 1))


def test_residual_mlp_with_sub_of_branches():
    torch.manual_seed(0)
    model = _ResMLP()
    data = _export(model, torch.rand(1, 6))
    net, shape, info = load_onnx(data)
    assert shape == (6,) and not info["is_chain"] and not net.chain
    kinds = [op.kind for op in net.ops]
    assert kinds.count("add") == 2 and [op.args["sign"] for op in net.ops if op.kind == "add"] == [1, -1]
    x = np.random.default_rng(0).uniform(-1, 1, size=(16, 6))
    f = _torch_ref(model, (6,))
    _close(_ours(net, shape, x), f(x))
    _close(_ours(net, shape, x), _ort(_double(data), x))
    _check_bounds(net, shape, f, x[:1], 0.05)


def test_resnet_style_cnn_with_maxpool_and_concat():
    torch.manual_seed(1)
    model = _ResCNN()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2)
    data = _export(model, torch.rand(1, 2, 6, 6), do_constant_folding=False)  # keep BatchNormalization
    assert {"Add", "Concat", "MaxPool", "BatchNormalization"} <= {n.op_type for n in onnx.load_from_string(data).graph.node}
    net, shape, info = load_onnx(data)
    assert shape == (2, 6, 6) and not info["is_chain"]
    x = np.random.default_rng(1).uniform(0, 1, size=(8, 2 * 6 * 6))
    f = _torch_ref(model, shape)
    # BatchNormalization is evaluated as a scale and shift here and as (x - m) / sqrt(v + eps) by torch
    _close(_ours(net, shape, x), f(x), 1e-12)
    _close(_ours(net, shape, x), _ref_eval(_double(data), x.reshape(-1, *shape)), 1e-12)
    _check_bounds(net, shape, f, x[:1], 0.02, n=200)


def test_dense_sequential_concat_fanout():
    torch.manual_seed(2)
    model = _DenseNet()
    data = _export(model, torch.rand(1, 5))
    net, shape, info = load_onnx(data)
    assert [op.kind for op in net.ops].count("cat") == 2
    x = np.random.default_rng(2).uniform(-1, 1, size=(16, 5))
    f = _torch_ref(model, shape)
    _close(_ours(net, shape, x), f(x))
    _close(_ours(net, shape, x), _ort(_double(data), x))
    _check_bounds(net, shape, f, x[:1], 0.1)


def _double(data: bytes):
    """The exported model with every float32 initializer / constant / declaration made float64."""
    m = onnx.load_from_string(data)
    g = m.graph
    for i, init in enumerate(g.initializer):
        if init.data_type == T.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for nd in g.node:
        for a in nd.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == T.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == T.FLOAT:
            v.type.tensor_type.elem_type = T.DOUBLE
    del g.value_info[:]
    return m


# =========================================================================== hand-built graphs


def _rng_inits(rng, **shapes) -> dict:
    return {k: rng.normal(size=s) for k, s in shapes.items()}


def test_fanout_of_a_bias_free_matmul_keeps_the_constant_add_off_the_other_branch():
    """h = x @ W is read by Add(h, b) and by Relu(h): b must not become the MatMul's bias (the Relu
    branch would see it). a = h + b is read twice, by Relu and by Mul(a, 2): its queued Add is
    emitted once and the Mul builds on it."""
    rng = np.random.default_rng(3)
    inits = _rng_inits(rng, W=(4, 5), b=(5,), W2=(15, 3))
    inits["two"] = np.array([2.0])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Mul", ["a", "two"], ["m"]), helper.make_node("Concat", ["r", "ra", "m"], ["c"], axis=1),
             helper.make_node("MatMul", ["c", "W2"], ["y"])]
    model = _graph(nodes, inits, ["N", 4])
    net, shape, info = load_onnx(model)
    assert net.ops[0].kind == "linear" and net.ops[0].args["b"] is None
    assert [op.kind for op in net.ops].count("chaff") == 2  # a = h + b once, then m = 2a
    x = rng.uniform(-1, 1, size=(10, 4))
    h = x @ inits["W"]
    a = h + inits["b"]
    ref = np.concatenate([np.maximum(h, 0), np.maximum(a, 0), 2 * a], 1) @ inits["W2"]
    _close(_ours(net, shape, x), ref)
    _close(_ours(net, shape, x), _ort(model, x))
    _check_bounds(net, shape, lambda xs: _ort(model, xs), x[:1], 0.1)


def test_constant_add_becomes_the_bias_when_it_is_the_only_reader():
    """Fan-out after the Add (not of the MatMul output): the Add is still the MatMul's bias."""
    rng = np.random.default_rng(4)
    inits = _rng_inits(rng, W=(3, 3), b=(3,))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Add", ["a", "r"], ["y"])]
    model = _graph(nodes, inits, ["N", 3])
    net, shape, _ = load_onnx(model)
    assert [op.kind for op in net.ops] == ["linear", "act", "add"] and net.ops[0].args["b"] is not None
    x = rng.uniform(-1, 1, size=(8, 3))
    _close(_ours(net, shape, x), _ort(model, x))
    _check_bounds(net, shape, lambda xs: _ort(model, xs), x[:1], 0.2)


def test_a_queued_add_read_twice_becomes_the_bias_once():
    """a = (x @ W) + b is read first by Mul(a, 2) and then by Relu(a): b becomes the MatMul's bias
    when the Mul reads a, and the Mul's map applies to that biased output (not b twice)."""
    rng = np.random.default_rng(11)
    inits = _rng_inits(rng, W=(3, 4), b=(4,), W2=(8, 2))
    inits["two"] = np.array([2.0])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Mul", ["a", "two"], ["m"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Concat", ["m", "r"], ["c"], axis=1), helper.make_node("MatMul", ["c", "W2"], ["y"])]
    model = _graph(nodes, inits, ["N", 3])
    net, shape, _ = load_onnx(model)
    assert net.ops[0].args["b"] is not None and [op.kind for op in net.ops].count("chaff") == 1
    x = rng.uniform(-1, 1, size=(8, 3))
    a = x @ inits["W"] + inits["b"]
    _close(_ours(net, shape, x), np.concatenate([2 * a, np.maximum(a, 0)], 1) @ inits["W2"])
    _close(_ours(net, shape, x), _ort(model, x))
    _check_bounds(net, shape, lambda xs: _ort(model, xs), x[:1], 0.1)


@pytest.mark.parametrize("op,sign", [("Add", 2.0), ("Sub", 0.0)])
def test_a_tensor_added_to_itself(op, sign):
    """x + x and r - r with r = relu(xW): one value read twice by the same node."""
    rng = np.random.default_rng(5)
    inits = _rng_inits(rng, W=(3, 4), W2=(4, 2))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node(op, ["r", "r"], ["s"]), helper.make_node("MatMul", ["s", "W2"], ["y"])]
    model = _graph(nodes, inits, ["N", 3])
    net, shape, _ = load_onnx(model)
    x = rng.uniform(-1, 1, size=(8, 3))
    ref = sign * np.maximum(x @ inits["W"], 0) @ inits["W2"]
    _close(_ours(net, shape, x), ref)
    _check_bounds(net, shape, lambda xs: sign * np.maximum(xs @ inits["W"], 0) @ inits["W2"], x[:1], 0.2)


def test_sum_of_three_branches_and_fanout_of_the_input():
    rng = np.random.default_rng(6)
    inits = _rng_inits(rng, A=(4, 4), B=(4, 4), W=(4, 2))
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"]), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("MatMul", ["x", "B"], ["b"]), helper.make_node("Sigmoid", ["b"], ["sb"]),
             helper.make_node("Sum", ["x", "ra", "sb"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["y"])]
    model = _graph(nodes, inits, ["N", 4])
    net, shape, _ = load_onnx(model)
    x = rng.uniform(-1, 1, size=(8, 4))
    _close(_ours(net, shape, x), _ort(model, x))
    _check_bounds(net, shape, lambda xs: _ort(model, xs), x[:1], 0.1, methods=["ibp"])


def test_flatten_dense_then_reshape_back_into_an_image_for_a_conv():
    """Reshape anywhere: a Dense output reshaped to [N, C, H, W] feeds a Conv, and a skip connection
    adds the (reshaped) input to the Conv's flattened output."""
    rng = np.random.default_rng(7)
    inits = _rng_inits(rng, W=(8, 18), K=(2, 2, 2, 2), V=(8, 3))
    inits.update(img=np.array([1, 2, 3, 3]), flat=np.array([1, 8]))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "img"], ["i"]),
             helper.make_node("Conv", ["i", "K"], ["c"], pads=[0, 0, 0, 0]),  # [1, 2, 2, 2]
             helper.make_node("Reshape", ["c", "flat"], ["cf"]), helper.make_node("Add", ["cf", "x"], ["s"]),
             helper.make_node("MatMul", ["s", "V"], ["y"])]
    model = _graph(nodes, inits, ["N", 8])
    net, shape, info = load_onnx(model)
    x = rng.uniform(-1, 1, size=(6, 8))
    ref = _ref_eval(model, x)
    _close(_ours(net, shape, x), ref)
    _check_bounds(net, shape, lambda xs: _ref_eval(model, xs), x[:1], 0.1, n=100)


def test_transposes_meeting_in_add_and_concat():
    """Two branches transposed the same way are added in the permuted layout (no permutation layer);
    a transposed and an untransposed branch, and a Concat of a transposed branch, get an exact
    permutation Dense; the result matches onnxruntime."""
    rng = np.random.default_rng(8)
    inits = _rng_inits(rng, A=(6, 6), B=(6, 6), W=(12, 2))
    inits.update(s23=np.array([1, 2, 3]), f6=np.array([1, 6]))
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"]), helper.make_node("MatMul", ["x", "B"], ["b"]),
             helper.make_node("Reshape", ["a", "s23"], ["a3"]), helper.make_node("Reshape", ["b", "s23"], ["b3"]),
             helper.make_node("Transpose", ["a3"], ["at"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["b3"], ["bt"], perm=[0, 2, 1]),
             helper.make_node("Add", ["at", "bt"], ["p"]),  # same permutation: stays lazy
             helper.make_node("Relu", ["p"], ["rp"]), helper.make_node("Reshape", ["rp", "f6"], ["q"]),
             helper.make_node("Sub", ["q", "a"], ["d"]),  # permuted - unpermuted: a permutation Dense
             helper.make_node("Concat", ["d", "q"], ["c"], axis=1), helper.make_node("MatMul", ["c", "W"], ["y"])]
    model = _graph(nodes, inits, ["N", 6])
    net, shape, info = load_onnx(model)
    # q is un-permuted once (for the Sub) and the Concat reuses it; the Add needed none
    assert sum("transpose" in op.where for op in net.ops) == 1
    x = rng.uniform(-1, 1, size=(8, 6))
    _close(_ours(net, shape, x), _ort(model, x))
    _check_bounds(net, shape, lambda xs: _ort(model, xs), x[:1], 0.1)


def test_concat_of_image_branches_along_channels_and_width():
    rng = np.random.default_rng(9)
    inits = _rng_inits(rng, K1=(2, 1, 2, 2), K2=(3, 1, 2, 2), K3=(1, 5, 2, 2))
    nodes = [helper.make_node("Conv", ["x", "K1"], ["c1"]), helper.make_node("Conv", ["x", "K2"], ["c2"]),
             helper.make_node("Concat", ["c1", "c2"], ["cc"], axis=1), helper.make_node("Relu", ["cc"], ["r"]),
             helper.make_node("Concat", ["r", "r"], ["w"], axis=-1),  # the same value twice, along the width
             helper.make_node("Conv", ["w", "K3"], ["o"]), helper.make_node("Flatten", ["o"], ["y"])]
    model = _graph(nodes, inits, [1, 1, 4, 4])
    net, shape, _ = load_onnx(model)
    x = rng.uniform(-1, 1, size=(5, 16))
    _close(_ours(net, shape, x), _ref_eval(model, x.reshape(-1, 1, 4, 4)))
    _check_bounds(net, shape, lambda xs: _ref_eval(model, xs.reshape(-1, 1, 4, 4)), x[:1], 0.1, n=100)


def test_output_read_by_another_node_and_dead_branches():
    """The graph output is an intermediate tensor also read by a node whose result is unused."""
    rng = np.random.default_rng(10)
    inits = _rng_inits(rng, W=(3, 3), V=(3, 2))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"]),
             helper.make_node("MatMul", ["y", "V"], ["dead"])]
    model = _graph(nodes, inits, ["N", 3])
    net, shape, info = load_onnx(model)
    assert info["n_outputs"] == 3
    x = rng.uniform(-1, 1, size=(4, 3))
    _close(_ours(net, shape, x), np.maximum(x @ inits["W"], 0))
    _check_bounds(net, shape, lambda xs: np.maximum(xs @ inits["W"], 0), x[:1], 0.1)


# =========================================================================== refusals


def _refused(nodes, inits, in_shape, match: str) -> None:
    with pytest.raises(OnnxImportError, match=match):
        load_onnx(_graph(nodes, inits, in_shape))


def test_what_is_still_refused_names_the_node_and_the_supported_list():
    W = {"W": np.ones((3, 3))}
    mm = helper.make_node("MatMul", ["x", "W"], ["h"])
    for op in ("Mul", "Div", "MatMul"):
        _refused([mm, helper.make_node(op, ["x", "h"], ["y"], name="prod")], W, ["N", 3],
                 rf"node 1 \('prod', {op}\): {op} of 2 tensors computed from the input is nonlinear.*Add, Concat, Sub, "
                 rf"Sum\. fastcert supports: Gemm")
    _refused([mm, helper.make_node("Max", ["x", "h"], ["y"], name="mx")], W, ["N", 3],
             r"node 1 \('mx', Max\): unsupported ONNX operator Max\. fastcert supports: Gemm")
    _refused([mm, helper.make_node("Softmax", ["h"], ["y"], name="sm")], W, ["N", 3],
             r"node 1 \('sm', Softmax\): unsupported ONNX operator Softmax. fastcert supports:")
    # broadcasting between two tensors computed from the input
    _refused([helper.make_node("MatMul", ["x", "V"], ["v"]), helper.make_node("Add", ["x", "v"], ["y"], name="bc")],
             {"V": np.ones((3, 1))}, ["N", 3], r"node 1 \('bc', Add\): Add of tensors of shapes \[1, 3\] and \[1, 1\]")
    _refused([helper.make_node("Concat", ["x", "c"], ["y"], axis=1, name="cat")], {"c": np.ones((1, 2))}, ["N", 3],
             r"node 0 \('cat', Concat\): Concat of constants with tensors computed from the input")
    _refused([mm, helper.make_node("Concat", ["x", "h"], ["y"], axis=0, name="cat")], W, ["N", 3],
             r"node 1 \('cat', Concat\): Concat along the batch dimension")
    _refused([mm, helper.make_node("Sum", ["x", "h", "c"], ["y"], name="sum")], {**W, "c": np.ones(3)}, ["N", 3],
             r"node 1 \('sum', Sum\): Sum of constants and tensors")
    # an input that no earlier node computes (unsorted node list)
    _refused([helper.make_node("Relu", ["h"], ["y"], name="r"), mm], W, ["N", 3],
             r"node 0 \('r', Relu\): input 'h' is neither a constant nor computed by an earlier node")


def test_chains_stay_chains():
    """A chain ONNX model gives a chain op list (each op reads the one before: the chain engine)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 4), nn.ReLU(),
                          nn.Linear(4, 2))
    net, shape, info = load_onnx(_export(model, torch.rand(1, 1, 5, 5)))
    assert info["is_chain"] and net.chain
    assert all(op.inputs == (k,) for k, op in enumerate(net.ops))


def test_registered_activations_and_clip_from_onnx() -> None:
    """Hardtanh / ReLU6 (exported as Clip with constant bounds), clamp with one bound, and Atan come through
    the primitive registry: the network evaluates like torch and CROWN bounds contain sampled outputs."""
    import io

    import fastcert

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = nn.functional.hardtanh(self.a(x), -0.5, 0.75)  # float32-exact bounds: ONNX stores float32
            h = torch.clamp(nn.functional.relu6(self.b(h)), min=0.125)
            return self.d(torch.atan(self.c(h)))

    torch.manual_seed(0)
    m = Net().eval()
    buf = io.BytesIO()
    torch.onnx.export(m, torch.rand(1, 4), buf, dynamo=False, opset_version=13)
    net, shape, _ = load_onnx(buf.getvalue())
    kinds = [nd.prim.kind for nd in net.graph_for(shape).nodes[1:]]
    assert kinds.count("hardtanh") == 3 and "arctan" in kinds
    x = torch.rand(3, 4, dtype=torch.float64)
    m64 = m.double()
    torch.testing.assert_close(net.forward(x), m64(x), rtol=1e-12, atol=1e-12)
    r = fastcert.bounds(net, x, 0.2, method="crown")
    pts = x + (torch.rand(500, *x.shape, dtype=torch.float64) * 2 - 1) * 0.2
    with torch.no_grad():
        y = m64(pts.reshape(-1, 4)).reshape(500, 3, 3)
    assert (y >= r.lower).all() and (y <= r.upper).all()
