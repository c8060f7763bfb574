"""How one architecture is scored: data, batching, the LightningModule and the fit function.

Depends on ``models`` only; takes callbacks and loggers from its caller (``search``).
"""

from __future__ import annotations

from ._augment import Augment, augment
from ._batches import Batches, on_device
from ._data import (
    DATASETS,
    DatasetError,
    ImageData,
    find_fashion_mnist,
    load_dataset,
    read_idx,
    stratified_split,
)
from ._train import Classifier, TrainConfig, TrialResult, evaluate, fit, logits_in_batches

__all__ = [
    "DATASETS",
    "Augment",
    "Batches",
    "Classifier",
    "DatasetError",
    "ImageData",
    "TrainConfig",
    "TrialResult",
    "augment",
    "evaluate",
    "find_fashion_mnist",
    "fit",
    "load_dataset",
    "logits_in_batches",
    "on_device",
    "read_idx",
    "stratified_split",
]
