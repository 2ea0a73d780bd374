"""The graph IR: a network as a DAG of primitive nodes, built per input shape.

``Graph.nodes[0]`` is the input; every other node holds a primitive (:mod:`fastcert.primitives`) and
the ids of the nodes it reads, in topological order; the last node is the output. Tensors are flat
(``[B, n]``), so reshapes are not nodes: a node's primitive knows the per-sample shape it reads.
A chain (each node reads the one before) is the special case the chain engine runs faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fastcert.errors import UnsupportedError
from fastcert.graph.ops import LayerOp, make_layer, reshape_target
from fastcert.layers.base import Layer
from fastcert.primitives.add import Add
from fastcert.primitives.base import Elementwise
from fastcert.primitives.concat import Concat
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.linear import Dense
from fastcert.primitives.maxpool import MaxPool2d
from fastcert.primitives.relu import ReLU

SUPPORTED_GRAPH_OPS = "add / sub of two tensors, torch.cat / Concat, MaxPool2d, reshape / flatten / view"


@dataclass(frozen=True)
class Node:
    """One node: ``prim`` (None for the input), the ids of its inputs, and a name for messages."""

    id: int
    prim: Layer | None
    inputs: tuple[int, ...]
    name: str
    # the front end's op this node came from (its ``module`` gives the live parameters of the
    # differentiable bounds); None for nodes the builder adds
    op: Any = field(default=None, compare=False, repr=False)

    @property
    def out_shape(self) -> tuple[int, ...]:
        assert self.prim is not None
        return self.prim.out_shape


class Graph:
    """A DAG of primitives for one per-sample input shape (see the module docstring)."""

    def __init__(self, input_shape: tuple[int, ...], nodes: list[Node]) -> None:
        self.input_shape = tuple(input_shape)
        self.nodes = nodes
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for nd in nodes[1:]:
            for i in nd.inputs:
                self.consumers[i].append(nd.id)

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    def n(self, v: int) -> int:
        """Entries per sample of node v's output."""
        if v == 0:
            n = 1
            for d in self.input_shape:
                n *= d
            return n
        p = self.nodes[v].prim
        assert p is not None
        return p.n_out

    def is_chain(self) -> bool:
        return all(nd.inputs == (nd.id - 1,) for nd in self.nodes[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the graph in x's dtype: x [B, *input_shape] -> [B, n_out]. The one float64 twin of
        a network (MIP, VNN-COMP and the tests use it)."""
        vals: list[torch.Tensor | None] = [x.reshape(x.shape[0], -1).contiguous()]
        for nd in self.nodes[1:]:
            assert nd.prim is not None
            vals.append(nd.prim.forward(*(vals[i] for i in nd.inputs)))  # type: ignore[arg-type]
        out = vals[-1]
        assert out is not None
        return out

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function in plain differentiable torch ops (for gradient attacks): x [B, *input_shape]
        -> [B, n_out]. Equal to :meth:`forward` up to rounding; counterexamples are re-checked with it."""
        vals: list[torch.Tensor] = [x.reshape(x.shape[0], -1)]
        for nd in self.nodes[1:]:
            f = getattr(nd.prim, "torch_forward", None) or nd.prim.forward  # type: ignore[union-attr]
            vals.append(f(*(vals[i] for i in nd.inputs)))
        return vals[-1]

    def summary(self) -> str:
        rows = []
        for nd in self.nodes[1:]:
            assert nd.prim is not None
            rows.append(f"{nd.id:3d}  {nd.prim.describe()}  <- {list(nd.inputs)}   [{nd.name}]")
        return "\n".join(rows)


def _prune(nodes: list[Node]) -> list[Node]:
    """Drop the nodes the output does not read, renumbering the rest."""
    live = {len(nodes) - 1}
    for nd in reversed(nodes):
        if nd.id in live:
            live.update(nd.inputs)
    keep = [nd for nd in nodes if nd.id in live]
    new_id = {nd.id: k for k, nd in enumerate(keep)}
    return [Node(new_id[nd.id], nd.prim, tuple(new_id[i] for i in nd.inputs), nd.name, nd.op) for nd in keep]


def build_graph(ops: list[LayerOp], input_shape: tuple[int, ...]) -> Graph:
    """The graph of ``ops`` (see :class:`fastcert.network.LayerOp`; op k's output is value k+1) for
    inputs of per-sample shape ``input_shape``. Raises ValueError naming the op for shapes torch
    would refuse too."""
    nodes = [Node(0, None, (), "input")]
    value: list[tuple[int, tuple[int, ...]]] = [(0, tuple(input_shape))]  # value -> (node, per-sample shape)
    for k, op in enumerate(ops):
        ins = op.inputs if op.inputs is not None else (k,)
        src = [value[i] for i in ins]
        shape = src[0][1]
        a = op.args
        if op.kind == "flatten":
            value.append((src[0][0], (int(torch.Size(shape).numel()),)))
            continue
        if op.kind == "reshape":
            value.append((src[0][0], reshape_target(shape, a["shape"], op.where)))
            continue
        if op.kind == "identity":
            value.append(src[0])
            continue
        prim: Layer
        if op.kind == "add":
            if src[0][1] != src[1][1]:
                raise UnsupportedError(f"{op.where}: adds tensors of per-sample shapes {src[0][1]} and {src[1][1]}; "
                                       f"fastcert supports the sum of two tensors of the same shape (no broadcasting)")
            prim = Add(shape, a.get("sign", 1), name=op.where)
        elif op.kind == "cat":
            fd = a.get("full_dim")  # torch's dimension, counting the batch
            dim = a["dim"] if fd is None else (fd - 1 if fd > 0 else len(shape) + fd)
            prim = Concat([s for _, s in src], dim, name=op.where)
        elif op.kind == "maxpool":
            prim = MaxPool2d(shape, a["k"], a["stride"], a["padding"], name=op.where)
        else:
            prim = make_layer(op, shape)
        nodes.append(Node(len(nodes), prim, tuple(v for v, _ in src), op.where, op))
        value.append((len(nodes) - 1, prim.out_shape))
    out_node, out_shape = value[-1]
    if out_node == 0:
        raise ValueError("the model's output is its input (no layers fastcert can bound)")
    nodes = nodes[:out_node + 1]
    last = nodes[-1].prim
    if not (last is not None and last.is_affine):  # specs act on an affine output; an identity layer is exact
        n = int(torch.Size(out_shape).numel())
        nodes.append(Node(len(nodes), Dense(torch.eye(n, dtype=torch.float64), None, (n,), name="output identity"),
                          (out_node,), "output identity"))
    return Graph(tuple(input_shape), _prune(nodes))


def chain_graph(layers: list[Layer], input_shape: tuple[int, ...]) -> Graph:
    """The graph of a chain of layers (each reads the one before)."""
    nodes = [Node(0, None, (), "input")]
    for L in layers:
        nodes.append(Node(len(nodes), L, (len(nodes) - 1,), L.name))
    return Graph(tuple(input_shape), nodes)


def is_nonlinear(prim: Layer | None) -> bool:
    """Whether a node's primitive needs a relaxation (bounds on its input)."""
    return isinstance(prim, (ReLU, Elementwise, MaxPool2d))


__all__ = ["Graph", "Node", "build_graph", "chain_graph", "is_nonlinear", "Conv2d", "Diag"]
