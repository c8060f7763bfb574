"""How one architecture is scored: data, batching, the LightningModule and the fit function.

Depends on ``models`` only; takes callbacks and loggers from its caller (``search``).
"""

from __future__ import annotations

from ._augment import Augment, augment
from ._batches import Batches, on_device
from ._data import ImageData, load_dataset, resize_images
from ._datasets import DATASETS, EMNIST_SPLITS, DatasetEntry, dataset_entry
from ._errors import DatasetError
from ._familiar import input_statistics, unfamiliar
from ._fetch import MIRROR_ENV, REMOTES, Remote, fetch
from ._folder import image_folder_cache
from ._idx import find_fashion_mnist, read_idx
from ._latency import BACKENDS, Latency, measure_latency
from ._locate import default_data_dir
from ._predictor import ImageClassifier, ImageInputError, Prediction, Predictor
from ._skip_train import (
    activation_scores,
    earliest_correct,
    predict_in_batches,
    strongest_activation_labels,
    train_rmsprop,
)
from ._split import stratified_split
from ._train import (
    ACCELERATORS,
    MEMORY_FORMATS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    Classifier,
    TrainConfig,
    TrialResult,
    confusion_matrix,
    cpu_has_bf16,
    epoch_seconds,
    evaluate,
    fit,
    logits_in_batches,
)

__all__ = [
    "ACCELERATORS",
    "BACKENDS",
    "DATASETS",
    "EMNIST_SPLITS",
    "MEMORY_FORMATS",
    "MIRROR_ENV",
    "OPTIMIZERS",
    "PRECISIONS",
    "REMOTES",
    "SCHEDULES",
    "Augment",
    "Batches",
    "Classifier",
    "DatasetEntry",
    "DatasetError",
    "ImageClassifier",
    "ImageData",
    "ImageInputError",
    "Latency",
    "Prediction",
    "Predictor",
    "Remote",
    "TrainConfig",
    "TrialResult",
    "activation_scores",
    "augment",
    "confusion_matrix",
    "cpu_has_bf16",
    "dataset_entry",
    "default_data_dir",
    "earliest_correct",
    "epoch_seconds",
    "evaluate",
    "fetch",
    "find_fashion_mnist",
    "fit",
    "image_folder_cache",
    "input_statistics",
    "load_dataset",
    "logits_in_batches",
    "measure_latency",
    "on_device",
    "predict_in_batches",
    "read_idx",
    "resize_images",
    "stratified_split",
    "strongest_activation_labels",
    "train_rmsprop",
    "unfamiliar",
]
