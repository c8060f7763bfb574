"""The IDX family: the file format, and the datasets shipped in it (Fashion-MNIST, MNIST,
KMNIST, EMNIST).

Every fault in a file is a :class:`DatasetError` naming the file and the fault. Depends only on
the errors and locating helpers, so the dataset registry can import it without a cycle.
"""

from __future__ import annotations

import gzip
import math
import os
import string
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._errors import DatasetError
from ._locate import DATA_DIR_ENV, Place, default_data_dir
from ._raw import RawData

__all__ = [
    "EMNIST_SPLITS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "IDX_STEMS",
    "KMNIST_CLASSES",
    "MNIST_CLASSES",
    "find_fashion_mnist",
    "read_emnist",
    "read_fashion_mnist",
    "read_idx",
    "read_idx_dataset",
    "read_idx_pair",
]

#: The four files of an IDX dataset (each plain or ``.gz``): train images and labels, then test.
IDX_STEMS: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

EMNIST_SPLITS: tuple[str, ...] = ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
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
MNIST_CLASSES: tuple[str, ...] = tuple(string.digits)
# Kuzushiji-MNIST's ten hiragana, romanised as in the dataset's classmap.
KMNIST_CLASSES: tuple[str, ...] = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

#: Default places to look for Fashion-MNIST; Debian's ``dataset-fashion-mnist`` installs here.
FASHION_MNIST_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

# Sub-directories of a user-supplied data directory that may hold the files, because people
# tend to point at a parent "data/" folder rather than at the dataset folder itself.
_FASHION_MNIST_SUBDIRS = ("fashion-mnist", "fashion_mnist")

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


# --------------------------------------------------------------------------------------------
# The format
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


def _idx_file(directory: Path, stem: str) -> Path | None:
    # Prefer the plain file when both exist: it skips decompression.
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _tensors(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: tuple[str, ...],
    source: str,
) -> RawData:
    def x(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)

    def y(labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.astype(np.int64))

    return RawData(x(train[0]), y(train[1]), x(test[0]), y(test[1]), classes, source)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: its own search order, because Debian installs it system-wide
# --------------------------------------------------------------------------------------------


def _fashion_candidates(
    data_dir: str | os.PathLike | None, system_dirs: tuple[Path, ...]
) -> tuple[list[Path], str]:
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "the given data directory"
    elif os.environ.get(DATA_DIR_ENV):
        root, origin = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    else:
        # After the Debian folder: where `cnnas data fetch fashion-mnist` puts the files.
        return [*system_dirs, default_data_dir() / "fashion-mnist"], "the default locations"
    return [root, *(root / sub for sub in _FASHION_MNIST_SUBDIRS)], origin


def find_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    system_dirs: Sequence[str | os.PathLike] = FASHION_MNIST_DIRS,
) -> Path:
    """Return the directory holding the four Fashion-MNIST IDX files.

    Looks in ``data_dir`` when given (and only there), else in ``$CNNAS_DATA_DIR`` when set,
    else in ``system_dirs`` (default ``FASHION_MNIST_DIRS``, where Debian's package installs
    them), then in ``default_data_dir() / "fashion-mnist"`` (where ``cnnas data fetch
    fashion-mnist`` puts them). A user-supplied directory may also hold the files in a
    ``fashion-mnist/`` or ``fashion_mnist/`` sub-directory. Each file may be plain or ``.gz``.

    Raises:
        DatasetError: listing every directory looked in, the file names expected and how to
            obtain the files.
    """
    system = tuple(Path(d) for d in system_dirs)
    candidates, origin = _fashion_candidates(data_dir, system)
    notes: list[str] = []
    for directory in candidates:
        if not directory.is_dir():
            notes.append(f"  {directory} (does not exist)")
            continue
        missing = [stem for stem in IDX_STEMS if _idx_file(directory, stem) is None]
        if not missing:
            return directory
        if len(missing) == len(IDX_STEMS):
            notes.append(f"  {directory} (none of the files)")
        else:
            notes.append(f"  {directory} (missing {', '.join(missing)})")
    expected = "\n".join(f"  {stem}[.gz]" for stem in IDX_STEMS)
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


def _read_fashion_pair(
    directory: Path, images_stem: str, labels_stem: str
) -> tuple[np.ndarray, np.ndarray]:
    images_path = _idx_file(directory, images_stem)
    labels_path = _idx_file(directory, labels_stem)
    # find_fashion_mnist checked both exist, but they may vanish in between.
    if images_path is None or labels_path is None:
        raise DatasetError(f"{directory}: {images_stem} or {labels_stem} disappeared")
    images, labels = read_idx_pair(images_path, labels_path)
    if images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{images_path}: Fashion-MNIST images are 28x28, got "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    n_classes = len(FASHION_MNIST_CLASSES)
    if len(labels) and int(labels.max()) >= n_classes:
        bad = sorted({int(v) for v in np.unique(labels) if v >= n_classes})
        raise DatasetError(f"{labels_path}: labels must be in 0..{n_classes - 1}, found {bad}")
    return images, labels


