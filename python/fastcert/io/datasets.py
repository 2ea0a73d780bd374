"""Download-free datasets: scikit-learn's bundled digits (the demo's and the tests' default), and readers
for MNIST / Fashion-MNIST IDX files and CIFAR-10 binary batches that the user already has in a folder
(nothing is ever downloaded)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "load_cifar10", "load_digits_tensors", "load_idx_dataset",
           "read_idx"]

#: Seed of the fixed train/test split of :func:`load_digits_tensors`.
DIGITS_SPLIT_SEED = 0
#: Fraction of the 1797 digits held out as the test set.
DIGITS_TEST_FRACTION = 0.25


def load_digits_tensors(
    dtype: torch.dtype = torch.float32,
    *,
    test_fraction: float = DIGITS_TEST_FRACTION,
    seed: int = DIGITS_SPLIT_SEED,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load scikit-learn's bundled 8x8 handwritten digits as torch tensors.

    Pixel values 0..16 are scaled to [0, 1]. The split is stratified by class and fixed by
    ``seed``, so the same call always returns the same tensors.

    Args:
        dtype: floating dtype of the images (``torch.float32`` or ``torch.float64``).
        test_fraction: fraction of the 1797 samples held out for testing, in (0, 1).
        seed: seed of the train/test split.

    Returns:
        ``(X_train, y_train, X_test, y_test)`` where, with ``N_test = ceil(1797 * test_fraction)``
        and ``N_train = 1797 - N_test`` (1347 / 450 with the defaults):

        - ``X_train``: ``[N_train, 1, 8, 8]`` ``dtype``, values in [0, 1]
        - ``y_train``: ``[N_train]`` int64, class labels 0..9
        - ``X_test``:  ``[N_test, 1, 8, 8]`` ``dtype``, values in [0, 1]
        - ``y_test``:  ``[N_test]`` int64, class labels 0..9
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    # Imported lazily: scikit-learn is slow to import and only needed here.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64) / 16.0  # [1797, 8, 8] in [0, 1]
    targets = np.asarray(digits.target, dtype=np.int64)  # [1797]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, targets, test_size=test_fraction, random_state=seed, stratify=targets
    )

    def to_x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype).unsqueeze(1)  # [N, 1, 8, 8]

    def to_y(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.int64)  # [N]

    return to_x(x_tr), to_y(y_tr), to_x(x_te), to_y(y_te)


# ------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary batches
# ------------------------------------------------------------------------------------------------

#: IDX type codes (LeCun's format: magic 0x0000, type byte, number of dimensions, big-endian int32 sizes).
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """One IDX file (``.gz`` or raw) -> a numpy array of its type and shape (e.g. [60000, 28, 28] uint8).
    A wrong magic number, an unknown type code or a size that does not match the header is a ValueError
    naming the file."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:  # type: ignore[operator]
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{p}: cannot read the IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{p}: not an IDX file (the magic number must start with two zero bytes)")
    code, nd = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{p}: unknown IDX type code 0x{code:02x}")
    if len(data) < 4 + 4 * nd:
        raise ValueError(f"{p}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    dt = np.dtype(_IDX_TYPES[code])
    want = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    body = data[4 + 4 * nd:]
    if len(body) != want:
        raise ValueError(f"{p}: the header says {dims} ({want} bytes of data) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=dt).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {stem} or {stem}.gz (MNIST / Fashion-MNIST IDX files; fastcert never "
                            f"downloads data)")


def load_idx_dataset(folder: str | os.PathLike[str], split: str = "train",
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST from a folder holding the four IDX files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-...``; each raw or ``.gz``). split: "train" or "test".
    Returns ``(X [N, 1, 28, 28] dtype in [0, 1] (pixels / 255), y [N] int64)``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = Path(folder)
    pre = "train" if split == "train" else "t10k"
    images = read_idx(_find(d, f"{pre}-images-idx3-ubyte"))
    labels = read_idx(_find(d, f"{pre}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{d}: images {images.shape} and labels {labels.shape} do not pair up ([N, H, W] and [N])")
    X = torch.from_numpy(images.astype(np.float64) / 255.0).to(dtype).unsqueeze(1)
    return X, torch.from_numpy(labels.astype(np.int64))


CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then 1024 red, 1024 green, 1024 blue pixels (row-major)


def load_cifar10(folder: str | os.PathLike[str], split: str = "train",
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from its binary version in a folder (``data_batch_1.bin`` .. ``data_batch_5.bin`` for
    "train", ``test_batch.bin`` for "test"; in the folder, else in its ``cifar-10-batches-bin`` subfolder). Every
    train batch present is read, in order. Returns ``(X [N, 3, 32, 32] dtype in [0, 1], y [N] int64)``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = Path(folder)
    names = ["test_batch.bin"] if split == "test" else [f"data_batch_{i}.bin" for i in range(1, 6)]
    files = [d / n for n in names if (d / n).is_file()]
    if not files and (d / "cifar-10-batches-bin").is_dir():
        d = d / "cifar-10-batches-bin"
        files = [d / n for n in names if (d / n).is_file()]
    if not files:
        raise FileNotFoundError(f"{d}: no {' / '.join(names)} (CIFAR-10 binary version; fastcert never downloads "
                                f"data)")
    xs, ys = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise ValueError(f"{f}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records")
        rec = raw.reshape(-1, CIFAR_RECORD)
        if int(rec[:, 0].max()) > 9:
            raise ValueError(f"{f}: a label byte is above 9 (not a CIFAR-10 binary batch)")
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    X = torch.from_numpy(np.concatenate(xs).astype(np.float64) / 255.0).to(dtype)
    return X, torch.from_numpy(np.concatenate(ys))
