"""scikit-learn's bundled 8x8 handwritten digits: a tiny data set for smoke tests, no files.

scikit-learn is imported only when the data set is read, so nothing else pays for it.
"""

from __future__ import annotations

import numpy as np
import torch

from ._errors import DatasetError
from ._raw import RawData
from ._split import stratified_split

__all__ = ["DIGITS_CLASSES", "load_digits"]

DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
_DIGITS_SOURCE = "sklearn.datasets.load_digits"
# digits has no official test split; a fixed seed (not the study seed) keeps its carved-out
# test set identical across studies, so test scores of different studies stay comparable.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0


def load_digits() -> RawData:
    """The 1797 digits as 0..255 uint8 images, with a fixed stratified 20 % as the test split."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise DatasetError(
            "the 'digits' dataset comes with scikit-learn, which is not installed; "
            "install it with `pip install 'cnnas[digits]'` (or `pip install scikit-learn`)"
        ) from exc
    bunch = sklearn_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    # Pixels are counts 0..16 (of a 4x4 block); stretch them to the 0..255 range of
    # Fashion-MNIST so the same normalisation and augmentation code applies to both.
    images = np.rint(np.clip(raw, 0, 16) * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target)).to(torch.int64)
    pool_idx, test_idx = stratified_split(y, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    return RawData(
        x[pool_idx], y[pool_idx], x[test_idx], y[test_idx], DIGITS_CLASSES, _DIGITS_SOURCE
    )
