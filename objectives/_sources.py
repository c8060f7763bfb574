"""Readers of the distributed dataset formats: the IDX family, CIFAR's python pickles, ``.npz``.

Each reader returns ``(pool_x, pool_y, test_x, test_y, classes, source)`` with uint8 images of
shape ``(N, C, H, W)`` and int64 labels in ``range(len(classes))``; ``test_x``/``test_y`` are None
when the source has no test split (``load_dataset`` then carves one out). Everything that can be
wrong with a file is a :class:`DatasetError` naming the file and the fault.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import string
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._data import (
    EMNIST_SPLITS,
    DatasetError,
    _fashion_file,
    default_data_dir,
    read_idx_pair,
)

__all__ = ["load_npz", "load_public"]

Raw = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[str, ...], str
]

# Sub-folders of a data directory that may hold a dataset: the name `cnnas data fetch` writes
# first, then the layouts other tools leave behind (torchvision's <Name>/raw, EMNIST's gzip/).
_SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST", "MNIST/raw"),
    "kmnist": ("kmnist", "KMNIST", "KMNIST/raw"),
    "emnist": ("emnist", "emnist/gzip", "gzip", "EMNIST/raw"),
    "cifar-10": ("cifar-10", "cifar10"),
    "cifar-100": ("cifar-100", "cifar100"),
}

_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_IDX_CLASSES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(string.digits),
    # Kuzushiji-MNIST's ten hiragana, romanised as in the dataset's classmap.
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}

_HOW_TO_FETCH = (
    "download it with `cnnas data fetch {fetch} --dir DIR` and set data.data_dir: DIR (or "
    "data.path to the folder itself)"
)


def fetch_name(name: str) -> str:
    """The download that provides dataset ``name`` (``emnist-letters`` comes with ``emnist``)."""
    if name.startswith("emnist-"):
        return "emnist"
    if name == "cifar-100-coarse":
        return "cifar-100"
    return name


def _candidates(
    name: str, path: str | os.PathLike | None, data_dir: str | os.PathLike | None
) -> tuple[list[Path], str]:
    if path is not None:
        return [Path(path).expanduser()], "data.path"
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "the given data directory"
    else:
        root, origin = default_data_dir(), "the default data directory"
    return [root, *(root / sub for sub in _SUBDIRS[fetch_name(name)])], origin


def _not_found(name: str, origin: str, looked: list[Path], expected: list[str]) -> DatasetError:
    places = "\n".join(
        f"  {p}" + ("" if p.exists() else " (does not exist)") for p in dict.fromkeys(looked)
    )
    files = "\n".join(f"  {e}" for e in expected)
    return DatasetError(
        f"{name} not found in {origin}. Looked in:\n{places}\nfor:\n{files}\nTo get it: "
        + _HOW_TO_FETCH.format(fetch=fetch_name(name))
    )


# --------------------------------------------------------------------------------------------
# IDX family: MNIST, KMNIST, EMNIST
# --------------------------------------------------------------------------------------------


def _find_files(
    name: str, stems: tuple[str, ...], path: str | os.PathLike | None, data_dir: Any
) -> list[Path]:
    candidates, origin = _candidates(name, path, data_dir)
    for directory in candidates:
        if directory.is_dir():
            found = [_fashion_file(directory, stem) for stem in stems]
            if all(f is not None for f in found):
                return found  # type: ignore[return-value]
    raise _not_found(name, origin, candidates, [f"{stem}[.gz]" for stem in stems])


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


def _load_idx(name: str, path: Any, data_dir: Any) -> Raw:
    if name.startswith("emnist-"):
        split = name.removeprefix("emnist-")
        stems = tuple(
            f"emnist-{split}-{part}-{kind}"
            for part in ("train", "test")
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        )
    else:
        split, stems = "", _IDX_STEMS
    files = _find_files(name, stems, path, data_dir)
    train_x, train_y = read_idx_pair(files[0], files[1])
    test_x, test_y = read_idx_pair(files[2], files[3])
    if name.startswith("emnist-"):
        assert split in EMNIST_SPLITS
        # EMNIST stores each image transposed (column-major); flip it back upright.
        train_x, test_x = train_x.transpose(0, 2, 1), test_x.transpose(0, 2, 1)
        values, classes = _emnist_classes(files[0].parent, split)
        lut = np.full(256, -1, dtype=np.int64)  # labels are bytes: 0..255
        for y, f in ((train_y, files[1]), (test_y, files[3])):
            unknown = sorted({int(v) for v in np.unique(y)} - set(values))
            if unknown:
                raise DatasetError(
                    f"{f}: labels {unknown[:10]} are not among the {len(values)} classes of "
                    f"EMNIST {split}"
                )
        for k, v in enumerate(values):
            if 0 <= v < 256:
                lut[v] = k
        train_y, test_y = lut[train_y], lut[test_y]
    else:
        classes = list(_IDX_CLASSES[name])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(
            f"{files[0]} holds {train_x.shape[1]}x{train_x.shape[2]} images but {files[2]} "
            f"holds {test_x.shape[1]}x{test_x.shape[2]}"
        )

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
        )

    pool_x, pool_y = tensors(train_x, train_y)
    tx, ty = tensors(test_x, test_y)
    return pool_x, pool_y, tx, ty, tuple(classes), str(files[0].parent)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100, python version
# --------------------------------------------------------------------------------------------

_CIFAR: dict[str, dict[str, Any]] = {
    "cifar-10": {
        "folder": "cifar-10-batches-py",
        "tarball": "cifar-10-python.tar.gz",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
    "cifar-100": {
        "folder": "cifar-100-python",
        "tarball": "cifar-100-python.tar.gz",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
}
_CIFAR["cifar-100-coarse"] = {
    **_CIFAR["cifar-100"],
    "labels": "coarse_labels",
    "names": "coarse_label_names",
}


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches, and nothing else.

    A pickle can name any importable callable and call it while loading, so a plain
    ``pickle.load`` of a downloaded (or swapped) file would run whatever it says. The real CIFAR
    files hold only dicts, lists, strings, numbers and one numpy uint8 array per batch, which
    need exactly these globals (as Python 2's numpy wrote them, or numpy 2 for copies).
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            # Python 3 writes bytes this way at protocol 2 (a re-pickled copy); it only turns
            # a string into bytes.
            return codecs.encode
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: a CIFAR batch holds only numpy arrays and lists"
        )


def _unpickle(data: bytes, where: str) -> dict[str, Any]:
    try:
        # latin1 is how numpy's arrays written by Python 2 come back intact (numpy's advice).
        obj = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # pickle raises anything on garbage
        raise DatasetError(
            f"{where} is not a CIFAR python batch ({type(exc).__name__}: {exc}); the file is "
            "corrupt or truncated, or not the python version of CIFAR"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a dict of arrays, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _need(batch: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise DatasetError(
            f"{where}: missing key(s) {missing}; it holds {sorted(batch)} (for CIFAR-100 use the "
            "cifar-100 dataset, for CIFAR-10 cifar-10)"
        )


def _cifar_members(name: str, location: Path) -> tuple[dict[str, bytes], str]:
    """The raw bytes of the batches and meta file, from the tarball or the folder."""
    info = _CIFAR[name]
    wanted = (*info["train"], *info["test"], info["meta"])
    if location.is_file():
        found: dict[str, bytes] = {}
        try:
            with tarfile.open(location, "r:*") as tar:
                # One pass in archive order: a gzip stream cannot seek back cheaply. Members
                # are read into memory, never extracted, so no path in the archive matters.
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and base not in found:
                        handle = tar.extractfile(member)
                        if handle is not None:
                            found[base] = handle.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DatasetError(
                f"{location} is not a readable tar archive ({exc}); it is corrupt or truncated, "
                f"download it again (cnnas data fetch {fetch_name(name)})"
            ) from None
        missing = [m for m in wanted if m not in found]
        if missing:
            raise DatasetError(
                f"{location}: the archive lacks {missing}; expected the python version "
                f"{info['tarball']} with {info['folder']}/"
            )
        return found, str(location)
    missing = [m for m in wanted if not (location / m).is_file()]
    if missing:
        raise DatasetError(f"{location}: missing CIFAR file(s) {missing}")
    return {m: (location / m).read_bytes() for m in wanted}, str(location)


def _find_cifar(name: str, path: Any, data_dir: Any) -> Path:
    info = _CIFAR[name]
    candidates, origin = _candidates(name, path, data_dir)
    for c in candidates:
        if c.is_file():
            return c
        for option in (c / info["folder"], c, c / info["tarball"]):
            if option.is_file() or (option / info["train"][0]).is_file():
                return option
    raise _not_found(
        name, origin, candidates, [f"{info['tarball']}", f"or a folder {info['folder']}/"]
    )


def _cifar_split(
    members: dict[str, bytes], names: tuple[str, ...], label_key: str, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for member in names:
        where = f"{source}: {member}"
        batch = _unpickle(members[member], where)
        _need(batch, ("data", label_key), where)
        data, labels = batch["data"], batch[label_key]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DatasetError(f"{where}: 'data' must be a 2-D uint8 array")
        if data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"{where}: 'data' rows hold {data.shape[1]} values, CIFAR images 3072 (3x32x32)"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DatasetError(f"{where}: {label_key!r} must be a list of integers")
        if len(labels) != len(data):
            raise DatasetError(
                f"{where}: {len(data)} images but {len(labels)} labels in {label_key!r}"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load_cifar(name: str, path: Any, data_dir: Any) -> Raw:
    info = _CIFAR[name]
    members, source = _cifar_members(name, _find_cifar(name, path, data_dir))
    meta_where = f"{source}: {info['meta']}"
    meta = _unpickle(members[info["meta"]], meta_where)
    _need(meta, (info["names"],), meta_where)
    classes = tuple(
        n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[info["names"]]
    )
    pool_x, pool_y = _cifar_split(members, info["train"], info["labels"], source)
    test_x, test_y = _cifar_split(members, info["test"], info["labels"], source)
    return pool_x, pool_y, test_x, test_y, classes, source


def load_public(name: str, *, path: Any = None, data_dir: Any = None) -> Raw:
    """A public dataset (IDX family or CIFAR) from ``path``, else from ``data_dir``'s folders."""
    if name in _CIFAR:
        return _load_cifar(name, path, data_dir)
    return _load_idx(name, path, data_dir)


