"""Small, download-free datasets used by the demo and the tests.

Everything here is bundled with scikit-learn, so it works offline and in CI.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "load_digits_tensors"]

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
