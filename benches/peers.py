"""Peer adapters: the tools a user would otherwise run, behind one interface, for the benchmarks.

Every adapter has ``.bounds(x, eps, method, C) -> (lower, upper)``, torch tensors ``[B, S]`` of the
bounds of ``C f(x')`` over the L-inf ball ``||x' - x||_inf <= eps`` with **no clipping** to an input
domain, computed in float32. ``C`` is ``[B, S, K]`` (see :func:`margin_spec`).

- :class:`LirpaPeer`: auto_LiRPA 0.3 (``IBP``, ``CROWN``, ``CROWN-IBP``). The ``BoundedModule`` is
  built once per (model, input shape, batch) in the constructor, outside any timing.
- :class:`KWPeer`: convex_adversarial 0.4.4, ``DualNetwork(net, x, eps)(c)`` (the Kolter-Wong dual
  bound == Fast-Lin == fastcert ``method="kw"``). The dual network depends on ``x`` and ``eps``, so
  it is built inside ``.bounds`` (that *is* the bound computation).
- :class:`TorchRefPeer`: ``fastcert.reference.crown.bounds``, the plain-torch reference, float32,
  under ``torch.no_grad()``.

auto_LiRPA 0.3 does not import on numpy 2 / torch 2.13 as released; :func:`lirpa_shims` patches
the five incompatibilities listed in ``/work/shared/PEERS.md`` (kept here in ``benches/``, never in
the package). :func:`lirpa_status` says whether it imports and, if not, why: the benches print that
reason when they skip the peer.

What auto_LiRPA computes, checked against fastcert and the float64 reference (tests/test_peers.py):

- ``IBP``: plain interval propagation with the spec ``C`` fused into the last linear layer, the
  same as fastcert ``method="ibp"`` (fastcert fuses C the same way). Equal to float32 noise
  (<= 1.1e-6 relative to the bound scale) on every net tried.
- ``CROWN``: intermediate (pre-ReLU) bounds by full backward substitution, first linear layer by
  IBP (exact there), ReLU upper slope ``u/(u-l)``, lower slope "adaptive" (``1 if u > -l else 0``,
  auto_LiRPA's default ``bound_opts={'relu': 'adaptive'}``; fastcert uses ``u >= -l``, which differs
  only on exact ties). **It is not always fastcert's CROWN**: fastcert (and the reference)
  intersect every intermediate bound with the IBP bound computed from the previous layer's
  (intersected) bounds. auto_LiRPA 0.3 does not intersect. With its default
  ``sparse_intermediate_bounds=True`` it computes that same IBP bound per layer, and when at most
  ``minimum_sparsity`` = 90 % of the layer's neurons are IBP-unstable (in some sample of the batch)
  it runs CROWN on those neurons only and keeps the IBP bounds of the others (so IBP-stable
  neurons stay stable, but unstable ones get the pure CROWN bound even where IBP is tighter on one
  side); above 90 % it runs pure CROWN on every neuron. With ``sparse_intermediate_bounds=False``
  it is pure CROWN throughout: equal to the reference *without* the IBP intersection to 4e-7
  relative (float32) on the 120 random deep narrow cases we tried. No option makes auto_LiRPA
  intersect; fastcert's ``BoundOptions(intermediate="sparse")`` follows auto_LiRPA's rule instead (equal to
  ~1e-10 in float64, max-pool CNNs included: tests/test_peers_general.py). Consequence: the two agree (to float32 rounding) whenever CROWN's intermediate bounds
  are no looser than IBP's on any unstable neuron, which held on every benchmark-like net we tried:
  the tests' nets (<= 1.0e-6), 784-256x4-10 and a 4-layer CNN (<= 3.4e-6), and the six cases of
  ``benches/cases.py`` at batch 1 and 32, eps 0.01 and 0.05 (<= 3.8e-6, except real-kw-mnist at
  batch 32, eps 0.05: 1.5e-5; there relative to ``max(1, max |b|)``). On deep narrow nets at large
  eps (e.g. 20-4x5-10, eps 0.3-1, where IBP sometimes beats CROWN) the margin bounds differ by up to
  34 % of their scale, in either direction (the adaptive slope makes CROWN non-monotone in the
  intermediate bounds). The benches therefore check agreement
  (:func:`max_rel_diff`) before timing a case. The defaults are kept because they are what a user
  runs (and the sparse path is auto_LiRPA's speed-up).
- ``CROWN-IBP``: intermediate bounds by IBP, the last layer (with C) by CROWN with the adaptive
  lower slope, the same as fastcert ``method="crown-ibp"``: <= 1.6e-6 relative on every net tried
  (including the deep narrow ones where CROWN differs).

convex_adversarial: ``DualNetwork(net, X, eps)`` with its default ``norm_type='l1'`` (the dual norm
of L-inf), ``proj=None`` (exact, no random projections), ``bounded_input=False`` (no clipping).
``dual(c)`` is a lower bound of ``c^T f``; the upper bound is ``-dual(-c)``; both in one call with
``[C; -C]``. Its intermediate bounds are Fast-Lin's (same lower and upper slope, not intersected
with IBP), as fastcert ``method="kw"``: <= 1.3e-6 relative on every net tried.

"Relative" above is :func:`max_rel_diff`: ``max |a - b| / max |b|`` over a whole [B, S] result.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.metadata
import sys
import types
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

LIRPA_METHODS = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP"}
REF_METHODS = {"ibp": "ibp", "crown": "crown", "crown-ibp": "crown-ibp", "kw": "fastlin", "fastlin": "fastlin"}

# bound_opts given to every BoundedModule: item 5 of PEERS.md (alpha-CROWN crashes in 0.3 with the
# sparse-alpha defaults on multi-layer nets), harmless for IBP / CROWN / CROWN-IBP; "relu":
# "adaptive" is auto_LiRPA's default, written out because it is what makes CROWN equal fastcert's.
LIRPA_BOUND_OPTS: dict[str, Any] = {"relu": "adaptive", "sparse_features_alpha": False, "sparse_spec_alpha": False}


def lirpa_shims() -> None:
    """Make auto_LiRPA 0.3 importable on numpy 2 and torch >= 2.9 (idempotent; call before importing it).

    1. ``numpy.lib.arraysetops`` (removed in numpy 2): a stub module exposing ``isin``; ``np.bool``.
    2. ``torch.onnx.utils._optimize_graph``: re-exported from the torchscript exporter.
    3. ``torch.onnx.symbolic_helper._set_opset_version``: sets the exporter's GLOBALS instead.
    4. ``torch._C.Node.__getitem__`` (attribute access by name), removed from torch.
    (5. alpha-CROWN's sparse options: see :data:`LIRPA_BOUND_OPTS`, passed at construction.)
    """
    if "numpy.lib.arraysetops" not in sys.modules:
        stub = types.ModuleType("numpy.lib.arraysetops")
        stub.isin = np.isin  # type: ignore[attr-defined]
        sys.modules["numpy.lib.arraysetops"] = stub
    if not hasattr(np, "bool"):  # pragma: no cover - numpy 2.0-2.1 have np.bool again
        np.bool = bool  # type: ignore[attr-defined]

    # the submodules themselves (torch.onnx's attributes of these names are other modules)
    symbolic_helper = importlib.import_module("torch.onnx.symbolic_helper")
    onnx_utils = importlib.import_module("torch.onnx.utils")

    if not hasattr(onnx_utils, "_optimize_graph"):
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils

        onnx_utils._optimize_graph = ts_utils._optimize_graph  # type: ignore[attr-defined]
    if not hasattr(symbolic_helper, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(opset_version: int) -> None:
            GLOBALS.export_onnx_opset_version = opset_version

        symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)  # type: ignore[attr-defined]


@functools.cache
def lirpa_status() -> tuple[bool, str]:
    """(available, reason): whether auto_LiRPA imports (after :func:`lirpa_shims`), and why not."""
    try:
        # record (= swallow) torch's deprecation notices (torch.jit.script, torchscript onnx): torch
        # installs its own warning filters during the import, so "ignore" alone would not hold
        with warnings.catch_warnings(record=True):
            lirpa_shims()
            import auto_LiRPA  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means "peer unavailable", with the reason
        return False, f"auto_LiRPA unavailable: {type(exc).__name__}: {exc}"
    return True, f"auto_LiRPA {_dist_version('auto-lirpa')} imported (with the benches.peers shims)"


@functools.cache
def kw_status() -> tuple[bool, str]:
    """(available, reason) for convex_adversarial."""
    try:
        import convex_adversarial  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"convex_adversarial unavailable: {type(exc).__name__}: {exc}"
    return True, f"convex_adversarial {_dist_version('convex-adversarial')} imported"


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "(version unknown)"


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` in float64 (``b`` the reference; ``max |b|`` floored at 1e-12)."""
    a64, b64 = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-12))


