"""Jacobian and Lipschitz bounds over an Lp ball (issue #13 point 2; Weng et al. ICML 2018, Zhang et al. AAAI
2019): element-wise bounds of the Jacobian of ``C f`` and, from them, local Lipschitz constants in the dual
norm.

- ``fastlip``: Fast-Lip's interval recursion from the output to the input,
  ``Y_L = C W_L``, ``Y_k = Y_{k+1} D_k W_k`` with ``D_k = diag(f'(z_k))`` enclosed by the derivative bounds
  of each activation on its pre-activation box (from the ``layer_method`` bound: CROWN by default, as the
  reference's ``--layerbndalg crown-adaptive``). Each step is a compiled kernel (``csrc/jac/jacobian.cpp``)
  with a rounding analysis, in float64: the bounds contain the exact real Jacobian of the network (float32
  weights are exact in float64).
- ``spectral``: the product of the layers' operator norms (a global constant, the reference's ``spectral``
  bound): exact induced norms for L-inf / L1, and for L2 a rigorous upper bound of each spectral norm by
  repeated squaring (``||W||_2^(2^(k+1)) <= ||(W^T W)^(2^k)||_F``, with the products' rounding errors
  carried), next to the power-iteration estimate it certifies.

- RecurJac (backward, the default, or ``direction="forward"``: the reference's ``--lipsdir``): see
  :func:`_recurjac_level` and :func:`_forward_levels`.

Covered: graphs of Linear, Conv2d, BatchNorm / Normalize, Flatten, residual Add / Sub and Concat nodes with
the activations ReLU, LeakyReLU (any slope), Hardtanh / ReLU6 / ClippedReLU, Sigmoid, Tanh, Arctan. A graph
runs as a chain of factors over a widened state (:func:`_linearize`: the tensors still needed later side by
side; a chain of layers stays one factor per layer), each layer unrolled into a dense matrix. Anything else is
refused naming the layer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastcert._ext import _C
from fastcert.algorithms.graph_bounds import graph_bounds
from fastcert.api import make_region, prepare, spec_matrix
from fastcert.checks import norm_key
from fastcert.errors import UnsupportedError
from fastcert.network import Network
from fastcert.options import BoundOptions
from fastcert.primitives.add import Add
from fastcert.primitives.concat import Concat
from fastcert.primitives.conv2d import Conv2d
from fastcert.primitives.diag import Diag
from fastcert.primitives.hardtanh import Hardtanh
from fastcert.primitives.leaky_relu import LeakyReLU
from fastcert.primitives.linear import Dense
from fastcert.primitives.relu import ReLU
from fastcert.primitives.sshape import ABS, SShaped
from fastcert.rounding import gamma_n
from fastcert.rounding import next_down as _down
from fastcert.rounding import next_up as _up

JAC_METHODS = ("recurjac", "fastlip")
DIRECTIONS = ("backward", "forward")
LIP_METHODS = ("recurjac", "fastlip", "spectral")
D = torch.float64
_INF = float("inf")




def derivative_bounds(prim: Any, l: torch.Tensor, u: torch.Tensor, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous bounds ``gl <= f'(z) <= gu`` for every z in [l, u] (and every element of the Clarke derivative
    at a kink), float64 [B, n] -> ([B, n], [B, n]). Only a LeakyReLU with a negative slope has gl < 0."""
    l, u = l.to(D), u.to(D)
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    if isinstance(prim, ReLU):
        return torch.where(l > 0, one, zero), torch.where(u < 0, zero, one)
    if isinstance(prim, LeakyReLU):
        a = float(prim.negative_slope)
        lo, hi = min(a, 1.0), max(a, 1.0)
        gl = torch.where(l > 0, one, torch.where(u < 0, a * one, lo * one))
        gu = torch.where(l > 0, one, torch.where(u < 0, a * one, hi * one))
        return gl, gu
    if isinstance(prim, Hardtanh):
        a, b = float(prim.min_val), float(prim.max_val)
        inside = (l > a) & (u < b)
        outside = (u < a) | (l > b)
        return torch.where(inside, one, zero), torch.where(outside, zero, one)
    if isinstance(prim, SShaped):
        # f' is even and decreasing in |z|: largest at the point of [l, u] nearest 0, smallest at the farthest
        near = torch.where((l <= 0) & (u >= 0), zero, torch.minimum(l.abs(), u.abs()))
        far = torch.maximum(l.abs(), u.abs())
        rel = 2 * prim.deriv_rel
        gu = _up(_up(prim.deriv(near) * (1 + rel)) + 2 * ABS)
        gl = _down(_down(prim.deriv(far) * (1 - rel)) - 2 * ABS).clamp_min(0)
        return gl, gu
    kind = prim.describe() if hasattr(prim, "describe") else type(prim).__name__
    raise UnsupportedError(f"{name}: Jacobian bounds do not cover {kind} (they cover ReLU, LeakyReLU, Hardtanh / "
                           f"ClippedReLU, Sigmoid, Tanh, Arctan)")


