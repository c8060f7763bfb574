from __future__ import annotations

import os

import pytest

from cnnas.objectives import ImageData, load_dataset


@pytest.fixture(scope="session")
def digits() -> ImageData:
    """scikit-learn's 8x8 digits: 1797 images, bundled, loads in milliseconds."""
    return load_dataset("digits", seed=0)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """cnnas's user cache (the empty MLflow store template, image-folder caches) in a folder of
    the test session's own, so tests neither read nor fill the real ~/.cache/cnnas."""
    before = os.environ.get("CNNAS_CACHE_DIR")
    os.environ["CNNAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnnas-cache"))
    yield
    if before is None:
        del os.environ["CNNAS_CACHE_DIR"]
    else:
        os.environ["CNNAS_CACHE_DIR"] = before


@pytest.fixture(autouse=True)
def no_tracking_uri_from_the_environment(monkeypatch):
    """cnnas honours $MLFLOW_TRACKING_URI; a developer's own must not send the tests' runs to
    their server. Tests of that precedence set it themselves."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
