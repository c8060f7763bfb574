"""Batched data augmentation on the training device (seed 002: "Data augmentation HELPS!").

One affine resampling moves and turns every image of a batch at once, and a flip is a masked
select: no per-image Python work in the training step, so augmentation costs a few kernel
launches per batch rather than a pass over the images in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "augment"]


@dataclass(frozen=True)
class Augment:
    """What augmentation does to a training image; everything off by default."""

    # Largest shift in pixels, drawn uniformly per image and axis (Keras' width/height_shift).
    translate: float = 0.0
    # Largest rotation in degrees, drawn uniformly per image in [-rotate, rotate].
    rotate: float = 0.0
    # Mirror half of the images left-right. Not for data where handedness matters (digits).
    flip: bool = False

    @property
    def active(self) -> bool:
        return bool(self.translate or self.rotate or self.flip)


def augment(
    x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A randomly moved, turned and mirrored copy of the float batch ``x`` (N, C, H, W).

    Pixels moved in from outside the image become 0, which is black only before normalisation:
    augment the raw 0..255 values, then normalise.
    """
    if not aug.active:
        return x
    n, _, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

    if aug.translate or aug.rotate:
        angle = uniform(-aug.rotate, aug.rotate) * (math.pi / 180)
        # affine_grid works in [-1, 1] coordinates: a shift of t pixels is 2t / size.
        tx = uniform(-aug.translate, aug.translate) * (2 / w)
        ty = uniform(-aug.translate, aug.translate) * (2 / h)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if aug.flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x
