"""The rounding-error terms of a bound computation that do not live in a kernel (see
docs/architecture.md, "Floating point: why the bounds are sound"): the absolute (underflow) bound each
back-substitution step adds to every row, the bound on a float64 evaluation's rounding error that the
final bounds are widened by, and the overflow check of the interval pass.

``st`` is the state of one bound computation (``linear_bounds._Pass``: layers, boxes_in, G, relax,
and the cache ``uf``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastcert._ext import _C
from fastcert.layers.base import Box
from fastcert.primitives.base import Elementwise
from fastcert.primitives.diag import Diag
from fastcert.primitives.relu import ReLU
from fastcert.rounding import eta, gamma_for, round_up_array, underflow_slack


def underflow_units(st: Any, j: int) -> np.ndarray:
    """[B] float64 (numpy) ``a`` such that ``a * eta`` bounds the absolute (underflow) error that one backward
    step through layer j adds to every row's bound, whatever the row (see rounding.py's model):

    - affine layer (input box magnitude ``m``): each entry of ``Lam W`` is a sum of ``back_len``
      products, off by at most ``back_len * eta`` beyond the relative term, and that error multiplies
      ``|x_k| <= m_k`` (in the centre form ``|x_k - c_k| <= r_k <= m_k``): ``back_len * ||m||_1``; the bias
      and magnitude dot products over ``n_out`` terms add ``3 n_out``, the centre form's float64 sums
      ``n_out + n_in + 4``;
    - activation (pre-activation magnitude ``m``): the slope products ``Lam_k * slope_k`` lose
      ``eta / 2`` each, times ``|z_k|``: ``||m||_1``; the intercept and magnitude sums add ``5 n``.

    Needs the final box of layer j (set before any back-substitution passes through it)."""
    a = st.uf.get(j)
    if a is None:
        L = st.layers[j]
        box = st.boxes_in[j]
        assert box is not None
        n = box.l.shape[1]
        r = st.relax[j]
        # max(|l|, |u|) (an activation's relaxation already holds it), in numpy: [B, n] -> [B] float64 sums
        m = r[3].numpy() if r is not None else np.maximum(np.abs(box.l.numpy()), np.abs(box.u.numpy()))
        l1 = m.sum(1, dtype=np.float64) * (1 + 4 * (n + 2) * 2.0**-53)  # a sum of n >= 0 terms (any order), rounded up
        if L.is_affine:
            # + n_in + n_out + 4: the float64 sums of the centre form (a product rounded in double loses
            # at most eta64 / 2 <= eta / 2)
            a = (L.back_len + 2) * l1 + (4 * L.n_out + L.n_in + 12)  # type: ignore[attr-defined]
        else:
            a = 2 * l1 + (5 * n + 8)
        st.uf[j] = a
    return a


def initial_mag(st: Any, start: int, stop: int, b0: int, b1: int, S: int, dt: torch.dtype,
                 repeat: int = 1) -> torch.Tensor:
    """The ``mag`` a back-substitution from layer ``start`` down to ``stop`` starts with: the sum of the
    steps' underflow bounds (:func:`underflow_units`) for samples [b0, b1), as [Bc * repeat, S] of
    dtype ``dt``, rounded up (``repeat``: rows per sample, e.g. the windows of the patches path)."""
    # [Bc] float64 arithmetic in numpy (the same IEEE operations as torch's, without its per-operation cost,
    # which made this ~15-operation step cost as much as a kernel on a 32-sample IBP call)
    total = np.zeros(b1 - b0, dtype=np.float64)
    for j in range(stop, start):
        total = total + underflow_units(st, j)[b0:b1]
    v64 = (total * (1 + 1e-12) + 1) * eta(dt)
    v = v64.astype(np.float32 if dt == torch.float32 else np.float64)
    v = np.where(v.astype(np.float64) < v64, np.nextafter(v, np.inf).astype(v.dtype), v)  # round up
    if repeat > 1:
        v = np.repeat(v, repeat)
    return torch.from_numpy(np.repeat(v[:, None], S, axis=1))


def overflow_hint(dt: torch.dtype) -> str:
    return "try float64 inputs or a smaller eps" if dt == torch.float32 else "try a smaller eps or rescale the network"


def check_overflow(st: Any, out_box: Box) -> None:
    """Raise a clear error when the interval pass overflowed (g >= |W| max(|l|,|u|) + |b| is finite
    iff the boxes are; a non-finite box propagates to the output box or to a later g)."""
    # every g, not only the last: a ReLU maps an inf / NaN box entry to a finite one and would hide it
    gs = [(L, g) for L, g in zip(st.layers, st.G) if g is not None]
    bad = _C.first_nonfinite([g.contiguous() for _, g in gs] + [out_box.l.contiguous(), out_box.u.contiguous()])
    if bad >= 0:
        raise_overflow([L for L, _ in gs], bad, out_box.l.dtype)


def raise_overflow(with_g: list, bad: int, dt: torch.dtype) -> None:
    """Raise the overflow error of the interval pass: ``bad`` indexes the magnitudes ``g`` of the layers
    ``with_g`` (in order), then the output box's l and u; -2: a NaN after the final widening (state.finish)."""
    if bad == -2:
        raise ValueError("floating-point overflow in the backward pass: the weights, x or eps are too large "
                         f"for {dt} ({overflow_hint(dt)})")
    if bad < len(with_g):
        L = with_g[bad]
        raise ValueError(f"floating-point overflow in {L.name or L.kind}: the interval bounds exceed the range of "
                         f"{dt}; the weights, x or eps are too large ({overflow_hint(dt)})")
    raise ValueError(f"floating-point overflow in the interval pass: the bounds exceed the range of "
                     f"{dt}; the weights, x or eps are too large ({overflow_hint(dt)})")


