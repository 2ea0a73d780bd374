"""Exact evaluation of small torch networks: rational arithmetic (``fractions.Fraction``) for
piecewise-linear ones, 80-digit ``mpmath`` where tanh / sigmoid / arctan / softplus / ELU / BatchNorm (an
irrational square root) appear. Every float is taken as the exact rational it denotes."""

from __future__ import annotations

from fractions import Fraction

import mpmath
import torch
from torch import nn

import fastcert

mpmath.mp.dps = 80


def _modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [m for c in model for m in _modules(c)]
    return [model]


def needs_mp(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Tanh, nn.Sigmoid, fastcert.nn.Arctan, nn.Softplus, nn.ELU,
                              nn.modules.batchnorm._BatchNorm))
               for m in _modules(model))


def exact_num(v: float, mp: bool):
    f = Fraction(v)  # the exact rational a float denotes
    return mpmath.mpf(f.numerator) / f.denominator if mp else f


def _vals(t: torch.Tensor, mp: bool) -> list:
    return [exact_num(v, mp) for v in t.double().flatten().tolist()]


def _conv(x: list, shape: tuple, W: torch.Tensor, b: list | None, stride: tuple, pad: tuple, mp: bool):
    C, H, Wd = shape
    OC, _, KH, KW = W.shape
    w = _vals(W, mp)
    OH = (H + 2 * pad[0] - KH) // stride[0] + 1
    OW = (Wd + 2 * pad[1] - KW) // stride[1] + 1
    out = []
    for oc in range(OC):
        for oy in range(OH):
            for ox in range(OW):
                acc = b[oc] if b is not None else 0
                for c in range(C):
                    for ky in range(KH):
                        iy = oy * stride[0] - pad[0] + ky
                        if not 0 <= iy < H:
                            continue
                        for kx in range(KW):
                            ix = ox * stride[1] - pad[1] + kx
                            if 0 <= ix < Wd:
                                acc += w[((oc * C + c) * KH + ky) * KW + kx] * x[(c * H + iy) * Wd + ix]
                out.append(acc)
    return out, (OC, OH, OW)