@dataclass(frozen=True)
class JacobianBounds:
    """Element-wise bounds of the Jacobian of ``C f`` w.r.t. the flattened input over the region:
    ``lower, upper: [B, S, n]`` float64 (``lower <= d(C f)_s / dx_i <= upper`` for every x' in the region)."""

    lower: torch.Tensor
    upper: torch.Tensor
    method: str
    norm: str
    time_s: float

    def magnitude(self) -> torch.Tensor:
        """[B, S, n] bounds of ``|d(C f)_s / dx_i|``."""
        return torch.maximum(self.lower.abs(), self.upper.abs())


@dataclass(frozen=True)
class _Step:
    """One factor of the Jacobian chain ``J = M_T ... M_1``: "dense" (``W [n_out, n_in]``, or ``[B, n_out, n_in]``
    for a per-sample specification), "diag" (a constant diagonal ``W [n]``) or "act" (``diag(f'(z))`` with the
    derivative bounds ``deriv[key]``)."""

    kind: str
    n_in: int
    n_out: int
    W: torch.Tensor | None = None
    key: int = 0

    def transposed(self) -> "_Step":
        W = None if self.W is None else (self.W.mT.contiguous() if self.kind == "dense" else self.W)
        return _Step(self.kind, self.n_out, self.n_in, W, self.key)


#: the largest block matrix a graph's node becomes (entries, float64): 2^26 = 512 MiB
_MAX_DENSE = 1 << 26
_ACTS = (ReLU, LeakyReLU, Hardtanh, SShaped)


def _size(g: Any, j: int) -> int:
    return int(math.prod(g.input_shape)) if j == 0 else int(math.prod(g.nodes[j].prim.out_shape))


def _local_matrix(g: Any, k: int) -> torch.Tensor:
    """The float64 matrix of affine node k: [n_out, sum of its inputs' sizes] (inputs in order)."""
    nd = g.nodes[k]
    p = nd.prim
    sizes = [_size(g, j) for j in nd.inputs]
    n_out = _size(g, k)
    if n_out * sum(sizes) > _MAX_DENSE:
        raise UnsupportedError(f"{nd.name}: Jacobian bounds unroll each layer into a dense matrix, and this one "
                               f"would be [{n_out}, {sum(sizes)}] (over {_MAX_DENSE} entries)")
    if isinstance(p, Dense):
        return p.W64
    if isinstance(p, Conv2d):
        return torch.from_numpy(p.sparse_weight().toarray())
    if isinstance(p, Diag):
        return torch.diag(p.W64.reshape(-1))
    if isinstance(p, Add):
        eye = torch.eye(n_out, dtype=D)
        return torch.cat([eye, p.sign * eye], 1)
    if isinstance(p, Concat):
        offs = [0]
        for n in sizes[:-1]:
            offs.append(offs[-1] + n)
        idx = torch.cat([(o + torch.arange(n)).reshape(sh) for o, n, sh in zip(offs, sizes, p.shapes)],
                        dim=p.dim).reshape(-1)
        A = torch.zeros(n_out, sum(sizes), dtype=D)
        A[torch.arange(n_out), idx] = 1.0
        return A
    kind = p.describe() if hasattr(p, "describe") else type(p).__name__
    raise UnsupportedError(f"{nd.name}: Jacobian bounds do not cover {kind} yet (they cover Linear, Conv2d, "
                           f"BatchNorm / Normalize, Flatten, residual additions, concatenation and ReLU, "
                           f"LeakyReLU, Hardtanh / ClippedReLU, Sigmoid, Tanh, Arctan)")


@dataclass
class _Chain:
    """A graph as a chain of factors over a widened state (the outputs still needed later, side by side):
    ``steps``, and for each activation factor its slots ``acts[key] = [(offset, node)]`` (the other entries
    of the state pass through with derivative 1)."""

    steps: list[_Step]
    acts: dict[int, list[tuple[int, int]]]


