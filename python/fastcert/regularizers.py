"""The MMR regularizer and the Local-Lipschitz loss (issue #12): training signals computed from a ReLU network's
linear pieces and its masked weight matrices, for ``nn.Sequential`` networks of ``Linear`` / ``Conv2d`` /
``Flatten`` and ``ReLU`` (MMR) or ``ReLU`` / :class:`fastcert.nn.ClippedReLU` / ``Hardtanh(0, t)`` (Local-Lip).

Both are compositions of the network's own linear maps (convolutions, their transposes, GEMMs) on stacks of
vectors: they run on torch's kernels, forward and backward; fastcert's bound kernels are not involved (there is
no back-substitution to do). See docs/architecture.md ("Training losses").

Shapes: ``x`` [B, *input_shape], ``y`` [B] int64, logits [B, K]; ``d`` = prod(input_shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcert.checks import norm_key
from fastcert.errors import UnsupportedError
from fastcert.losscommon import adjoint_map, adversarial_points, check_labels, check_weight, linear_map, sequential_layers
from fastcert.nn import ClippedReLU

__all__ = ["LocalLipState", "local_lip_certify", "local_lip_loss", "local_lipschitz", "mmr_loss", "mmr_regularizer",
           "project_thresholds"]

_DUAL = {"inf": 1.0, "2": 2.0, "1": math.inf}


# ------------------------------------------------------------------------------------------------
# MMR
# ------------------------------------------------------------------------------------------------


def mmr_regularizer(model: nn.Sequential, x: Tensor, y: Tensor, norm: str = "inf", gamma_b: float = 0.1,
                    gamma_d: float = 0.1, k_b: Any = 0.1, k_d: int | None = None) -> tuple[Tensor, Tensor]:
    """The Maximum Margin Regularizer of Croce, Andriushchenko & Hein (AISTATS 2019, eq. 4), per sample.

    In the linear region of ``x`` every pre-activation ``z_i`` and every logit is an affine function of the
    input with gradient ``v_i`` (the network's weights with the ReLUs inactive at ``x`` masked). The distance of
    ``x`` to the hyperplane of neuron ``i`` (a boundary of the region) is ``|z_i(x)| / ||v_i||_q`` and to the
    decision hyperplane of class ``c`` it is ``(z_y - z_c)(x) / ||v_y - v_c||_q`` (signed: negative when
    misclassified), ``q`` the dual of ``norm`` (1 for L-inf, 2 for L2). Returns ``(rb, db)``, each [B]:

        rb = (1/k_B) sum of max(0, 1 - d_B / gamma_b) over the k_B smallest region distances,
        db = (1/k_D) sum of max(0, 1 - d_D / gamma_d) over the k_D smallest decision distances,

    the true class counted among the decision terms with an infinite distance as in the authors' code (so
    ``k_d`` defaults to K, the number of classes). ``k_b``: a count, or a fraction (float < 1) of the hidden
    units. The ReLU masks are constants; the distances are differentiable in the weights and in ``x``.

    Cost: the gradients of every hidden unit are propagated as a stack of ``d`` vectors per sample
    ([B, d, units] for each layer), as the authors' implementation does; on MNIST-sized inputs keep B moderate.
    """
    q = _DUAL[norm_key(norm)]
    layers = sequential_layers(model, (nn.ReLU,), "MMR")
    B = x.shape[0]
    in_shape = tuple(x.shape[1:])
    d = math.prod(in_shape)
    h = x
    V: Tensor | None = None  # [B or 1, d, *shape]: d(h)/dx as a stack of d vectors
    dists: list[Tensor] = []
    pre: Tensor | None = None
    pre_V: Tensor | None = None
    for m in layers:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if V is None:  # the first layer: the same for every sample
                eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, *in_shape)
                V = linear_map(m, eye).unsqueeze(0)
            else:
                out = linear_map(m, V.reshape(-1, *V.shape[2:]))
                V = out.reshape(V.shape[0], d, *out.shape[1:])
            h = m(h)
            pre, pre_V = h, V
        elif isinstance(m, nn.Flatten):
            h = h.flatten(1)
            if V is None:
                V = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(0)
            else:
                V = V.reshape(V.shape[0], d, -1)
        else:  # ReLU: its pre-activations are region boundaries
            if pre is None or pre_V is None:
                raise UnsupportedError("MMR: a ReLU must follow a Linear or Conv2d layer")
            den = pre_V.reshape(pre_V.shape[0], d, -1).norm(p=q, dim=1).clamp_min(1e-12)
            dists.append(pre.reshape(B, -1).abs() / den)
            mask = (pre > 0).to(x.dtype)
            h = F.relu(h)
            V = V * mask.unsqueeze(1)  # type: ignore[operator]
            pre = pre_V = None
    assert V is not None and h.dim() == 2
    K = h.shape[1]
    y = check_labels(y, B, K)
    if not dists:
        raise UnsupportedError("MMR: the network has no ReLU layer (no linear-region boundaries)")
    dist_b = torch.cat(dists, 1)
    n_hidden = dist_b.shape[1]
    kb = _count(k_b, n_hidden, "k_b")
    kd = K if k_d is None else _count(k_d, K, "k_d")
    rb = F.relu(1 - torch.topk(dist_b, kb, dim=1, largest=False).values / gamma_b).sum(1) / kb
    Vl = V.reshape(V.shape[0], d, K).expand(B, d, K)
    ar = torch.arange(B, device=x.device)
    Vy = Vl[ar, :, y].unsqueeze(2)  # [B, d, 1]
    den_d = (Vy - Vl).norm(p=q, dim=1).clamp_min(1e-12)  # [B, K]
    num_d = h[ar, y].unsqueeze(1) - h
    dist_d = torch.where(F.one_hot(y, K).bool(), torch.full_like(num_d, math.inf), num_d / den_d)
    db = F.relu(1 - torch.topk(dist_d, kd, dim=1, largest=False).values / gamma_d).sum(1) / kd
    return rb, db


def _count(k: Any, n: int, name: str) -> int:
    if isinstance(k, float) and 0 < k < 1:
        return max(1, min(n, int(k * n)))
    if isinstance(k, bool) or not float(k).is_integer() or int(k) < 1:
        raise ValueError(f"{name} must be a count >= 1 or a fraction in (0, 1), got {k!r}")
    return min(n, int(k))


def mmr_loss(model: nn.Sequential, x: Tensor, y: Tensor, eps: float, norm: str = "inf", lam: float = 1.0,
             gamma_b: float | None = None, gamma_d: float | None = None, k_b: Any = 0.1, k_d: int | None = None,
             adv_frac: float = 0.0, pgd_steps: int = 10, x_min: Any = None, x_max: Any = None,
             seed: int = 0) -> Tensor:
    """MMR training loss (Croce, Andriushchenko & Hein, AISTATS 2019, eq. 5; their ``train.py``):
    ``CE(z(x'), y) + lam * mean_b(rb + db)`` with :func:`mmr_regularizer` at ``x'``, where the first
    ``floor(adv_frac * B)`` points of the batch are replaced by PGD points of the ``eps``-ball (MMR + adversarial
    training; ``adv_frac=0``: plain MMR). ``gamma_b`` / ``gamma_d`` default to ``eps`` (the paper sets the gammas
    near the radius to certify). The authors ramp ``lam`` from 0 over the first 10 epochs and ``k_b`` from 10%
    to 2% of the hidden units over the run (``fastcert train --method mmr`` does)."""
    if not 0.0 <= adv_frac <= 1.0:
        raise ValueError(f"adv_frac must lie in [0, 1], got {adv_frac}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    gb = float(eps) if gamma_b is None else float(gamma_b)
    gd = float(eps) if gamma_d is None else float(gamma_d)
    if not (gb > 0 and gd > 0):
        raise ValueError(f"gamma_b and gamma_d must be > 0 (they default to eps; got {gb}, {gd})")
    n_adv = int(adv_frac * x.shape[0])
    if n_adv:
        xa = adversarial_points(model, x[:n_adv], y[:n_adv], eps, norm_key(norm), pgd_steps, 1, None, x_min, x_max, seed)
        x = torch.cat([xa, x[n_adv:]], 0)
    ce = F.cross_entropy(model(x), y)
    if lam == 0:
        return ce
    rb, db = mmr_regularizer(model, x, y, norm, gb, gd, k_b, k_d)
    return ce + lam * (rb + db).mean()


# ------------------------------------------------------------------------------------------------
# Local-Lipschitz
# ------------------------------------------------------------------------------------------------


@dataclass
class LocalLipState:
    """Power-iteration vectors kept between calls (one per affine layer, [1, *in_shape]): each call starts the
    per-sample iterations from the layer's current top right-singular vector, and refines it by one step."""

    vectors: dict[int, Tensor] = field(default_factory=dict)
    seed: int = 0


def _clip_threshold(m: nn.Module) -> float | Tensor | None:
    if isinstance(m, ClippedReLU):
        return m.threshold
    if isinstance(m, nn.Hardtanh):
        return float(m.max_val)
    return None


def _ibp_l2_first(m: nn.Module, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The exact box of an affine layer's outputs over the L2 ball of radius eps [B] (row / kernel norms: a zero-
    padded border sees part of the kernel, so this is an upper bound there)."""
    c = m(x)
    if isinstance(m, nn.Linear):
        rn = m.weight.norm(dim=1)
        r = eps[:, None] * rn
    else:
        rn = m.weight.flatten(1).norm(dim=1)
        r = eps.reshape(-1, 1, 1, 1) * rn.reshape(1, -1, 1, 1)
    return c, r.expand_as(c)


def local_lipschitz(model: nn.Sequential, x: Tensor, eps: Any, power_steps: int = 1,
                    state: LocalLipState | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, nn.Linear]:
    """The local Lipschitz bound of Huang et al. (NeurIPS 2021, Sec. 3-4) of the map from the input to the
    penultimate features over the L2 ball ``||x' - x||_2 <= eps``.

    Interval bounds of every pre-activation over the ball (exact row norms for the first layer, interval
    arithmetic after) find the neurons that are constant in the ball: a ReLU with upper bound <= 0, a clipped ReLU
    also with lower bound >= its threshold. Their rows of the layer's matrix and columns of the next are
    eliminated, and the bound is the product of the spectral norms of the reduced matrices
    ``||D_k W_k D_{k-1}||_2`` (each derivative is in [0, 1] and zero at a constant neuron), each estimated per
    sample by ``power_steps`` steps of power iteration (Sec. 4.1; an estimate from below that converges to the
    norm: a training signal; :func:`local_lip_certify` computes a sound bound).

    Returns ``(L [B], features [B, h], box_lo [B, h], box_hi [B, h], last)``: the bound, the penultimate
    features at ``x``, their interval box over the ball, and the final Linear layer.
    """
    if power_steps < 1:
        raise ValueError(f"power_steps must be >= 1, got {power_steps}")
    layers = sequential_layers(model, (nn.ReLU, ClippedReLU, nn.Hardtanh), "Local-Lip")
    B = x.shape[0]
    e = torch.as_tensor(eps, dtype=x.dtype).reshape(-1).expand(B) if not isinstance(eps, Tensor) or eps.dim() == 0 \
        else eps.to(x.dtype).reshape(B)
    if bool((e < 0).any()) or not bool(torch.isfinite(e).all()):
        raise ValueError("eps must be finite and >= 0")
    state = state if state is not None else LocalLipState()
    L, h, c, r = _walk(layers, x, e, lambda i, m, ins, m_in, m_out: _masked_norm(i, m, ins, m_in, m_out, state,
                                                                           power_steps, B))
    return L, h, c - r, c + r, layers[-1]  # type: ignore[return-value]


def _walk(layers: list[nn.Module], x: Tensor, e: Tensor, layer_norm: Any,
          tol: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The walk of Huang et al.'s bound through ``layers`` (the last, the logits' Linear, not applied): interval
    bounds over the L2 ball (radius ``e`` [B]), the masks of the neurons not constant in it (their interval
    widened by ``tol`` relative, for the sound certificate), and the product of ``layer_norm(index, layer,
    in_shape, input mask, output mask)`` over the affine layers. Returns (L [B], features at x, box center,
    box radius), the last three [B, h]."""
    B = x.shape[0]
    h = x
    c = r = None  # the box of h: center, radius
    mask_prev: Tensor | None = None
    L = torch.ones(B, dtype=x.dtype, device=x.device)
    pending: tuple[int, nn.Module, tuple[int, ...], Tensor | None] | None = None
    for i, m in enumerate(layers[:-1]):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if pending is not None:  # an affine layer right after another: its output mask is all ones
                L = L * layer_norm(*pending, None)
            in_shape = tuple(h.shape[1:])
            c, r = _ibp_l2_first(m, h, e) if c is None else (m(c), _linear_abs(m, r))
            h = m(h)
            pending = (i, m, in_shape, mask_prev)
        elif isinstance(m, nn.Flatten):
            h = h.flatten(1)
            if c is not None and r is not None:
                c, r = c.flatten(1), r.flatten(1)
            if mask_prev is not None:
                mask_prev = mask_prev.flatten(1)
        else:
            if c is None or r is None or pending is None:
                raise UnsupportedError(f"Local-Lip: activation {type(m).__name__} must follow a Linear or Conv2d")
            slack = tol * (c.abs() + r + 1) if tol else 0.0
            lo, hi = c - r - slack, c + r + slack
            t = _clip_threshold(m)
            varying = hi > 0
            if t is not None:
                varying = varying & (lo < t)
            mask = varying.to(x.dtype).detach()
            L = L * layer_norm(*pending, mask)
            pending = None
            mask_prev = mask
            lo, hi, h = m(lo), m(hi), m(h)
            c, r = (hi + lo) / 2, (hi - lo) / 2
    if pending is not None:
        L = L * layer_norm(*pending, None)
    if c is None or r is None:  # a single Linear layer: the features are the input
        c, r = x.flatten(1), e[:, None].expand(B, x[0].numel())
    return L, h.flatten(1), c.flatten(1), r.flatten(1)


def _linear_abs(m: nn.Module, r: Tensor) -> Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(r, m.weight.abs())
    return F.conv2d(r, m.weight.abs(), None, m.stride, m.padding)


def _masked_norm(idx: int, m: nn.Module, in_shape: tuple[int, ...], m_in: Tensor | None, m_out: Tensor | None,
                 state: LocalLipState, steps: int, B: int) -> Tensor:
    """Per-sample power-iteration estimate of ``||D_out W D_in||_2`` [B] (differentiable in W; the vectors are
    constants), started from the layer's kept singular vector."""
    w = m.weight
    with torch.no_grad():
        u0 = state.vectors.get(idx)
        if u0 is None or tuple(u0.shape[1:]) != in_shape or u0.dtype != w.dtype:
            g = torch.Generator(device="cpu").manual_seed(state.seed * 1000 + idx)
            u0 = torch.randn((1, *in_shape), generator=g, dtype=w.dtype).to(w.device)
        # one step on the unmasked matrix: the kept vector tracks its top singular vector
        u1 = adjoint_map(m, linear_map(m, u0), in_shape)
        state.vectors[idx] = (u1 / u1.norm().clamp_min(1e-30)).detach()
        u = state.vectors[idx].expand(B, *in_shape)
        for _ in range(steps):
            uu = u * m_in if m_in is not None else u
            v = linear_map(m, uu)
            if m_out is not None:
                v = v * m_out
            u = adjoint_map(m, v, in_shape)
            if m_in is not None:
                u = u * m_in
            u = u / u.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(B, *([1] * len(in_shape)))
    v = linear_map(m, u)
    if m_out is not None:
        v = v * m_out
    return v.flatten(1).norm(dim=1)


def _worst_logits(L: Tensor, feats: Tensor, lo: Tensor, hi: Tensor, last: nn.Linear, y: Tensor, eps: Tensor,
                  box: bool) -> Tensor:
    """``z_hat[b, j]``: an upper bound of ``z_j - z_y`` over the ball (0 at j = y)."""
    W, b = last.weight, last.bias
    z = F.linear(feats, W, b)
    B, K = z.shape
    ar = torch.arange(B, device=z.device)
    dW = W.unsqueeze(0) - W[y].unsqueeze(1)  # [B, K, h]: w_j - w_y
    base = z - z[ar, y].unsqueeze(1)
    up = base + (eps * L).unsqueeze(1) * dW.norm(dim=2)
    if box:
        db = (b.unsqueeze(0) - b[y].unsqueeze(1)) if b is not None else 0.0
        cc, rr = (hi + lo) / 2, (hi - lo) / 2
        up_box = torch.einsum("bkh,bh->bk", dW, cc) + torch.einsum("bkh,bh->bk", dW.abs(), rr) + db
        up = torch.minimum(up, up_box)
    return torch.where(F.one_hot(y, K).bool(), torch.zeros_like(up), up)


def local_lip_loss(model: nn.Sequential, x: Tensor, y: Tensor, eps: Any, kappa: float = 0.0, power_steps: int = 1,
                   state: LocalLipState | None = None, box: bool = True) -> Tensor:
    """The Local-Lipschitz training loss of Huang et al. (NeurIPS 2021, eq. 7 with the bound of Thm. 1 / Sec. 4):
    ``kappa * CE(z(x), y) + (1 - kappa) * CE(z_hat, y)`` where ``z_hat_j = (z_j - z_y)(x) + eps * L(x) *
    ||w_j - w_y||_2``, ``L`` the local Lipschitz bound of the penultimate features (:func:`local_lipschitz`) and
    ``w`` the rows of the last layer, the L2 analogue of the margin certificate of Tsuzuku et al. 2018; with
    ``box`` also no more than the interval bound of ``z_j - z_y`` on the features' box (the authors' code
    combines the two the same way, there by box-constrained propagation). ``state``: a :class:`LocalLipState`
    kept across steps so that the power iterations start warm (the paper keeps vectors per training point)."""
    kappa = check_weight("kappa", kappa)
    B = x.shape[0]
    L, feats, lo, hi, last = local_lipschitz(model, x, eps, power_steps, state)
    y = check_labels(y, B, last.out_features)
    e = torch.as_tensor(eps, dtype=x.dtype).reshape(-1).expand(B) if not isinstance(eps, Tensor) or eps.dim() == 0 \
        else eps.to(x.dtype).reshape(B)
    robust = F.cross_entropy(_worst_logits(L, feats, lo, hi, last, y, e, box), y)
    if kappa == 0.0:
        return robust
    return kappa * F.cross_entropy(F.linear(feats, last.weight, last.bias), y) + (1 - kappa) * robust


def project_thresholds(model: nn.Module, minimum: float = 1e-3) -> None:
    """Keep every :class:`fastcert.nn.ClippedReLU` threshold >= ``minimum`` (call after each optimizer step, as the
    authors project theirs to be positive)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ClippedReLU) and isinstance(m.threshold, nn.Parameter):
                m.threshold.clamp_(min=minimum)


# ------------------------------------------------------------------------------------------------
# sound L2 certification by the Lipschitz margin
# ------------------------------------------------------------------------------------------------

_U = 2.0 ** -53


def _abs_map(m: nn.Module, v: Tensor) -> Tensor:
    w = m.weight.abs()
    return F.linear(v, w) if isinstance(m, nn.Linear) else F.conv2d(v, w, None, m.stride, m.padding)


def _abs_adjoint(m: nn.Module, v: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    if isinstance(m, nn.Linear):
        return v @ m.weight.abs()
    H, W = in_shape[-2:]
    k, s, p = m.kernel_size, m.stride, m.padding
    op = (H + 2 * p[0] - k[0]) % s[0], (W + 2 * p[1] - k[1]) % s[1]
    return F.conv_transpose2d(v, m.weight.abs(), None, s, p, output_padding=op)


def _sound_norm(m: nn.Module, in_shape: tuple[int, ...], m_in: Tensor | None, m_out: Tensor | None, B: int,
                dense_limit: int) -> Tensor:
    """An upper bound [B] of ``||D_out W D_in||_2`` per sample (float64 layer ``m``, 0/1 masks or None): the
    exact norm from the (smaller) Gram matrix's largest eigenvalue plus its rounding slack when the dense
    per-sample matrix has at most ``dense_limit`` entries and a side of at most 1024, never looser than Schur's bound ``sqrt(||M||_1 ||M||_inf)`` (sums of
    absolute values), which is used alone above that size."""
    n_in = math.prod(in_shape)
    f64 = torch.float64
    ones_in = torch.ones((B, *in_shape), dtype=f64) if m_in is None else m_in.reshape(B, *in_shape).to(f64)
    out_shape = tuple(linear_map(m, ones_in[:1]).shape[1:])
    n_out = math.prod(out_shape)
    ones_out = torch.ones((B, *out_shape), dtype=f64) if m_out is None else m_out.reshape(B, *out_shape).to(f64)
    row = (_abs_map(m, ones_in) * ones_out).flatten(1).amax(1)  # max row sum of |M|
    col = (_abs_adjoint(m, ones_out, in_shape) * ones_in).flatten(1).amax(1)  # max column sum of |M|
    # sums of n >= 0 terms: relative rounding error <= n u; the square root adds one more rounding
    schur = torch.sqrt(row * col * (1 + 4 * (n_in + n_out + 2) * _U)) * (1 + 4 * _U) + 1e-300
    if n_in * n_out > dense_limit or min(n_in, n_out) > 1024:
        return schur
    eye = torch.eye(n_in, dtype=f64).reshape(n_in, *in_shape)
    A = linear_map(m, eye).reshape(n_in, n_out).T  # [n_out, n_in]: the layer's matrix
    exact = torch.empty(B, dtype=f64)
    step = max(1, dense_limit // (n_in * n_out))
    for i in range(0, B, step):
        M = A.unsqueeze(0) * ones_out[i:i + step].reshape(-1, n_out, 1) * ones_in[i:i + step].reshape(-1, 1, n_in)
        G = M.transpose(1, 2) @ M if n_in <= n_out else M @ M.transpose(1, 2)  # the smaller Gram matrix
        lam = torch.linalg.eigvalsh(G)[:, -1].clamp_min(0)
        fro2 = (M * M).flatten(1).sum(1)
        # |fl(M^T M) - M^T M| <= gamma_n |M|^T |M| elementwise, whose 2-norm is <= ||M||_F^2; eigvalsh's backward
        # error is a modest multiple of n u ||G||_2 <= n u ||M||_F^2: both inside 4 (n_out + n_in + 8) u ||M||_F^2
        exact[i:i + step] = torch.sqrt(lam + 4 * (n_out + n_in + 8) * _U * fro2) * (1 + 8 * _U) + 1e-300
    return torch.minimum(exact, schur)


def _sound_lipschitz(layers: list[nn.Module], xd: Tensor, eps: float, dense_limit: int,
                     tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """(upper bound [B] of the local Lipschitz constant of the penultimate features over the L2 ball, the
    features at x [B, h]) for float64 ``layers`` (the last one, the logits' Linear, not applied)."""
    B = xd.shape[0]
    e = torch.full((B,), float(eps), dtype=torch.float64)
    L, h, _, _ = _walk(layers, xd, e, lambda i, m, ins, m_in, m_out: _sound_norm(m, ins, m_in, m_out, B, dense_limit),
                       tol)
    return L, h


def local_lip_certify(model: nn.Sequential, x: Tensor, y: Tensor, eps: float,
                      dense_limit: int = 2_000_000) -> tuple[Tensor, Tensor]:
    """L2 certification by the margin over the local Lipschitz bound (the certificate of Huang et al. 2021, made
    sound): returns ``(certified [B] bool, margin_lower [B])``, ``margin_lower`` a lower bound of
    ``min_j (z_y - z_j)`` over the L2 ball of radius ``eps`` (``certified`` where it is > 0).

    Sound in the sense of every other fastcert certificate: the model is evaluated in float64; a neuron counts as
    constant only when its interval bound (float64, with a relative slack of 1e-9) clears 0 / the threshold; each
    reduced matrix's norm is bounded from above (:func:`_sound_norm`: exact eigenvalue plus rounding slack, or
    Schur's bound for matrices with more than ``dense_limit`` entries); the margin subtracts
    ``eps * L * ||w_y - w_j||_2`` with a relative slack. Checked against sampling and PGD in the tests."""
    import copy

    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    layers = sequential_layers(copy.deepcopy(model).double().eval(), (nn.ReLU, ClippedReLU, nn.Hardtanh), "Local-Lip")
    xd = x.detach().double()
    B = xd.shape[0]
    with torch.no_grad():
        L, feats = _sound_lipschitz(layers, xd, eps, dense_limit)
        last = layers[-1]
        z = F.linear(feats, last.weight, last.bias)
        K = z.shape[1]
        y = check_labels(y, B, K)
        ar = torch.arange(B)
        dW = (last.weight.unsqueeze(0) - last.weight[y].unsqueeze(1)).norm(dim=2)  # [B, K]
        margin = z[ar, y].unsqueeze(1) - z - (eps * L).unsqueeze(1) * dW * (1 + 1e-12)
        margin = margin - 1e-12 * (z.abs().amax(1, keepdim=True) + 1)  # float64 evaluation of z
        margin[ar, y] = math.inf
        lower = margin.amin(1)
    return lower > 0, lower