def margin_spec(labels: torch.Tensor, K: int) -> torch.Tensor:
    """Margin spec ``C: [B, K-1, K]`` float32, rows ``e_y - e_j`` for the classes ``j != y``, in order of j.

    ``labels``: [B] integer labels (e.g. the prediction at x). ``C f`` are the margins ``f_y - f_j``.
    """
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    B = y.shape[0]
    if ((y < 0) | (y >= K)).any():
        raise ValueError(f"labels must lie in [0, {K})")
    eye = torch.eye(K)
    others = torch.arange(K).expand(B, K)[torch.arange(K).expand(B, K) != y[:, None]].reshape(B, K - 1)
    return eye[y][:, None, :] - eye[others]


def _float32_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).float().eval()


def _check_eps(eps: Any, B: int) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=torch.float32)
    if e.dim() == 0:
        e = e.expand(B)
    if e.shape != (B,):
        raise ValueError(f"eps must be a scalar or [{B}], got shape {tuple(e.shape)}")
    return e


class LirpaPeer:
    """auto_LiRPA 0.3 on one (model, input shape, batch size): ``BoundedModule`` built once here.

    ``bounds(x, eps, method, C)`` runs ``compute_bounds`` with ``BoundedTensor(x, PerturbationLpNorm(inf,
    eps))`` and ``C=`` (fused into the last layer), under ``torch.no_grad()``.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, bound_opts: dict[str, Any] | None = None) -> None:
        ok, reason = lirpa_status()
        if not ok:
            raise RuntimeError(reason)
        from auto_LiRPA import BoundedModule

        self.model = _float32_copy(model)
        self.shape = tuple(x.shape)
        opts = dict(LIRPA_BOUND_OPTS)
        opts.update(bound_opts or {})
        self.module = BoundedModule(self.model, torch.zeros(self.shape, dtype=torch.float32), bound_opts=opts,
                                    device="cpu")

    def bounds(self, x: torch.Tensor, eps: Any, method: str, C: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) ``[B, S]`` of ``C f(x')`` over ``||x' - x||_inf <= eps``; method ibp|crown|crown-ibp."""
        from auto_LiRPA import BoundedTensor, PerturbationLpNorm

        if method not in LIRPA_METHODS:
            raise ValueError(f"auto_LiRPA peer: method must be one of {sorted(LIRPA_METHODS)}, got {method!r}")
        if tuple(x.shape) != self.shape:
            raise ValueError(f"this LirpaPeer was built for inputs {self.shape}, got {tuple(x.shape)}")
        xf = x.float()
        e = _check_eps(eps, xf.shape[0])
        ptb = PerturbationLpNorm(norm=np.inf, eps=e.reshape(-1, *[1] * (xf.dim() - 1)))
        Cf = None if C is None else torch.as_tensor(C).float()
        with torch.no_grad():
            lb, ub = self.module.compute_bounds(x=(BoundedTensor(xf, ptb),), C=Cf, method=LIRPA_METHODS[method])
        return lb, ub


