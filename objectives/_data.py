"""Loading a dataset for the search: read it through the registry, check, split, describe.

Every split is made here, once, with seeded stratified sampling, so that every trial of a study
sees exactly the same train/validation/test partition and the test set never leaks into search.
The readers (``_idx``, ``_cifar``, ``_npz``, ``_folder``, ``_digits``) and the registry naming
them (``_datasets``) sit below this module; nothing here or there imports the training stack,
so light-weight tools can load data without it (scikit-learn lazily, for ``digits``).
"""

from __future__ import annotations

import math
import numbers
import os
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ._datasets import DatasetEntry, LoadRequest, dataset_entry
from ._errors import DatasetError
from ._raw import RawData
from ._split import check_fraction, stratified_split, stratified_subset

__all__ = ["ImageData", "load_dataset", "resize_images"]

# Without an official test split, a fixed seed (not the study seed) carves one out, so test
# scores of different studies on the same data stay comparable.
_TEST_SEED = 0


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """An image-classification dataset split into train, validation and test sets.

    Images are ``uint8`` tensors of shape ``(N, C, H, W)``, contiguous and on the CPU; labels
    are ``int64`` tensors of shape ``(N,)`` with values in ``range(num_classes)``. ``mean`` and
    ``std`` are per-channel statistics of ``train_x`` in 0..255 units, meant for normalising
    inputs; ``std`` is always > 0.

    Equality is identity (comparing tensors field by field would be ambiguous).
    """

    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image, ``(C, H, W)``."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        # The default repr would print every pixel of every image.
        return (
            f"ImageData(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, train={len(self.train_y)}, "
            f"val={len(self.val_y)}, test={len(self.test_y)}, source={self.source!r})"
        )


class _Images(NamedTuple):
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)


@dataclass(frozen=True)
class _Settings:
    """The splitting arguments of ``load_dataset``, checked."""

    val_fraction: float
    test_fraction: float
    subset: int | None


# --------------------------------------------------------------------------------------------
# The steps of load_dataset, in order
# --------------------------------------------------------------------------------------------


def _check_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and 1 <= v <= 4096
            for v in image_size
        )
    ):
        raise DatasetError(
            f"image_size must be (height, width), two integers in 1..4096, got {image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _check_max_unreadable(max_unreadable: object) -> float:
    if (
        isinstance(max_unreadable, bool)
        or not isinstance(max_unreadable, numbers.Real)
        or not 0 <= max_unreadable <= 1
    ):
        raise ValueError(f"max_unreadable must be a fraction in [0, 1], got {max_unreadable!r}")
    return float(max_unreadable)


def _check_subset(entry: DatasetEntry, subset: object) -> int | None:
    # Before reading, only a fixed class count is known; _take_subset checks again after.
    min_subset = 2 * (entry.num_classes or 2)
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, numbers.Integral) or subset < min_subset
    ):
        raise DatasetError(
            f"subset must be an integer >= {min_subset} (two images per class, so each "
            f"class can appear in both train and validation) for {entry.name!r}, got {subset!r}"
        )
    return None if subset is None else int(subset)  # numpy integers are welcome


def _check_arguments(
    entry: DatasetEntry,
    *,
    path: str | os.PathLike | None,
    data_dir: str | os.PathLike | None,
    image_size: object,
    cache_dir: str | os.PathLike | None,
    max_unreadable: object,
    val_fraction: object,
    test_fraction: object,
    subset: object,
) -> tuple[LoadRequest, _Settings]:
    """The request for the reader and the splitting settings, checked before anything is read
    so that a typo fails fast: fractions strictly between 0 and 1, ``image_size`` two integers
    in 1..4096, ``max_unreadable`` in [0, 1], ``subset`` two images per class if that is fixed."""
    val = check_fraction(val_fraction, "val_fraction")
    test = check_fraction(test_fraction, "test_fraction")
    size = _check_size(image_size)
    request = LoadRequest(path, data_dir, size, cache_dir, _check_max_unreadable(max_unreadable))
    return request, _Settings(val, test, _check_subset(entry, subset))


