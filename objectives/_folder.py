"""Folders of images, one sub-folder per class, decoded once and cached as a uint8 array.

Layout: ``ROOT/<class>/**/<image>`` (the test set is then carved out by ``load_dataset``), or
``ROOT/train/<class>/...`` beside ``ROOT/test/<class>/...`` for an own test set. Classes are the
sub-folder names in sorted order. Any size and mode Pillow reads is accepted: images are
converted to grayscale when every image is grayscale, else to RGB (alpha and palettes dropped,
as ``cnnas predict`` does), and resized bilinearly to the configured size.

Decoding tens of thousands of JPEGs takes minutes, so the result is stored in a cache folder
with a fingerprint of the source (every file's relative path, size and modification time, and
the resize settings). A later load with the same fingerprint reads the array back in seconds;
a file added, removed or changed gives another fingerprint and a fresh decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._errors import DatasetError
from ._raw import RawData

__all__ = ["IMAGE_EXTENSIONS", "default_cache_dir", "image_folder_cache", "load_image_folder"]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
# Bump when the decoded array would differ for the same files (conversion, resampling); 2:
# images wider than 8 bits are scaled, not clipped.
_CACHE_VERSION = 2
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_PROGRESS_EVERY = 2000


def default_cache_dir() -> Path:
    """``$CNNAS_CACHE_DIR/image-folders``, else ``$XDG_CACHE_HOME/cnnas/image-folders``
    (``~/.cache/cnnas/image-folders``)."""
    own = os.environ.get("CNNAS_CACHE_DIR")
    if own:
        return Path(own).expanduser() / "image-folders"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cnnas" / "image-folders"


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_dirs(split_dir: Path) -> list[str]:
    names = []
    for e in os.scandir(split_dir):
        if e.name.startswith("."):
            continue
        try:
            is_dir = e.is_dir()
        except OSError as exc:  # a symbolic link that points at itself
            is_dir = False
            print(f"warning: {e.path} is skipped: {exc.strerror}", file=sys.stderr)
        else:
            if not is_dir and e.is_symlink():
                print(f"warning: {e.path} is skipped: a broken symbolic link", file=sys.stderr)
        if is_dir:
            names.append(e.name)
    return sorted(names)


def _scan(class_dir: Path) -> list[tuple[str, int, int]]:
    """(path relative to the class folder, size, mtime_ns) of every image, in sorted order.

    A file that cannot be looked at (a broken or looping symbolic link) is listed with size
    and time -1: decoding it fails, and it counts as unreadable like any damaged image."""
    found = []
    for here, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_image(name):
                full = Path(here) / name
                try:
                    st = full.stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size = mtime = -1
                found.append((full.relative_to(class_dir).as_posix(), size, mtime))
    return found


def _layout(root: Path) -> dict[str, Path]:
    if not root.exists():
        raise DatasetError(f"data.path: {root} does not exist")
    if not root.is_dir():
        raise DatasetError(
            f"data.path: {root} is not a folder; the image-folder dataset is a folder with one "
            "sub-folder of images per class"
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {"train": root / "train", "test": root / "test"}
    return {"train": root}


def image_folder_cache(
    root: str | os.PathLike,
    image_size: tuple[int, int] | None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The cache file that holds ``root`` decoded at ``image_size``."""
    resolved = Path(root).expanduser().resolve()
    key = hashlib.sha256(f"{resolved}\0{image_size}".encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in resolved.name)[:40]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / f"{stem or 'root'}-{key}.npz"


