"""Pieces shared by :func:`fastcert.verify` and :func:`fastcert.mip.solve_property`: the layer check,
sound pre-activation boxes, the affine matrices, and extending an encoding by rows and columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from fastcert.algorithms.linear_bounds import linear_bounds
from fastcert.layers import Activation, Conv2d, Dense, Diag
from fastcert.mip.lp_refine import Encoding, affine_matrix

__all__ = ["affine_mats", "augment", "check_layers", "conj_model", "prefix_bounds"]


def check_layers(layers: list) -> None:
    """Raise ValueError naming the first layer that is not Linear / Conv2d / Diag / ReLU."""
    for i, L in enumerate(layers):
        if isinstance(L, (Dense, Conv2d, Diag)):
            continue
        if isinstance(L, Activation) and L.kind == "relu":
            continue
        what = f"activation {L.kind!r}" if isinstance(L, Activation) else type(L).__name__
        raise ValueError(f"fastcert.mip encodes ReLU networks only (Linear, Conv2d, AvgPool2d, BatchNorm, "
                         f"Normalize, ReLU); layer {i} ({L.name or what}) is {what}")


def affine_mats(layers: list) -> tuple[list, list]:
    """(mats, absW): per layer ``(W [n_out, n_in] CSR, bias [n_out])`` and ``|W|^T`` (CSR) for an affine
    layer, None for an activation."""
    mats = [affine_matrix(L) if not isinstance(L, Activation) else None for L in layers]
    absW = [None if m is None else abs(m[0]).T.tocsr() for m in mats]
    return mats, absW


def prefix_bounds(layers: list, prob: Any, method: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sound bounds ``(l, u)``, each [B, n], of the input of every activation layer (``method`` on the
    prefix of the network in front of it); ``prob`` a region from :func:`fastcert.api.make_region`."""
    pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    B = prob.x0.shape[0]
    for i, L in enumerate(layers):
        if isinstance(L, Activation):
            if i == 0:
                pre[i] = (prob.l0.numpy().copy(), prob.u0.numpy().copy())
            else:
                n = layers[i - 1].n_out
                eye = torch.eye(n, dtype=torch.float64).expand(B, n, n).contiguous()
                lo, up = linear_bounds(layers[:i], prob, eye, method)
                pre[i] = (lo.numpy().copy(), up.numpy().copy())
    return pre


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
