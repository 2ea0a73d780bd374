"""The 2-D convolution primitive (``nn.Conv2d``, ONNX ``Conv``; groups 1), as GEMMs via im2col / col2im."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastcert._ext import _C
from fastcert.options import DEFAULT_OPTIONS, BoundOptions
from fastcert.primitives.affine import AffineBase

if TYPE_CHECKING:
    import scipy.sparse as sp


class Conv2d(AffineBase):
    """2-D convolution (groups=1); W: [OC, C, KH, KW]; in_shape (C, H, W)."""

    kind = "conv2d"

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                 in_shape: tuple[int, int, int], name: str = "") -> None:
        super().__init__(W, b, name)
        C, H, Wd = in_shape
        if W.shape[1] != C:
            raise ValueError(f"{name}: Conv2d expects {W.shape[1]} input channels but its input has {C} (shape {in_shape})")
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        OH = (H + 2 * self.padding[0] - W.shape[2]) // self.stride[0] + 1
        OW = (Wd + 2 * self.padding[1] - W.shape[3]) // self.stride[1] + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"{name}: kernel {tuple(W.shape[2:])} does not fit the padded input {in_shape}")
        self.in_shape = (int(C), int(H), int(Wd))
        self.out_shape = (int(W.shape[0]), int(OH), int(OW))
        self._bias_c_cache: dict[torch.dtype, torch.Tensor] = {}
        self._wsum_cache: dict[torch.dtype, torch.Tensor] = {}
        self._wsum_finite: dict[torch.dtype, bool] = {}  # whether kernel_sums(dtype) is finite

    def bias_flat64(self) -> torch.Tensor | None:
        if self.b64 is None:
            return None
        OC, OH, OW = self.out_shape
        return self.b64[:, None].expand(OC, OH * OW).reshape(-1).contiguous()

    def _row_sums(self, a64: torch.Tensor) -> torch.Tensor:
        # every output of channel oc sums at most the whole kernel of oc (fewer terms at the padding)
        OC, OH, OW = self.out_shape
        return a64.reshape(OC, -1).sum(1)[:, None].expand(OC, OH * OW).reshape(-1)

    def _work(self, dtype: torch.dtype, rows: int, opts: BoundOptions | None) -> torch.Tensor:
        """The im2col workspace: whole samples, as many as ``opts.conv_work_elems`` holds (at least one)."""
        OC, OH, OW = self.out_shape
        per = OH * OW * self.W64[0].numel()
        budget = (DEFAULT_OPTIONS if opts is None else opts).conv_work_elems
        n = max(per, min(rows * per, budget))
        return torch.empty(n, dtype=dtype)

    def _fwd(self, x: torch.Tensor, W: torch.Tensor, bias_c: torch.Tensor, opts: BoundOptions | None = None
             ) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.n_out, dtype=x.dtype)
        _, H, Wd = self.in_shape
        work = self._work(x.dtype, x.shape[0], opts)
        _C.conv_forward(x, W, bias_c, out, H, Wd, self.stride[0], self.stride[1],
                        self.padding[0], self.padding[1], work)
        return out

    def channel_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """Per-channel bias [OC] in ``dtype`` (empty without a bias), converted once per dtype."""
        b = self._bias_c_cache.get(dtype)
        if b is None:
            self.params(dtype)  # checks that the parameters fit the dtype
            b = torch.empty(0, dtype=dtype) if self.b64 is None else self.b64.to(dtype).contiguous()
            self._bias_c_cache[dtype] = b
        return b

    def finite_kernel_sums(self, dtype: torch.dtype) -> torch.Tensor | None:
        """:meth:`kernel_sums` where every sum is finite in ``dtype``, else None (the window-max magnitude
        would then compute inf * 0 = NaN where a window's max is zero: callers take the exact product)."""
        S = self.kernel_sums(dtype)
        return S if self._wsum_finite[dtype] else None

    def kernel_sums(self, dtype: torch.dtype) -> torch.Tensor:
        """[OC, C] in ``dtype``: ``S[o, ch] >= sum_{kh,kw} max(|W64|, |W_dtype|)[o, ch, kh, kw]`` (summed in
        float64, widened by that sum's error bound, rounded up; as ``rowabs``), computed once per dtype."""
        S = self._wsum_cache.get(dtype)
        if S is None:
            from fastcert.rounding import round_up

            a64 = torch.maximum(self.W64.abs(), self.params(dtype).absW.double())
            OC, C = a64.shape[:2]
            infl = 1 + 4 * torch.finfo(torch.float64).eps * (a64[0, 0].numel() + 2)
            S = round_up(a64.reshape(OC, C, -1).sum(2) * infl, dtype)
            self._wsum_cache[dtype] = S
            self._wsum_finite[dtype] = bool(torch.isfinite(S).all())
        return S

    def interval_step(self, l: torch.Tensor, u: torch.Tensor, gamma: float, tiny: float, exact: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused interval step (``_C.interval_conv``): l, u: [B, C*H*W] -> (lo, hi, g): [B, OC*OH*OW],
        with ``lo <= W x + b <= hi`` for x in [l, u] and ``g >= |W| max(|l|,|u|) + |b|`` (see
        :func:`fastcert.layers.base.interval_affine`). ``exact``: ``g`` from the product ``|W| h``; else
        from the window-max magnitude (``|W| r`` + kernel sums times the window max of ``|c|``: one product
        fewer, a looser ``g``; docs/architecture.md, "The window-max magnitude")."""
        dt = l.dtype
        p = self.params(dt)
        S = None if exact else self.finite_kernel_sums(dt)
        exact = S is None  # also where a kernel sum is beyond the dtype's range
        B = l.shape[0]
        lo = torch.empty(B, self.n_out, dtype=dt)
        hi = torch.empty(B, self.n_out, dtype=dt)
        g = torch.empty(B, self.n_out, dtype=dt)
        _, H, Wd = self.in_shape
        _C.interval_conv(l, u, p.W, p.absW, self.channel_bias(dt), gamma, tiny,
                         lo, hi, g, H, Wd, self.stride[0], self.stride[1], self.padding[0],
                         self.padding[1], 0, torch.empty(0, dtype=dt) if exact else S)
        return lo, hi, g

    def forward(self, x: torch.Tensor, opts: BoundOptions | None = None) -> torch.Tensor:
        """x: [B, C*H*W] -> [B, OC*OH*OW] (workspace sized by ``opts.conv_work_elems``)."""
        return self._fwd(x, self.params(x.dtype).W, self.channel_bias(x.dtype), opts)

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same map in plain torch (differentiable): [B, C*H*W] -> [B, OC*OH*OW]."""
        y = torch.nn.functional.conv2d(x.reshape(x.shape[0], *self.in_shape), self.W64.to(x.dtype),
                                       None if self.b64 is None else self.b64.to(x.dtype), stride=self.stride,
                                       padding=self.padding)
        return y.reshape(x.shape[0], -1)

    def forward_abs(self, x: torch.Tensor, opts: BoundOptions | None = None) -> torch.Tensor:
        """x |W| (no bias): [B, C*H*W] -> [B, OC*OH*OW]."""
        return self._fwd(x, self.params(x.dtype).absW, torch.empty(0, dtype=x.dtype), opts)

    def backward(self, lam: torch.Tensor, opts: BoundOptions | None = None) -> torch.Tensor:
        """lam: [R, OC*OH*OW] -> conv^T(lam): [R, C*H*W] (workspace sized by ``opts.conv_work_elems``)."""
        p = self.params(lam.dtype)
        out = torch.empty(lam.shape[0], self.n_in, dtype=lam.dtype)
        _, H, Wd = self.in_shape
        work = self._work(lam.dtype, lam.shape[0], opts)
        _C.conv_backward(lam, p.W, out, H, Wd, self.stride[0], self.stride[1],
                         self.padding[0], self.padding[1], work)
        return out

    @property
    def back_len(self) -> int:
        # GEMM over OC, then col2im adds at most KH*KW such values per input entry
        return int(self.W64.shape[0] * self.W64.shape[2] * self.W64.shape[3]) + 2

    @property
    def back_depth(self) -> int:
        """A nested sum, not one long one: the GEMM sums OC products per column entry (any order: a
        product meets at most OC - 1 additions), then col2im adds each input entry's at most KH*KW
        column entries one after the other onto a zeroed image (csrc/conv/conv.cpp,
        ``col2im_add_table``: at most KH*KW - 1 more additions). With the product and the parameter
        rounding: OC + KH*KW roundings (+1 margin), not OC*KH*KW (docs/architecture.md)."""
        return int(self.W64.shape[0] + self.W64.shape[2] * self.W64.shape[3]) + 1

    def sparse_weight(self) -> sp.csr_matrix:
        """The convolution as a float64 CSR matrix [OC*OH*OW, C*H*W], expanded by convolving basis vectors
        (each entry a single product with 1.0: exact copies of the weights)."""
        import scipy.sparse as sp

        n_in = self.n_in
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *self.in_shape)
        cols = []
        for s in range(0, n_in, 512):
            out = torch.nn.functional.conv2d(eye[s:s + 512], self.W64, None, stride=self.stride, padding=self.padding)
            cols.append(sp.csr_matrix(out.reshape(out.shape[0], -1).numpy()))
        return sp.vstack(cols).T.tocsr()

    def describe(self) -> str:
        return (f"conv2d {tuple(self.W64.shape)} stride {self.stride} padding {self.padding} "
                f"{self.in_shape}->{self.out_shape}")
