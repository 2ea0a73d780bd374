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

A network is covered when it is a chain of Linear / Conv-free layers: Linear, BatchNorm / Normalize,
Flatten and the activations ReLU, LeakyReLU (any slope), Hardtanh / ReLU6 / ClippedReLU, Sigmoid, Tanh,
Arctan. Anything else is refused naming the layer.
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


def _chain(g: Any) -> list[Any]:
    """The nodes 1..output of a chain graph, refusing what the recursion does not cover, by name."""
    nodes = g.nodes[1:g.output + 1]
    for k, nd in enumerate(nodes, start=1):
        if tuple(nd.inputs) != (k - 1,):
            raise UnsupportedError(f"{nd.name}: Jacobian bounds cover chains of layers so far (this node reads "
                                   f"{tuple(nd.inputs)}: a residual or concatenation)")
        p = nd.prim
        if not isinstance(p, (Dense, Diag, ReLU, LeakyReLU, Hardtanh, SShaped)):
            kind = p.describe() if hasattr(p, "describe") else type(p).__name__
            raise UnsupportedError(f"{nd.name}: Jacobian bounds do not cover {kind} yet (they cover Linear, "
                                   f"BatchNorm / Normalize, Flatten and ReLU, LeakyReLU, Hardtanh / ClippedReLU, "
                                   f"Sigmoid, Tanh, Arctan)")
    return nodes


