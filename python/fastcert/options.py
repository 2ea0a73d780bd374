"""Options of a bound computation, passed in (never module-level globals)."""

from __future__ import annotations

from dataclasses import dataclass

TANGENTS = ("bisect", "lookup", "envelope")
PATCHES = ("auto", "always", "never")
INTERMEDIATES = ("intersect", "sparse")


@dataclass(frozen=True)
class BoundOptions:
    """How :func:`fastcert.bounds` computes (none of these changes soundness; only tightness and speed).

    tangent: the tangent points of S-shaped activations (sigmoid, tanh, arctan) on intervals crossing 0:
        "bisect" (per neuron, by bisection: the CROWN paper), "lookup" (auto_LiRPA 0.3's table, to
        compare with it), "envelope" (least area).
    patches: the windowed back-substitution for convolution neurons (chain engine): "auto" takes it when
        it costs fewer multiply-adds, "always" / "never" force one.
    intermediate: how ``method="crown"`` bounds intermediate neurons: "intersect" (back-substitution on every
        neuron a relaxation reads, intersected with the interval bound) or "sparse" (auto_LiRPA 0.3's
        default, to compare with it: back-substitution replaces the interval bound, only on the neurons the
        interval bound finds unstable in some sample of the batch when these are at most 90 % of the layer
        and the node feeds ReLUs only, on every neuron otherwise). Not tighter on every entry either way
        (docs/architecture.md, "Graph IR").
    lambda_bytes: budget for one chunk of coefficient matrices [B, rows, n] of a backward pass.
    block_elems: elements of one block of relaxed rows in the fused activation + affine kernels (sized
        for the L2 cache).
    conv_work_elems: elements of the im2col workspace of a convolution's forward / transposed products
        (whole samples are processed in it, at least one at a time).
    """

    tangent: str = "bisect"
    patches: str = "auto"
    intermediate: str = "intersect"
    lambda_bytes: int = 384 << 20
    block_elems: int = 1 << 16
    conv_work_elems: int = 1 << 22

    def __post_init__(self) -> None:
        if self.tangent not in TANGENTS:
            raise ValueError(f"BoundOptions.tangent must be one of {TANGENTS}, got {self.tangent!r}")
        if self.patches not in PATCHES:
            raise ValueError(f"BoundOptions.patches must be one of {PATCHES}, got {self.patches!r}")
        if self.intermediate not in INTERMEDIATES:
            raise ValueError(f"BoundOptions.intermediate must be one of {INTERMEDIATES}, got {self.intermediate!r}")
        for name in ("lambda_bytes", "block_elems", "conv_work_elems"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BoundOptions.{name} must be a positive int, got {v!r}")


DEFAULT_OPTIONS = BoundOptions()
"""The defaults, for the calls made outside a bound computation (a forward pass)."""