def exact_forward(model: nn.Module, x: torch.Tensor, in_shape: tuple[int, ...], mp: bool) -> list:
    """The model's output at the point ``x`` [n], in exact (Fraction) or 80-digit (mpmath) arithmetic."""
    h = _vals(x, mp)
    shape = tuple(in_shape)
    for m in _modules(model):
        if isinstance(m, nn.Linear):
            W = m.weight.detach()
            w = [_vals(row, mp) for row in W]
            b = _vals(m.bias.detach(), mp) if m.bias is not None else [0] * W.shape[0]
            h = [sum((wi * hi for wi, hi in zip(row, h)), b[k]) for k, row in enumerate(w)]
            shape = (W.shape[0],)
        elif isinstance(m, nn.Conv2d):
            b = _vals(m.bias.detach(), mp) if m.bias is not None else None
            h, shape = _conv(h, shape, m.weight.detach(), b, m.stride, m.padding, mp)
        elif isinstance(m, nn.AvgPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
            p = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2
            C = shape[0]
            W = torch.zeros(C, C, *k, dtype=torch.float64)
            W[torch.arange(C), torch.arange(C)] = 1.0
            h, shape = _conv(h, shape, W, None, s, p, mp)
            div = Fraction(m.divisor_override or k[0] * k[1])
            h = [v / (mpmath.mpf(div.numerator) if mp else div) for v in h]
        elif isinstance(m, fastcert.Normalize):
            C = shape[0]
            per = len(h) // C
            mean, std = _vals(m.mean, mp), _vals(m.std, mp)
            h = [(v - mean[i // per]) / std[i // per] for i, v in enumerate(h)]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            C = shape[0]
            per = len(h) // C
            mu, var = _vals(m.running_mean, mp), _vals(m.running_var, mp)
            g, beta = _vals(m.weight.detach(), mp), _vals(m.bias.detach(), mp)
            epsv = exact_num(m.eps, mp)
            h = [(v - mu[i // per]) / mpmath.sqrt(var[i // per] + epsv) * g[i // per] + beta[i // per]
                 for i, v in enumerate(h)]
        elif isinstance(m, nn.ReLU):
            h = [v if v > 0 else 0 * v for v in h]
        elif isinstance(m, nn.LeakyReLU):
            a = exact_num(m.negative_slope, mp)
            h = [v if v > 0 else a * v for v in h]
        elif isinstance(m, nn.Tanh):
            h = [mpmath.tanh(v) for v in h]
        elif isinstance(m, nn.Sigmoid):
            h = [1 / (1 + mpmath.exp(-v)) for v in h]
        elif isinstance(m, fastcert.nn.Arctan):
            h = [mpmath.atan(v) for v in h]
        elif isinstance(m, nn.Softplus):  # torch's: x where beta x > threshold (exactly, here)
            beta, thr = exact_num(m.beta, mp), exact_num(m.threshold, mp)
            h = [v if beta * v > thr else mpmath.log1p(mpmath.exp(beta * v)) / beta for v in h]
        elif isinstance(m, nn.ELU):
            a = exact_num(m.alpha, mp)
            h = [v if v > 0 else a * mpmath.expm1(v) for v in h]
        elif isinstance(m, nn.Hardtanh):  # ReLU6 too
            lo_, hi_ = exact_num(m.min_val, mp), exact_num(m.max_val, mp)
            h = [lo_ if v < lo_ else hi_ if v > hi_ else v for v in h]
        elif isinstance(m, nn.Flatten):
            shape = (len(h),)
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            pass
        else:  # pragma: no cover
            raise AssertionError(f"exact_forward: no exact evaluation of {type(m).__name__}")
    return h


def exact_jacobian(model: nn.Module, x: torch.Tensor, in_shape: tuple[int, ...]) -> tuple[list, list]:
    """The model's output and its Jacobian w.r.t. the flattened input at the point ``x`` [n], in 80-digit mpmath
    (forward mode): (out [K], J [K][n]). Kinks take torch's one-sided choice (ReLU'(0) = 0, LeakyReLU'(0) = a,
    Hardtanh' = 0 at its ends): an element of the Clarke derivative, which every Jacobian bound must contain.
    Covers Linear, Normalize, BatchNorm, Flatten / Identity / Dropout and ReLU, LeakyReLU, Hardtanh, Tanh,
    Sigmoid, Arctan."""
    h = _vals(x, True)
    n = len(h)
    one, zero = mpmath.mpf(1), mpmath.mpf(0)
    J = [[one if i == j else zero for j in range(n)] for i in range(n)]
    shape = tuple(in_shape)

    def scale(rows: list, d: list) -> list:
        return [[d[i] * v for v in row] for i, row in enumerate(rows)]

    for m in _modules(model):
        if isinstance(m, nn.Linear):
            w = [_vals(row, True) for row in m.weight.detach()]
            b = _vals(m.bias.detach(), True) if m.bias is not None else [zero] * len(w)
            h = [sum((wi * hi for wi, hi in zip(row, h)), b[k]) for k, row in enumerate(w)]
            J = [[sum((row[i] * J[i][j] for i in range(len(row))), zero) for j in range(n)] for row in w]
            shape = (len(w),)
        elif isinstance(m, (fastcert.Normalize, nn.modules.batchnorm._BatchNorm)):
            C = shape[0]
            per = len(h) // C
            if isinstance(m, fastcert.Normalize):
                mean, std = _vals(m.mean, True), _vals(m.std, True)
                s = [1 / std[i // per] for i in range(len(h))]
                t = [-mean[i // per] / std[i // per] for i in range(len(h))]
            else:
                mu, var = _vals(m.running_mean, True), _vals(m.running_var, True)
                g, beta = _vals(m.weight.detach(), True), _vals(m.bias.detach(), True)
                epsv = exact_num(m.eps, True)
                s = [g[i // per] / mpmath.sqrt(var[i // per] + epsv) for i in range(len(h))]
                t = [beta[i // per] - mu[i // per] * s[i] for i in range(len(h))]
            h = [v * s[i] + t[i] for i, v in enumerate(h)]
            J = scale(J, s)
        elif isinstance(m, nn.ReLU):
            d = [one if v > 0 else zero for v in h]
            h = [v if v > 0 else zero for v in h]
            J = scale(J, d)
        elif isinstance(m, nn.LeakyReLU):
            a = exact_num(m.negative_slope, True)
            d = [one if v > 0 else a for v in h]
            h = [v if v > 0 else a * v for v in h]
            J = scale(J, d)
        elif isinstance(m, nn.Hardtanh):
            lo_, hi_ = exact_num(m.min_val, True), exact_num(m.max_val, True)
            d = [one if lo_ < v < hi_ else zero for v in h]
            h = [lo_ if v < lo_ else hi_ if v > hi_ else v for v in h]
            J = scale(J, d)
        elif isinstance(m, nn.Tanh):  # sech^2 z = 4 e / (1 + e)^2 with e = exp(-2|z|): no cancellation
            J = scale(J, [4 * e / (1 + e) ** 2 for e in (mpmath.exp(-2 * abs(v)) for v in h)])
            h = [mpmath.tanh(v) for v in h]
        elif isinstance(m, nn.Sigmoid):  # s(z) s(-z) = e / (1 + e)^2 with e = exp(-|z|)
            J = scale(J, [e / (1 + e) ** 2 for e in (mpmath.exp(-abs(v)) for v in h)])
            h = [1 / (1 + mpmath.exp(-v)) for v in h]
        elif isinstance(m, fastcert.nn.Arctan):
            J = scale(J, [1 / (1 + v * v) for v in h])
            h = [mpmath.atan(v) for v in h]
        elif isinstance(m, nn.Flatten):
            shape = (len(h),)
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            pass
        else:  # pragma: no cover
            raise AssertionError(f"exact_jacobian: no exact Jacobian of {type(m).__name__}")
    return h, J


def exact_graph_jacobian(g, x: torch.Tensor) -> tuple[list, list]:
    """The output and Jacobian (80-digit mpmath, forward mode) of fastcert's op graph ``g`` at ``x`` [n]: its
    affine nodes as their float64 matrices (``fastcert.jacobian._local_matrix``: exact copies of the weights,
    so callers check the exact output against torch's to validate them) plus biases, and ReLU / LeakyReLU /
    Hardtanh / Tanh / Sigmoid / Arctan with torch's one-sided derivative at kinks, as :func:`exact_jacobian`."""
    from fastcert.jacobian import _local_matrix

    one, zero = mpmath.mpf(1), mpmath.mpf(0)
    h0 = _vals(x, True)
    n = len(h0)
    vals = {0: h0}
    jac = {0: [[one if i == j else zero for j in range(n)] for i in range(n)]}
    for k in range(1, g.output + 1):
        nd = g.nodes[k]
        p = nd.prim
        kind = type(p).__name__
        if kind in ("ReLU", "LeakyReLU", "Hardtanh", "Tanh", "Sigmoid", "Arctan"):
            h, J = vals[nd.inputs[0]], jac[nd.inputs[0]]
            if kind == "ReLU":
                d = [one if v > 0 else zero for v in h]
                out = [v if v > 0 else zero for v in h]
            elif kind == "LeakyReLU":
                a = exact_num(float(p.negative_slope), True)
                d = [one if v > 0 else a for v in h]
                out = [v if v > 0 else a * v for v in h]
            elif kind == "Hardtanh":
                lo_, hi_ = mpmath.mpf(float(p.min_val)), mpmath.mpf(float(p.max_val))  # exact, +-inf kept
                d = [one if lo_ < v < hi_ else zero for v in h]
                out = [lo_ if v < lo_ else hi_ if v > hi_ else v for v in h]
            elif kind == "Tanh":
                d = [4 * e / (1 + e) ** 2 for e in (mpmath.exp(-2 * abs(v)) for v in h)]
                out = [mpmath.tanh(v) for v in h]
            elif kind == "Sigmoid":
                d = [e / (1 + e) ** 2 for e in (mpmath.exp(-abs(v)) for v in h)]
                out = [1 / (1 + mpmath.exp(-v)) for v in h]
            else:
                d = [1 / (1 + v * v) for v in h]
                out = [mpmath.atan(v) for v in h]
            vals[k], jac[k] = out, [[d[i] * v for v in row] for i, row in enumerate(J)]
            continue
        A = [_vals(row, True) for row in _local_matrix(g, k)]
        h = [v for i in nd.inputs for v in vals[i]]
        J = [row for i in nd.inputs for row in jac[i]]
        b = {"Dense": lambda: p.b64, "Conv2d": lambda: p.bias_flat64(), "Diag": lambda: p.b64}.get(kind, lambda: None)()
        bias = _vals(b, True) if b is not None else [zero] * len(A)
        cols = [[r[j] for r in J] for j in range(n)]
        vals[k] = [sum((a * v for a, v in zip(row, h) if a), bias[o]) for o, row in enumerate(A)]
        jac[k] = [[sum((a * c[i] for i, a in enumerate(row) if a), zero) for c in cols] for row in A]
    return vals[g.output], jac[g.output]
