"""The benchmark cases of issue #3: networks, inputs and the margin specification.

Synthetic cases use torch's default initialisation under a fixed seed and inputs uniform in [0, 1)
under another fixed seed; the real case is Wong & Kolter's MNIST CNN (``convex_adversarial``
``models/mnist.pth``) on the first MNIST test images, read from ``../shared/data`` through the tests'
one loader (skipped, with the reason, when that folder is absent).

The specification (``benches.peers.margin_spec``) is the robustness margin used by every peer: rows
``e_y - e_j`` for the nine classes ``j != y``, with ``y`` the network's prediction at ``x``
(``C: [B, 9, 10]``), over the L-inf ball ``||x' - x|| <= eps`` with no clipping to [0, 1].
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def mlp(widths: list[int], n_in: int = 784, n_out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    dims = [n_in] + widths
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], n_out))
    return nn.Sequential(*layers)


def cnn(c_in: int, hw: int) -> nn.Sequential:
    """Wong & Kolter's small CNN: Conv c->16 4x4 s2 p1, ReLU, Conv 16->32 4x4 s2 p1, ReLU, Linear ->100, ReLU,
    Linear 100->10."""
    flat = 32 * (hw // 4) * (hw // 4)
    return nn.Sequential(nn.Conv2d(c_in, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(flat, 100), nn.ReLU(), nn.Linear(100, 10))


def _seeded(build: Callable[[], nn.Sequential], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return build().eval()


def _uniform(shape: tuple[int, ...]) -> Callable[[int], torch.Tensor]:
    return lambda batch: torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))


def _real_kw_mnist() -> tuple[nn.Sequential, Callable[[int], torch.Tensor]]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import shared_data  # the tests' one reader of ../shared/data (skips with a reason when absent)
    finally:
        sys.path.pop(0)
    model = shared_data.load_kw_mnist(torch.float32).eval()
    X, _ = shared_data.load_eran_mnist(64)
    return model, lambda batch: X[:batch].clone()


# name -> () -> (model, batch -> x)
CASES: dict[str, Callable[[], tuple[nn.Sequential, Callable[[int], torch.Tensor]]]] = {
    "mnist-mlp-3x100": lambda: (_seeded(lambda: mlp([100] * 3)), _uniform((1, 28, 28))),
    "mnist-mlp-6x256": lambda: (_seeded(lambda: mlp([256] * 6)), _uniform((1, 28, 28))),
    "mnist-mlp-3x1024": lambda: (_seeded(lambda: mlp([1024] * 3)), _uniform((1, 28, 28))),
    "mnist-cnn-kw": lambda: (_seeded(lambda: cnn(1, 28)), _uniform((1, 28, 28))),
    "cifar-cnn-small": lambda: (_seeded(lambda: cnn(3, 32)), _uniform((3, 32, 32))),
    "real-kw-mnist": _real_kw_mnist,
}
