"""What every dataset reader returns, before ``load_dataset`` splits and checks it."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RawData"]


class RawData(NamedTuple):
    """A dataset as its files hold it: uint8 images ``(N, C, H, W)``, int64 labels ``(N,)`` in
    ``range(len(classes))``. ``test_x``/``test_y`` are None when the source has no test split
    (``load_dataset`` then carves one out); ``source`` says where it was read from."""

    pool_x: torch.Tensor
    pool_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    classes: tuple[str, ...]
    source: str