def _linearize(g: Any) -> _Chain:
    """The Jacobian of graph g as a chain of factors. A chain of layers stays one factor per layer (its own
    weights, no copies); a node whose input is still needed later, or that reads several tensors, becomes a
    block matrix over the state: identity rows for what passes through, the node's matrix for its output."""
    N = g.output
    last = {j: max((k for k in range(1, N + 1) if j in g.nodes[k].inputs), default=-1) for j in range(N + 1)}
    last[N] = N + 1
    live = [0]
    steps: list[_Step] = []
    acts: dict[int, list[tuple[int, int]]] = {}

    def offsets(order: list[int]) -> dict[int, int]:
        out, o = {}, 0
        for j in order:
            out[j] = o
            o += _size(g, j)
        return out

    for k in range(1, N + 1):
        nd = g.nodes[k]
        p = nd.prim
        ins = list(nd.inputs)
        width = sum(_size(g, j) for j in live)
        dies = [j for j in set(ins) if last[j] == k]
        act = isinstance(p, _ACTS)
        if not act and not isinstance(p, (Dense, Conv2d, Diag, Add, Concat)):
            _local_matrix(g, k)  # raises, naming the node
        if live == ins and len(ins) == 1 and dies:  # a chain step: the node's own factor
            n_in, n_out = _size(g, ins[0]), _size(g, k)
            if act:
                steps.append(_Step("act", n_in, n_out, key=len(steps)))
                acts[steps[-1].key] = [(0, k)]
            elif isinstance(p, Diag):
                steps.append(_Step("diag", n_in, n_out, p.W64.reshape(-1).contiguous()))
            elif not (isinstance(p, Concat) and len(ins) == 1):
                steps.append(_Step("dense", n_in, n_out, _local_matrix(g, k).contiguous()))
            live = [k]
            continue
        # the new state: what is still needed, an activation's output in its dying input's slot
        new = []
        for j in live:
            if last[j] > k:
                new.append(j)
            elif act and j == ins[0]:
                new.append(k)
        if k not in new:
            new.append(k)
        o_old, o_new = offsets(live), offsets(new)
        w_new = sum(_size(g, j) for j in new)
        M = torch.zeros(w_new, width, dtype=D)
        for j in new:
            n = _size(g, j)
            if j != k:
                M[o_new[j]:o_new[j] + n, o_old[j]:o_old[j] + n] = torch.eye(n, dtype=D)
            elif act:  # a copy of the input, the activation's factor follows
                M[o_new[k]:o_new[k] + n, o_old[ins[0]]:o_old[ins[0]] + n] = torch.eye(n, dtype=D)
            else:
                A = _local_matrix(g, k)
                c = 0
                for i in ins:
                    m = _size(g, i)
                    M[o_new[k]:o_new[k] + n, o_old[i]:o_old[i] + m] += A[:, c:c + m]
                    c += m
        if w_new * width > _MAX_DENSE:
            raise UnsupportedError(f"{nd.name}: Jacobian bounds carry every tensor still needed later side by side, "
                                   f"here a [{w_new}, {width}] block matrix (over {_MAX_DENSE} entries)")
        if not (w_new == width and torch.equal(M, torch.eye(width, dtype=D))):
            steps.append(_Step("dense", width, w_new, M))
        if act:
            steps.append(_Step("act", w_new, w_new, key=len(steps)))
            acts[steps[-1].key] = [(o_new[k], k)]
        live = new
    if live != [N]:  # only the output is left at the end
        raise AssertionError(live)
    return _Chain(steps, acts)