def _dense_back(Yl: torch.Tensor, Yu: torch.Tensor, W: torch.Tensor, absW: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    B, S, m = Yl.shape
    n = W.shape[1]
    ol, ou = torch.empty(B * S, n, dtype=D), torch.empty(B * S, n, dtype=D)
    _C.jac_dense_back(Yl.reshape(B * S, m).contiguous(), Yu.reshape(B * S, m).contiguous(), W, absW, ol, ou)
    return ol.reshape(B, S, n), ou.reshape(B, S, n)


def _spec64(C: Any, K: int, B: int) -> torch.Tensor:
    """The specification in float64 as [B, S, K] (identity when None; already checked by spec_matrix)."""
    C64 = torch.as_tensor(C).to(D) if C is not None else torch.eye(K, dtype=D)
    return (C64.unsqueeze(0).expand(B, *C64.shape) if C64.dim() == 2 else C64).contiguous()


def _fastlip_step(nd: Any, Yl: torch.Tensor, Yu: torch.Tensor, der: tuple[torch.Tensor, torch.Tensor] | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast-Lip's interval step through one node: bounds of Y M_node for Y in [Yl, Yu] ([B, S, n_out] ->
    [B, S, n_in])."""
    p = nd.prim
    if isinstance(p, Dense):
        W = p.W64.contiguous()
        return _dense_back(Yl, Yu, W, W.abs().contiguous())
    B, S, n = Yl.shape
    if isinstance(p, Diag):
        ol, ou = torch.empty(B * S, n, dtype=D), torch.empty(B * S, n, dtype=D)
        _C.jac_diag_back(Yl.reshape(B * S, n).contiguous(), Yu.reshape(B * S, n).contiguous(),
                         p.W64.reshape(-1).contiguous(), ol, ou)
        return ol.reshape(B, S, n), ou.reshape(B, S, n)
    assert der is not None
    ol, ou = torch.empty_like(Yl), torch.empty_like(Yl)
    _C.jac_act_back(Yl.contiguous(), Yu.contiguous(), der[0].contiguous(), der[1].contiguous(), ol, ou)
    return ol, ou


def _recurjac_level(nodes: list[Any], L: int, Y: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    deriv: dict[int, tuple[torch.Tensor, torch.Tensor]], C64: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """RecurJac's bounds of the gradient w.r.t. node L's input ([B, S, n_L]): every entry ``Y_L e_i`` (and
    ``-Y_L e_i`` for the lower bound) carried up through nodes L..T as a coefficient interval: linear nodes
    multiply it (rigorous GEMMs), activation nodes split it (``rj_act_split``: sign-known entries of the
    gradient above stay symbolic, the rest are bounded by intervals), and the top multiplies by C. One row of
    (sample, specification) at a time."""
    B, S, K = C64.shape
    T = len(nodes)
    n = _in_dim(nodes[L - 1])
    eye = torch.eye(n, dtype=D)
    start = torch.cat([eye, -eye])  # [2n, n]: columns e_i for the upper bounds, -e_i for the lower ones
    lo, up = torch.empty(B, S, n, dtype=D), torch.empty(B, S, n, dtype=D)
    wt = {w: (nodes[w - 1].prim.W64.T.contiguous(), nodes[w - 1].prim.W64.T.abs().contiguous())
          for w in range(L, T + 1) if isinstance(nodes[w - 1].prim, Dense)}  # once, not per row
    for b in range(B):
        for s in range(S):
            Cl = Cu = start
            acc = torch.zeros(1, 2 * n, dtype=D)
            for w in range(L, T + 1):
                nd = nodes[w - 1]
                p = nd.prim
                if isinstance(p, Dense):
                    Wt, aWt = wt[w]
                    ol, ou = torch.empty(2 * n, Wt.shape[1], dtype=D), torch.empty(2 * n, Wt.shape[1], dtype=D)
                    _C.jac_dense_back(Cl.contiguous(), Cu.contiguous(), Wt, aWt, ol, ou)
                    Cl, Cu = ol, ou
                elif isinstance(p, Diag):
                    ol, ou = torch.empty_like(Cl), torch.empty_like(Cl)
                    _C.jac_diag_back(Cl.contiguous(), Cu.contiguous(), p.W64.reshape(-1).contiguous(), ol, ou)
                    Cl, Cu = ol, ou
                else:
                    yl, yu = Y[w + 1]
                    gl, gu = deriv[w]
                    m = Cl.shape[1]
                    ol, ou = torch.empty(1, 2 * n, m, dtype=D), torch.empty(1, 2 * n, m, dtype=D)
                    _C.rj_act_split(Cl.reshape(1, 2 * n, m).contiguous(), Cu.reshape(1, 2 * n, m).contiguous(),
                                    yl[b, s][None].contiguous(), yu[b, s][None].contiguous(),
                                    gl[b][None].contiguous(), gu[b][None].contiguous(), 1, ol, ou, acc)
                    Cl, Cu = ol[0], ou[0]
            _C.rj_top(Cl.reshape(1, 2 * n, -1).contiguous(), Cu.reshape(1, 2 * n, -1).contiguous(),
                      C64[b, s][None].contiguous(), acc)
            up[b, s] = acc[0, :n]
            lo[b, s] = -acc[0, n:]
    return lo, up


def _in_dim(nd: Any) -> int:
    p = nd.prim
    if isinstance(p, Dense):
        return int(p.W64.shape[1])
    return int(math.prod(p.in_shape))


def jacobian_bounds(model: nn.Module | Network, x: Any, eps: Any, norm: str = "inf", method: str = "recurjac",
                    C: Any = None, x_min: Any = None, x_max: Any = None, layer_method: str = "crown",
                    options: BoundOptions | None = None) -> JacobianBounds:
    """Element-wise bounds of the Jacobian of ``C f`` over the ``norm`` ball of radius eps around each sample.

    x: [B, *input_shape]; eps: scalar or [B]; C: [S, K] or [B, S, K] (default identity: the logits'
    Jacobian). ``layer_method``: the bound of the pre-activation boxes ("crown", "fastlin", "ibp", ...).
    Returns :class:`JacobianBounds` ([B, S, n_in] float64)."""
    t0 = time.perf_counter()
    if method not in JAC_METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; choose one of {JAC_METHODS}")
    if layer_method == "alpha-crown":
        raise ValueError("layer_method='alpha-crown' is not wired into the Jacobian bounds yet; use 'crown'")
    nk = norm_key(norm)
    net, xt, K = prepare(model, x, layer_method)
    shape = tuple(xt.shape[1:])
    g = net.op_graph_for(shape)
    nodes = _chain(g)
    prob = make_region(xt.detach(), eps.detach() if isinstance(eps, torch.Tensor) else eps, nk, x_min, x_max)
    Ct, _ = spec_matrix(C, xt, K)
    boxes: list[Any] = []
    with torch.no_grad():
        graph_bounds(g, prob, Ct, layer_method, opts=options, boxes_out=boxes)
    C64 = _spec64(C, K, xt.shape[0])
    deriv = {pos: derivative_bounds(nd.prim, boxes[nd.inputs[0]].l, boxes[nd.inputs[0]].u, nd.name)
             for pos, nd in enumerate(nodes, 1) if not isinstance(nd.prim, (Dense, Diag))}
    T = len(nodes)
    # Fast-Lip: Y[L] bounds the gradient w.r.t. node L's input, [B, S, n]
    fl: dict[int, tuple[torch.Tensor, torch.Tensor]] = {T + 1: (C64, C64)}
    for L in range(T, 0, -1):
        fl[L] = _fastlip_step(nodes[L - 1], *fl[L + 1], deriv.get(L))
    Y = dict(fl)
    if method == "recurjac":  # every level intersected with Fast-Lip's: never looser, to the last bit
        for L in range(T, 0, -1):
            Yl, Yu = _fastlip_step(nodes[L - 1], *Y[L + 1], deriv.get(L))
            Yl, Yu = torch.maximum(Yl, fl[L][0]), torch.minimum(Yu, fl[L][1])
            if L == 1 or L - 1 in deriv:
                rl, ru = _recurjac_level(nodes, L, Y, deriv, C64)
                Yl, Yu = torch.maximum(Yl, rl), torch.minimum(Yu, ru)
            Y[L] = (Yl, Yu)
    for L in range(T, 0, -1):
        Yl, Yu = Y[L]
        if not (bool(torch.isfinite(Yl).all()) and bool(torch.isfinite(Yu).all())):
            raise ValueError(f"floating-point overflow in the Jacobian bound at {nodes[L - 1].name}: the weights are "
                             f"too large for float64")
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
              squarings: int = 8) -> LipschitzResult:
    """A bound on the Lipschitz constant of each row of ``C f`` over the ``norm`` ball of radius eps around
    each sample: ``|g(x') - g(x'')| <= L ||x' - x''||_norm`` for x', x'' in the ball (a large eps gives a global
    constant; ``spectral`` is global for every eps). Returns :class:`LipschitzResult` with ``constant [B, S]``."""
    t0 = time.perf_counter()
    if method not in LIP_METHODS:
        raise ValueError(f"unknown Lipschitz method {method!r}; choose one of {LIP_METHODS}")
    nk = norm_key(norm)
    if method in JAC_METHODS:
        jb = jacobian_bounds(model, x, eps, nk, method, C, x_min, x_max, layer_method)
        return LipschitzResult(dual_norm_upper(jb.magnitude(), nk), method, nk, time.perf_counter() - t0)
    net, xt, K = prepare(model, x, "ibp")
    g = net.op_graph_for(tuple(xt.shape[1:]))
    nodes = _chain(g)
    C64 = _spec64(C, K, xt.shape[0])
    # the first factor: the rows of C W_L (bounded like Fast-Lip's first step), in the dual norm
    last = nodes[-1]
    if isinstance(last.prim, Dense):
        W = last.prim.W64.contiguous()
        Yl, Yu = _dense_back(C64.contiguous(), C64.contiguous(), W, W.abs().contiguous())
        first = dual_norm_upper(torch.maximum(Yl.abs(), Yu.abs()), nk)
        rest = nodes[:-1]
    else:
        first = dual_norm_upper(C64.abs(), nk)
        rest = nodes
    bound, est = 1.0, 1.0
    for nd in rest:
        p = nd.prim
        if isinstance(p, Dense):
            b, e = _op_norm_upper(p.W64, nk, squarings)
        elif isinstance(p, Diag):
            b = e = float(p.W64.abs().max()) if p.W64.numel() else 0.0
        else:
            b = e = _act_lipschitz(p)
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
                    x_max: Any = None, layer_method: str = "crown", progress: bool = False) -> LipschitzCurve:
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
        out.append(lipschitz(model, x, float(eps[i]), norm, method, C, x_min, x_max, layer_method).constant)
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
              layer_method: str = "crown") -> LandscapeResult:
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
        jb = jacobian_bounds(net, xs, eps, nk, method, Cs, x_min, x_max, layer_method)
        ok = ((jb.lower > 0) | (jb.upper < 0)).flatten(1).any(1)
        lo = torch.where(ok, eps, lo)
        hi = torch.where(ok, hi, torch.minimum(hi, eps))
        eps = torch.where(torch.isinf(hi), 2 * lo, (lo + hi) / 2)
    return LandscapeResult(lo.reshape(B, S), hi.reshape(B, S), method, nk, steps, time.perf_counter() - t0)


__all__ = ["JacobianBounds", "LandscapeResult", "LipschitzCurve", "LipschitzResult", "derivative_bounds",
           "dual_norm_upper", "jacobian_bounds", "landscape", "lipschitz", "lipschitz_curve", "spectral_norm_upper"]
