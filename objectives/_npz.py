"""NumPy ``.npz`` files of images and labels, read without unpickling anything.

Every fault is a :class:`DatasetError` naming the file (and the array) and the fault. Depends
only on the errors module, so the dataset registry can import it without a cycle.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ._errors import DatasetError
from ._raw import RawData

__all__ = ["load_npz"]

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


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
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
    return arrays


def _roles(arrays: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray | None]:
    """The array playing each role of ``_NPZ_KEYS``; images and labels are required."""
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
    return found


def _splits(
    found: dict[str, np.ndarray | None], path: Path
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The label roles present (``y``, then ``y_test``), their images (N, C, H, W) uint8 and
    their raw labels, checked to agree in count and (between the splits) in image shape."""
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
    return [yk for _, yk in parts], xs, ys


def _labels_by_names(
    ys: list[np.ndarray], keys: list[str], names: np.ndarray, path: Path
) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """With a classes array, labels are indices into it."""
    classes = tuple(str(c) for c in np.asarray(names).reshape(-1))
    coded = []
    for y, yk in zip(ys, keys, strict=True):
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
    return classes, coded


def _labels_by_values(
    ys: list[np.ndarray], keys: list[str], path: Path
) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Without names, the distinct training label values are the classes, in sorted order."""
    values = np.unique(ys[0])
    classes = tuple(str(v.item() if hasattr(v, "item") else v) for v in values)
    coded = []
    for y, yk in zip(ys, keys, strict=True):
        unknown = np.setdiff1d(np.unique(y), values)
        if unknown.size:
            raise DatasetError(
                f"{path} [{yk}]: labels {unknown[:10].tolist()} do not occur in the training labels"
            )
        coded.append(np.searchsorted(values, y).astype(np.int64))
    return classes, coded


def load_npz(path: Path) -> RawData:
    """Images and labels from an ``.npz`` (see ``_NPZ_KEYS``); never unpickles anything.

    Images may be (N, H, W), (N, H, W, C) or (N, C, H, W), uint8, integers in 0..255 or floats
    in 0..1 or 0..255; labels integers or strings. A ``classes`` array names integer labels.
    ``x_test``/``y_test``, when present, are the test split.
    """
    found = _roles(_read_arrays(path), path)
    keys, xs, ys = _splits(found, path)
    names = found["classes"]
    if names is not None:
        classes, coded = _labels_by_names(ys, keys, names, path)
    else:
        classes, coded = _labels_by_values(ys, keys, path)
    pool_x, pool_y = torch.from_numpy(xs[0]), torch.from_numpy(coded[0])
    if len(xs) == 2:
        test_x, test_y = torch.from_numpy(xs[1]), torch.from_numpy(coded[1])
        return RawData(pool_x, pool_y, test_x, test_y, classes, str(path))
    return RawData(pool_x, pool_y, None, None, classes, str(path))