# --------------------------------------------------------------------------------------------
# NumPy .npz
# --------------------------------------------------------------------------------------------

# Accepted array names, first match wins; x_train/... is how keras.datasets ship their .npz.
_NPZ_KEYS = {
    "x": ("x", "images", "x_train"),
    "y": ("y", "labels", "y_train"),
    "x_test": ("x_test", "images_test"),
    "y_test": ("y_test", "labels_test"),
    "classes": ("classes", "class_names"),
}


def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """``(N, C, H, W)`` uint8 from (N, H, W), (N, H, W, C) or (N, C, H, W), C in {1, 3}."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise DatasetError(
            f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with 1 or 3 "
            f"channels, got shape {x.shape}"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            raise DatasetError(f"{where}: images hold NaN or infinite values")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DatasetError(f"{where}: float images must be in 0..1 or 0..255, got {lo}..{hi}")
        # Values up to 1 are taken as fractions of full intensity.
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.ascontiguousarray(np.rint(x * scale).astype(np.uint8))
    if x.dtype.kind in "iu":
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DatasetError(f"{where}: integer images must be in 0..255, got {lo}..{hi}")
        return np.ascontiguousarray(x.astype(np.uint8))
    raise DatasetError(f"{where}: images must be uint8, integers or floats, got {x.dtype}")


def load_npz(path: Path) -> Raw:
    """Images and labels from an ``.npz`` (see ``_NPZ_KEYS``); never unpickles anything."""
    try:
        # allow_pickle=False: an object array in an .npz is a pickle, which could run code.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise DatasetError(f"data.path: {path} does not exist") from None
    except IsADirectoryError:
        raise DatasetError(
            f"data.path: {path} is a folder; the npz dataset is one .npz file"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(
            f"{path} is not a readable .npz file ({exc}); save it with numpy.savez(path, "
            "x=images, y=labels) (object arrays are refused)"
        ) from None
    if not isinstance(arrays, dict) or not arrays:
        raise DatasetError(f"{path} holds no arrays")
    found = {
        role: next((arrays[k] for k in names if k in arrays), None)
        for role, names in _NPZ_KEYS.items()
    }
    if found["x"] is None or found["y"] is None:
        raise DatasetError(
            f"{path}: needs an images array ({' or '.join(_NPZ_KEYS['x'])}) and a labels "
            f"array ({' or '.join(_NPZ_KEYS['y'])}); it holds {sorted(arrays)}"
        )
    if (found["x_test"] is None) != (found["y_test"] is None):
        raise DatasetError(f"{path}: x_test and y_test go together; it holds {sorted(arrays)}")
    parts = [("x", "y")] + ([("x_test", "y_test")] if found["x_test"] is not None else [])
    xs, ys = [], []
    for xk, yk in parts:
        x = _npz_images(found[xk], f"{path} [{xk}]")
        y = np.asarray(found[yk])
        if y.ndim != 1 or y.dtype.kind not in "iubUS":
            raise DatasetError(
                f"{path} [{yk}]: labels must be a 1-D array of integers or strings, got "
                f"{y.dtype} with shape {y.shape}"
            )
        if len(y) != len(x):
            raise DatasetError(f"{path}: {len(x)} images in {xk} but {len(y)} labels in {yk}")
        xs.append(x)
        ys.append(y)
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(
            f"{path}: training images are {xs[0].shape[1:]} but test images {xs[1].shape[1:]}"
        )
    classes_arr = found["classes"]
    if classes_arr is not None:
        classes = tuple(str(c) for c in np.asarray(classes_arr).reshape(-1))
        coded = []
        for y, (_, yk) in zip(ys, parts, strict=True):
            if y.dtype.kind not in "iub":
                raise DatasetError(
                    f"{path} [{yk}]: with a classes array, labels must be integer indices"
                )
            y = y.astype(np.int64)
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
                raise DatasetError(
                    f"{path} [{yk}]: labels must be in 0..{len(classes) - 1} (one per entry of "
                    f"classes), found {int(y.min())}..{int(y.max())}"
                )
            coded.append(y)
    else:
        # Without names, the distinct label values are the classes, in sorted order.
        values = np.unique(ys[0])
        classes = tuple(str(v.item() if hasattr(v, "item") else v) for v in values)
        coded = []
        for y, (_, yk) in zip(ys, parts, strict=True):
            unknown = np.setdiff1d(np.unique(y), values)
            if unknown.size:
                raise DatasetError(
                    f"{path} [{yk}]: labels {unknown[:10].tolist()} do not occur in the "
                    "training labels"
                )
            coded.append(np.searchsorted(values, y).astype(np.int64))
    pool_x, pool_y = torch.from_numpy(xs[0]), torch.from_numpy(coded[0])
    if len(xs) == 2:
        return (
            pool_x,
            pool_y,
            torch.from_numpy(xs[1]),
            torch.from_numpy(coded[1]),
            classes,
            str(path),
        )
    return pool_x, pool_y, None, None, classes, str(path)
