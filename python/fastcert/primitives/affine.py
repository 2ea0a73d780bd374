"""What the affine primitives share (:mod:`~fastcert.primitives.linear`, :mod:`~fastcert.primitives.conv2d`,
:mod:`~fastcert.primitives.diag`): float64 master parameters, their per-dtype copies with ``|W|``, the
rounded-up row sums and norms the rounding analysis uses, and the rounding counts of the products."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fastcert.layers.base import Layer
from fastcert.primitives.mip_rows import ABSENT, RowBuilder
from fastcert.rounding import eta, round_up, rounding_is_relative

if TYPE_CHECKING:
    import scipy.sparse as sp


@dataclass
class AffineParams:
    W: torch.Tensor
    absW: torch.Tensor
    bias: torch.Tensor  # flat [n_out] (empty when no bias)
    absbias: torch.Tensor
    rowabs: torch.Tensor  # flat [n_out]: >= the sum of |W| over each output's inputs (rounded up)
    rownorm: torch.Tensor  # flat [n_out]: >= the 2-norm of each output's weights (rounded up)


class AffineBase(Layer):
    is_affine = True

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, name: str) -> None:
        self.W64 = W.detach().to(torch.float64).contiguous().clone()
        self.b64 = None if b is None else b.detach().to(torch.float64).contiguous().clone()
        self.name = name
        self._cache: dict[torch.dtype, AffineParams] = {}
        self._mip: tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix] | None = None  # mip_matrix(), derived once

    def bias_flat64(self) -> torch.Tensor | None:
        return self.b64

    def params(self, dtype: torch.dtype) -> AffineParams:
        p = self._cache.get(dtype)
        if p is None:
            W = self.W64.to(dtype).contiguous()
            bf = self.bias_flat64()
            bias = torch.empty(0, dtype=dtype) if bf is None else bf.to(dtype).contiguous()
            if not (torch.isfinite(W).all() and torch.isfinite(bias).all()):
                raise ValueError(f"{self.name or self.kind}: its parameters overflow {dtype} (they exceed its range); "
                                 f"pass x as float64 (x.double())")
            bf64 = torch.empty(0, dtype=torch.float64) if bf is None else bf
            for what, v64 in (("weight", self.W64), ("bias", bf64)):
                ok = rounding_is_relative(v64, dtype)
                if not bool(ok.all()):
                    k = int((~ok).flatten().nonzero()[0])
                    raise ValueError(
                        f"{self.name or self.kind}: {what} entry {float(v64.flatten()[k])!r} lies below the normal range "
                        f"of {dtype} and does not round exactly to it (its rounding error is not covered by the "
                        f"{dtype} analysis); pass x as float64 (x.double())")
            absW = W.abs().contiguous()
            # sum in float64 of max(|W64|, |W_dtype|), widened by the float64 summation error, rounded up
            a64 = torch.maximum(self.W64.abs(), absW.double())
            infl = 1 + 4 * torch.finfo(torch.float64).eps * (a64[0].numel() + 2)
            rowabs = round_up(self._row_sums(a64) * infl, dtype)
            # squares below 2^-1074 vanish: each loses at most eta64, so add one per term (and 2)
            n_row = a64[0].numel() + 2
            rownorm = round_up(torch.sqrt(self._row_sums(a64 * a64) * infl + n_row * eta(torch.float64)) * infl,
                                dtype)
            absb = bias.abs().contiguous()
            p = AffineParams(W, absW, bias, absb, rowabs, rownorm)
            self._cache[dtype] = p
        return p

    def _row_sums(self, a64: torch.Tensor) -> torch.Tensor:
        """Flat [n_out] sums of the nonnegative weights a64 (shaped like W64) over each output's inputs."""
        return a64.reshape(a64.shape[0], -1).sum(1)

    @functools.cached_property
    def fan_in(self) -> int:
        """Length of the sums in ``forward`` (products per output, + bias, + 1 for the rounding of the
        float64 parameters to a float32 compute dtype, which perturbs each product by <= u)."""
        return int(self.W64[0].numel()) + 2

    @property
    def back_len(self) -> int:
        """Products summed per entry of ``backward``'s result (+1: parameter rounding): the count that
        bounds its absolute (underflow) error."""
        return int(self.W64.shape[0]) + 1

    @property
    def back_depth(self) -> int:
        """Roundings any one product goes through on its way into an entry of ``backward``'s result
        (the ``n`` of its relative ``gamma_n`` bound): for a dense layer one dot product of ``n_out``
        terms in any order, so ``back_len``."""
        return self.back_len

    # ---------------------------------------------------------------- MIP encoding (see mip_rows.py)

    def sparse_weight(self) -> sp.csr_matrix:  # pragma: no cover - abstract
        """W as a sparse float64 matrix [n_out, n_in] (exact copies of the float64 weights)."""
        raise NotImplementedError

    def mip_matrix(self) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix]:
        """``(W [n_out, n_in] CSR, bias [n_out], |W|^T CSR)`` in float64, derived once from the parameters."""
        if self._mip is None:
            b = self.bias_flat64()
            bias = np.zeros(self.n_out) if b is None or b.numel() == 0 else b.double().numpy().reshape(-1).copy()
            W = self.sparse_weight()
            if W.shape != (self.n_out, self.n_in):  # pragma: no cover - shape bookkeeping
                raise ValueError(f"{self.name}: sparse weight of shape {W.shape}, expected {(self.n_out, self.n_in)}")
            W.eliminate_zeros()
            self._mip = (W, bias, abs(W).T.tocsr())
        return self._mip

    def mip_bounds(self, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds of ``W h + b``, widened by 1e-9 of the magnitudes: far beyond the float64
        rounding of these products for any realistic layer width."""
        W, b, _ = self.mip_matrix()
        hl, hu = ins[0]
        mid, rad = (hl + hu) / 2, (hu - hl) / 2
        aW = abs(W)
        c = W @ mid + b
        mag = aW @ np.maximum(np.abs(hl), np.abs(hu)) + np.abs(b)
        slack = aW @ rad + 1e-9 * mag + 1e-300
        return c - slack, c + slack

    def mip_need(self, need: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [np.ones(self.n_in, dtype=bool)]

    def mip_encode(self, bld: RowBuilder, hs: list[np.ndarray], ins: list[tuple[np.ndarray, np.ndarray]],
                   out: tuple[np.ndarray, np.ndarray], keep: np.ndarray, mode: str) -> tuple[np.ndarray, None]:
        """Equality rows ``z - W h = b`` for the kept outputs."""
        W, b, _ = self.mip_matrix()
        h = hs[0]
        rows_k = np.nonzero(keep)[0]
        if (h == ABSENT).any() and W[rows_k][:, np.nonzero(h == ABSENT)[0]].nnz:  # pragma: no cover - internal
            raise RuntimeError(f"internal error: {self.name} reads a neuron the encoding dropped")
        live = np.nonzero(h >= 0)[0]
        Wc = W[rows_k][:, live].tocoo()
        k = len(rows_k)
        z = np.full(W.shape[0], ABSENT, dtype=np.int64)
        z[rows_k] = bld.cols(out[0][rows_k], out[1][rows_k])
        bld.rows([(np.arange(k), z[rows_k], np.ones(k)), (Wc.row, h[live][Wc.col], -Wc.data)], b[rows_k], b[rows_k])
        return z, None

    def mip_sensitivity(self, s: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[float, list[np.ndarray]]:
        """One equality row per output; the inputs move the output by ``|W|``."""
        return float(s.sum()), [self.mip_matrix()[2] @ s]


def channel_expand(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-channel vector [C] -> flat [prod(shape)] (channel = first dim of ``shape``)."""
    C = shape[0]
    rest = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return v.reshape(C, 1).expand(C, rest).reshape(-1)
