"""Sparse MIP / LP encoding of a graph of primitives on an input box (one encoder; a chain is the graph
whose nodes are its layers, :func:`fastcert.mip.lp_refine.encode` keeps the per-layer interface).

Per node (``Graph.nodes``, topological order; node 0 the input columns) the primitive writes its own
rows (its ``mip_*`` methods, :mod:`fastcert.primitives.mip_rows`): affine nodes equality rows
``z - W h = b``; ReLU exact for stable neurons, big-M with a binary (Tjeng et al.) or the LP triangle for
unstable ones; Add / Sub one equality row per neuron; Concat no rows; MaxPool2d the exact selector
encoding of a max with a valid cut. This module walks the graph: the bounds of every node's values, which
neurons a later node reads, the encoding, and the tolerance sensitivity.

Every row holds for every true point of the network (in real arithmetic), every column has finite
bounds containing the true values, so the LP certificates of :func:`fastcert.mip.lp_refine.certified_lower`
apply. Outputs no later node needs get no column (``-2``); ``-1`` is the constant 0 (a dead ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from fastcert.errors import UnsupportedError
from fastcert.graph.ir import Graph, chain_graph
from fastcert.primitives.add import Add
from fastcert.primitives.concat import Concat
from fastcert.primitives.maxpool import PoolPlan, pool_plan, pool_windows
from fastcert.primitives.mip_rows import ABSENT, RowBuilder, triangle_offset

__all__ = ["Encoding", "PoolPlan", "SUPPORTED_MIP", "affine_matrix", "check_graph", "encode_graph",
           "layer_graph", "node_value_bounds", "pool_plan", "pool_windows", "relevant_neurons", "sensitivity",
           "triangle_offset"]
SUPPORTED_MIP = "Linear, Conv2d, AvgPool2d, BatchNorm, Normalize, ReLU, Add / Sub, Concat, MaxPool2d"


def check_graph(g: Graph) -> None:
    """Raise :class:`fastcert.UnsupportedError` naming the first node without a MIP encoding."""
    for nd in g.nodes[1:]:
        p = nd.prim
        if hasattr(p, "mip_encode"):
            continue
        what = getattr(p, "kind", type(p).__name__)
        raise UnsupportedError(f"fastcert.mip encodes ReLU networks only ({SUPPORTED_MIP}); node {nd.id} "
                               f"({nd.name or what}) is {what}, which has no piecewise-linear (MIP) encoding; use "
                               f"fastcert.bounds / fastcert.certify for sound bounds on it")


def layer_graph(layers: list, n_in: int) -> Graph:
    """The graph of a chain of IR layers on flat inputs of size ``n_in`` (node i+1 is layer i)."""
    return chain_graph(layers, (int(n_in),))


def affine_matrix(L: Any) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse W [n_out, n_in] and bias [n_out] (float64) of an affine IR layer (exact copies of the float64
    weights fastcert evaluates; a convolution is expanded by convolving basis vectors, single products)."""
    if not getattr(L, "is_affine", False):
        raise TypeError(f"affine_matrix: {type(L).__name__} is not an affine layer")
    W, b, _ = L.mip_matrix()
    return W, b


@dataclass
class Encoding:
    """Sparse MIP / LP encoding of (a prefix of) a network on an input box.

    Rows ``row_lo <= A v <= row_hi``, columns ``col_lo <= v <= col_hi``; ``integer[j]`` marks binaries.
    ``x``: input columns; ``out[i]``: per node (graph encodings, ``out[0] = x``) or per layer (the chain
    interface), the column of each output neuron (-1: the constant 0, a dead ReLU; -2: not encoded);
    ``binary[i] = (neurons, cols)`` for the unstable ReLUs of node / layer i (MIP mode), and for a max
    pool ``(pairs [k, 2] of (output, flat input index), cols)``: its selectors.
    """

    ncol: int
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    x: np.ndarray
    out: list = field(default_factory=list)
    binary: dict = field(default_factory=dict)

    @property
    def n_binaries(self) -> int:
        return int(self.integer.sum())