def read_fashion_mnist(data_dir: str | os.PathLike | None = None) -> RawData:
    """Fashion-MNIST's official train and test sets, from where ``find_fashion_mnist`` finds
    them; the source is that directory."""
    directory = find_fashion_mnist(data_dir)
    train = _read_fashion_pair(directory, *IDX_STEMS[:2])
    test = _read_fashion_pair(directory, *IDX_STEMS[2:])
    return _tensors(train, test, FASHION_MNIST_CLASSES, str(directory))


# --------------------------------------------------------------------------------------------
# MNIST, KMNIST, EMNIST: in a data directory, where `cnnas data fetch` puts them
# --------------------------------------------------------------------------------------------


def _find_files(place: Place, stems: tuple[str, ...]) -> list[Path]:
    candidates, origin = place.candidates()
    for directory in candidates:
        if directory.is_dir():
            found = [_idx_file(directory, stem) for stem in stems]
            if all(f is not None for f in found):
                return found  # type: ignore[return-value]
    raise place.not_found(origin, candidates, [f"{stem}[.gz]" for stem in stems])


def _read_split_pairs(
    files: list[Path],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    train, test = read_idx_pair(files[0], files[1]), read_idx_pair(files[2], files[3])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DatasetError(
            f"{files[0]} holds {train[0].shape[1]}x{train[0].shape[2]} images but {files[2]} "
            f"holds {test[0].shape[1]}x{test[0].shape[2]}"
        )
    return train, test


def read_idx_dataset(place: Place, classes: tuple[str, ...]) -> RawData:
    """An IDX dataset under the official file names (``IDX_STEMS``), found through ``place``;
    label ``k`` is ``classes[k]``, and the source is the folder the files are in."""
    files = _find_files(place, IDX_STEMS)
    train, test = _read_split_pairs(files)
    return _tensors(train, test, classes, str(files[0].parent))


def _emnist_classes(directory: Path, split: str) -> tuple[list[int], list[str]]:
    """The split's label values and class names: from its mapping file, else the known lists."""
    mapping = directory / f"emnist-{split}-mapping.txt"
    if mapping.is_file():
        labels, names = [], []
        for number, line in enumerate(mapping.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                label, *codes = (int(v) for v in line.split())
                names.append("/".join(chr(c) for c in codes) or str(label))
            except ValueError:
                raise DatasetError(
                    f"{mapping}, line {number}: expected 'label ascii-code...', got {line!r}"
                ) from None
            labels.append(label)
        return labels, names
    if split in ("digits", "mnist"):
        names = list(string.digits)
    elif split == "letters":
        names = list(string.ascii_lowercase)
    else:
        chars = set(string.digits + string.ascii_letters)
        if split != "byclass":  # these merge the letters whose cases look alike
            chars -= set("cijklmopsuvwxyz")
        names = sorted(chars)
    # letters numbers its classes 1..26; the others count from 0.
    first = 1 if split == "letters" else 0
    return list(range(first, first + len(names))), names


def read_emnist(place: Place, split: str) -> RawData:
    """EMNIST split ``split`` (one of ``EMNIST_SPLITS``), found through ``place``: images turned
    upright, labels renumbered 0.. in the order of the split's mapping file."""
    if split not in EMNIST_SPLITS:
        raise DatasetError(f"unknown EMNIST split {split!r}; known: {sorted(EMNIST_SPLITS)}")
    stems = tuple(
        f"emnist-{split}-{part}-{kind}"
        for part in ("train", "test")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    files = _find_files(place, stems)
    (train_x, train_y), (test_x, test_y) = _read_split_pairs(files)
    # EMNIST stores each image transposed (column-major); flip it back upright.
    train_x, test_x = train_x.transpose(0, 2, 1), test_x.transpose(0, 2, 1)
    values, classes = _emnist_classes(files[0].parent, split)
    for y, f in ((train_y, files[1]), (test_y, files[3])):
        unknown = sorted({int(v) for v in np.unique(y)} - set(values))
        if unknown:
            raise DatasetError(
                f"{f}: labels {unknown[:10]} are not among the {len(values)} classes of "
                f"EMNIST {split}"
            )
    lut = np.full(256, -1, dtype=np.int64)  # labels are bytes: 0..255
    for k, v in enumerate(values):
        if 0 <= v < 256:
            lut[v] = k
    return _tensors(
        (train_x, lut[train_y]), (test_x, lut[test_y]), tuple(classes), str(files[0].parent)
    )
