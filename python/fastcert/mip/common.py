"""Pieces shared by :func:`fastcert.verify` and :func:`fastcert.mip.solve_property`: sound bounds of the
inputs of every ReLU / max-pool node, and extending an encoding by rows and columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from fastcert.algorithms.dispatch import network_bounds
from fastcert.algorithms.graph_bounds import node_boxes
from fastcert.algorithms.linear_bounds import linear_bounds
from fastcert.graph.ir import is_nonlinear
from fastcert.mip.encoding import Encoding
from fastcert.primitives.relu import ReLU

__all__ = ["augment", "conj_model", "incomplete_bounds", "node_bounds", "prefix_bounds"]

def prefix_bounds(layers: list, prob: Any, method: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sound bounds ``(l, u)``, each [B, n], of the input of every activation layer (``method`` on the
    prefix of the network in front of it); ``prob`` a region from :func:`fastcert.api.make_region`."""
    pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    B = prob.x0.shape[0]
    for i, L in enumerate(layers):
        if isinstance(L, ReLU):
            if i == 0:
                pre[i] = (prob.l0.numpy().copy(), prob.u0.numpy().copy())
            else:
                n = layers[i - 1].n_out
                eye = torch.eye(n, dtype=torch.float64).expand(B, n, n).contiguous()
                lo, up = linear_bounds(layers[:i], prob, eye, method)
                pre[i] = (lo.numpy().copy(), up.numpy().copy())
    return pre


def node_bounds(net: Any, shape: tuple[int, ...], prob: Any, method: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sound bounds ``(l, u)``, each [B, n_v], of the output of every node v read by a ReLU or max pool of
    ``net.graph_for(shape)``. A chain: :func:`prefix_bounds` (``method`` on each prefix; activation layer i
    reads node i, so the keys agree); a graph: the graph engine's boxes (interval bounds refined by
    back-substitution where ``method`` does, :func:`fastcert.algorithms.graph_bounds.node_boxes`).
    alpha-CROWN's: :func:`incomplete_bounds`."""
    if net.chain:
        return prefix_bounds(net.layers_for(shape), prob, method)
    g = net.graph_for(shape)
    return _keyed(g, node_boxes(g, prob, method))


def _keyed(g: Any, box: list) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    keys = sorted({nd.inputs[0] for nd in g.nodes[1:] if is_nonlinear(nd.prim)})
    return {v: (box[v].l.numpy().copy(), box[v].u.numpy().copy()) for v in keys}


def incomplete_bounds(net: Any, shape: tuple[int, ...], prob: Any, C: torch.Tensor, method: str, opts: Any = None,
                      crown: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The bounds a MIP starts from: of ``C f`` ([B, S, K] -> lower, upper [B, S]) and of every node a ReLU
    or max pool reads (:func:`node_bounds`' keys). ``method="alpha-crown"``: one alpha-CROWN run for C
    (:func:`fastcert.algorithms.alpha.network_alpha_crown`; ``crown``: CROWN's bounds of C f when already
    computed) gives both, each never looser than CROWN's; ``opts``: its :class:`fastcert.BoundOptions`."""
    C = C.to(prob.x0.dtype).contiguous()
    if method != "alpha-crown":
        lo, up = network_bounds(net, shape, prob, C, method)
        return lo, up, node_bounds(net, shape, prob, method)
    from fastcert.algorithms.alpha import network_alpha_crown

    lo, up, _, box = network_alpha_crown(net, shape, prob, C, opts=opts, boxes=True, crown=crown)
    assert box is not None
    pre = _keyed(net.graph_for(shape), box)
    if net.chain:  # never looser than the chain engine's prefix bounds
        ref = prefix_bounds(net.layers_for(shape), prob, "crown")
        pre = {v: (np.maximum(lo_c, pre[v][0]), np.minimum(hi_c, pre[v][1])) for v, (lo_c, hi_c) in ref.items()}
    return lo, up, pre


def augment(enc: Encoding, lo: np.ndarray, hi: np.ndarray, rows: sp.spmatrix, rlo: np.ndarray,
            rhi: np.ndarray) -> tuple[Encoding, np.ndarray]:
    """The encoding with ``len(lo)`` more (continuous) columns and the rows ``rlo <= rows @ v <= rhi``
    (``rows`` over all columns, old and new). Returns (encoding, indices of the new columns)."""
    k = len(lo)
    new = np.arange(enc.ncol, enc.ncol + k)
    A = sp.vstack([sp.hstack([enc.A, sp.csr_matrix((enc.A.shape[0], k))]), sp.csr_matrix(rows)]).tocsr()
    A.sum_duplicates()
    A.eliminate_zeros()
    out = Encoding(enc.ncol + k, np.concatenate([enc.col_lo, lo]), np.concatenate([enc.col_hi, hi]),
                   np.concatenate([enc.integer, np.zeros(k, dtype=bool)]), A,
                   np.concatenate([enc.row_lo, rlo]), np.concatenate([enc.row_hi, rhi]), enc.x, enc.out, enc.binary)
    return out, new


def conj_model(enc: Encoding, A: np.ndarray, b: np.ndarray, t_lo: float, t_hi: float
               ) -> tuple[Encoding, np.ndarray, float]:
    """(model, cost, offset) whose minimum is ``min max_i (A_i f - b_i)`` over the encoding: the row itself
    for one row, else a column ``t`` with rows ``A_i y - t <= b_i`` (t in [t_lo, t_hi], CROWN's range)."""
    out = enc.out[-1]
    m = A.shape[0]
    if m == 1:
        cost = np.zeros(enc.ncol)
        cost[out] = A[0]
        return enc, cost, -float(b[0])
    rows = sp.lil_matrix((m, enc.ncol + 1))
    for i in range(m):
        rows[i, out] = A[i]
        rows[i, enc.ncol] = -1.0
    menc, tcol = augment(enc, np.array([t_lo]), np.array([max(t_hi, t_lo)]), rows.tocsr(), np.full(m, -np.inf),
                         b.astype(np.float64))
    cost = np.zeros(menc.ncol)
    cost[tcol] = 1.0
    return menc, cost, 0.0
