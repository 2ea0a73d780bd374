"""Moved to :mod:`fastcert.mip.lp_refine` (this name stays importable)."""

from __future__ import annotations

from fastcert.mip.lp_refine import (
    Encoding,
    affine_matrix,
    certified_lower,
    encode,
    highs_lp,
    refine_bounds,
    triangle_offset,
)

__all__ = ["Encoding", "affine_matrix", "certified_lower", "encode", "highs_lp", "refine_bounds", "triangle_offset"]
