"""The elementwise affine primitive ``y = x * s + t`` (a per-channel normalization, or a BatchNorm that could
not be folded into a neighbouring layer). Elementwise, so it runs in torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastcert.options import BoundOptions
from fastcert.primitives.affine import AffineBase

if TYPE_CHECKING:
    import scipy.sparse as sp


class Diag(AffineBase):
    """Elementwise affine ``y = x * s + t`` (a per-channel normalization or BatchNorm that could not
    be folded into a neighbouring layer). s, t: flat [n]. Elementwise, so it runs in torch."""

    kind = "diag"

    def _row_sums(self, a64: torch.Tensor) -> torch.Tensor:
        return a64.reshape(-1)

    def __init__(self, scale_flat: torch.Tensor, shift_flat: torch.Tensor, shape: tuple[int, ...], name: str = "") -> None:
        super().__init__(scale_flat.reshape(-1), shift_flat.reshape(-1), name)
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params(x.dtype)
        return torch.addcmul(p.bias, x, p.W)

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.b64 is not None
        return torch.addcmul(self.b64.to(x.dtype), x, self.W64.to(x.dtype))

    def forward_abs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.params(x.dtype).absW

    def backward(self, lam: torch.Tensor, opts: BoundOptions | None = None) -> torch.Tensor:
        return (lam * self.params(lam.dtype).W).contiguous()

    @property
    def fan_in(self) -> int:
        return 4

    @property
    def back_len(self) -> int:
        return 2

    @property
    def back_depth(self) -> int:
        return 2

    def sparse_weight(self) -> sp.csr_matrix:
        """diag(s) [n, n] as a float64 CSR matrix (exact)."""
        import scipy.sparse as sp

        return sp.diags(self.W64.numpy().reshape(-1)).tocsr()