def eval_underflow(L: Any) -> float:
    """The absolute term a float64 evaluation of affine layer L adds per neuron: the underflow of its products
    (a few more for BatchNorm's subtraction, division and product), raised to the smallest normal float64 (a
    subnormal operand makes every elementwise step it enters 10-20x slower; the larger term is still a bound)."""
    return max(underflow_slack(L.fan_in + 8, torch.float64), torch.finfo(torch.float64).tiny)


def _fusable(layers: list, j: int) -> bool:
    """Whether eval_slack's steps through affine layer j and activation j+1 can run as one kernel
    (``_C.eval_err_max``): j is affine, not diagonal and without its own evaluation terms, j+1 is a plain
    activation (not a registry primitive), and layer j+2 is affine and not diagonal (it reads only the
    per-sample max of E)."""
    if j + 2 >= len(layers):
        return False
    L, A, N = layers[j], layers[j + 1], layers[j + 2]
    plain = L.is_affine and not isinstance(L, Diag) and getattr(L, "eval_in", None) is None and \
        getattr(L, "eval_out", None) is None
    return plain and isinstance(A, ReLU) and not isinstance(A, Elementwise) and N.is_affine and \
        not isinstance(N, Diag)


def _reads_max(L: Any) -> bool:
    """Whether eval_slack's step through layer L reads only each sample's largest incoming E (an affine,
    non-diagonal layer: ``|W| E <= rowsum|W| max E``)."""
    return L.is_affine and not isinstance(L, Diag)