def _listing(root: Path) -> tuple[list[str], list[tuple[str, int, str, int, int]]]:
    """Classes and (split, class index, relative path, size, mtime_ns) of every image."""
    splits = _layout(root)
    classes = _class_dirs(splits["train"])
    if len(classes) < 2:
        loose = [n for n in os.listdir(splits["train"]) if _is_image(n)]
        hint = (
            f"; its {len(loose)} image(s) lie directly in it, not in class sub-folders"
            if loose
            else ""
        )
        raise DatasetError(
            f"{splits['train']}: an image-folder dataset needs at least two classes, one "
            f"sub-folder of images each; found {len(classes)}"
            + (f" ({', '.join(classes)})" if classes else "")
            + hint
        )
    entries = []
    for split, split_dir in splits.items():
        split_classes = _class_dirs(split_dir)
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DatasetError(
                f"{split_dir}: class folder(s) {unknown} are not among the training classes "
                f"in {splits['train']}"
            )
        for name in split_classes:
            files = _scan(split_dir / name)
            if not files and split == "train":
                raise DatasetError(
                    f"{split_dir / name}: class folder holds no images "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            k = classes.index(name)
            entries += [(split, k, f"{name}/{rel}", size, mtime) for rel, size, mtime in files]
    return classes, entries


def _fingerprint(entries: list, image_size: tuple[int, int] | None) -> str:
    payload = json.dumps({"version": _CACHE_VERSION, "size": image_size, "files": entries})
    return hashlib.sha256(payload.encode()).hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["fingerprint"]) != fingerprint:
                return None
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache is rebuilt, never trusted


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    except OSError as exc:
        print(f"warning: cannot write the image cache in {path.parent}: {exc}", file=sys.stderr)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        # A rename is atomic: a concurrent reader sees the old cache or the new one, whole.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decode(
    root: Path,
    entries: list[tuple[str, int, str, int, int]],
    image_size: tuple[int, int] | None,
) -> tuple[np.ndarray, list[int], list[str]]:
    """Images ``(N, C, H, W)``, the indices of ``entries`` they come from, and the failures."""
    from PIL import Image

    splits = _layout(root)

    def full(entry: tuple) -> Path:
        return splits[entry[0]] / entry[2]

    # Pass 1 reads only headers: the channel count and the size must be known before decoding.
    heads: list[tuple[int, str, tuple[int, int]]] = []
    failed: list[str] = []
    for i, entry in enumerate(entries):
        try:
            with Image.open(full(entry)) as img:
                heads.append((i, img.mode, img.size))
        except Exception as exc:  # Pillow raises many types on bad files
            failed.append(f"{full(entry)} ({type(exc).__name__}: {exc})")
    channels = 1 if heads and all(mode in _GRAY_MODES for _, mode, _ in heads) else 3
    if image_size is None:
        sizes: dict[tuple[int, int], int] = {}
        for i, _, (w, h) in heads:
            sizes.setdefault((h, w), i)
        if len(sizes) > 1:
            shown = ", ".join(
                f"{h}x{w} ({full(entries[i])})" for (h, w), i in list(sizes.items())[:3]
            )
            raise DatasetError(
                f"{root}: images differ in size ({len(sizes)} sizes, e.g. {shown}); set "
                "data.height and data.width to the size (in pixels) to resize them to"
            )
        image_size = next(iter(sizes)) if sizes else (1, 1)
    h, w = image_size
    out = np.empty((len(heads), channels, h, w), dtype=np.uint8)
    kept: list[int] = []
    mode = "L" if channels == 1 else "RGB"
    started = time.monotonic()
    for n, (i, _, _) in enumerate(heads, 1):
        try:
            with Image.open(full(entries[i])) as img:
                img = to_8_bits(img).convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # truncated data shows only now
            failed.append(f"{full(entries[i])} ({type(exc).__name__}: {exc})")
            continue
        out[len(kept)] = array[None] if channels == 1 else array.transpose(2, 0, 1)
        kept.append(i)
        if n % _PROGRESS_EVERY == 0:
            print(
                f"decoding {root}: {n}/{len(heads)} images ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return out[: len(kept)], kept, failed


# Full scale of the image modes wider than 8 bits: Pillow keeps 16-bit grayscale (PNG, PGM,
# TIFF) as I;16 or I with values up to 65535, and floating-point images as F in 0..1. Its own
# convert() would clip them at 255 (every 16-bit image nearly white).
_FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def to_8_bits(img: Any) -> Any:
    """``img``, scaled to 8 bits when its mode is wider (16-bit and 32-bit integer, float);
    8-bit images are returned as they are."""
    from PIL import Image

    if img.mode not in _FULL_SCALE and img.mode != "F":
        return img
    array = np.asarray(img, dtype=np.float64)
    full = _FULL_SCALE.get(img.mode)
    if full is None:  # float: fractions of full intensity, or already 0..255
        full = 1.0 if array.size == 0 or float(np.nanmax(array)) <= 1.0 else 255.0
    scaled = np.nan_to_num(array * (255.0 / full), nan=0.0)
    return Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8), "L")


def load_image_folder(
    root: str | os.PathLike,
    *,
    image_size: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_unreadable: float = 0.01,
) -> RawData:
    """The images of a folder (classes: its sub-folders, sorted), read through the cache.

    Unreadable files are skipped with a warning on stderr; more than ``max_unreadable`` of them
    (a fraction of all image files) is a :class:`DatasetError`.
    """
    root = Path(root).expanduser()
    classes, entries = _listing(root)
    fingerprint = _fingerprint(entries, image_size)
    cache = image_folder_cache(root, image_size, cache_dir)
    arrays = _read_cache(cache, fingerprint)
    if arrays is None:
        if len(entries) >= _PROGRESS_EVERY:
            print(f"decoding {len(entries)} images in {root} (cached afterwards)", file=sys.stderr)
        x, kept, failed = _decode(root, entries, image_size)
        if len(failed) > max_unreadable * len(entries):
            raise DatasetError(
                f"{root}: {len(failed)} of {len(entries)} images cannot be read, more than "
                f"data.max_unreadable = {max_unreadable:g} of them; first: " + "; ".join(failed[:5])
            )
        arrays = {
            "fingerprint": np.array(fingerprint),
            "x": x,
            "y": np.array([entries[i][1] for i in kept], dtype=np.int64),
            "test": np.array([entries[i][0] == "test" for i in kept], dtype=bool),
            "classes": np.array(classes, dtype=str),
            "failed": np.array(failed, dtype=str),
        }
        _write_cache(cache, arrays)
    failed = [str(f) for f in arrays["failed"]]
    if failed:
        print(
            f"warning: skipped {len(failed)} of {len(entries)} images in {root} that cannot be "
            "read: " + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""),
            file=sys.stderr,
        )
    x, y, test = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]), arrays["test"]
    counts = np.bincount(arrays["y"][~test], minlength=len(classes))
    empty = [classes[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(f"{root}: no readable training image in class folder(s) {empty}")
    is_test = torch.from_numpy(test)
    if not test.any() and "test" not in _layout(root):
        return RawData(x, y, None, None, tuple(classes), str(root))
    return RawData(x[~is_test], y[~is_test], x[is_test], y[is_test], tuple(classes), str(root))
