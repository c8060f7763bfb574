"""The dataset registry: every name ``load_dataset`` takes, with what is known before reading.

One :class:`DatasetEntry` per dataset holds its fixed class count (so a bad ``subset`` fails
before any file is read), whether the user must name its file or folder, the download that
provides it, where in a data directory it may lie, and the reader that loads it. An unknown name
fails listing the known ones. The readers know no dataset names; this module wires them up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ._cifar import CIFAR_10, CIFAR_100, CIFAR_100_COARSE, CifarLayout, read_cifar
from ._digits import DIGITS_CLASSES, load_digits
from ._errors import DatasetError
from ._folder import load_image_folder
from ._idx import (
    EMNIST_SPLITS,
    FASHION_MNIST_CLASSES,
    KMNIST_CLASSES,
    MNIST_CLASSES,
    read_emnist,
    read_fashion_mnist,
    read_idx_dataset,
)
from ._locate import Place
from ._npz import load_npz
from ._raw import RawData

__all__ = ["DATASETS", "EMNIST_SPLITS", "DatasetEntry", "LoadRequest", "dataset_entry"]


@dataclass(frozen=True)
class LoadRequest:
    """Where the caller of ``load_dataset`` says the data is, and how to decode it (checked)."""

    path: str | os.PathLike | None = None  # the dataset's own file or folder
    data_dir: str | os.PathLike | None = None  # a folder holding datasets (or path's stand-in)
    image_size: tuple[int, int] | None = None  # (height, width) an image folder decodes to
    cache_dir: str | os.PathLike | None = None  # where an image folder's decoded copy goes
    max_unreadable: float = 0.01  # fraction of undecodable image files tolerated


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset ``load_dataset`` can read, as far as it is known before reading it.

    ``dataset_entry(name)`` looks one up; ``load_dataset(name, ...)`` reads, checks and splits it.
    """

    name: str  # what load_dataset and a config's data.dataset take
    # Reads the dataset: (this entry, the request) -> its pool, official test split or None,
    # classes and source. Called through read().
    load: Callable[[DatasetEntry, LoadRequest], RawData] = field(repr=False)
    num_classes: int | None = None  # fixed by the dataset; None when its files decide
    # What data.path must name ("an .npz file"); None when the dataset has a default place.
    user_path: str | None = None
    fetch: str | None = None  # the `cnnas data fetch` name providing it; None: not downloadable
    # Sub-folders of a data directory that may hold it (the fetch name's folder first).
    subdirs: tuple[str, ...] = ()

    def read(self, request: LoadRequest) -> RawData:
        """The dataset's images and labels as its files hold them (no split, no resize)."""
        return self.load(self, request)

    def place(self, request: LoadRequest) -> Place:
        """Where the request says to look for this (downloadable) dataset."""
        assert self.fetch is not None, f"{self.name} has no download, hence no place"
        return Place(self.name, self.fetch, self.subdirs, request.path, request.data_dir)


def _user_path(entry: DatasetEntry, request: LoadRequest) -> Path:
    location = request.path if request.path is not None else request.data_dir
    if location is None:
        raise DatasetError(
            f"data.path: the {entry.name!r} dataset needs {entry.user_path}; set data.path in "
            "the config (or pass --data-dir)"
        )
    return Path(location).expanduser()


def _load_fashion_mnist(entry: DatasetEntry, request: LoadRequest) -> RawData:
    # Fashion-MNIST has its own search order (Debian's folder, then the fetch folder).
    return read_fashion_mnist(request.path if request.path is not None else request.data_dir)


def _load_digits(entry: DatasetEntry, request: LoadRequest) -> RawData:
    return load_digits()


def _load_idx(entry: DatasetEntry, request: LoadRequest, *, classes: tuple[str, ...]) -> RawData:
    return read_idx_dataset(entry.place(request), classes)


def _load_emnist(entry: DatasetEntry, request: LoadRequest, *, split: str) -> RawData:
    return read_emnist(entry.place(request), split)


def _load_cifar(entry: DatasetEntry, request: LoadRequest, *, layout: CifarLayout) -> RawData:
    return read_cifar(entry.place(request), layout)


def _load_image_folder(entry: DatasetEntry, request: LoadRequest) -> RawData:
    return load_image_folder(
        _user_path(entry, request),
        image_size=request.image_size,
        cache_dir=request.cache_dir,
        max_unreadable=request.max_unreadable,
    )


def _load_npz(entry: DatasetEntry, request: LoadRequest) -> RawData:
    return load_npz(_user_path(entry, request))


# The layouts torchvision (<Name>/raw) and EMNIST's own zip (gzip/) leave behind, after the
# folder `cnnas data fetch` writes.
_EMNIST_DIRS = ("emnist", "emnist/gzip", "gzip", "EMNIST/raw")
_CIFAR_100_DIRS = ("cifar-100", "cifar100")

_ENTRIES: tuple[DatasetEntry, ...] = (
    DatasetEntry(
        "fashion-mnist",
        _load_fashion_mnist,
        num_classes=len(FASHION_MNIST_CLASSES),
        fetch="fashion-mnist",
    ),
    DatasetEntry("digits", _load_digits, num_classes=len(DIGITS_CLASSES)),
    DatasetEntry(
        "mnist",
        partial(_load_idx, classes=MNIST_CLASSES),
        num_classes=len(MNIST_CLASSES),
        fetch="mnist",
        subdirs=("mnist", "MNIST", "MNIST/raw"),
    ),
    DatasetEntry(
        "kmnist",
        partial(_load_idx, classes=KMNIST_CLASSES),
        num_classes=len(KMNIST_CLASSES),
        fetch="kmnist",
        subdirs=("kmnist", "KMNIST", "KMNIST/raw"),
    ),
    # No class count: an EMNIST split's classes come from its mapping file when there is one.
    *(
        DatasetEntry(
            f"emnist-{split}",
            partial(_load_emnist, split=split),
            fetch="emnist",
            subdirs=_EMNIST_DIRS,
        )
        for split in EMNIST_SPLITS
    ),
    DatasetEntry(
        "cifar-10",
        partial(_load_cifar, layout=CIFAR_10),
        num_classes=10,
        fetch="cifar-10",
        subdirs=("cifar-10", "cifar10"),
    ),
    DatasetEntry(
        "cifar-100",
        partial(_load_cifar, layout=CIFAR_100),
        num_classes=100,
        fetch="cifar-100",
        subdirs=_CIFAR_100_DIRS,
    ),
    DatasetEntry(
        "cifar-100-coarse",
        partial(_load_cifar, layout=CIFAR_100_COARSE),
        num_classes=20,
        fetch="cifar-100",
        subdirs=_CIFAR_100_DIRS,
    ),
    DatasetEntry("image-folder", _load_image_folder, user_path="a folder of class subfolders"),
    DatasetEntry("npz", _load_npz, user_path="an .npz file"),
)

_REGISTRY: dict[str, DatasetEntry] = {entry.name: entry for entry in _ENTRIES}

#: Every dataset name ``load_dataset`` takes, in the order the documentation lists them.
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name``.

    Raises:
        DatasetError: if ``name`` is not a known dataset, listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
