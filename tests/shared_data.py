"""The one place where tests read the external material in ``../shared/data``.

The folder holds published networks and data made outside this project (see its
``MANIFEST.md``). It is never copied into the repository: it lies beside the clone
(``<repo root>/../shared/data``, possibly through a symlink), or wherever
``$FASTCERT_SHARED_DATA`` points. When it is absent, every test that needs it is
skipped with a reason that says so (:func:`require_shared`).

Besides locating files, this module builds the torch ``nn.Sequential`` models for the
``.pth`` state dicts described in the MANIFEST (sections 10 and 11), and loads the
ERAN MNIST test subset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastcert

ENV_VAR = "FASTCERT_SHARED_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Relative paths inside the shared data folder.
ERAN_MNIST_X = "abcrown/datasets/eran/mnist_eran/X_eran.npy"
ERAN_MNIST_Y = "abcrown/datasets/eran/mnist_eran/y_eran.npy"
REFERENCE_OUTPUTS = "pth_models_reference_outputs.json"
KW_MNIST = "convex_adversarial/models/mnist.pth"

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


# --------------------------------------------------------------------------- locating


def shared_data_dir() -> Path | None:
    """The shared data folder, or ``None`` when it cannot be found.

    Looks at ``$FASTCERT_SHARED_DATA`` first, then ``<repo root>/../shared/data``
    (symlinks resolved).
    """
    env = os.environ.get(ENV_VAR)
    candidates = []
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(REPO_ROOT / ".." / "shared" / "data")
    for c in candidates:
        try:
            c = c.resolve()
        except OSError:
            continue
        if c.is_dir():
            return c
    return None


def _where_looked() -> str:
    env = os.environ.get(ENV_VAR)
    default = (REPO_ROOT / ".." / "shared" / "data").resolve()
    return f"${ENV_VAR}={env!r}, {default}" if env else f"${ENV_VAR} unset, {default}"


def require_shared(relpath: str | os.PathLike[str] = "") -> Path:
    """Path of ``relpath`` inside the shared data folder; skips the test if it is absent."""
    root = shared_data_dir()
    if root is None:
        pytest.skip(
            f"../shared/data not found (looked at {_where_looked()}): "
            "real-data tests need the shared folder beside the clone"
        )
    path = root / relpath
    if not path.exists():
        pytest.skip(
            f"../shared/data not found ({relpath} missing under {root}): "
            "real-data tests need the shared folder beside the clone"
        )
    return path


# --------------------------------------------------------------------------- data


def load_eran_mnist(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST test images (ERAN / alpha-beta-CROWN subset).

    Returns ``X: [n, 1, 28, 28]`` float32 in [0, 1] and ``y: [n]`` int64.
    """
    X = np.load(require_shared(ERAN_MNIST_X))
    y = np.load(require_shared(ERAN_MNIST_Y))
    if not 0 < n <= X.shape[0]:
        raise ValueError(f"n must be in 1..{X.shape[0]}, got {n}")
    X = torch.from_numpy(np.ascontiguousarray(X[:n], dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(y[:n]).astype(np.int64))
    assert X.shape == (n, 1, 28, 28), X.shape
    return X, y


def load_reference_outputs() -> dict:
    """``pth_models_reference_outputs.json``: per model file, ``n_correct``, ``n_images``,
    ``logits_first3`` (float64 logits of the first 3 images), ``labels_first3``."""
    with open(require_shared(REFERENCE_OUTPUTS)) as f:
        return json.load(f)


# --------------------------------------------------------------------------- models


class _NormalizeFallback(nn.Module):
    """Stand-in for ``fastcert.Normalize`` while it does not exist: ``(x - mean) / std``
    per channel (dim 1) on ``[B, C, H, W]`` or ``[B, C*...]`` inputs."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).reshape(-1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.mean.numel()
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        if x.dim() == 4:
            return (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
        flat = x.reshape(x.shape[0], c, -1)
        return ((flat - mean.view(1, c, 1)) / std.view(1, c, 1)).reshape(x.shape)


def normalize_layer(mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    cls = getattr(fastcert, "Normalize", None) or _NormalizeFallback
    return cls(mean, std)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        sd = obj["state_dict"]
        # The ERAN copies store {'acc': ..., 'state_dict': [OrderedDict]}.
        if isinstance(sd, (list, tuple)):
            sd = sd[0]
        return sd
    return obj


def _mlp(depth: int, width: int) -> nn.Sequential:
    """Flatten, Linear(784, w), (depth-2) x [ReLU, Linear(w, w)], ReLU, Linear(w, 10).

    ``depth`` counts the Linear layers (6 or 9); the state dict keys are 1, 3, 5, ...
    """
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, width)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def _conv_small_mnist() -> nn.Sequential:
    # keys 0, 2, 5, 7 (Flatten at 4)
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=0),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=0),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(800, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _kw_mnist() -> nn.Sequential:
    # Wong & Kolter 2018; keys 0, 2, 5, 7 (Flatten at 4)
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


# relpath -> (builder, normalisation (mean, std) or None)
ERAN_MNIST_MODELS: dict[str, tuple] = {
    "abcrown/models/eran/mnist_6_100_nat.pth": (lambda: _mlp(6, 100), None),
    "abcrown/models/eran/mnist_9_100_nat.pth": (lambda: _mlp(9, 100), None),
    "abcrown/models/eran/mnist_6_200_nat.pth": (lambda: _mlp(6, 200), None),
    "abcrown/models/eran/mnist_9_200_nat.pth": (lambda: _mlp(9, 200), None),
    "abcrown/models/eran/mnist_conv_small_nat.pth": (
        _conv_small_mnist,
        ((MNIST_MEAN,), (MNIST_STD,)),
    ),
}
MNIST_MODELS: dict[str, tuple] = {**ERAN_MNIST_MODELS, KW_MNIST: (_kw_mnist, None)}


def load_model(relpath: str, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The torch model of one of the ``MNIST_MODELS`` files, in eval mode.

    Takes ``[B, 1, 28, 28]`` pixels in [0, 1]; a normalisation, if the model has one,
    is the first layer of the returned ``nn.Sequential``.
    """
    builder, norm = MNIST_MODELS[relpath]
    model = builder()
    model.load_state_dict(_load_state_dict(require_shared(relpath)), strict=True)
    model = model.to(dtype)
    if norm is not None:
        # prepended after the dtype cast: Normalize keeps its constants exact (float64)
        model = nn.Sequential(normalize_layer(*norm), *model)
    return model.eval()


def load_mnist_6_100(dtype=torch.float32):
    return load_model("abcrown/models/eran/mnist_6_100_nat.pth", dtype)


def load_mnist_9_100(dtype=torch.float32):
    return load_model("abcrown/models/eran/mnist_9_100_nat.pth", dtype)


def load_mnist_6_200(dtype=torch.float32):
    return load_model("abcrown/models/eran/mnist_6_200_nat.pth", dtype)


def load_mnist_9_200(dtype=torch.float32):
    return load_model("abcrown/models/eran/mnist_9_200_nat.pth", dtype)


def load_mnist_conv_small(dtype=torch.float32):
    return load_model("abcrown/models/eran/mnist_conv_small_nat.pth", dtype)


def load_kw_mnist(dtype=torch.float32):
    return load_model(KW_MNIST, dtype)
