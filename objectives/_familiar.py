"""Whether an image looks like the images a model was trained on.

A classifier answers for any input, confidently for inputs far from its training data (a photo
of a boot on a white background is a "Bag" at 92% for a Fashion-MNIST model). What cnnas can
check cheaply is the first-order statistics the network's input normalisation assumes: the
image's size and channels before conversion, and its mean brightness and contrast against the
range the training images span. The training range is stored with the model
(``input_stats`` in its metadata) when it is saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["input_statistics", "unfamiliar"]

# The share of training images left outside the stored range at each end.
_TAIL = 0.005


def input_statistics(x: torch.Tensor) -> dict[str, Any]:
    """The range of per-image mean and standard deviation (0..255 units) of uint8 images
    ``(N, C, H, W)``, without their 0.5% extremes at either end, and their shape."""
    flat = x.reshape(len(x), -1).float()
    means, stds = flat.mean(1), flat.std(1)
    q = torch.tensor([_TAIL, 1 - _TAIL])
    return {
        "image_mean": [round(float(v), 2) for v in torch.quantile(means, q)],
        "image_std": [round(float(v), 2) for v in torch.quantile(stds, q)],
        "channels": int(x.shape[1]),
        "height": int(x.shape[2]),
        "width": int(x.shape[3]),
    }


def _far_size(size: tuple[int, int], model: tuple[int, int]) -> bool:
    """More than twice as large or small on a side, or another shape (aspect off by 25%)."""
    (ih, iw), (mh, mw) = size, model
    scale = max(ih / mh, mh / ih, iw / mw, mw / iw)
    aspect = (ih / iw) / (mh / mw)
    return scale > 2.0 or not 0.8 <= aspect <= 1.25


def _outside(value: float, span: Sequence[float], slack: float) -> bool:
    lo, hi = span
    margin = slack * max(hi - lo, 1.0)
    return value < lo - margin or value > hi + margin


def unfamiliar(
    image: torch.Tensor,
    stats: Mapping[str, Any] | None,
    *,
    original_size: tuple[int, int] | None = None,
    original_mode: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[str]:
    """Why one image ``(C, H, W)`` in the model's channels and size (0..255 units) looks unlike
    the training images, as short phrases; empty when nothing stands out.

    ``stats`` is the model's ``input_stats``; a model saved without them is judged against its
    pixel ``mean`` and ``std`` instead (an image whose mean brightness is more than one pixel
    standard deviation from the training mean).
    """
    c, h, w = image.shape
    notes: list[str] = []
    if original_size is not None and _far_size(tuple(original_size), (h, w)):
        notes.append(
            f"it is {original_size[0]}x{original_size[1]}, far from the model's {h}x{w} (resized)"
        )
    if original_mode is not None:
        colour = original_mode not in ("1", "L", "LA", "I", "I;16", "F")
        if c == 1 and colour:
            notes.append("it is in colour; the model was trained on grayscale images")
        if c == 3 and not colour:
            notes.append("it is grayscale; the model was trained on colour images")
    pixels = image.float().reshape(-1)
    m, s = float(pixels.mean()), float(pixels.std())
    if stats and "image_mean" in stats:
        lo, hi = stats["image_mean"]
        if _outside(m, stats["image_mean"], 0.1):
            notes.append(
                f"its mean brightness {m:.0f} is outside the training images' {lo:.0f}-{hi:.0f}"
            )
        lo, hi = stats["image_std"]
        if _outside(s, stats["image_std"], 0.1):
            notes.append(
                f"its contrast (std {s:.0f}) is outside the training images' {lo:.0f}-{hi:.0f}"
            )
    elif mean is not None and std is not None:
        mu, sigma = sum(mean) / len(mean), sum(std) / len(std)
        if abs(m - mu) > sigma:
            notes.append(f"its mean brightness {m:.0f} is far from the training images' {mu:.0f}")
    return notes
