"""2-D max pooling (``nn.MaxPool2d`` / ``F.max_pool2d`` / ONNX ``MaxPool``), dilation 1.

Interval: ``[max l, max u]`` over each window (exact: a max is a comparison). Relaxation (as auto_LiRPA's
``BoundMaxPool``, generalised to overlapping windows and padding): the lower line of output ``o`` is the
input ``x_a`` with the largest lower bound in its window (``max >= x_a``); the upper line is ``x_a`` too
when ``x_a`` dominates (``l_a >= u_j`` for every other ``j`` of the window, so ``max == x_a``), else the
constant ``max_j u_j``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastcert.layers.base import Box, Layer
from fastcert.primitives.mip_rows import ABSENT, INF, RowBuilder
from fastcert.rounding import gamma_n


@dataclass(frozen=True)
class PoolRelaxation:
    """idx: [B, n_out] int64, the flat input index of each window's lower line; dom: [B, n_out] bool,
    whether the upper line is that input too; U: [B, n_out] the constant upper bound otherwise."""

    idx: torch.Tensor
    dom: torch.Tensor
    U: torch.Tensor


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class MaxPool2d(Layer):
    """Max pooling of a [C, H, W] input with kernel ``k``, stride ``s``, zero-free padding ``p`` (torch
    pads with -inf: padding never wins)."""

    kind = "maxpool"
    is_affine = False

    def __init__(self, in_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], name: str = "") -> None:
        if len(in_shape) != 3:
            raise ValueError(f"{name}: MaxPool2d needs a [C, H, W] input, got per-sample shape {tuple(in_shape)}")
        self.k, self.s, self.p = _pair(kernel), _pair(stride), _pair(padding)
        if min(self.k) < 1 or min(self.s) < 1 or min(self.p) < 0 or self.p[0] > self.k[0] // 2 or \
                self.p[1] > self.k[1] // 2:
            raise ValueError(f"{name}: MaxPool2d kernel {self.k}, stride {self.s}, padding {self.p}: torch needs kernel "
                             f"and stride >= 1 and 0 <= padding <= kernel // 2")
        C, H, W = (int(d) for d in in_shape)
        OH = (H + 2 * self.p[0] - self.k[0]) // self.s[0] + 1
        OW = (W + 2 * self.p[1] - self.k[1]) // self.s[1] + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"{name}: MaxPool2d kernel {self.k} does not fit the padded input {tuple(in_shape)}")
        self.in_shape = (C, H, W)
        self.out_shape = (C, OH, OW)
        self.name = name
        # the most windows one input lies in (the length of the sums of the transpose)
        self.overlap = math.ceil(self.k[0] / self.s[0]) * math.ceil(self.k[1] / self.s[1])

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        y = F.max_pool2d(x.reshape(B, *self.in_shape), self.k, self.s, self.p)
        return y.reshape(B, -1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C*H*W] -> [B, C*OH*OW]."""
        return self._pool(x)

    def interval(self, box: Box) -> Box:
        return Box(self._pool(box.l), self._pool(box.u))

    def _windows(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """[B, C*H*W] -> [B, C, kh*kw, OH*OW] windows (``fill`` in the padding)."""
        B = t.shape[0]
        C, H, W = self.in_shape
        x = t.reshape(B, C, H, W)
        if self.p != (0, 0):
            x = F.pad(x, (self.p[1], self.p[1], self.p[0], self.p[0]), value=fill)
        cols = F.unfold(x, self.k, stride=self.s)  # [B, C*kh*kw, L]
        return cols.view(B, C, self.k[0] * self.k[1], -1)

    def relax(self, box: Box) -> PoolRelaxation:
        B = box.l.shape[0]
        C, H, W = self.in_shape
        _, OH, OW = self.out_shape
        lw = self._windows(box.l, -torch.inf)
        uw = self._windows(box.u, -torch.inf)
        lmax, a = lw.max(dim=2, keepdim=True)  # the window position of the largest lower bound
        U = uw.max(dim=2).values
        others = uw.scatter(2, a, -torch.inf).max(dim=2).values
        dom = lmax.squeeze(2) >= others
        a = a.squeeze(2)  # [B, C, L]
        oy = torch.arange(OH).repeat_interleave(OW) * self.s[0] - self.p[0]
        ox = torch.arange(OW).repeat(OH) * self.s[1] - self.p[1]
        y, x = oy + a // self.k[1], ox + a % self.k[1]
        idx = torch.arange(C).view(1, C, 1) * (H * W) + y * W + x
        return PoolRelaxation(idx.reshape(B, -1).contiguous(), dom.reshape(B, -1).contiguous(),
                              U.reshape(B, -1).contiguous())

    def describe(self) -> str:
        return f"maxpool k{self.k} s{self.s} p{self.p} {self.in_shape}->{self.out_shape}"

    # ---------------------------------------------------------------- MIP encoding (see mip_rows.py)

    def mip_bounds(self, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Exact: ``[max l, max u]`` per window."""
        l, u = ins[0]
        return (self._pool(torch.from_numpy(l)[None])[0].numpy(), self._pool(torch.from_numpy(u)[None])[0].numpy())

    def mip_need(self, need: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        pl = pool_plan(self, *ins[0])
        m = np.zeros(self.n_in, dtype=bool)
        m[pl.win[pl.cand & need[:, None]]] = True
        return [m]

    def mip_relevant(self, l: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The possible maxima of the undecided windows."""
        pl = pool_plan(self, l, u)
        m = np.zeros(self.n_in, dtype=bool)
        m[pl.win[pl.cand & ~pl.dom[:, None]]] = True
        return m

    def mip_encode(self, bld: RowBuilder, hs: list[np.ndarray], ins: list[tuple[np.ndarray, np.ndarray]],
                   out: tuple[np.ndarray, np.ndarray], keep: np.ndarray, mode: str
                   ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Per window with input bounds ``[l_j, u_j]``: ``a`` the input with the largest lower bound
        ``L = l_a``; inputs with ``u_j <= L`` can never exceed ``x_a`` and are dropped; when only ``a`` is left
        the output reuses ``x_a``'s column; otherwise (the exact encoding of a max) ``y >= x_j`` and, per
        remaining ``j``, a selector ``d_j`` (binary in "mip" mode, in ``[0, 1]`` in "lp" mode) with
        ``sum d_j = 1`` and ``y <= x_j + M_j (1 - d_j)``, ``M_j >= max_{i != j} u_i - l_j`` (rounded up), plus
        the valid cut ``y - sum_j x_j <= L - sum_j l_j`` (rounded up) and ``L <= y <= max u``. Returns the
        columns and, in "mip" mode, ``(pairs [k, 2] of (output, flat input index), selector columns)``."""
        h, (l, u) = hs[0], ins[0]
        pl = pool_plan(self, l, u)
        rows = np.arange(len(keep))
        y = np.full(len(keep), ABSENT, dtype=np.int64)
        d = keep & pl.dom
        y[d] = h[pl.win[rows[d], pl.a[d]]]
        o = np.nonzero(keep & ~pl.dom)[0]
        if len(o) == 0:
            return y, None
        if (h[pl.win[o][pl.cand[o]]] == ABSENT).any():  # pragma: no cover - internal
            raise RuntimeError(f"internal error: {self.name} reads a neuron the encoding dropped")
        k = len(o)
        yc = bld.cols(pl.L[o], pl.U[o])
        y[o] = yc
        wo, jo = np.nonzero(pl.cand[o])  # (window among o, position): the candidate pairs
        inp = pl.win[o[wo], jo]
        xc = h[inp]
        m = len(wo)
        ar = np.arange(m)
        bld.rows([(ar, yc[wo], np.ones(m)), (ar, xc, -np.ones(m))], np.zeros(m), np.full(m, INF))  # y >= x_j
        dc = bld.cols(np.zeros(m), np.ones(m), integer=(mode == "mip"))
        M = pl.M[o[wo], jo]
        # y - x_j + M_j d_j <= M_j: d_j = 1 gives y <= x_j; d_j = 0 gives y - x_j <= max_{i != j} u_i - l_j
        bld.rows([(ar, yc[wo], np.ones(m)), (ar, xc, -np.ones(m)), (ar, dc, M)], np.full(m, -INF), M)
        bld.rows([(wo, dc, np.ones(m))], np.ones(k), np.ones(k))  # sum_j d_j = 1
        # y - sum_j x_j <= L - sum_j l_j  (y = x_i for some i: y - L <= x_i - l_i <= sum_j (x_j - l_j))
        lj = l[inp]
        s_l = np.bincount(wo, weights=lj, minlength=k)
        mag = np.abs(pl.L[o]) + np.bincount(wo, weights=np.abs(lj), minlength=k)
        cnt = np.bincount(wo, minlength=k)
        rhs = pl.L[o] - s_l + 2.0 * gamma_n(int(cnt.max()) + 1, torch.float64) * mag + 1e-300
        bld.rows([(np.arange(k), yc, np.ones(k)), (wo, xc, -np.ones(m))], np.full(k, -INF), rhs)
        return y, ((np.stack([o[wo], inp], axis=1), dc) if mode == "mip" else None)

    def mip_sensitivity(self, s: np.ndarray, ins: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[float, list[np.ndarray]]:
        """1-Lipschitz, plus the big-M of an undecided window whose selectors may be fractional."""
        pl = pool_plan(self, *ins[0])
        und = ~pl.dom
        s_in = np.zeros(self.n_in)
        np.add.at(s_in, pl.win[pl.cand], np.broadcast_to(s[:, None], pl.cand.shape)[pl.cand])
        return float(s.sum()) + float(s[und] @ pl.M[und].max(axis=1, initial=0.0)), [s_in]


@dataclass(frozen=True)
class PoolPlan:
    """The MIP plan of a max pool on input bounds ``(l, u)``: ``win`` [n_out, K] flat input indices of
    each window (-1 in the padding), ``a`` [n_out] the window position with the largest lower bound,
    ``dom`` [n_out] whether it dominates (the output is ``x_a``), ``cand`` [n_out, K] the inputs that can be
    the maximum (only ``a`` where dominated), ``L`` / ``U`` [n_out] the output's bounds, ``M`` [n_out, K]
    the big-M ``max_{i != j, cand} u_i - l_j``, rounded up."""

    win: np.ndarray
    a: np.ndarray
    dom: np.ndarray
    cand: np.ndarray
    L: np.ndarray
    U: np.ndarray
    M: np.ndarray


def pool_windows(p: MaxPool2d) -> np.ndarray:
    """[n_out, kh*kw] flat input indices of each output's window (-1 in the padding), output order C, OH, OW."""
    C, H, W = p.in_shape
    idx = torch.arange(C * H * W, dtype=torch.float64).reshape(1, C, H, W)
    if p.p != (0, 0):
        idx = F.pad(idx, (p.p[1], p.p[1], p.p[0], p.p[0]), value=-1.0)
    cols = F.unfold(idx, p.k, stride=p.s)  # [1, C*kh*kw, L]
    K = p.k[0] * p.k[1]
    return cols.view(C, K, -1).permute(0, 2, 1).reshape(-1, K).numpy().astype(np.int64)


def pool_plan(p: MaxPool2d, l: np.ndarray, u: np.ndarray) -> PoolPlan:
    """See :class:`PoolPlan`; l, u: [n_in] bounds of the pool's input."""
    win = pool_windows(p)
    pad = win < 0
    lw = np.where(pad, -INF, l[np.maximum(win, 0)])
    uw = np.where(pad, -INF, u[np.maximum(win, 0)])
    a = lw.argmax(axis=1)
    rows = np.arange(win.shape[0])
    L = lw[rows, a]
    others = uw.copy()
    others[rows, a] = -INF
    dom = L >= others.max(axis=1)
    cand = ((uw > L[:, None]) & ~pad) & ~dom[:, None]
    cand[rows, a] = True
    U = np.where(cand, uw, -INF).max(axis=1)
    cu = np.where(cand, uw, -INF)  # the largest candidate u other than j: top two per window
    top = cu.argmax(axis=1)
    first = cu[rows, top]
    cu2 = cu.copy()
    cu2[rows, top] = -INF
    second = cu2.max(axis=1)
    other_max = np.where(np.arange(win.shape[1])[None, :] == top[:, None], second[:, None], first[:, None])
    M = np.where(cand & ~dom[:, None], np.nextafter(other_max - lw, INF), 0.0)
    return PoolPlan(win, a, dom, cand, L, U, M)
