"""The network: a torch ``nn.Module`` (or an ONNX model) converted once into a shape-free op list
(:mod:`fastcert.graph`), built per input shape into a graph of primitives (a chain of layers when it is
one).

Supported: see ``SUPPORTED`` (:mod:`fastcert.graph.from_torch`). Per-channel affine maps
(BatchNorm, Normalize) are folded into the Linear / Conv2d right before them, else kept as an
elementwise layer (never into the next layer: see docs/architecture.md). The layer list is built per
input shape (CNNs learn their spatial size from the first input) and cached.

Conversion is a snapshot: every parameter and buffer is copied (float64, CPU) by the front end,
so later in-place changes to the torch module are never seen. A module is rebuilt from its
structure only when that structure is all it computes: a subclass that overrides ``forward``, a
forward hook or pre-hook (on any module, or global), an uninitialised lazy module or a weight
parametrization in training mode is refused by name rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastcert.errors import UnsupportedError
from fastcert.graph.from_torch import SUPPORTED
from fastcert.graph.ir import Graph, build_graph, chain_graph
from fastcert.graph.ops import CHAIN_KINDS, LayerOp, build_chain_default, is_chain, reshape_target, shape_key
from fastcert.graph.trace import convert
from fastcert.io.onnx.convert import Converter
from fastcert.io.onnx.read import read_model
from fastcert.layers.base import Layer
from fastcert.rounding import gamma_for, gamma_n

__all__ = ["CHAIN_KINDS", "LayerOp", "Network", "SUPPORTED", "as_network", "gamma_for", "gamma_n", "is_chain",
           "reshape_target"]


class Network:
    """A verified-ready view of a torch model.

    Build once with :meth:`from_torch` and reuse. A Network is a snapshot: every parameter and
    buffer (weights, biases, BatchNorm statistics, Normalize mean/std, slopes, pool sizes) is copied
    (float64) at conversion, with or without ``input_shape``, so later changes to the torch model,
    in place or not, are never seen; convert again to see them. (Passing the torch module itself to
    :func:`fastcert.bounds` / :func:`~fastcert.certify` / :func:`~fastcert.verify` converts it anew
    on every call, so that path always sees the live module.)
    """

    def __init__(self, ops: list[LayerOp], input_shape: tuple[int, ...] | None = None) -> None:
        self._ops = ops
        self.chain = is_chain(ops)
        self._compiled: dict[tuple[int, ...], list[Layer]] = {}
        self._graphs: dict[tuple[int, ...], Graph] = {}
        self._op_graphs: dict[tuple[int, ...], Graph] = {}
        self.input_shape = None if input_shape is None else shape_key(input_shape)
        if self.input_shape is not None:
            self.graph_for(self.input_shape)

    @property
    def ops(self) -> list[LayerOp]:
        """The shape-free op list (read-only by convention: the network is a snapshot)."""
        return self._ops

    def _key(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        key = shape_key(input_shape, "the per-sample input shape")
        if self.input_shape is not None and key != self.input_shape:
            raise ValueError(f"input has per-sample shape {key} but the network was built for {self.input_shape}")
        return key

    @classmethod
    def from_torch(cls, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> "Network":
        """Convert ``model`` (an ``nn.Sequential``, nesting allowed) into a snapshot of its current
        parameters. ``input_shape`` excludes the batch dimension; when omitted it is taken from the
        first input (and each new shape gets its own layer list, built from the same snapshot).

        Raises ValueError / TypeError naming the module for anything whose output the structure
        does not determine: an unsupported layer, a subclass that overrides ``forward``, forward
        hooks or pre-hooks (global or on any module; ``torch.nn.utils.weight_norm`` is one),
        parameters that are complex, integer, sparse, empty, non-finite or on the meta device, and
        layer / input shapes torch itself would refuse."""
        return cls(convert(model), input_shape)

    @classmethod
    def from_onnx(cls, src: Any) -> "Network":
        """Load an ONNX network (path, bytes or ModelProto; ``.onnx.gz`` works too).
        See :mod:`fastcert.io.onnx_import` for the supported operators."""
        model, name = read_model(src)
        ops, input_shape, _ = Converter(model, name).run()
        return cls(ops, input_shape)

    def layers_for(self, input_shape: tuple[int, ...]) -> list[Layer]:
        """The layer list of a chain network for inputs of per-sample ``input_shape``. A graph network
        (residual connections, concatenation, max pooling) has none: :class:`UnsupportedError` names
        its first graph node; use :meth:`graph_for`."""
        key = self._key(input_shape)
        if not self.chain:
            op = next(op for k, op in enumerate(self._ops)
                      if op.kind not in CHAIN_KINDS or (op.inputs is not None and op.inputs != (k,)))
            raise UnsupportedError(f"{op.where} ({op.kind}) makes this network a graph, not a chain of layers; this "
                                   f"operation supports chains only (IBP, CROWN, CROWN-IBP and Fast-Lin run on graphs)")
        layers = self._compiled.get(key)
        if layers is None:
            layers = build_chain_default(self._ops, key)
            self._compiled[key] = layers
        return layers

    def graph_for(self, input_shape: tuple[int, ...]) -> Graph:
        """The graph of primitives for inputs of per-sample ``input_shape`` (a chain's graph has the
        chain's layers as its nodes)."""
        key = self._key(input_shape)
        g = self._graphs.get(key)
        if g is None:
            g = chain_graph(self.layers_for(key), key) if self.chain else build_graph(self._ops, key)
            self._graphs[key] = g
        return g

    def op_graph_for(self, input_shape: tuple[int, ...]) -> Graph:
        """The graph of the front end's ops, one node per op (no folding, chains included), each node
        keeping its op (and through it the source module): what the differentiable bounds run on."""
        key = self._key(input_shape)
        g = self._op_graphs.get(key)
        if g is None:
            g = build_graph(self._ops, key)
            self._op_graphs[key] = g
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the network with fastcert's kernels. x: [B, *input_shape] -> [B, n_out]."""
        return self.graph_for(tuple(x.shape[1:])).forward(x)

    __call__ = forward

    def summary(self, input_shape: tuple[int, ...]) -> str:
        return self.graph_for(input_shape).summary()


def as_network(model: "nn.Module | Network") -> Network:
    return model if isinstance(model, Network) else Network.from_torch(model)

