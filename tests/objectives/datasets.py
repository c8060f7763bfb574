"""Builders of small fixture datasets in every supported format, in their real layouts."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def labelled_images(labels: np.ndarray, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint8 images whose brightness depends on the label's parity, so classes are learnable."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=(len(labels), *shape))
    bright = (180 * (np.asarray(labels) % 2)).reshape(-1, *([1] * len(shape)))
    return (base + bright).astype(np.uint8)


def make_idx_dir(
    directory: Path,
    stems: tuple[str, ...] = IDX_STEMS,
    *,
    n_train: int = 60,
    n_test: int = 20,
    classes: int = 10,
    size: tuple[int, int] = (28, 28),
    gz: bool = True,
    first_label: int = 0,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for (img_stem, lab_stem), n, seed in (
        ((stems[0], stems[1]), n_train, 0),
        ((stems[2], stems[3]), n_test, 1),
    ):
        labels = (np.arange(n) % classes + first_label).astype(np.uint8)
        images = labelled_images(labels, size, seed)
        for stem, array in ((img_stem, images), (lab_stem, labels)):
            data = idx_bytes(array)
            name = f"{stem}.gz" if gz else stem
            (directory / name).write_bytes(gzip.compress(data) if gz else data)
    return directory


def emnist_stems(split: str) -> tuple[str, ...]:
    return tuple(
        f"emnist-{split}-{part}-{kind}"
        for part in ("train", "test")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )


CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip


def _batch(labels: np.ndarray, label_keys: tuple[str, ...], seed: int) -> dict:
    images = labelled_images(labels, (3, 32, 32), seed).reshape(len(labels), 3072)
    batch = {"batch_label": "training batch", "data": images, "filenames": ["x.png"] * len(labels)}
    for key in label_keys:
        batch[key] = [int(v) for v in labels]
    return batch


def make_cifar(directory: Path, kind: str = "cifar-10", *, tarball: bool, per_batch: int = 20):
    """A CIFAR python-version folder or tarball with the real names and keys.

    Pickled with protocol 2 like the originals (written by Python 2); keys are str, which is
    what the originals' byte-string keys become with encoding='latin1'.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    if kind == "cifar-10":
        folder = "cifar-10-batches-py"
        for i in range(1, 6):
            files[f"data_batch_{i}"] = _batch(np.arange(per_batch) % 10, ("labels",), i)
        files["test_batch"] = _batch(np.arange(per_batch) % 10, ("labels",), 9)
        files["batches.meta"] = {"label_names": CIFAR10_NAMES, "num_vis": 3072}
        archive = "cifar-10-python.tar.gz"
    else:
        folder = "cifar-100-python"
        fine = np.arange(2 * per_batch * 5) % 100
        for name, n in (("train", len(fine)), ("test", 2 * per_batch)):
            b = _batch(fine[:n], ("fine_labels",), 3)
            b["coarse_labels"] = [int(v) // 5 for v in fine[:n]]
            files[name] = b
        files["meta"] = {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
        archive = "cifar-100-python.tar.gz"
    blobs = {name: pickle.dumps(obj, protocol=2) for name, obj in files.items()}
    if not tarball:
        (directory / folder).mkdir(exist_ok=True)
        for name, blob in blobs.items():
            (directory / folder / name).write_bytes(blob)
        return directory / folder
    path = directory / archive
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_class: int = 12,
    *,
    rgb: bool = True,
    sizes: tuple[tuple[int, int], ...] = ((20, 30), (40, 24), (33, 33)),
    formats: tuple[str, ...] = ("png", "jpg"),
) -> Path:
    """Images of mixed sizes and formats (and modes: RGBA and palette among RGB ones)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            level = 40 + 160 * (k % 2)
            pixels = rng.integers(level - 30, level + 30, size=(h, w, 3) if rgb else (h, w))
            array = pixels.clip(0, 255).astype(np.uint8)
            ext = formats[i % len(formats)]
            mode = None
            if rgb and i % 5 == 3 and ext == "png":
                mode = "RGBA"
            elif rgb and i % 5 == 4 and ext == "png":
                mode = "P"
            save_image(root / name / f"img{i:03d}.{ext}", array, mode)
    return root
