"""Defaults that fit the dataset: what a study trains with when the config does not say.

The built-in training defaults (batch 128, 3 epochs) suit tens of thousands of images. On a
small folder of images they give one or two optimisation steps an epoch and every trial stays
at chance, and the default space offers networks of millions of parameters for a hundred images.
For a small training split, the keys the config leaves out are derived from its size instead;
every key the config names is kept as it is, and the derivation is printed when a study starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._config import StudyConfig

__all__ = ["SMALL", "Sizing", "size_for"]

# Fewer training images than this is a small dataset (digits' 1,295 are not).
SMALL = 1000
# Enough optimisation steps for a trial to learn, at least, whatever the dataset's size.
MIN_STEPS = 400


@dataclass(frozen=True)
class Sizing:
    cfg: StudyConfig
    notes: tuple[str, ...]  # "train.batch_size 8", ... in the order derived

    def line(self, images: int) -> str | None:
        if not self.notes:
            return None
        return (
            f"small dataset ({images} training images): {', '.join(self.notes)} (derived from "
            "its size; set these keys in the config to choose them)"
        )


def _pow2_at_most(n: float) -> int:
    return 2 ** max(int(math.log2(max(n, 1))), 0)


def size_for(cfg: StudyConfig, train_images: int, pool_images: int) -> Sizing:
    """``cfg`` with the keys it leaves out derived for ``train_images`` (before any split is
    re-made: ``data.val_fraction`` is derived from ``pool_images``, train + validation)."""
    if train_images >= SMALL:
        return Sizing(cfg, ())
    given = cfg.given()
    notes: list[str] = []
    changes: dict[str, dict] = {"train": {}, "data": {}, "study": {}, "space": {}}
    if "data.val_fraction" not in given:
        # A tenth of a hundred images is ten: one more right answer moves accuracy ten points.
        changes["data"]["val_fraction"] = 0.2
        train_images = round(pool_images * 0.8)
    if "train.batch_size" not in given:
        # At least 16 steps an epoch, and never a batch of fewer than 8 images.
        changes["train"]["batch_size"] = min(max(_pow2_at_most(train_images / 16), 8), 128)
    batch = changes["train"].get("batch_size", cfg.train.batch_size)
    if "train.epochs" not in given:
        steps = max(train_images // batch, 1)
        changes["train"]["epochs"] = min(max(math.ceil(MIN_STEPS / steps), cfg.train.epochs), 60)
    if "study.max_params" not in given:
        # A network with far more parameters than images only memorises them.
        changes["study"]["max_params"] = max(20_000, 100 * train_images)
    if "space.max_filters" not in given:
        changes["space"]["max_filters"] = min(cfg.space.max_filters, 32)
    for section, values in changes.items():
        if values:
            cfg = cfg.replace(section, **values)
            notes += [f"{section}.{k} {v:,}" if isinstance(v, int) else f"{section}.{k} {v}"
                      for k, v in values.items()]  # fmt: skip
    return Sizing(cfg, tuple(notes))
