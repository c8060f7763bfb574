"""Fixtures for the tests of ``models``. The spec generators live in ``_specs.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Runs these tiny networks on one intra-op thread, restoring the setting afterwards.

    The networks here are a few thousand MACs to a few tens of millions; a second thread buys
    nothing, and on a busy machine the thread pool's waits made the suite five times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
