"""Import an ONNX network into fastcert's IR.

``load_onnx(path_or_bytes) -> (network, input_shape, info)``

The graph may branch: every ONNX tensor computed from the input is one value of fastcert's graph IR
(:mod:`fastcert.graph`), so residual connections (``x + f(x)``), ``x - g(x)``, concatenated branches
and tensors read by several nodes (fan-out) are supported; a chain of nodes gives a chain network (the
fast chain engine). Nodes are read in their (topological) order; a node whose inputs are all
constant is evaluated with numpy (constant folding: ``Transpose`` / ``Reshape`` / ``Shape`` /
``Gather`` / ``Concat`` / arithmetic ...), every other node becomes IR ops:

=====================================  =======================================================
ONNX                                   IR
=====================================  =======================================================
Gemm (transA=0, transB, alpha, beta)   Dense ``alpha*B'`` (+ ``beta*C`` as its bias)
MatMul (x @ W, or W @ x for 1-D x)     Dense (a following constant Add becomes its bias)
Conv (group=1, dilation 1, sym. pads)  Conv2d
AveragePool / GlobalAveragePool        AvgPool (a Conv2d with channel-diagonal weights)
MaxPool (2-D, dilation 1)              MaxPool2d (a graph node)
Relu, LeakyRelu, Sigmoid, Tanh         Activation
Add / Sub / Mul / Div / Neg by consts  elementwise ``Diag`` (merged while consecutive; folded
BatchNormalization                     into the previous Dense/Conv2d by the IR where exact)
Add / Sub of two tensors computed      ``add`` (same shape, no broadcasting between them); Sum
from the input, Sum of several         of n tensors is n-1 adds
Concat of such tensors                 ``cat`` along a per-sample axis (not the batch axis)
Flatten, Reshape, Squeeze, Unsqueeze   shape bookkeeping (a free ``reshape`` where a Conv or a
                                       pool needs the IR to hold an image again)
Transpose                              an index permutation, folded into the next Dense's
                                       columns (or, for an NHWC input, into the first Conv);
                                       elsewhere an exact 0/1 permutation Dense
Identity, Dropout, Pad                 nothing (Pad only with all-zero pads)
Cast to an equal or wider float type   nothing (FLOAT16 -> FLOAT -> DOUBLE is exact; a narrowing Cast
                                       of the tensor, e.g. to FLOAT16, is refused: see Rounding)
=====================================  =======================================================

Anything else, and products of two tensors computed from the input (``x * y``, ``x @ y``), raise
:class:`OnnxImportError` (a :class:`fastcert.UnsupportedError`, so a ``ValueError``) naming the node,
its op type, its position and the supported list.

**Input layout.** The returned ``input_shape`` is the per-sample shape the :class:`~fastcert.Network`
expects. Its row-major flattening is always the row-major flattening of the ONNX input tensor, so
VNN-LIB's ``X_i`` index it directly: pass ``x.reshape(B, *input_shape)``. It equals the ONNX input
shape without its batch dimension, except (1) when the input is reshaped before any layer reads it and
a Conv / pool reads it next (the reshaped shape, e.g. ``(1, 28, 28)`` for a ``[1, 784]`` input), and (2)
for an NHWC input whose first node transposes it to NCHW for a convolution (the marabou-cifar10
nets): there the transpose is folded exactly into the first convolution by reading the ``[H, W, C]``
input as a ``[1, H, W*C]`` image (kernel ``(kh, kw*C)``, stride ``(sh, sw*C)``, padding
``(ph, pw*C)``), and ``input_shape`` is ``(1, H, W*C)``.

**Batch dimension.** An input of rank >= 2 has a batch dimension first (size 1 or symbolic); a rank-1
input (``test_nano``: shape ``[1]``) has none and is one sample.

**Rounding.** Elementwise constant maps carry the evaluation-error model of :class:`fastcert.Normalize`
(``|err| <= a|x| + c`` for a float64 evaluation of the original ops): a lone Add/Sub/Mul/Div gets
Normalize's model with std 1 or mean 0, ``Sub`` then ``Div``/``Mul`` exactly Normalize's, and longer
chains the sound composition of their models; BatchNormalization carries the model of the torch
BatchNorm conversion. Operations that are exact identities (``x + 0``, ``x * 1``, ``x / 1``) are
dropped. A constant Add right after a bias-free Gemm/MatMul/Conv becomes its bias (exact) when
nothing else reads the layer's output; other elementwise maps after an affine layer are folded into it
by the IR (chain networks), which records the evaluation error. The maps queued on a tensor that
several nodes read are emitted once, before the first of them.

**Cast.** The imported network is bounded in float64 (a FLOAT or FLOAT16 model is read as the same
graph evaluated in float64; the rounding of a lower-precision *evaluation* is not covered, see
docs/architecture.md). A ``Cast`` of a tensor is exact when the target type holds every value of the
tensor's current type (the same type, FLOAT16 -> FLOAT / DOUBLE, FLOAT -> DOUBLE) and is then dropped;
a narrowing ``Cast`` (DOUBLE -> FLOAT, anything -> FLOAT16 / BFLOAT16 / FLOAT8) is an explicit
rounding of the function, not an affine map, and raises :class:`OnnxImportError` naming the node and
both types. A ``Cast`` of a constant is evaluated with the real rounding, as onnxruntime does (to
FLOAT16 / BFLOAT16 through FLOAT); float -> integer casts of constants must be finite and in range.

The implementation lives in :mod:`fastcert.io.onnx` (one module per concern; the operator handlers
are registered in :mod:`fastcert.io.onnx.registry`).
"""

from __future__ import annotations

from typing import Any

from fastcert.io.onnx.convert import SUPPORTED_OPS, Converter
from fastcert.io.onnx.read import OnnxImportError, read_model
from fastcert.network import Network

__all__ = ["OnnxImportError", "load_onnx", "SUPPORTED_OPS"]


def load_onnx(src: Any) -> tuple[Network, tuple[int, ...], dict]:
    """Load an ONNX network (a path, ``bytes`` or an ``onnx.ModelProto``; gzipped data is detected by
    its magic bytes, so ``.onnx.gz`` works) into a :class:`fastcert.Network`.

    Returns ``(network, input_shape, info)``: ``input_shape`` is the per-sample shape the network is
    built for (its row-major flattening is the ONNX input's, see the module docs), ``info`` a dict with
    ``input_name``, ``onnx_input_shape`` (as declared, batch included), ``output_name``, ``n_inputs``,
    ``n_outputs``, ``output_shape``, ``is_chain`` (False for a graph: residual connections,
    concatenation, max pooling), ``opset``, ``producer`` and ``notes`` (what was folded where).

    Raises :class:`OnnxImportError` (a ``ValueError``) naming the node, its op type and its position
    for anything fastcert cannot represent.
    """
    model, name = read_model(src)
    ops, input_shape, info = Converter(model, name).run()
    net = Network(ops, input_shape)
    info["is_chain"] = net.chain
    return net, input_shape, info