def _with_test_split(raw: RawData, test_fraction: float) -> tuple[_Images, _Images]:
    """The training pool and the test set: the source's own test split, else a stratified
    ``test_fraction`` of the pool carved out with a fixed seed (never the study's)."""
    if raw.test_x is not None and raw.test_y is not None:
        return _Images(raw.pool_x, raw.pool_y), _Images(raw.test_x, raw.test_y)
    pool_idx, test_idx = stratified_split(raw.pool_y, test_fraction, _TEST_SEED)
    return (
        _Images(raw.pool_x[pool_idx], raw.pool_y[pool_idx]),
        _Images(raw.pool_x[test_idx], raw.pool_y[test_idx]),
    )


def _check_images(raw: RawData) -> None:
    """Images with pixels: a reader that takes arrays as they come (npz, IDX) may hand over
    images 0 pixels high or wide, which no network can read."""
    for what, x in (("training", raw.pool_x), ("test", raw.test_x)):
        if x is not None and x.dim() == 4 and (x.shape[2] == 0 or x.shape[3] == 0):
            raise DatasetError(
                f"{raw.source}: the {what} images are {x.shape[2]}x{x.shape[3]} pixels: "
                "images with no pixels cannot be classified"
            )


def _check_class_names(classes: tuple[str, ...], source: str) -> None:
    """Every class named once: two classes of one name (also in two Unicode spellings, as
    macOS and Linux write 'é') could not be told apart in a prediction or a confusion matrix."""
    seen: dict[str, str] = {}
    for c in classes:
        key = unicodedata.normalize("NFC", str(c)).strip()
        if key in seen:
            raise DatasetError(
                f"{source}: class {key!r} is named twice ({seen[key]!r} and {str(c)!r}); "
                "give every class a name of its own"
            )
        seen[key] = str(c)


def _check_split_sizes(
    source: str, train: _Images, val: _Images, test: _Images, settings: _Settings
) -> None:
    """Every split holds images: a set too small for one validation or test image would fail
    later, in the middle of a study."""
    for what, part, hint in (
        ("test", test, f"data.test_fraction {settings.test_fraction:g}"),
        ("validation", val, f"data.val_fraction {settings.val_fraction:g}"),
        ("training", train, "a class needs at least two images"),
    ):
        if len(part.y) == 0:
            total = len(train.y) + len(val.y) + len(test.y)
            raise DatasetError(
                f"{source}: {total} images leave 0 {what} images "
                f"({hint}; a class gives up an image only when it has two or more); add images "
                "or use a larger fraction"
            )


