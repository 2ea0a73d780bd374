"""The engine's differentiable ops: ``torch.library`` custom ops in the ``fastcert::`` namespace.

Each op's forward and backward run in the compiled core (``csrc/diff/ops.cpp``; products through the
BLAS), on CPU tensors; each has a fake (shape) implementation, so the ops work under ``torch.compile``,
and an autograd formula made of another op. They compute in the nominal arithmetic of the optimize /
train mode (docs/architecture.md, "Two modes"): a certificate comes from the certify mode.

==========================  ===============================================================
``ibp_affine``              interval bounds through ``W z + b``
``relu_relax``              the ReLU relaxation as a function of the bounds (and of alpha)
``relax_back``              a back-substitution step through an elementwise relaxation
``linear_back``             a back-substitution step through a dense layer
``concretize_box``          the minimum of linear functions over a box
==========================  ===============================================================

A CUDA tensor gets an error naming the op: only CPU kernels are registered so far.
"""

from __future__ import annotations

from fastcert.ops.backsub import concretize_box, linear_back
from fastcert.ops.interval import ibp_affine
from fastcert.ops.relax import RELU_MODES, relax_back, relu_relax

OPS = ("ibp_affine", "relu_relax", "relax_back", "linear_back", "concretize_box")

__all__ = ["OPS", "RELU_MODES", "concretize_box", "ibp_affine", "linear_back", "relax_back", "relu_relax"]