class KWPeer:
    """convex_adversarial's Kolter-Wong dual bound (== Fast-Lin, fastcert ``method="kw"``).

    ``model``: an ``nn.Sequential`` of Linear / Conv2d / ReLU / Flatten. The dual network depends on
    x and eps, so it is built in every ``bounds`` call; lower and upper bounds come from one dual
    evaluation with the stacked objective ``[C; -C]``.
    """

    def __init__(self, model: nn.Sequential, x: torch.Tensor | None = None) -> None:
        ok, reason = kw_status()
        if not ok:
            raise RuntimeError(reason)
        if not isinstance(model, nn.Sequential):
            raise TypeError("convex_adversarial needs an nn.Sequential")
        for m in model:
            if not isinstance(m, (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten)):
                raise TypeError(f"convex_adversarial peer: unsupported layer {type(m).__name__}")
        self.model = _float32_copy(model)

    def bounds(self, x: torch.Tensor, eps: Any, method: str = "kw", C: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) ``[B, S]`` of ``C f(x')`` over ``||x' - x||_inf <= eps``; method must be "kw"."""
        from convex_adversarial import DualNetwork

        if method not in ("kw", "fastlin"):
            raise ValueError(f"convex_adversarial peer computes method 'kw' only, got {method!r}")
        e = torch.as_tensor(eps, dtype=torch.float32)
        if e.dim() != 0:
            raise ValueError("convex_adversarial takes one eps for the whole batch")
        xf = x.float()
        with torch.no_grad():
            if C is None:
                K = self.model(xf[:1]).shape[-1]
                C = torch.eye(K).expand(xf.shape[0], K, K)
            Cf = torch.as_tensor(C).float()
            S = Cf.shape[1]
            res = DualNetwork(self.model, xf, float(e))(torch.cat([Cf, -Cf], 1))
        return res[:, :S], -res[:, S:]


class TorchRefPeer:
    """The plain-torch reference (``fastcert.reference.crown.bounds``) in float32 under ``no_grad``.

    Methods ibp | crown | crown-ibp | kw ("kw" is the reference's "fastlin", the same bound).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor | None = None) -> None:
        self.model = _float32_copy(model)

    def bounds(self, x: torch.Tensor, eps: Any, method: str, C: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) ``[B, S]`` of ``C f(x')`` over ``||x' - x||_inf <= eps``."""
        from fastcert.reference import crown as ref

        if method not in REF_METHODS:
            raise ValueError(f"torch reference: method must be one of {sorted(REF_METHODS)}, got {method!r}")
        with torch.no_grad():
            return ref.bounds(self.model, x.float(), eps, "inf", REF_METHODS[method],
                              None if C is None else torch.as_tensor(C).float())


PEERS: dict[str, type] = {"auto_LiRPA": LirpaPeer, "convex_adversarial": KWPeer, "torch-reference": TorchRefPeer}
PEER_METHODS: dict[str, tuple[str, ...]] = {"auto_LiRPA": ("ibp", "crown", "crown-ibp"), "convex_adversarial": ("kw",),
                                            "torch-reference": ("ibp", "crown", "crown-ibp", "kw")}
