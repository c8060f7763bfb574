"""Image-classification datasets for the search: reading, validating and splitting.

Built in here, both without any network access:

* ``fashion-mnist`` -- the four IDX files from Zalando's Fashion-MNIST, read from a local
  directory (Debian/Ubuntu ship them in the ``dataset-fashion-mnist`` package);
* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits, useful as a tiny smoke-test set.

The other formats (MNIST, KMNIST, EMNIST, CIFAR-10/100, ``.npz`` files, folders of images) live
in ``_sources.py`` and ``_folder.py`` and are imported only when such a dataset is loaded.

Every split is made here, once, with seeded stratified sampling, so that every trial of a study
sees exactly the same train/validation/test partition and the test set never leaks into search.
This module deliberately depends only on numpy and torch (scikit-learn lazily, for ``digits``)
so it can be imported by light-weight tools without pulling in the training stack.
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "EMNIST_SPLITS",
    "DatasetError",
    "ImageData",
    "default_data_dir",
    "find_fashion_mnist",
    "load_dataset",
    "read_idx",
    "resize_images",
    "stratified_split",
]


class DatasetError(ValueError):
    """A dataset is missing, unreadable or inconsistent.

    The message says what is wrong, where it was looked for, and how to fix it.
    """


EMNIST_SPLITS: tuple[str, ...] = ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")

DATASETS: tuple[str, ...] = (
    "fashion-mnist",
    "digits",
    "mnist",
    "kmnist",
    *(f"emnist-{split}" for split in EMNIST_SPLITS),
    "cifar-10",
    "cifar-100",
    "cifar-100-coarse",
    "image-folder",
    "npz",
)

# Datasets read from a file or folder the user names; they have no default location.
USER_DATASETS: tuple[str, ...] = ("image-folder", "npz")

#: Environment variable naming a data directory, used when no explicit directory is given.
DATA_DIR_ENV = "CNNAS_DATA_DIR"


def default_data_dir() -> Path:
    """Where ``cnnas data fetch`` puts datasets and loading looks for them by default.

    ``$CNNAS_DATA_DIR`` when set, else ``$XDG_CACHE_HOME/cnnas/datasets`` (``~/.cache/...``).
    """
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cnnas" / "datasets"


#: Default places to look for Fashion-MNIST; Debian's ``dataset-fashion-mnist`` installs here.
FASHION_MNIST_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

# Sub-directories of a user-supplied data directory that may hold the files, because people
# tend to point at a parent "data/" folder rather than at the dataset folder itself.
_FASHION_MNIST_SUBDIRS = ("fashion-mnist", "fashion_mnist")

_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_DIGITS_CLASSES = tuple(str(d) for d in range(10))
_DIGITS_SOURCE = "sklearn.datasets.load_digits"
# digits has no official test split; a fixed seed (not the study seed) keeps its carved-out
# test set identical across studies, so test scores of different studies stay comparable.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0

# Class counts known before reading, so a bad ``subset`` fails before any file is read.
_NUM_CLASSES = {
    "fashion-mnist": len(_FASHION_MNIST_CLASSES),
    "digits": len(_DIGITS_CLASSES),
    "mnist": 10,
    "kmnist": 10,
    "cifar-10": 10,
    "cifar-100": 100,
    "cifar-100-coarse": 20,
}
# Without an official test split, a fixed seed (not the study seed) carves one out, so test
# scores of different studies on the same data stay comparable.
_TEST_SEED = 0

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes -> numpy dtypes. Multi-byte types are big-endian on disk.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST container format) into a numpy array.

    The file may be gzip-compressed or plain, whatever its name: compression is detected by its
    magic bytes. Supported element types are unsigned byte (0x08), signed byte (0x09) and
    big-endian int16, int32, float32 and float64 (0x0B..0x0E). The returned array has the
    shape declared in the header, native byte order, and is writable (it owns its memory).

    Raises:
        DatasetError: naming the file, if it cannot be read, is not an IDX file, uses an
            unsupported type code, or its payload is not exactly the size the header declares.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"{path} is a corrupt or truncated gzip file ({exc}); download it again"
            ) from exc

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{path} is not an IDX file: it does not start with the IDX magic number "
            f"(two zero bytes, a type code, a dimension count); got {data[:4].hex() or 'nothing'}"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise DatasetError(
            f"{path}: unsupported IDX type code 0x{type_code:02X} (supported: {known})"
        )
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} header bytes "
            f"but the file holds only {len(data)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing data"
        raise DatasetError(
            f"{path}: IDX file is {problem}: header declares shape {dims} of {dtype.name}, i.e. "
            f"{expected} payload bytes, but the file holds {actual} bytes after the "
            f"{header_len}-byte header; download it again"
        )
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_len)
    # One copy makes the array writable (torch.from_numpy warns on read-only buffers) and
    # converts big-endian payloads to native order at the same time.
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


# --------------------------------------------------------------------------------------------
# Locating Fashion-MNIST
# --------------------------------------------------------------------------------------------


def _fashion_file(directory: Path, stem: str) -> Path | None:
    # Prefer the plain file when both exist: it skips decompression.
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_candidates(data_dir: str | os.PathLike | None) -> tuple[list[Path], str]:
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "the given data directory"
    elif os.environ.get(DATA_DIR_ENV):
        root, origin = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    else:
        # After the Debian folder: where `cnnas data fetch fashion-mnist` puts the files.
        defaults = [*FASHION_MNIST_DIRS, default_data_dir() / "fashion-mnist"]
        return defaults, "the default locations"
    return [root, *(root / sub for sub in _FASHION_MNIST_SUBDIRS)], origin


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory holding the four Fashion-MNIST IDX files.

    Looks in ``data_dir`` when given (and only there), else in ``$CNNAS_DATA_DIR`` when set,
    else in ``FASHION_MNIST_DIRS``, then in ``default_data_dir() / "fashion-mnist"`` (where
    ``cnnas data fetch fashion-mnist`` puts them). A user-supplied directory may also hold the
    files in a ``fashion-mnist/`` or ``fashion_mnist/`` sub-directory. Each file may be plain
    or ``.gz``.

    Raises:
        DatasetError: listing every directory looked in, the file names expected and how to
            obtain the files.
    """
    candidates, origin = _fashion_candidates(data_dir)
    notes: list[str] = []
    for directory in candidates:
        if not directory.is_dir():
            notes.append(f"  {directory} (does not exist)")
            continue
        missing = [stem for stem in _FASHION_MNIST_FILES if _fashion_file(directory, stem) is None]
        if not missing:
            return directory
        if len(missing) == len(_FASHION_MNIST_FILES):
            notes.append(f"  {directory} (none of the files)")
        else:
            notes.append(f"  {directory} (missing {', '.join(missing)})")
    expected = "\n".join(f"  {stem}[.gz]" for stem in _FASHION_MNIST_FILES)
    raise DatasetError(
        f"Fashion-MNIST not found in {origin}. Looked in:\n"
        + "\n".join(notes)
        + f"\nfor the files:\n{expected}\n"
        "To get them: on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (installs "
        f"to {FASHION_MNIST_DIRS[0]}), or download the four files from "
        "https://github.com/zalandoresearch/fashion-mnist (or run `cnnas data fetch "
        "fashion-mnist`) and pass --data-dir DIR, set data.data_dir in the config, or set "
        f"{DATA_DIR_ENV}=DIR."
    )


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _stratified_pick(
    labels: torch.Tensor, quota: Callable[[Sequence[int]], list[int]], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``quota(class_counts)[i]`` random indices of the i-th class (ascending label order).

    Returns ``(rest, picked)``, both sorted ascending.
    """
    labels = torch.as_tensor(labels)
    if (
        labels.dim() != 1
        or labels.dtype == torch.bool
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
    ):
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    labels = labels.cpu()
    n = labels.numel()
    # A stable sort groups each class's indices in ascending order, so the draw depends only on
    # the labels and the seed (never on hash order or the number of classes per batch).
    order = torch.sort(labels, stable=True).indices
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    counts_list = counts.tolist()
    quotas = quota(counts_list)
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for group, k in zip(torch.split(order, counts_list), quotas, strict=True):
        perm = torch.randperm(len(group), generator=generator)
        picked.append(group[perm[:k]])
    picked_idx = torch.sort(torch.cat(picked)).values if picked else torch.empty(0)
    picked_idx = picked_idx.to(torch.int64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[picked_idx] = False
    rest_idx = torch.nonzero(mask).flatten().to(torch.int64)
    return rest_idx, picked_idx


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..len(labels)-1`` class by class into ``(keep_idx, split_idx)``.

    For each class with ``n`` items, ``round(fraction * n)`` randomly chosen indices go to
    ``split_idx``, clamped so that every class keeps at least one item in ``keep_idx`` and
    every class with ``n >= 2`` items puts at least one into ``split_idx`` (a singleton class
    stays in ``keep_idx``). The draw uses a ``torch.Generator`` seeded with ``seed``: the same
    labels, fraction and seed give the same split on every machine (for a given torch version).

    Both results are int64, sorted ascending, disjoint, and together cover every index.

    Raises:
        ValueError: if ``fraction`` is not strictly between 0 and 1, or ``labels`` is not a
            1-D integer tensor.
    """
    fraction = _check_fraction(fraction, "fraction")

    def quota(counts: Sequence[int]) -> list[int]:
        out = []
        for n in counts:
            # Clamping keeps every class on the training side, and gives validation a sample
            # of every class that can spare one.
            out.append(min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0)
        return out

    return _stratified_pick(labels, quota, seed)


def _stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of exactly ``size`` items (``size < len(labels)``), class proportions kept.

    Uses largest-remainder allocation in integer arithmetic, so the total is exact and the
    allocation is identical on every machine.
    """

    def quota(counts: Sequence[int]) -> list[int]:
        total = sum(counts)
        base = [size * c // total for c in counts]
        remainders = [size * c % total for c in counts]
        # Ties go to the lower class index, keeping the allocation deterministic.
        by_remainder = sorted(range(len(counts)), key=lambda i: (-remainders[i], i))
        for i in by_remainder[: size - sum(base)]:
            base[i] += 1
        return base

    _, picked = _stratified_pick(labels, quota, seed)
    return picked


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An IDX images file (N, H, W) and its labels file (N,), both unsigned bytes, checked to
    agree; a DatasetError names the file and the fault otherwise."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{images_path}: expected a 3-D unsigned-byte IDX file of images (N, H, W), got "
            f"{images.ndim}-D {images.dtype} with shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{labels_path}: expected a 1-D unsigned-byte IDX file of labels, got "
            f"{labels.ndim}-D {labels.dtype} with shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"the files disagree: {images_path} holds {len(images)} images but {labels_path} "
            f"holds {len(labels)} labels; one of them is corrupt or from a different dataset"
        )
    return images, labels


def _read_fashion_pair(
    directory: Path, images_stem: str, labels_stem: str
) -> tuple[np.ndarray, np.ndarray]:
    images_path = _fashion_file(directory, images_stem)
    labels_path = _fashion_file(directory, labels_stem)
    # find_fashion_mnist checked both exist, but they may vanish in between.
    if images_path is None or labels_path is None:
        raise DatasetError(f"{directory}: {images_stem} or {labels_stem} disappeared")
    images, labels = read_idx_pair(images_path, labels_path)
    if images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{images_path}: Fashion-MNIST images are 28x28, got "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    if len(labels) and int(labels.max()) >= len(_FASHION_MNIST_CLASSES):
        bad = sorted({int(v) for v in np.unique(labels) if v >= len(_FASHION_MNIST_CLASSES)})
        raise DatasetError(
            f"{labels_path}: labels must be in 0..{len(_FASHION_MNIST_CLASSES) - 1}, found {bad}"
        )
    return images, labels


def _load_fashion_mnist(
    data_dir: str | os.PathLike | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    directory = find_fashion_mnist(data_dir)
    train_images, train_labels = _read_fashion_pair(directory, *_FASHION_MNIST_FILES[:2])
    test_images, test_labels = _read_fashion_pair(directory, *_FASHION_MNIST_FILES[2:])
    return (
        torch.from_numpy(train_images).unsqueeze(1),
        torch.from_numpy(train_labels).to(torch.int64),
        torch.from_numpy(test_images).unsqueeze(1),
        torch.from_numpy(test_labels).to(torch.int64),
        str(directory),
    )


def _load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError(
            "the 'digits' dataset comes with scikit-learn, which is not installed; "
            "install it with `pip install scikit-learn`"
        ) from exc
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    # Pixels are counts 0..16 (of a 4x4 block); stretch them to the 0..255 range of
    # Fashion-MNIST so the same normalisation and augmentation code applies to both.
    images = np.rint(np.clip(raw, 0, 16) * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target)).to(torch.int64)
    pool_idx, test_idx = stratified_split(y, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    return x[pool_idx], y[pool_idx], x[test_idx], y[test_idx], _DIGITS_SOURCE


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _check_classes(
    name: str, classes: tuple[str, ...], pool_y: torch.Tensor, test_y: torch.Tensor, source: str
) -> None:
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


def _load_raw(
    name: str,
    *,
    data_dir: str | os.PathLike | None,
    path: str | os.PathLike | None,
    image_size: tuple[int, int] | None,
    cache_dir: str | os.PathLike | None,
    max_unreadable: float,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[str, ...], str
]:
    """``(pool_x, pool_y, test_x, test_y, classes, source)``; test is None without a split."""
    if name == "fashion-mnist":
        pool_x, pool_y, test_x, test_y, source = _load_fashion_mnist(
            path if path is not None else data_dir
        )
        return pool_x, pool_y, test_x, test_y, _FASHION_MNIST_CLASSES, source
    if name == "digits":
        pool_x, pool_y, test_x, test_y, source = _load_digits()
        return pool_x, pool_y, test_x, test_y, _DIGITS_CLASSES, source
    if name == "image-folder":
        from ._folder import load_image_folder

        return load_image_folder(
            _user_path(name, path, data_dir),
            image_size=image_size,
            cache_dir=cache_dir,
            max_unreadable=max_unreadable,
        )
    from . import _sources

    if name == "npz":
        return _sources.load_npz(_user_path(name, path, data_dir))
    return _sources.load_public(name, path=path, data_dir=data_dir)


def _user_path(name: str, path: str | os.PathLike | None, data_dir: str | os.PathLike | None):
    location = path if path is not None else data_dir
    if location is None:
        what = "a folder of class subfolders" if name == "image-folder" else "an .npz file"
        raise DatasetError(
            f"data.path: the {name!r} dataset needs {what}; set data.path in the config "
            "(or pass --data-dir)"
        )
    return Path(location).expanduser()


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
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    # Check the arguments before reading anything, so a typo fails fast.
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    size = _check_size(image_size)
    if (
        isinstance(max_unreadable, bool)
        or not isinstance(max_unreadable, numbers.Real)
        or not 0 <= max_unreadable <= 1
    ):
        raise ValueError(f"max_unreadable must be a fraction in [0, 1], got {max_unreadable!r}")
    min_subset = 2 * _NUM_CLASSES.get(name, 2)
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, numbers.Integral) or subset < min_subset
    ):
        raise DatasetError(
            f"subset must be an integer >= {min_subset} (two images per class, so each "
            f"class can appear in both train and validation) for {name!r}, got {subset!r}"
        )
    subset = None if subset is None else int(subset)  # numpy integers are welcome

    pool_x, pool_y, test_x, test_y, classes, source = _load_raw(
        name,
        data_dir=data_dir,
        path=path,
        image_size=size,
        cache_dir=cache_dir,
        max_unreadable=float(max_unreadable),
    )
    if test_x is None or test_y is None:
        pool_idx, test_idx = stratified_split(pool_y, test_fraction, _TEST_SEED)
        pool_x, pool_y, test_x, test_y = (
            pool_x[pool_idx],
            pool_y[pool_idx],
            pool_x[test_idx],
            pool_y[test_idx],
        )
    _check_classes(name, classes, pool_y, test_y, source)
    if subset is not None and subset < 2 * len(classes):
        raise DatasetError(
            f"subset must be an integer >= {2 * len(classes)} (two images per class, so each "
            f"class can appear in both train and validation) for {name!r} with "
            f"{len(classes)} classes, got {subset}"
        )
    if subset is not None and subset < len(pool_y):
        chosen = _stratified_subset(pool_y, subset, seed)
        pool_x, pool_y = pool_x[chosen], pool_y[chosen]
    if size is not None:
        pool_x, test_x = resize_images(pool_x, size), resize_images(test_x, size)

    train_idx, val_idx = stratified_split(pool_y, val_fraction, seed)
    # Advanced indexing copies, so every returned tensor owns contiguous memory.
    train_x, train_y = pool_x[train_idx], pool_y[train_idx]
    val_x, val_y = pool_x[val_idx], pool_y[val_idx]
    mean, std = _channel_stats(train_x)
    return ImageData(
        name=name,
        classes=tuple(classes),
        train_x=train_x.contiguous(),
        train_y=train_y.contiguous(),
        val_x=val_x.contiguous(),
        val_y=val_y.contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
        mean=mean,
        std=std,
        source=source,
    )