def _check_classes(
    name: str, classes: tuple[str, ...], pool_y: torch.Tensor, test_y: torch.Tensor, source: str
) -> None:
    """At least two classes among the training labels, and every label a class index."""
    _check_class_names(classes, source)
    present = torch.unique(pool_y).tolist()
    if len(present) < 2:
        only = ", ".join(classes[int(k)] for k in present) or "none"
        raise DatasetError(
            f"{source}: a classifier needs at least two classes, but the training images of "
            f"{name!r} hold {len(present)} ({only})"
        )
    for what, y in (("training", pool_y), ("test", test_y)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DatasetError(
                f"{source}: {what} labels must be in 0..{len(classes) - 1} "
                f"({len(classes)} classes), found {int(y.min())}..{int(y.max())}"
            )


def _take_subset(
    pool: _Images, subset: int | None, seed: int, name: str, classes: tuple[str, ...]
) -> _Images:
    """Exactly ``subset`` images of the pool, class proportions kept (the whole pool when it
    is no larger); at least two per class, now that the classes are known."""
    if subset is None:
        return pool
    if subset < 2 * len(classes):
        raise DatasetError(
            f"subset must be an integer >= {2 * len(classes)} (two images per class, so each "
            f"class can appear in both train and validation) for {name!r} with "
            f"{len(classes)} classes, got {subset}"
        )
    if subset >= len(pool.y):
        return pool
    chosen = stratified_subset(pool.y, subset, seed)
    return _Images(pool.x[chosen], pool.y[chosen])


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 images resized to ``size`` = (height, width), bilinear.

    Antialiased, so shrinking averages pixels as Pillow's resize does (``cnnas predict`` resizes
    single images with Pillow). Works in chunks to bound the float copy.
    """
    if tuple(x.shape[2:]) == tuple(size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], *size), dtype=torch.uint8)
    for start in range(0, x.shape[0], 4096):
        chunk = x[start : start + 4096].to(torch.float32)
        resized = torch.nn.functional.interpolate(
            chunk, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + 4096] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def _resized(images: _Images, size: tuple[int, int] | None) -> _Images:
    """The images at ``size`` (unchanged when None)."""
    return images if size is None else _Images(resize_images(images.x, size), images.y)


def _train_val(pool: _Images, val_fraction: float, seed: int) -> tuple[_Images, _Images]:
    """The pool split class by class with ``stratified_split(pool.y, val_fraction, seed)``."""
    train_idx, val_idx = stratified_split(pool.y, val_fraction, seed)
    # Advanced indexing copies, so every returned tensor owns contiguous memory.
    return (
        _Images(pool.x[train_idx], pool.y[train_idx]),
        _Images(pool.x[val_idx], pool.y[val_idx]),
    )


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in 0..255 units; a channel
    without spread (or without pixels) gets std 1, so normalising never divides by zero."""
    # A 256-bin histogram per channel gives exact float64 moments without materialising a
    # float64 copy of the whole training set (that would be ~340 MB for Fashion-MNIST).
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64)
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = float(hist.sum())
        if total == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = float((hist * values).sum()) / total
        var = float((hist * (values - mean) ** 2).sum()) / total
        std = math.sqrt(var)
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    subset: int | None = None,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    test_fraction: float = 0.2,
    cache_dir: str | os.PathLike | None = None,
    max_unreadable: float = 0.01,
) -> ImageData:
    """Load dataset ``name`` and split it into train, validation and test sets.

    The test set is the dataset's official one (the IDX sets, CIFAR, an image folder with
    ``train/`` and ``test/``, an npz with ``x_test``/``y_test``), else a fixed stratified
    ``test_fraction`` carved out with seed 0 (digits: 20 %); it never depends on ``seed`` or
    ``subset``. The remaining training pool is optionally reduced to a stratified ``subset`` of
    (exactly) that many images, then split class by class with
    ``stratified_split(train_y, val_fraction, seed)``. The same arguments always give identical
    tensors.

    Where the data is: ``path`` names the dataset's own file or folder (required for
    ``image-folder`` and ``npz``, where ``data_dir`` stands in for it when ``path`` is None);
    otherwise the public datasets are looked for in ``data_dir`` (or a sub-folder named after
    the dataset), else ``$CNNAS_DATA_DIR``, else ``default_data_dir()``.

    ``image_size`` = (height, width) resizes every image (bilinear, antialiased); None keeps
    the source size (an image folder then needs all images of one size). ``cache_dir`` and
    ``max_unreadable`` (the fraction of undecodable files skipped before the folder is refused)
    apply to image folders.

    Raises:
        DatasetError: if ``name`` is unknown, ``subset`` is too small, or the data is missing,
            unreadable or inconsistent (wrong format, truncated, count mismatch, one class).
        ValueError: if ``val_fraction`` or ``test_fraction`` is not strictly between 0 and 1.
    """
    entry = dataset_entry(name)
    request, settings = _check_arguments(
        entry,
        path=path,
        data_dir=data_dir,
        image_size=image_size,
        cache_dir=cache_dir,
        max_unreadable=max_unreadable,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        subset=subset,
    )
    raw = entry.read(request)
    _check_images(raw)
    pool, test = _with_test_split(raw, settings.test_fraction)
    _check_classes(name, raw.classes, pool.y, test.y, raw.source)
    pool = _take_subset(pool, settings.subset, seed, name, raw.classes)
    pool, test = _resized(pool, request.image_size), _resized(test, request.image_size)
    train, val = _train_val(pool, settings.val_fraction, seed)
    _check_split_sizes(raw.source, train, val, test, settings)
    mean, std = _channel_stats(train.x)
    return ImageData(
        name=name,
        classes=tuple(raw.classes),
        train_x=train.x.contiguous(),
        train_y=train.y.contiguous(),
        val_x=val.x.contiguous(),
        val_y=val.y.contiguous(),
        test_x=test.x.contiguous(),
        test_y=test.y.contiguous(),
        mean=mean,
        std=std,
        source=raw.source,
    )
