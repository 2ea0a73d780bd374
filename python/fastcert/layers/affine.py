"""Affine layers of the IR: dense, 2-D convolution (as GEMMs via im2row/row2im), diagonal scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastcert._ext import _C
from fastcert.layers.base import Layer, np_view
from fastcert.rounding import eta, round_up, rounding_is_relative

# Workspace budget for the convolution kernels (elements); chunks of samples are processed in it.
_CONV_WORK_ELEMS = 1 << 22


@dataclass
class _Params:
    W: torch.Tensor
    absW: torch.Tensor
    bias: torch.Tensor  # flat [n_out] (empty when no bias)
    absbias: torch.Tensor
    rowabs: torch.Tensor  # flat [n_out]: >= the sum of |W| over each output's inputs (rounded up)
    rownorm: torch.Tensor  # flat [n_out]: >= the 2-norm of each output's weights (rounded up)
    np: tuple[np.ndarray, ...]  # zero-copy numpy views of (W, absW, bias, absbias, rowabs, rownorm)


class _AffineBase(Layer):
    is_affine = True

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, name: str) -> None:
        self.W64 = W.detach().to(torch.float64).contiguous().clone()
        self.b64 = None if b is None else b.detach().to(torch.float64).contiguous().clone()
        self.name = name
        self._cache: dict[torch.dtype, _Params] = {}

    def bias_flat64(self) -> torch.Tensor | None:
        return self.b64

    def params(self, dtype: torch.dtype) -> _Params:
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
            p = _Params(W, absW, bias, absb, rowabs, rownorm,
                        tuple(t.numpy() for t in (W, absW, bias, absb, rowabs, rownorm)))
            self._cache[dtype] = p
        return p

    def _row_sums(self, a64: torch.Tensor) -> torch.Tensor:
        """Flat [n_out] sums of the nonnegative weights a64 (shaped like W64) over each output's inputs."""
        return a64.reshape(a64.shape[0], -1).sum(1)

    @property
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


class Dense(_AffineBase):
    """``y = x W^T + b``; W: [n_out, n_in]."""

    kind = "dense"

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, in_shape: tuple[int, ...], name: str = "") -> None:
        super().__init__(W, b, name)
        self.in_shape = tuple(in_shape)
        self.out_shape = (int(W.shape[0]),)

    def _fwd(self, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], W.shape[0], dtype=x.dtype)
        _C.dense_forward(np_view(x), np_view(W), np_view(bias), np_view(out))
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

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        """lam: [R, n_out] -> lam W: [R, n_in]."""
        p = self.params(lam.dtype)
        out = torch.empty(lam.shape[0], self.n_in, dtype=lam.dtype)
        _C.dense_backward(np_view(lam), np_view(p.W), np_view(out))
        return out


class Conv2d(_AffineBase):
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

    def bias_flat64(self) -> torch.Tensor | None:
        if self.b64 is None:
            return None
        OC, OH, OW = self.out_shape
        return self.b64[:, None].expand(OC, OH * OW).reshape(-1).contiguous()

    def _row_sums(self, a64: torch.Tensor) -> torch.Tensor:
        # every output of channel oc sums at most the whole kernel of oc (fewer terms at the padding)
        OC, OH, OW = self.out_shape
        return a64.reshape(OC, -1).sum(1)[:, None].expand(OC, OH * OW).reshape(-1)

    def _work(self, dtype: torch.dtype, rows: int) -> torch.Tensor:
        OC, OH, OW = self.out_shape
        per = OH * OW * self.W64[0].numel()
        n = max(per, min(rows * per, max(_CONV_WORK_ELEMS, per)))
        return torch.empty(n, dtype=dtype)

    def _fwd(self, x: torch.Tensor, W: torch.Tensor, bias_c: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.n_out, dtype=x.dtype)
        _, H, Wd = self.in_shape
        work = self._work(x.dtype, x.shape[0])
        _C.conv_forward(np_view(x), np_view(W), np_view(bias_c), np_view(out), H, Wd, self.stride[0], self.stride[1],
                        self.padding[0], self.padding[1], np_view(work))
        return out

    def _bias_c(self, dtype: torch.dtype) -> torch.Tensor:
        """Per-channel bias [OC] in ``dtype`` (empty without a bias), converted once per dtype."""
        b = self._bias_c_cache.get(dtype)
        if b is None:
            self.params(dtype)  # checks that the parameters fit the dtype
            b = torch.empty(0, dtype=dtype) if self.b64 is None else self.b64.to(dtype).contiguous()
            self._bias_c_cache[dtype] = b
        return b

    def interval_step(self, l: torch.Tensor, u: torch.Tensor, gamma: float, tiny: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused interval step (``_C.interval_conv``): l, u: [B, C*H*W] -> (lo, hi, g): [B, OC*OH*OW],
        with ``lo <= W x + b <= hi`` for x in [l, u] and ``g >= |W| max(|l|,|u|) + |b|`` (see
        :func:`fastcert.layers.base.interval_affine`)."""
        dt = l.dtype
        p = self.params(dt)
        B = l.shape[0]
        lo = torch.empty(B, self.n_out, dtype=dt)
        hi = torch.empty(B, self.n_out, dtype=dt)
        g = torch.empty(B, self.n_out, dtype=dt)
        _, H, Wd = self.in_shape
        _C.interval_conv(np_view(l), np_view(u), p.np[0], p.np[1], np_view(self._bias_c(dt)), gamma, tiny,
                         lo.numpy(), hi.numpy(), g.numpy(), H, Wd, self.stride[0], self.stride[1], self.padding[0],
                         self.padding[1])
        return lo, hi, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C*H*W] -> [B, OC*OH*OW]."""
        return self._fwd(x, self.params(x.dtype).W, self._bias_c(x.dtype))

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same map in plain torch (differentiable): [B, C*H*W] -> [B, OC*OH*OW]."""
        y = torch.nn.functional.conv2d(x.reshape(x.shape[0], *self.in_shape), self.W64.to(x.dtype),
                                       None if self.b64 is None else self.b64.to(x.dtype), stride=self.stride,
                                       padding=self.padding)
        return y.reshape(x.shape[0], -1)

    def forward_abs(self, x: torch.Tensor) -> torch.Tensor:
        return self._fwd(x, self.params(x.dtype).absW, torch.empty(0, dtype=x.dtype))

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        """lam: [R, OC*OH*OW] -> conv^T(lam): [R, C*H*W]."""
        p = self.params(lam.dtype)
        out = torch.empty(lam.shape[0], self.n_in, dtype=lam.dtype)
        _, H, Wd = self.in_shape
        work = self._work(lam.dtype, lam.shape[0])
        _C.conv_backward(np_view(lam), np_view(p.W), np_view(out), H, Wd, self.stride[0], self.stride[1],
                         self.padding[0], self.padding[1], np_view(work))
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

    def describe(self) -> str:
        return (f"conv2d {tuple(self.W64.shape)} stride {self.stride} padding {self.padding} "
                f"{self.in_shape}->{self.out_shape}")


class Diag(_AffineBase):
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

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
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


def channel_expand(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-channel vector [C] -> flat [prod(shape)] (channel = first dim of ``shape``)."""
    C = shape[0]
    rest = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return v.reshape(C, 1).expand(C, rest).reshape(-1)