def eval_slack(st: Any, out_box: Box, C: torch.Tensor, C_exact: torch.Tensor | None = None) -> torch.Tensor:
    """Bound on |C f_float64(x) - C f_exact(x)| over the region: [B, S] (float64 evaluation).

    E tracks a per-neuron bound on the rounding error of a float64 evaluation of the network: an
    affine layer adds gamma64*g and maps the incoming error through |W| (bounded by the row sums of
    |W| times the largest incoming error, which avoids a product per layer); an activation multiplies it
    by its Lipschitz constant and adds a few ulps of its output. (A float32 evaluation can deviate
    from the exact function by far more than any useful bound; see docs/architecture.md.)
    """
    u = torch.finfo(torch.float64).eps / 2
    # absolute (underflow) terms are raised to the smallest normal float64: a subnormal operand makes
    # every elementwise torch step it enters 10-20x slower, and a larger term is still a bound
    normal64 = torch.finfo(torch.float64).tiny
    gamma64 = gamma_for(st.layers, torch.float64)
    B = C.shape[0]
    layers = st.layers
    emax = torch.zeros(B, dtype=torch.float64)  # E.amax(1) when E is None (only the max is kept)
    # the input is exact (E = 0); a first affine, non-diagonal layer reads only its max, so E is not formed
    E: torch.Tensor | None = None if _reads_max(layers[0]) else torch.zeros(B, layers[0].n_in, dtype=torch.float64)
    skip = False
    for j, L in enumerate(layers):
        if skip:  # the activation of a fused step
            skip = False
            continue
        if L.is_affine:
            G = st.G[j]
            assert G is not None
            # the relative term, plus the underflow of the layer's products (a few more for BatchNorm's
            # subtraction, division and product)
            uf = eval_underflow(L)
            if _fusable(layers, j):
                # this layer and its activation in one kernel, the same float64 operations as below, keeping
                # only the per-sample max that the next (affine, not diagonal) layer reads
                A = layers[j + 1]
                nxt = st.boxes_in[j + 2]
                out = torch.empty(B, dtype=torch.float64)
                assert nxt is not None
                e_in = emax if E is None else E.amax(1).contiguous()
                _C.eval_err_max(G.contiguous(), L.params(torch.float64).rowabs, e_in, gamma64,
                                uf, float(A.lipschitz), nxt.l.contiguous(), nxt.u.contiguous(), 4 * u,
                                max(8 * eta(torch.float64), normal64), out)
                E, emax, skip = None, out, True
                continue
            if isinstance(L, Diag):
                assert E is not None  # a fused step is followed by a non-diagonal affine layer
                E = gamma64 * G.double() + L.forward_abs(E.contiguous()) + uf
            else:  # |W| E <= rowsum|W| * max E: a looser E, but no product (E is ~1e-16 of the values)
                # (numpy: the same float64 operations, without torch's per-operation cost on [B, n] arrays)
                Em = emax.numpy()[:, None] if E is None else E.numpy().max(1, keepdims=True)
                E = torch.from_numpy(gamma64 * G.numpy().astype(np.float64) +
                                     L.params(torch.float64).rowabs.numpy() * Em + uf)
            ev_in = getattr(L, "eval_in", None)  # an unfolded BatchNorm / Normalize
            if ev_in is not None:
                E = E + ev_in[0] * st.boxes_in[j].mag().double() + ev_in[1]  # type: ignore[union-attr]
            ev_out = getattr(L, "eval_out", None)  # one folded into this layer
            if ev_out is not None:
                nxt = st.boxes_in[j + 1] if j + 1 < len(st.layers) else out_box
                E = E + ev_out[0] * nxt.mag().double() + ev_out[1]  # type: ignore[union-attr]
        else:
            nxt = st.boxes_in[j + 1] if j + 1 < len(st.layers) else out_box
            assert nxt is not None and E is not None
            if isinstance(L, Elementwise):  # the primitive's own bound on torch's float64 evaluation
                E = L.lipschitz * E + L.eval_error(nxt.mag().double())
            else:  # ReLU: exact
                assert isinstance(L, ReLU)
                E = L.lipschitz * E + 4 * u * nxt.mag().double() + max(8 * eta(torch.float64), normal64)
    assert E is not None  # the last layer is never fused
    return output_slack(E, out_box, C, C_exact, gamma64)


def output_slack(E: torch.Tensor, out_box: Box, C: torch.Tensor, C_exact: torch.Tensor | None, gamma64: float
                 ) -> torch.Tensor:
    """The evaluation slack of the specification ``C f``: [B, S] in C's dtype, rounded up, from ``E: [B, K]``
    (float64) bounding the float64 evaluation's error on the outputs ``f``, whose box is ``out_box``:
    ``|C| (E + gamma64 max|f|)`` (the spec's own product), plus ``|C_exact - C| (max|f| + ...)`` when C was
    rounded from ``C_exact: [B, S, K]``. In numpy: the same float64 operations as in torch, at a fraction of
    its per-operation cost on these small arrays."""
    K = out_box.l.shape[1]
    uf = underflow_slack(K, torch.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mag = np.maximum(np.abs(out_box.l.numpy()), np.abs(out_box.u.numpy())).astype(np.float64)
        Ef = E.numpy() + gamma64 * mag
        # sum_k |C[b,s,k]| Ef[b,k] in float64, as a batched product (any order: the factor covers its rounding)
        C64 = C.numpy().astype(np.float64)
        slack = np.matmul(np.abs(C64), Ef[:, :, None])[:, :, 0] * (1 + 1e-6) + uf
        if C_exact is not None:  # C was rounded from C_exact: |C_exact - C| max|f| on the output box
            dC = np.abs(C_exact.double().numpy() - C64)
            slack = slack + np.matmul(dC, (mag + Ef)[:, :, None])[:, :, 0] * (1 + 1e-6) + uf
    return torch.from_numpy(round_up_array(slack, C.dtype))
