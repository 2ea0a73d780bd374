"""Options of a bound computation, passed in (never module-level globals)."""

from __future__ import annotations

from dataclasses import dataclass

TANGENTS = ("bisect", "lookup", "envelope")
PATCHES = ("auto", "always", "never")
INTERMEDIATES = ("intersect", "sparse")


@dataclass(frozen=True)
class AlphaOptions:
    """alpha-CROWN's optimization (``method="alpha-crown"``), defaults as auto_LiRPA 0.3's.

    iterations: Adam steps on the ReLU lower slopes (0: CROWN's slopes, certified as alpha-CROWN).
    lr: Adam's learning rate; decay: its factor per step (exponential schedule).
    patience: stop once the objective has not improved for this many steps.
    candidates: how many slope sets are certified (each a rigorous pass; the bound is the entrywise best):
        the steps whose optimize-mode bound was best on the most entries, per sample (auto_LiRPA returns
        the entrywise best bound over the steps).
    optimize: the objective: "lower" (the sum of the lower bounds, what certification needs, as auto_LiRPA's
        ``bound_upper=False``; the upper bounds are then CROWN's) or "both" (minus the upper bounds too).
    intermediate: also optimize the slopes of the intermediate bounds (a set per refined node and neuron,
        every step recomputes them, each intersected with CROWN's: as auto_LiRPA 0.3 does by default);
        False keeps CROWN's intermediate bounds and optimizes the output's slopes only (faster, looser).
    time_limit: seconds for the optimization (None: no limit); when they run out the best slopes so far are
        certified.
    max_bytes: memory for the intermediate bounds' slopes; when they need more, the intermediate bounds stay
        CROWN's and only the output's slopes are optimized (as ``intermediate=False``; the log says so).
    """

    iterations: int = 20
    lr: float = 0.5
    decay: float = 0.98
    patience: int = 10
    intermediate: bool = True
    optimize: str = "lower"
    candidates: int = 4
    max_bytes: int = 1 << 28
    time_limit: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise ValueError(f"AlphaOptions.candidates must be an int >= 1, got {self.candidates!r}")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 0:
            raise ValueError(f"AlphaOptions.max_bytes must be an int >= 0, got {self.max_bytes!r}")
        for name in ("iterations", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"AlphaOptions.{name} must be an int >= 0, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and self.lr < float("inf")):
            raise ValueError(f"AlphaOptions.lr must be a positive finite number, got {self.lr!r}")
        if self.time_limit is not None and not (isinstance(self.time_limit, (int, float)) and self.time_limit >= 0):
            raise ValueError(f"AlphaOptions.time_limit must be None or a number of seconds >= 0, got "
                             f"{self.time_limit!r}")
        if self.optimize not in ("lower", "both"):
            raise ValueError(f"AlphaOptions.optimize must be 'lower' or 'both', got {self.optimize!r}")
        if not (isinstance(self.decay, (int, float)) and 0 < self.decay <= 1):
            raise ValueError(f"AlphaOptions.decay must be in (0, 1], got {self.decay!r}")


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
    alpha: :class:`AlphaOptions` of ``method="alpha-crown"``.
    """

    tangent: str = "bisect"
    patches: str = "auto"
    intermediate: str = "intersect"
    lambda_bytes: int = 384 << 20
    block_elems: int = 1 << 16
    conv_work_elems: int = 1 << 22
    alpha: AlphaOptions = AlphaOptions()

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, AlphaOptions):
            raise TypeError(f"BoundOptions.alpha must be a fastcert.AlphaOptions, got {type(self.alpha).__name__}")
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
