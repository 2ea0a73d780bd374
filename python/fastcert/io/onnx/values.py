"""The importer's view of one non-constant ONNX tensor (:class:`Val`) and the queued elementwise
constant maps on it (:class:`Pending`).

An ONNX tensor computed from the input is an IR value (``vid``: 0 the network input, k the output of
IR op k-1) seen through two lazy, exact re-interpretations: a permutation ``P`` (ONNX Transposes,
folded into the next Dense's columns) and queued elementwise maps ``y = s*x + t`` (merged while
consecutive, emitted as one Diag "chaff" op, or as the bias of the Linear / Conv right before them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

U64 = 2.0**-53  # unit roundoff of float64


@dataclass(frozen=True)
class Pending:
    """Queued ``y = s*x + t`` with the evaluation-error model ``|err| <= a|x| + c`` (each a flat array
    [n] in the IR value's order), the nodes it comes from and their kinds ("shift": a lone ``x + t``,
    "scale": a lone ``x * s``, "": anything else)."""

    s: np.ndarray
    t: np.ndarray
    a: np.ndarray
    c: np.ndarray
    where: tuple[str, ...]
    kinds: tuple[str, ...]

    def label(self) -> str:
        """The node(s) for the emitted op's name."""
        if len(self.where) == 1:
            return self.where[0]
        return f"{self.where[0]} .. {self.where[-1]} (merged elementwise ops)"


def compose(p: Pending | None, s2: np.ndarray, t2: np.ndarray, a2: np.ndarray, c2: np.ndarray, kind: str,
            where: str) -> Pending:
    """``p`` followed by ``y = s2*x + t2`` (error model ``a2|x| + c2``): the merged map and a sound model
    of its evaluation error (flat [n] arrays in IR order)."""
    if p is None:
        return Pending(s2, t2, a2, c2, (where,), (kind,))
    if p.kinds == ("shift",) and kind == "scale":
        # (x - m) / d or (x - m) * k: exactly fastcert.Normalize, whose model covers the two roundings
        # of the original ops and ours of s2 and s2*t1 (4u)
        t1 = p.t
        return Pending(s2, s2 * t1, 4 * U64 * np.abs(s2), 4 * U64 * np.abs(s2 * t1), p.where + (where,),
                       p.kinds + (kind,))
    s1, t1, a1, c1 = p.s, p.t, p.a, p.c
    s, t = s2 * s1, s2 * t1 + t2
    # err <= |s2| err1 + err2 + our rounding of the merged s and t
    a = np.abs(s2) * a1 + a2 * np.abs(s1) + 4 * U64 * np.abs(s)
    c = np.abs(s2) * c1 + a2 * np.abs(t1) + c2 + 4 * U64 * (np.abs(s2 * t1) + np.abs(t2))
    return Pending(s, t, a, c, p.where + (where,), p.kinds + (kind,))


def per_channel(shape: tuple[int, ...], *vs: np.ndarray) -> list[np.ndarray] | None:
    """Per-channel vectors [C] (channel = the first dimension of ``shape``) if every flat array [n] is
    constant per channel, else None."""
    C = shape[0] if shape else 1
    out = []
    for v in vs:
        m = v.reshape(C, -1)
        if not (m == m[:, :1]).all():
            return None
        out.append(np.ascontiguousarray(m[:, 0]))
    return out


@dataclass(frozen=True)
class Val:
    """One ONNX tensor computed from the input.

    ``logical``: its ONNX shape without the batch dimension (when ``batched``); its entries in ONNX
    row-major order are ``ir_flat[P]`` of IR value ``vid`` (``P`` None: the identity), after the queued
    ``pend`` maps. ``etype``: its ONNX element type (changed only by Cast). ``affine``: the index of the
    Linear / Conv op whose output ``vid`` is, when this tensor is the only reader of it so far (a
    queued constant Add may then become that op's bias)."""

    name: str
    vid: int
    logical: tuple[int, ...]
    batched: bool
    etype: int
    P: np.ndarray | None = None
    pend: Pending | None = None
    affine: int | None = None

    @property
    def n(self) -> int:
        """Entries per sample."""
        return int(np.prod(self.logical, dtype=np.int64))

    def full(self) -> tuple[int, ...]:
        """The ONNX shape, batch dimension (1) included when batched."""
        return ((1,) if self.batched else ()) + self.logical

    def to_ir(self, v_logical: np.ndarray) -> np.ndarray:
        """A per-entry array in the tensor's ONNX layout -> a writable flat float64 copy [n] in IR order."""
        v = np.array(v_logical, dtype=np.float64).reshape(-1)
        if self.P is None:
            return v
        out = np.empty_like(v)
        out[self.P] = v
        return out
