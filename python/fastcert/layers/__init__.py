"""Layer types of the IR (see base.py for the protocol)."""

from fastcert.layers.activation import Activation, UnsupportedError
from fastcert.layers.affine import Conv2d, Dense, Diag
from fastcert.layers.base import Box, Layer

__all__ = ["Activation", "Box", "Conv2d", "Dense", "Diag", "Layer", "UnsupportedError"]
