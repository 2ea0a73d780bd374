"""The layer protocol (base.py: Box, Layer, interval steps). The primitives themselves are modules of
:mod:`fastcert.primitives`; ``UnsupportedError`` lives in :mod:`fastcert.errors` (re-exported here)."""

from fastcert.errors import UnsupportedError
from fastcert.layers.base import Box, Layer

__all__ = ["Box", "Layer", "UnsupportedError"]
