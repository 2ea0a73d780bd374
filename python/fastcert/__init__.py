"""fastcert: fast, sound robustness verification for PyTorch networks.

Quick start::

    import fastcert
    res = fastcert.certify(model, x, eps=0.01, norm="inf", method="crown")
    res.certified        # [B] bool
"""

from fastcert import attacks
from fastcert._ext import build_info, set_blas_threads
from fastcert.api import BoundsResult, CertifyResult, bounds, certify
from fastcert.layers import UnsupportedError
from fastcert.mip import verify
from fastcert.network import Network
from fastcert.nn import Normalize

__version__ = "0.1.0"

__all__ = [
    "BoundsResult",
    "CertifyResult",
    "Network",
    "Normalize",
    "UnsupportedError",
    "attacks",
    "bounds",
    "build_info",
    "set_blas_threads",
    "verify",
    "certify",
]
