"""ReLU split constraints of branch and bound (beta-CROWN, Wang et al., NeurIPS 2021), as both bound engines
read them.

A sub-domain of the input region is the set of inputs whose pre-activations satisfy its splits: for a split
neuron j of ReLU node v, ``z_j >= 0`` (sign +1, "active") or ``z_j <= 0`` (sign -1, "inactive"), z the ReLU's
input. The engines use a split twice:

- its box: ``l_j := max(l_j, 0)`` (active) or ``u_j := min(u_j, 0)`` (inactive) on z's box, so the ReLU is
  exact there and the bounds of every later node are computed on the sub-domain; a box that becomes empty
  (``l > u``) proves the sub-domain empty (``Splits.empty``);
- its Lagrange multiplier ``beta_j >= 0`` (the output's lower-bound rows only): on the sub-domain
  ``-beta_j s_j z_j <= 0``, so ``min c.f >= min (c.f - sum_j beta_j s_j z_j)`` over any superset, and the
  back-substitution adds ``-beta_j s_j`` to the rows' coefficients of z when it reaches z. Any beta >= 0
  gives a sound bound; beta = 0 is the split-box bound alone (alpha-CROWN on the sub-domain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Splits:
    """Per ReLU node id v: ``sign[v]`` [B, n_v] (+1 active, -1 inactive, 0 not split; any float or int dtype);
    ``beta[v]`` [B, S, n_v] the multipliers of the output node's first S rows (its lower-bound rows; clamped
    to >= 0 where used). ``empty`` [B] bool is set by the forward passes: the sub-domains their boxes prove
    empty (their bounds are then meaningless: every bound holds on an empty set)."""

    sign: dict[int, Tensor]
    beta: dict[int, Tensor] = field(default_factory=dict)
    empty: Tensor | None = None
    #: node id -> (l, u) [1 or B, n]: a box of the node's output valid on the whole region (a parent's or the
    #: root's certified one); the engines intersect their interval box with it and skip its back-substitution
    boxes: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    #: nodes whose bounds are recomputed by back-substitution anyway (then intersected with their known box)
    refine: frozenset[int] = frozenset()

    def clip(self, v: int, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """The box (l, u: [B, n]) of ReLU node v's input on the sub-domains; records the empty ones."""
        s = self.sign.get(v)
        if s is None:
            return l, u
        s = s.to(l.device)
        zero = torch.zeros((), dtype=l.dtype)
        l2 = torch.where(s > 0, torch.maximum(l, zero), l)
        u2 = torch.where(s < 0, torch.minimum(u, zero), u)
        bad = l2 > u2
        e = bad.detach().any(1)
        self.empty = e if self.empty is None else (self.empty | e)
        if bool(e.any()):  # any box is fine on an empty sub-domain; a point keeps the arithmetic finite
            l2, u2 = torch.where(bad, zero, l2), torch.where(bad, zero, u2)
        return l2, u2

    def beta_rows(self, v: int, rows: int, dtype: torch.dtype, b0: int = 0, b1: int | None = None) -> Tensor | None:
        """``-beta s`` for ReLU node v as [Bc, rows, n_v] (the beta rows first, zero rows after them), or None."""
        b = self.beta.get(v)
        if b is None:
            return None
        s = self.sign[v][b0:b1].to(dtype)
        d = -(b[b0:b1].clamp_min(0).to(dtype) * s[:, None, :])
        S = d.shape[1]
        if rows == S:
            return d
        if rows < S:
            raise ValueError(f"internal: {S} beta rows for {rows} rows")
        return torch.cat([d, d.new_zeros(d.shape[0], rows - S, d.shape[2])], 1)

    def known(self, v: int, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor] | None:
        """The interval box (l, u) of node v intersected with its known box, or None when it has none."""
        k = self.boxes.get(v)
        if k is None:
            return None
        lo, hi = torch.maximum(l, k[0].to(l.dtype)), torch.minimum(u, k[1].to(u.dtype))
        bad = lo > hi  # both sound: only rounding can cross them; swapping keeps both sides sound
        return torch.where(bad, hi, lo).contiguous(), torch.where(bad, lo, hi).contiguous()


__all__ = ["Splits"]
