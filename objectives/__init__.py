"""How one architecture is scored: data, batching, the LightningModule and the fit function.

Depends on ``models`` only; takes callbacks and loggers from its caller (``search``).
"""

from __future__ import annotations

from ._augment import Augment, augment
from ._batches import Batches, on_device
from ._data import (
    DATASETS,
    EMNIST_SPLITS,
    DatasetError,
    ImageData,
    default_data_dir,
    find_fashion_mnist,
    load_dataset,
    read_idx,
    resize_images,
    stratified_split,
)
from ._fetch import MIRROR_ENV, REMOTES, Remote, fetch
from ._folder import image_folder_cache
from ._train import Classifier, TrainConfig, TrialResult, evaluate, fit, logits_in_batches

__all__ = [
    "DATASETS",
    "EMNIST_SPLITS",
    "MIRROR_ENV",
    "REMOTES",
    "Augment",
    "Batches",
    "Classifier",
    "DatasetError",
    "ImageData",
    "Remote",
    "TrainConfig",
    "TrialResult",
    "augment",
    "default_data_dir",
    "evaluate",
    "fetch",
    "find_fashion_mnist",
    "fit",
    "image_folder_cache",
    "load_dataset",
    "logits_in_batches",
    "on_device",
    "read_idx",
    "resize_images",
    "stratified_split",
]
