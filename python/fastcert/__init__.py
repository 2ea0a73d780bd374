"""fastcert: fast, sound robustness verification for PyTorch networks.

Quick start::

    import fastcert
    res = fastcert.certify(model, x, eps=0.01, norm="inf", method="crown")
    res.certified        # [B] bool

The public names are imported on first use (PEP 562), so that ``import fastcert`` and light
entry points (``fastcert --version``, the ``vnncomp --server`` client) do not pay for torch,
scipy and the compiled core until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "BoundOptions": "fastcert.options",
    "AlphaOptions": "fastcert.options",
    "BoundsResult": "fastcert.api",
    "CertifyResult": "fastcert.api",
    "Network": "fastcert.network",
    "Normalize": "fastcert.nn",
    "UnsupportedError": "fastcert.layers",
    "bounds": "fastcert.api",
    "build_info": "fastcert._ext",
    "empty_cache": "fastcert.algorithms.linear_bounds",
    "set_blas_threads": "fastcert._ext",
    "verify": "fastcert.mip",
    "certify": "fastcert.api",
    "differentiable_bounds": "fastcert.api_diff",
    "certified_radius": "fastcert.radius",
    "RadiusResult": "fastcert.radius",
    "jacobian_bounds": "fastcert.jacobian",
    "lipschitz": "fastcert.jacobian",
    "JacobianBounds": "fastcert.jacobian",
    "LipschitzResult": "fastcert.jacobian",
    "lipschitz_curve": "fastcert.jacobian",
    "landscape": "fastcert.jacobian",
}
_SUBMODULES = ("attacks", "ops", "training")

__all__ = sorted([*_LAZY, *_SUBMODULES])

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from fastcert import attacks, ops, training
    from fastcert._ext import build_info, set_blas_threads
    from fastcert.algorithms.linear_bounds import empty_cache
    from fastcert.api import BoundsResult, CertifyResult, bounds, certify
    from fastcert.api_diff import differentiable_bounds
    from fastcert.errors import UnsupportedError
    from fastcert.mip import verify
    from fastcert.jacobian import (JacobianBounds, LipschitzResult, jacobian_bounds, landscape, lipschitz,
                                   lipschitz_curve)
    from fastcert.network import Network
    from fastcert.radius import RadiusResult, certified_radius
    from fastcert.nn import Normalize


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is not None:
        value = getattr(importlib.import_module(mod), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):  # a submodule (fastcert.mip, fastcert.io, ...), as after an eager import
        try:
            return importlib.import_module(f"fastcert.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fastcert.{name}":
                raise
    raise AttributeError(f"module 'fastcert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
