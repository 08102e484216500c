"""Datasets bundled with installed packages, so that nothing is ever downloaded."""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set, 1797 images).

    Returns ``x`` float32 of shape (1797, 1, 8, 8) scaled from 0..16 to 0..1 and ``y`` int64 labels
    0..9. The data ships inside scikit-learn; no network access is needed.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    images, labels = sklearn_digits(return_X_y=True)
    x = (np.asarray(images, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    return x, np.asarray(labels, dtype=np.int64)
