"""The Kolter-Wong dual bound with convex_adversarial's random projections (Wong, Schmidt, Metzen & Kolter,
"Scaling provable adversarial defenses", NeurIPS 2018, Sec. 3.2): a training signal for wide networks.

The exact KW bound of a hidden pre-activation ``z_k`` needs, per neuron, the L1 norms of its row of the
network linearized by the relaxation (``G_k``, from the input) and of the rows of the partial maps
``H_{k<-i}`` from every earlier layer's unstable neurons. Forward mode gets all rows at once by pushing a basis
through the linearized network; the projection pushes ``k`` Cauchy random vectors instead and estimates each
row's L1 norm by the median of the absolute projections (the median of ``|Cauchy(0, s)|`` is ``s``), so the
cost and memory scale with ``k``, not with the layer widths. The bounds of the last layer (the objective) are
computed exactly by the backward pass, as convex_adversarial does.

``proj=None`` pushes the exact basis instead (the same formulas, no estimate): it reproduces fastcert's KW
bound and convex_adversarial's exact ``robust_loss`` (tested), which validates the formulas the estimate uses.

For an ``nn.Sequential`` of Linear / Conv2d / Flatten / ReLU, L-inf balls (clipped to ``[x_min, x_max]``).
Everything runs on torch's kernels (products with the network's own layers); see docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fastcert.losscommon import adjoint_map, linear_map, sequential_layers

__all__ = ["kw_bounds_projected"]


def _layers(model: nn.Module) -> list[nn.Module]:
    return sequential_layers(model, (nn.ReLU,), "KW projections")


def _lin(m: nn.Module, v: Tensor, bias: bool) -> Tensor:
    """Layer ``m`` on a stack ``v`` [N, *in_shape] (with or without its bias)."""
    return m(v) if bias else linear_map(m, v)


class _Track:
    """Vectors pushed forward through the linearized network: ``v`` [B, p, *shape] (p columns per sample)."""

    def __init__(self, v: Tensor) -> None:
        self.v = v

    def push(self, m: nn.Module) -> None:
        B, p = self.v.shape[:2]
        if isinstance(m, nn.Flatten):
            self.v = self.v.reshape(B, p, -1)
            return
        out = _lin(m, self.v.reshape(B * p, *self.v.shape[2:]), bias=False)
        self.v = out.reshape(B, p, *out.shape[1:])

    def scale(self, d: Tensor) -> None:  # the relaxation's slopes, d [B, *shape]
        self.v = self.v * d.unsqueeze(1)

    def l1(self, exact: bool) -> Tensor:
        """Per-sample, per-neuron L1 norm of the rows [B, *shape]: exact (the sum over the basis) or the median
        estimate over the Cauchy columns."""
        a = self.v.abs()
        return a.sum(1) if exact else a.median(1).values


def kw_bounds_projected(model: nn.Sequential, x: Tensor, eps: Any, C: Tensor, proj: int | None = None,
                        x_min: Any = None, x_max: Any = None, seed: int = 0,
                        intermediate: list | None = None) -> Tensor:
    """Lower bounds [B, S] of ``C z`` (``C`` [B, S, K]) over the L-inf ball by the Kolter-Wong dual, the
    intermediate bounds from ``proj`` Cauchy projections (median estimator; ``None``: exact), the objective
    exact. Differentiable in the weights (the random projections are constants drawn from ``seed``).

    The estimate of each L1 norm ``s`` from ``p`` projections is the median of ``p`` draws of ``|Cauchy(0, s)|``:
    unbiased in the limit, with standard deviation ``pi s / (2 sqrt(p))`` (the asymptotic law of a sample median;
    the density of ``|Cauchy(0, s)|`` at its median ``s`` is ``1 / (pi s)``). ``intermediate``: a list that
    receives each ReLU layer's (lower, upper) pre-activation bounds."""
    layers = _layers(model)
    B = x.shape[0]
    dt = x.dtype
    e = torch.as_tensor(eps, dtype=dt).reshape(-1)
    e = e.expand(B) if e.numel() == 1 else e.reshape(B)
    shape = (B,) + (1,) * (x.dim() - 1)
    lo0, hi0 = x - e.reshape(shape), x + e.reshape(shape)
    if x_min is not None:
        lo0 = torch.maximum(lo0, torch.as_tensor(x_min, dtype=dt))
    if x_max is not None:
        hi0 = torch.minimum(hi0, torch.as_tensor(x_max, dtype=dt))
    c0, r0 = (hi0 + lo0) / 2, (hi0 - lo0) / 2
    exact = proj is None
    g = torch.Generator().manual_seed(seed)

    def basis(scale: Tensor) -> Tensor:
        """[B, p, *shape]: the exact basis (p = neurons) or p Cauchy columns, scaled by ``scale`` [B, *shape]."""
        n = scale[0].numel()
        if exact:
            eye = torch.eye(n, dtype=dt).reshape(1, n, *scale.shape[1:])
            return eye * scale.unsqueeze(1)
        R = torch.empty((B, int(proj), *scale.shape[1:]), dtype=dt).cauchy_(generator=g)  # type: ignore[arg-type]
        return R * scale.unsqueeze(1)

    if not exact and (not isinstance(proj, int) or proj < 1):
        raise ValueError(f"proj must be a number of projections >= 1 (or None: exact), got {proj!r}")
    # forward objects: the center through the linearized net with biases, the input term's rows, and per
    # earlier ReLU layer i: its rows (l on the unstable set I_i) and the vector l * 1_{I_i}
    center = c0
    inp = _Track(basis(r0))
    relu_rows: list[_Track] = []
    relu_vecs: list[Tensor] = []
    bounds: list[tuple[Tensor, Tensor, Tensor]] = []  # per ReLU: (l, u, d)
    for m in layers[:-1]:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Flatten)):
            center = center.flatten(1) if isinstance(m, nn.Flatten) else _lin(m, center, bias=True)
            for t in (inp, *relu_rows):
                t.push(m)
            relu_vecs = [v.flatten(1) if isinstance(m, nn.Flatten) else _lin(m, v, bias=False) for v in relu_vecs]
            continue
        # a ReLU: the bounds of its input z_k from the objects, then its relaxation
        half = torch.zeros_like(center)
        lin = torch.zeros_like(center)
        for t, v in zip(relu_rows, relu_vecs):
            half = half + t.l1(exact)
            lin = lin + v
        norm_in = inp.l1(exact)
        # lower: F - ||G r0||_1 - 1/2 sum_i (||H l_I||_1 + H l_I); upper: F + ||G r0||_1 + 1/2 sum_i (||.|| - H l_I)
        l = center - norm_in - 0.5 * (half + lin)
        u = center + norm_in + 0.5 * (half - lin)
        l, u = torch.minimum(l, u), torch.maximum(l, u)
        unstable = (l < 0) & (u > 0)
        d = torch.where(u <= 0, torch.zeros_like(u), torch.where(l >= 0, torch.ones_like(u),
                                                                 u / (u - l).clamp_min(1e-30)))
        bounds.append((l, u, d))
        if intermediate is not None:
            intermediate.append((l, u))
        center = center * d
        for t in (inp, *relu_rows):
            t.scale(d)
        relu_vecs = [v * d for v in relu_vecs]
        lI = torch.where(unstable, l, torch.zeros_like(l))
        relu_rows.append(_Track(basis(lI.abs()) * d.unsqueeze(1)))
        relu_vecs.append(lI * d)
    return _objective(layers, bounds, C, c0, r0)


