"""CIFAR-10 and CIFAR-100 in their python version (pickled batches), from a tarball or a folder.

Every fault is a :class:`DatasetError` naming the file and the fault. Depends only on the errors
and locating helpers, so the dataset registry can import it without a cycle.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._errors import DatasetError
from ._locate import Place
from ._raw import RawData

__all__ = ["CIFAR_10", "CIFAR_100", "CIFAR_100_COARSE", "CifarLayout", "read_cifar"]


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its images, labels and class names."""

    folder: str  # the folder the tarball unpacks to
    tarball: str  # the official download
    train: tuple[str, ...]  # batch files of the training set
    test: tuple[str, ...]  # batch files of the test set
    meta: str  # the file holding the class names
    labels: str  # the key of a batch's labels
    names: str  # the key of the meta file's class names


CIFAR_10 = CifarLayout(
    folder="cifar-10-batches-py",
    tarball="cifar-10-python.tar.gz",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    labels="labels",
    names="label_names",
)
CIFAR_100 = CifarLayout(
    folder="cifar-100-python",
    tarball="cifar-100-python.tar.gz",
    train=("train",),
    test=("test",),
    meta="meta",
    labels="fine_labels",
    names="fine_label_names",
)
# The same files as CIFAR-100, labelled with its 20 superclasses.
CIFAR_100_COARSE = replace(CIFAR_100, labels="coarse_labels", names="coarse_label_names")


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


def _tar_members(
    location: Path, wanted: tuple[str, ...], layout: CifarLayout, fetch: str
) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(location, "r:*") as tar:
            # One pass in archive order: a gzip stream cannot seek back cheaply. Members are
            # read into memory, never extracted, so no path in the archive matters.
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[base] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(
            f"{location} is not a readable tar archive ({exc}); it is corrupt or truncated, "
            f"download it again (cnnas data fetch {fetch})"
        ) from None
    missing = [m for m in wanted if m not in found]
    if missing:
        raise DatasetError(
            f"{location}: the archive lacks {missing}; expected the python version "
            f"{layout.tarball} with {layout.folder}/"
        )
    return found


def _cifar_members(layout: CifarLayout, location: Path, fetch: str) -> dict[str, bytes]:
    """The raw bytes of the batches and meta file, from the tarball or the folder."""
    wanted = (*layout.train, *layout.test, layout.meta)
    if location.is_file():
        return _tar_members(location, wanted, layout, fetch)
    missing = [m for m in wanted if not (location / m).is_file()]
    if missing:
        raise DatasetError(f"{location}: missing CIFAR file(s) {missing}")
    return {m: (location / m).read_bytes() for m in wanted}


def _find_cifar(place: Place, layout: CifarLayout) -> Path:
    candidates, origin = place.candidates()
    for c in candidates:
        if c.is_file():
            return c
        for option in (c / layout.folder, c, c / layout.tarball):
            if option.is_file() or (option / layout.train[0]).is_file():
                return option
    raise place.not_found(
        origin, candidates, [f"{layout.tarball}", f"or a folder {layout.folder}/"]
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


def read_cifar(place: Place, layout: CifarLayout) -> RawData:
    """A CIFAR variant's official train and test sets, found through ``place`` (its tarball, or
    the folder it unpacks to); the class names come from its meta file."""
    location = _find_cifar(place, layout)
    members, source = _cifar_members(layout, location, place.fetch), str(location)
    meta_where = f"{source}: {layout.meta}"
    meta = _unpickle(members[layout.meta], meta_where)
    _need(meta, (layout.names,), meta_where)
    classes = tuple(
        n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[layout.names]
    )
    pool_x, pool_y = _cifar_split(members, layout.train, layout.labels, source)
    test_x, test_y = _cifar_split(members, layout.test, layout.labels, source)
    return RawData(pool_x, pool_y, test_x, test_y, classes, source)
