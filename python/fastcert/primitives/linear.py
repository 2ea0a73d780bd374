"""The dense (fully connected) primitive: ``nn.Linear``, ``F.linear``, ONNX ``Gemm`` / ``MatMul`` (+ ``Add``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastcert._ext import _C
from fastcert.options import BoundOptions
from fastcert.primitives.affine import AffineBase

if TYPE_CHECKING:
    import scipy.sparse as sp


class Dense(AffineBase):
    """``y = x W^T + b``; W: [n_out, n_in]."""

    kind = "dense"

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, in_shape: tuple[int, ...], name: str = "") -> None:
        super().__init__(W, b, name)
        self.in_shape = tuple(in_shape)
        self.out_shape = (int(W.shape[0]),)

    def _fwd(self, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], W.shape[0], dtype=x.dtype)
        _C.dense_forward(x, W, bias, out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n_in] -> [B, n_out]."""
        p = self.params(x.dtype)
        return self._fwd(x, p.W, p.bias)

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same map in plain torch (differentiable; float64 parameters): [B, n_in] -> [B, n_out]."""
        return torch.nn.functional.linear(x, self.W64.to(x.dtype), None if self.b64 is None else self.b64.to(x.dtype))

    def forward_abs(self, x: torch.Tensor) -> torch.Tensor:
        """x |W|^T (no bias): [B, n_in] -> [B, n_out]."""
        p = self.params(x.dtype)
        return self._fwd(x, p.absW, torch.empty(0, dtype=x.dtype))

    def backward(self, lam: torch.Tensor, opts: BoundOptions | None = None) -> torch.Tensor:
        """lam: [R, n_out] -> lam W: [R, n_in] (``opts``: unused, as every affine primitive takes it)."""
        p = self.params(lam.dtype)
        out = torch.empty(lam.shape[0], self.n_in, dtype=lam.dtype)
        _C.dense_backward(lam, p.W, out)
        return out

    def sparse_weight(self) -> sp.csr_matrix:
        """W [n_out, n_in] as a float64 CSR matrix (exact)."""
        import scipy.sparse as sp

        return sp.csr_matrix(self.W64.numpy())