def _objective(layers: list[nn.Module], bounds: list[tuple[Tensor, Tensor, Tensor]], C: Tensor, c0: Tensor,
               r0: Tensor) -> Tensor:
    """The exact KW dual objective (Wong & Kolter 2018, Thm. 1) for the rows of ``C`` by the backward pass:
    lower bound of ``C z`` [B, S]."""
    B, S, _ = C.shape
    # the shapes of each layer's input, by a forward pass of the center (cheap)
    shapes: list[tuple[int, ...]] = []
    h = c0
    for m in layers:
        shapes.append(tuple(h.shape[1:]))
        h = h.flatten(1) if isinstance(m, nn.Flatten) else (h if isinstance(m, nn.ReLU) else _lin(m, h, bias=False))
    nu = -C  # [B, S, K]: nu at the logits
    total = torch.zeros(B, S, dtype=C.dtype)
    k = len(bounds)
    for m, ins in zip(reversed(layers), reversed(shapes)):
        if isinstance(m, nn.ReLU):
            k -= 1
            l, u, d = bounds[k]
            nu_hat = nu
            nu = nu_hat * d.unsqueeze(1)
            unstable = (l < 0) & (u > 0)
            lI = torch.where(unstable, l, torch.zeros_like(l)).unsqueeze(1)
            total = total + (lI * nu.clamp_min(0)).flatten(2).sum(2)
            continue
        if isinstance(m, nn.Flatten):
            nu = nu.reshape(B, S, *ins)
            continue
        if m.bias is not None:
            bb = m.bias if isinstance(m, nn.Linear) else m.bias.reshape(-1, 1, 1)
            total = total - (nu * bb).flatten(2).sum(2)
        nu = adjoint_map(m, nu.reshape(B * S, *nu.shape[2:]), ins).reshape(B, S, *ins)
    # the input term: -nu_hat_1 . c0 - ||nu_hat_1 * r0||_1
    total = total - (nu * c0.unsqueeze(1)).flatten(2).sum(2) - (nu.abs() * r0.unsqueeze(1)).flatten(2).sum(2)
    return total