def _finish(bld: RowBuilder, x: np.ndarray, out: list, binary: dict) -> Encoding:
    cat = (lambda xs, dt=np.float64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    A = sp.csr_matrix((cat(bld.v), (cat(bld.r, np.int64), cat(bld.c, np.int64))), shape=(bld.nrow, bld.ncol))
    A.sum_duplicates()
    A.eliminate_zeros()
    return Encoding(bld.ncol, cat(bld.clo), cat(bld.chi), cat(bld.cint, bool), A, cat(bld.rlo), cat(bld.rhi), x, out,
                    binary)


# --------------------------------------------------------------------------- bounds of every node's values


def node_value_bounds(g: Graph, pre: dict, lo: np.ndarray, hi: np.ndarray, upto: int | None = None) -> list:
    """Sound bounds ``(l, u)`` (flat float64) of every node's output, nodes 0..upto: ``pre[v]`` (bounds of
    node v, required for the inputs of ReLU / max-pool nodes) where given, intersected with the image of
    the inputs' bounds (affine nodes and sums with ``pre`` use ``pre`` alone; without it: interval
    arithmetic, widened far beyond the float64 rounding)."""
    n = g.output if upto is None else upto
    Bd: list = [None] * (n + 1)
    for v in range(n + 1):
        nd = g.nodes[v]
        p = nd.prim
        given = pre.get(v)
        if p is not None and (p.is_affine or isinstance(p, Add)) and given is not None:
            Bd[v] = (np.asarray(given[0], dtype=np.float64), np.asarray(given[1], dtype=np.float64))
            continue
        if p is None:
            dl, du = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        else:
            dl, du = p.mip_bounds([Bd[i] for i in nd.inputs])
        if given is not None:
            dl, du = np.maximum(dl, given[0]), np.minimum(du, given[1])
        Bd[v] = (dl, du)
    return Bd


def relevant_neurons(g: Graph, v: int, l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[n_v] bool: the neurons of node v whose bounds ``(l, u)`` the encodings of v's ReLU / max-pool
    consumers depend on (unstable ReLU inputs; the possible maxima of undecided windows)."""
    m = np.zeros(len(l), dtype=bool)
    for w in g.consumers[v]:
        rel = getattr(g.nodes[w].prim, "mip_relevant", None)
        if rel is not None:
            m |= rel(l, u)
    return m


def _need(g: Graph, Bd: list, upto: int, last_keep: np.ndarray | None) -> list:
    """Per node, [n_v] bool: which outputs a later node (or the encoded output) reads."""
    need = [np.zeros(g.n(v), dtype=bool) for v in range(upto + 1)]
    need[upto][:] = True
    if last_keep is not None:
        need[upto] &= last_keep
    for w in range(upto, 0, -1):
        nw = need[w]
        if not nw.any():
            continue
        ins = g.nodes[w].inputs
        for i, part in zip(ins, g.nodes[w].prim.mip_need(nw, [Bd[i] for i in ins])):  # type: ignore[union-attr]
            need[i] |= part
    return need


# --------------------------------------------------------------------------- the encoder


def encode_graph(g: Graph, pre: dict, lo: np.ndarray, hi: np.ndarray, upto: int | None = None,
                 mode: str = "mip", last_keep: np.ndarray | None = None) -> Encoding:
    """Encode nodes ``0..upto`` (default: the whole graph) of ``g`` on the input box ``[lo, hi]`` (module
    docstring). pre[v]: sound bounds ``(l, u)`` (flat float64) of node v's
    output, required for every input of a ReLU or max-pool node. mode "mip": binaries; "lp": the LP
    relaxation (ReLU triangles, max-pool selectors in [0, 1]). ``last_keep`` restricts which outputs of
    node ``upto`` are encoded. ``out`` and ``binary`` are per node."""
    if mode not in ("mip", "lp"):
        raise ValueError(f"mode must be 'mip' or 'lp', got {mode!r}")
    n = g.output if upto is None else upto
    Bd = node_value_bounds(g, pre, lo, hi, n)
    need = _need(g, Bd, n, last_keep)
    bld = RowBuilder()
    x = bld.cols(lo, hi)
    outs: list[np.ndarray] = [x]
    binary: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for v in range(1, n + 1):
        nd = g.nodes[v]
        p, ins = nd.prim, nd.inputs
        keep = need[v]
        if not keep.any() and not isinstance(p, Concat):
            outs.append(np.full(g.n(v), ABSENT, dtype=np.int64))
            continue
        if not hasattr(p, "mip_encode"):  # pragma: no cover - check_graph refuses it first
            raise UnsupportedError(f"{nd.name}: no MIP encoding for {p.describe()}")  # type: ignore[union-attr]
        h, bins = p.mip_encode(bld, [outs[i] for i in ins], [Bd[i] for i in ins], Bd[v], keep, mode)  # type: ignore
        if bins is not None:
            binary[v] = bins
        outs.append(h)
    return _finish(bld, x, outs, binary)


def sensitivity(g: Graph, pre: dict, lo: np.ndarray, hi: np.ndarray, s: np.ndarray) -> float:
    """sum over the variables v of (how much |c . f| can move per unit change of v) * (how much a
    tolerance-sized violation can move v, in units of tol): 1 per equality row (affine, sum), plus the
    big-M of an unstable ReLU or of an undecided max-pool window whose binaries may be fractional by tol.
    ReLU and max are 1-Lipschitz, affine nodes by |W|; a dead ReLU (``u <= 0``) is the constant 0 in the
    encoding (no variable), so nothing reaches its input. pre, lo, hi as for :func:`encode_graph`; s: ``|c|`` [K] on the output."""
    Bd = node_value_bounds(g, pre, lo, hi)
    sv: list = [None] * len(g.nodes)
    sv[g.output] = np.asarray(s, dtype=np.float64)
    total = float(sv[g.output].sum())
    for v in range(g.output, 0, -1):
        s_v = sv[v]
        if s_v is None:
            continue
        ins = g.nodes[v].inputs
        add, ts = g.nodes[v].prim.mip_sensitivity(s_v, [Bd[i] for i in ins])  # type: ignore[union-attr]
        total += add
        parts = list(zip(ins, ts))
        for i, t in parts:
            sv[i] = t.copy() if sv[i] is None else sv[i] + t
    return total + float(sv[0].sum()) if sv[0] is not None else total