def _derivs(g: Any, ch: _Chain, boxes: list[Any]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Derivative bounds of every activation factor ([B, width]; 1 where the state passes through)."""
    out = {}
    for st in ch.steps:
        if st.kind != "act":
            continue
        gl = gu = None
        for off, k in ch.acts[st.key]:
            nd = g.nodes[k]
            box = boxes[nd.inputs[0]]
            dl, du = derivative_bounds(nd.prim, box.l, box.u, nd.name)
            if gl is None:
                B = dl.shape[0]
                gl, gu = torch.ones(B, st.n_in, dtype=D), torch.ones(B, st.n_in, dtype=D)
            gl[:, off:off + dl.shape[1]] = dl
            gu[:, off:off + du.shape[1]] = du
        out[st.key] = (gl.contiguous(), gu.contiguous())
    return out


def _dense_back(Yl: torch.Tensor, Yu: torch.Tensor, W: torch.Tensor, absW: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of Y W for Y in [Yl, Yu] ([..., m] -> [..., n]), W [m, n] exact."""
    lead, m = Yl.shape[:-1], Yl.shape[-1]
    n = W.shape[1]
    R = math.prod(lead)
    ol, ou = torch.empty(R, n, dtype=D), torch.empty(R, n, dtype=D)
    aW = W.abs().contiguous() if absW is None else absW
    _C.jac_dense_back(Yl.reshape(R, m).contiguous(), Yu.reshape(R, m).contiguous(), W.contiguous(), aW, ol, ou)
    return ol.reshape(*lead, n), ou.reshape(*lead, n)


def _spec64(C: Any, K: int, B: int) -> torch.Tensor:
    """The specification in float64 as [B, S, K] (identity when None; already checked by spec_matrix)."""
    C64 = torch.as_tensor(C).to(D) if C is not None else torch.eye(K, dtype=D)
    return (C64.unsqueeze(0).expand(B, *C64.shape) if C64.dim() == 2 else C64).contiguous()


def _back_step(st: _Step, Yl: torch.Tensor, Yu: torch.Tensor,
               deriv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast-Lip's interval step through one factor: bounds of Y M for Y in [Yl, Yu] ([B, S, n_out] ->
    [B, S, n_in])."""
    if st.kind == "dense":
        W = st.W  # Y M = Y W with W [n_out, n_in]
        if W.dim() == 2:
            return _dense_back(Yl, Yu, W.contiguous())
        pairs = [_dense_back(Yl[b], Yu[b], W[b].contiguous()) for b in range(Yl.shape[0])]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    B, S, n = Yl.shape
    if st.kind == "diag":
        ol, ou = torch.empty(B * S, n, dtype=D), torch.empty(B * S, n, dtype=D)
        _C.jac_diag_back(Yl.reshape(B * S, n).contiguous(), Yu.reshape(B * S, n).contiguous(), st.W, ol, ou)
        return ol.reshape(B, S, n), ou.reshape(B, S, n)
    gl, gu = deriv[st.key]
    ol, ou = torch.empty_like(Yl), torch.empty_like(Yl)
    _C.jac_act_back(Yl.contiguous(), Yu.contiguous(), gl.contiguous(), gu.contiguous(), ol, ou)
    return ol, ou


#: memory for one chunk of RecurJac's coefficient intervals (rows x [2n, width], four arrays)
_RJ_BYTES = 1 << 28


def _recurjac_level(steps: list[_Step], L: int, Y: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    deriv: dict[int, tuple[torch.Tensor, torch.Tensor]], C64: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """RecurJac's bounds of the gradient w.r.t. the input of factor L ([B, S, n_L]): every entry ``Y_L e_i``
    (and ``-Y_L e_i`` for the lower bound) carried up through factors L..T as a coefficient interval: dense
    factors multiply it (rigorous GEMMs), activation factors split it (``rj_act_split``: sign-known entries of
    the gradient above stay symbolic, the rest are bounded by intervals), and the top multiplies by C. The
    rows (sample, specification row) of one sample go through together, in chunks of bounded memory."""
    B, S, K = C64.shape
    T = len(steps)
    n = steps[L - 1].n_in
    eye = torch.eye(n, dtype=D)
    start = torch.cat([eye, -eye])  # [2n, n]: columns e_i for the upper bounds, -e_i for the lower ones
    width = max(st.n_out for st in steps[L - 1:])
    chunk = max(1, min(S, _RJ_BYTES // (4 * 8 * 2 * n * max(width, n))))
    lo, up = torch.empty(B, S, n, dtype=D), torch.empty(B, S, n, dtype=D)
    wt: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # shared weights, transposed once
    for w in range(L, T + 1):
        st = steps[w - 1]
        if st.kind == "dense" and st.W.dim() == 2:
            wt[w] = (st.W.T.contiguous(), st.W.T.abs().contiguous())
    for b in range(B):
        for s0 in range(0, S, chunk):
            R = min(chunk, S - s0)
            Cl = Cu = start.expand(R, 2 * n, n)
            acc = torch.zeros(R, 2 * n, dtype=D)
            for w in range(L, T + 1):
                st = steps[w - 1]
                m = Cl.shape[2]
                if st.kind == "dense":
                    Wt, aWt = wt[w] if w in wt else (st.W[b].T.contiguous(), st.W[b].T.abs().contiguous())
                    Cl, Cu = _dense_back(Cl, Cu, Wt, aWt)
                elif st.kind == "diag":
                    ol, ou = torch.empty(R * 2 * n, m, dtype=D), torch.empty(R * 2 * n, m, dtype=D)
                    _C.jac_diag_back(Cl.reshape(-1, m).contiguous(), Cu.reshape(-1, m).contiguous(), st.W, ol, ou)
                    Cl, Cu = ol.reshape(R, 2 * n, m), ou.reshape(R, 2 * n, m)
                else:
                    yl, yu = Y[w + 1]
                    gl, gu = deriv[st.key]
                    ol, ou = torch.empty(R, 2 * n, m, dtype=D), torch.empty(R, 2 * n, m, dtype=D)
                    _C.rj_act_split(Cl.contiguous(), Cu.contiguous(), yl[b, s0:s0 + R].contiguous(),
                                    yu[b, s0:s0 + R].contiguous(), gl[b][None].contiguous(),
                                    gu[b][None].contiguous(), R, ol, ou, acc)
                    Cl, Cu = ol, ou
            _C.rj_top(Cl.contiguous(), Cu.contiguous(), C64[b, s0:s0 + R].contiguous(), acc)
            up[b, s0:s0 + R] = acc[:, :n]
            lo[b, s0:s0 + R] = -acc[:, n:]
    return lo, up


def _levels(steps: list[_Step], C64: torch.Tensor, deriv: dict[int, tuple[torch.Tensor, torch.Tensor]],
            method: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Bounds of the gradient of ``C64 M_T ... M_1 x`` w.r.t. the input of every factor L (``Y[L]``,
    [B, S, n_L]; ``Y[T + 1] = C``), from the top down: Fast-Lip's interval recursion, and for "recurjac"
    each level after an activation (and the input's) also by :func:`_recurjac_level`, intersected with
    Fast-Lip's step from the level above and with Fast-Lip's own bound of that level (never looser, to the
    last bit)."""
    T = len(steps)
    fl: dict[int, tuple[torch.Tensor, torch.Tensor]] = {T + 1: (C64, C64)}
    for L in range(T, 0, -1):
        fl[L] = _back_step(steps[L - 1], *fl[L + 1], deriv)
    if method == "fastlip":
        return fl
    Y = dict(fl)
    for L in range(T, 0, -1):
        Yl, Yu = _back_step(steps[L - 1], *Y[L + 1], deriv)
        Yl, Yu = torch.maximum(Yl, fl[L][0]), torch.minimum(Yu, fl[L][1])
        if L == 1 or steps[L - 2].kind == "act":
            rl, ru = _recurjac_level(steps, L, Y, deriv, C64)
            Yl, Yu = torch.maximum(Yl, rl), torch.minimum(Yu, ru)
        Y[L] = (Yl, Yu)
    return Y


def _forward_levels(steps: list[_Step], C64: torch.Tensor, deriv: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``C64 M_T ... M_1`` ([B, S, n_1]) computed from the input up (the reference's
    ``--lipsdir +1``): the levels bound the Jacobian of every layer w.r.t. the input, ``M_L ... M_1``, and
    RecurJac splits by the sign of the Jacobian *below* each activation. It is the backward recursion on the
    transposed chain ``M_1^T ... M_T^T C^T`` with the identity as specification (one row per input)."""
    B = C64.shape[0]
    t = [st.transposed() for st in reversed(steps + [_Step("dense", C64.shape[2], C64.shape[1], C64)])]
    n = steps[0].n_in if steps else C64.shape[2]
    Yl, Yu = _levels(t, torch.eye(n, dtype=D).expand(B, n, n).contiguous(), deriv, method)[1]
    return Yl.mT.contiguous(), Yu.mT.contiguous()


def jacobian_bounds(model: nn.Module | Network, x: Any, eps: Any, norm: str = "inf", method: str = "recurjac",
                    C: Any = None, x_min: Any = None, x_max: Any = None, layer_method: str = "crown",
                    options: BoundOptions | None = None, direction: str = "backward", shift: int = 1
                    ) -> JacobianBounds:
    """Element-wise bounds of the Jacobian of ``C f`` over the ``norm`` ball of radius eps around each sample.

    x: [B, *input_shape]; eps: scalar or [B]; C: [S, K] or [B, S, K] (default identity: the logits'
    Jacobian). ``layer_method``: the bound of the pre-activation boxes ("crown", "fastlin", "ibp", ...).
    ``direction``: the order of the recursion (the reference's ``--lipsdir``): "backward" (-1, from the output
    down, the default) or "forward" (+1, from the input up: RecurJac then splits by the sign of each layer's
    Jacobian w.r.t. the input; one row per input, costly for wide inputs); ``shift`` (``--lipsshift``, forward
    only): 1 starts the forward recursion after the first activation (its Jacobian w.r.t. that layer) and
    closes the first layers with Fast-Lip's step, 0 starts at the input. Both directions are intersected with
    backward Fast-Lip's bound, so neither is looser than it.
    Returns :class:`JacobianBounds` ([B, S, n_in] float64)."""
    t0 = time.perf_counter()
    if method not in JAC_METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; choose one of {JAC_METHODS}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS} (the reference's --lipsdir -1 / +1), got "
                         f"{direction!r}")
    if isinstance(shift, bool) or shift not in (0, 1):
        raise ValueError(f"shift must be 0 or 1 (the reference's --lipsshift), got {shift!r}")
    if layer_method == "alpha-crown":
        raise ValueError("layer_method='alpha-crown' is not wired into the Jacobian bounds yet; use 'crown'")
    nk = norm_key(norm)
    net, xt, K = prepare(model, x, layer_method)
    shape = tuple(xt.shape[1:])
    g = net.op_graph_for(shape)
    ch = _linearize(g)
    prob = make_region(xt.detach(), eps.detach() if isinstance(eps, torch.Tensor) else eps, nk, x_min, x_max)
    Ct, _ = spec_matrix(C, xt, K)
    boxes: list[Any] = []
    with torch.no_grad():
        graph_bounds(g, prob, Ct, layer_method, opts=options, boxes_out=boxes)
    C64 = _spec64(C, K, xt.shape[0])
    deriv = _derivs(g, ch, boxes)
    steps = ch.steps
    Y = _levels(steps, C64, deriv, method if direction == "backward" else "fastlip")
    if direction == "forward":
        acts = [k for k, st in enumerate(steps, 1) if st.kind == "act"]
        a = acts[0] if (shift and acts) else 0  # the recursion's base: the output of factor a
        Fl, Fu = _forward_levels(steps[a:], C64, deriv, method)
        Zl, Zu = torch.maximum(Fl, Y[a + 1][0]), torch.minimum(Fu, Y[a + 1][1])
        for L in range(a, 0, -1):  # the first factors by Fast-Lip's step, each level kept no looser
            Zl, Zu = _back_step(steps[L - 1], Zl, Zu, deriv)
            Zl, Zu = torch.maximum(Zl, Y[L][0]), torch.minimum(Zu, Y[L][1])
        Y = {1: (Zl, Zu)}
    for L, (Yl, Yu) in Y.items():
        if not (bool(torch.isfinite(Yl).all()) and bool(torch.isfinite(Yu).all())):
            raise ValueError(f"floating-point overflow in the Jacobian bound (factor {L} of {len(steps)} from the "
                             f"input): the weights are too large for float64")
    Yl, Yu = Y[1]
    return JacobianBounds(Yl, Yu, method, nk, time.perf_counter() - t0)


def dual_norm_upper(M: torch.Tensor, norm: str) -> torch.Tensor:
    """An upper bound of the dual norm (of the input norm ``norm``) of the nonnegative float64 rows of
    ``M [..., n]``: L1 for "inf", L2 for "2", L-inf for "1"."""
    n = M.shape[-1]
    if n == 0:
        return M.new_zeros(M.shape[:-1])
    if norm == "1":
        return M.amax(-1)
    g = gamma_n(n, D)
    slack = 2.0 * (n + 2) * 2.0**-1074
    if norm == "inf":
        return _up(_up(M.sum(-1) * (1 + 2 * g)) + slack)
    ss = _up(_up((M * M).sum(-1) * (1 + 2 * g)) + 2 * slack)
    return _up(_up(torch.sqrt(ss)) * (1 + 2.0**-50))


def _op_norm_upper(W: torch.Tensor, norm: str, squarings: int = 8) -> tuple[float, float]:
    """(rigorous upper bound, estimate) of the operator norm of W [m, n] from the ``norm`` space to itself:
    max row sum (L-inf), max column sum (L1), spectral norm (L2: repeated squaring, power-iteration
    estimate)."""
    A = W.abs()
    if norm == "inf":
        v = float(dual_norm_upper(A, "inf").max()) if A.numel() else 0.0
        return v, v
    if norm == "1":
        v = float(dual_norm_upper(A.T, "inf").max()) if A.numel() else 0.0
        return v, v
    return spectral_norm_upper(W, squarings)


def spectral_norm_upper(W: torch.Tensor, squarings: int = 8, power_iters: int = 50) -> tuple[float, float]:
    """A rigorous upper bound of ``||W||_2`` and a power-iteration estimate (a lower bound up to rounding).

    With ``A_0 = W^T W`` (or ``W W^T``, the smaller) and ``A_j = A_{j-1}^2``, ``||W||_2^(2^(k+1)) = ||A_k||_2 <=
    ||A_k||_F``. Each product is a float64 GEMM with error at most ``gamma_d |A||A|`` entrywise, whose
    Frobenius norm is at most ``gamma_d ||A||_F^2``; the errors are carried through the squarings
    (``||X^2 - Y^2||_F <= e (2 ||Y||_F + e)`` for ``||X - Y||_F <= e``) and every norm is rounded up. Each
    ``A_j`` is scaled by a power of two (exact) to stay in range. The bound exceeds the true norm by at most
    a factor ``d^(1 / 2^(k+1))`` (the rank's share of the Frobenius norm): 1.027 for d = 1024 and k = 8."""
    if W.numel() == 0:
        return 0.0, 0.0
    W = W.to(D)
    X = W.T if W.shape[0] >= W.shape[1] else W  # [d, N] with d the smaller dimension
    d, N = X.shape
    est = _power_iteration(X, power_iters)
    A = X @ X.T
    def fro(M: torch.Tensor) -> float:  # ||M||_F rounded up; the absolute term covers squares lost to underflow
        return float(_up(_up(torch.linalg.vector_norm(M) * (1 + 2 * gamma_n(M.numel(), D))) +
                         math.sqrt(M.numel()) * 2.0**-537))

    wf = fro(X)
    e = gamma_n(N, D) * wf * wf * (1 + 1e-15) + 2.0 * (N + 2) * 2.0**-1074 * d
    log2_scale = 0.0  # A_j (exact) = 2^log2_scale * (computed + error), tracked in log2
    for _ in range(squarings):
        a = fro(A)
        if a == 0.0:
            return 0.0, est
        s = math.floor(math.log2(a))
        A = torch.ldexp(A, torch.tensor(-s))  # exact scaling by 2^-s
        a, e = a * 2.0**-s, e * 2.0**-s
        log2_scale += s
        A2 = A @ A
        e = (e * (2 * a + e) + gamma_n(d, D) * a * a + 2.0 * (d + 2) * 2.0**-1074 * d) * (1 + 1e-12)
        A = A2
        log2_scale *= 2
    a = fro(A)
    total = (a + e) * (1 + 1e-12)
    k = squarings
    # ||W||_2^(2^(k+1)) <= 2^log2_scale * total
    log2_bound = (log2_scale + math.log2(total)) / 2.0 ** (k + 1)
    bound = 2.0 ** log2_bound * (1 + 1e-12)
    return max(bound, est), est


def _power_iteration(X: torch.Tensor, iters: int) -> float:
    v = torch.ones(X.shape[1], dtype=D)
    for _ in range(iters):
        w = X.T @ (X @ v)
        nv = torch.linalg.vector_norm(w)
        if float(nv) == 0.0:
            return 0.0
        v = w / nv
    return float(torch.linalg.vector_norm(X @ v))


def _act_lipschitz(p: Any) -> float:
    if isinstance(p, (ReLU, Hardtanh)):
        return 1.0
    if isinstance(p, LeakyReLU):
        return max(1.0, abs(float(p.negative_slope)))
    if isinstance(p, SShaped):
        return float(p.lipschitz) * (1 + 1e-12)
    raise AssertionError(type(p))


@dataclass(frozen=True)
class LipschitzResult:
    """Local (or, for ``spectral``, global) Lipschitz constant bounds of ``C f`` w.r.t. the input norm, in
    the dual norm of the gradient: ``constant [B, S]`` float64 upper bounds; ``estimate`` (spectral, L2
    only: the power-iteration product, not a bound) else None."""

    constant: torch.Tensor
    method: str
    norm: str
    time_s: float
    estimate: torch.Tensor | None = None


def lipschitz(model: nn.Module | Network, x: Any, eps: Any, norm: str = "inf", method: str = "recurjac",
              C: Any = None, x_min: Any = None, x_max: Any = None, layer_method: str = "crown",
              squarings: int = 8, direction: str = "backward", shift: int = 1) -> LipschitzResult:
    """A bound on the Lipschitz constant of each row of ``C f`` over the ``norm`` ball of radius eps around
    each sample: ``|g(x') - g(x'')| <= L ||x' - x''||_norm`` for x', x'' in the ball (a large eps gives a global
    constant; ``spectral`` is global for every eps). ``direction`` / ``shift``: the Jacobian recursion's order
    (:func:`jacobian_bounds`). Returns :class:`LipschitzResult` with ``constant [B, S]``."""
    t0 = time.perf_counter()
    if method not in LIP_METHODS:
        raise ValueError(f"unknown Lipschitz method {method!r}; choose one of {LIP_METHODS}")
    nk = norm_key(norm)
    if method in JAC_METHODS:
        jb = jacobian_bounds(model, x, eps, nk, method, C, x_min, x_max, layer_method, direction=direction,
                             shift=shift)
        return LipschitzResult(dual_norm_upper(jb.magnitude(), nk), method, nk, time.perf_counter() - t0)
    net, xt, K = prepare(model, x, "ibp")
    g = net.op_graph_for(tuple(xt.shape[1:]))
    ch = _linearize(g)
    C64 = _spec64(C, K, xt.shape[0])
    # the first factor: the rows of C W_L (bounded like Fast-Lip's first step), in the dual norm
    rest = list(ch.steps)
    if rest and rest[-1].kind == "dense":
        W = rest.pop().W
        Yl, Yu = _dense_back(C64.contiguous(), C64.contiguous(), W)
        first = dual_norm_upper(torch.maximum(Yl.abs(), Yu.abs()), nk)
    else:
        first = dual_norm_upper(C64.abs(), nk)
    bound, est = 1.0, 1.0
    for st in rest:
        if st.kind == "dense":
            b, e = _op_norm_upper(st.W, nk, squarings)
        elif st.kind == "diag":
            b = e = float(st.W.abs().max()) if st.W.numel() else 0.0
        else:  # each activation's own constant; 1 for the entries of the state that pass through
            (off, k), = ch.acts[st.key]
            b = e = _act_lipschitz(g.nodes[k].prim)
            if _size(g, k) < st.n_in:
                b = e = max(b, 1.0)
        bound, est = bound * b * (1 + 2.0**-50), est * e
    const = _up(first * bound * (1 + 2.0**-50))
    return LipschitzResult(const, method, nk, time.perf_counter() - t0,
                           estimate=(first * est) if nk == "2" else None)


@dataclass(frozen=True)
class LipschitzCurve:
    """Lipschitz bounds over a log-spaced range of radii (the reference's ``lipschitz`` task):
    ``eps [E]`` float64 and ``constant [E, B, S]``."""

    eps: torch.Tensor
    constant: torch.Tensor
    method: str
    norm: str
    time_s: float


def lipschitz_curve(model: nn.Module | Network, x: Any, norm: str = "inf", method: str = "recurjac", C: Any = None,
                    log_start: float = -3.0, log_end: float = 0.0, num: int = 20, x_min: Any = None,
                    x_max: Any = None, layer_method: str = "crown", progress: bool = False,
                    direction: str = "backward", shift: int = 1) -> LipschitzCurve:
    """:func:`lipschitz` at ``num`` radii ``10^log_start .. 10^log_end`` (log-spaced): the local constant grows
    with eps and saturates at a global one once every neuron's box covers all of its states."""
    t0 = time.perf_counter()
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if not (math.isfinite(log_start) and math.isfinite(log_end) and log_start <= log_end):
        raise ValueError(f"need finite log_start <= log_end, got {log_start}, {log_end}")
    eps = torch.logspace(log_start, log_end, num, dtype=D)
    out = []
    it = range(num)
    if progress:
        import sys

        from tqdm import tqdm

        it = tqdm(it, desc=f"lipschitz {method}", unit="eps", file=sys.stderr, leave=False)
    for i in it:
        out.append(lipschitz(model, x, float(eps[i]), norm, method, C, x_min, x_max, layer_method,
                             direction=direction, shift=shift).constant)
    return LipschitzCurve(eps, torch.stack(out), method, norm_key(norm), time.perf_counter() - t0)


@dataclass(frozen=True)
class LandscapeResult:
    """R_max of each sample and row of ``C f`` (the reference's ``landscape`` task): the largest radius found at
    which some entry of the gradient keeps its sign over the whole ball (so the function has no stationary
    point there), ``radius [B, S]``, and the smallest radius tried at which no entry provably did (``upper``,
    inf if none failed)."""

    radius: torch.Tensor
    upper: torch.Tensor
    method: str
    norm: str
    steps: int
    time_s: float


def landscape(model: nn.Module | Network, x: Any, norm: str = "inf", method: str = "recurjac", C: Any = None,
              steps: int = 15, eps_init: float = 0.005, x_min: Any = None, x_max: Any = None,
              layer_method: str = "crown", direction: str = "backward", shift: int = 1) -> LandscapeResult:
    """R_max by the reference's search (double from ``eps_init`` until a step fails, then bisect; ``steps`` calls
    of :func:`jacobian_bounds`), per sample and row of C (default: the logits). A step succeeds for a row when
    some entry of its Jacobian bounds has ``lower > 0`` or ``upper < 0``."""
    t0 = time.perf_counter()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(eps_init, bool) or not isinstance(eps_init, (int, float)) or not 0 < eps_init < _INF:
        raise ValueError(f"eps_init must be a finite number > 0, got {eps_init!r}")
    nk = norm_key(norm)
    net, xt, K = prepare(model, x, layer_method)
    B = xt.shape[0]
    Ct, _ = spec_matrix(C, xt, K)
    C64 = _spec64(C, K, B)
    S = Ct.shape[1]
    # one search per (sample, row): the rows as samples of their own
    xs = xt.detach().repeat_interleave(S, 0)
    Cs = C64.reshape(B * S, 1, K)
    lo = torch.zeros(B * S, dtype=D)
    hi = torch.full((B * S,), _INF, dtype=D)
    eps = torch.full((B * S,), float(eps_init), dtype=D)
    for _ in range(steps):
        jb = jacobian_bounds(net, xs, eps, nk, method, Cs, x_min, x_max, layer_method, direction=direction,
                             shift=shift)
        ok = ((jb.lower > 0) | (jb.upper < 0)).flatten(1).any(1)
        lo = torch.where(ok, eps, lo)
        hi = torch.where(ok, hi, torch.minimum(hi, eps))
        eps = torch.where(torch.isinf(hi), 2 * lo, (lo + hi) / 2)
    return LandscapeResult(lo.reshape(B, S), hi.reshape(B, S), method, nk, steps, time.perf_counter() - t0)


__all__ = ["JacobianBounds", "LandscapeResult", "LipschitzCurve", "LipschitzResult", "derivative_bounds",
           "dual_norm_upper", "jacobian_bounds", "landscape", "lipschitz", "lipschitz_curve", "spectral_norm_upper"]
