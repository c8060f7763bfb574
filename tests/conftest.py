from __future__ import annotations

import pytest

from objectives import ImageData, load_dataset


@pytest.fixture(scope="session")
def digits() -> ImageData:
    """scikit-learn's 8x8 digits: 1797 images, bundled, loads in milliseconds."""
    return load_dataset("digits", seed=0)
