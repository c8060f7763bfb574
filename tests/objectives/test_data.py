"""Tests of IDX reading, locating Fashion-MNIST, the dataset registry, splitting and loading."""

from __future__ import annotations

import gzip
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnas.objectives
from cnnas.objectives import (
    DATASETS,
    DatasetEntry,
    DatasetError,
    ImageData,
    dataset_entry,
    find_fashion_mnist,
    load_dataset,
    read_idx,
    stratified_split,
)

REAL_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_TYPE_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (big-endian, as the format requires)."""
    array = np.asarray(array)
    code = _TYPE_CODES[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write ``array`` as IDX to ``path``; gzip it if ``gz`` (default: if the name ends .gz)."""
    data = idx_bytes(array)
    if gz if gz is not None else path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_images(labels: np.ndarray, offset: int = 0) -> np.ndarray:
    """28x28 uint8 images that encode their own position, so splits can be traced back.

    Pixel (0, 0) and (0, 1) hold the index ``offset + i`` in base 256; the rest is noise.
    """
    n = len(labels)
    rng = np.random.default_rng(offset)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    index = np.arange(offset, offset + n)
    images[:, 0, 0] = index % 256
    images[:, 0, 1] = index // 256
    return images


def image_ids(x: torch.Tensor) -> torch.Tensor:
    """Recover the indices written by ``fake_images`` from a (N, 1, 28, 28) tensor."""
    return x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()


def make_fashion_dir(
    directory: Path,
    *,
    train_labels: np.ndarray | None = None,
    n_train: int = 200,
    n_test: int = 50,
    gz: bool = False,
) -> Path:
    """Build a fake Fashion-MNIST directory; test image ids start at 10_000."""
    directory.mkdir(parents=True, exist_ok=True)
    if train_labels is None:
        train_labels = np.arange(n_train) % 10
    train_labels = np.asarray(train_labels, dtype=np.uint8)
    test_labels = (np.arange(n_test) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    arrays = (
        fake_images(train_labels),
        train_labels,
        fake_images(test_labels, offset=10_000),
        test_labels,
    )
    for stem, array in zip(FASHION_FILES, arrays, strict=True):
        write_idx(directory / f"{stem}{suffix}", array)
    return directory


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own CNNAS_DATA_DIR must not change what these tests see.
    monkeypatch.delenv("CNNAS_DATA_DIR", raising=False)


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    return make_fashion_dir(tmp_path / "fm")


# --------------------------------------------------------------------------------------------
# read_idx
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool, dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gz=gz)

    out = read_idx(path)

    assert out.shape == (3, 4, 5)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable  # torch.from_numpy warns on read-only arrays


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    gz_without_suffix = write_idx(tmp_path / "labels-idx1-ubyte", labels, gz=True)
    plain_with_suffix = write_idx(tmp_path / "labels-idx1-ubyte.gz", labels, gz=False)

    np.testing.assert_array_equal(read_idx(gz_without_suffix), labels)
    np.testing.assert_array_equal(read_idx(str(plain_with_suffix)), labels)


@pytest.mark.parametrize("content", [b"\x08\x03\x00\x00garbage", b"PK\x03\x04", b"", b"\x00"])
def test_read_idx_rejects_non_idx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-idx"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "weird"
    path.write_bytes(bytes([0, 0, 0x42, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DatasetError, match="0x42"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_idx_truncated_payload_names_byte_counts(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((4, 5, 6), dtype=np.uint8))[:-7]  # 120 payload bytes -> 113
    path = tmp_path / "short"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError, match="truncated") as info:
        read_idx(path)
    message = str(info.value)
    assert "120" in message and "113" in message and str(path) in message


def test_read_idx_trailing_data_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros(10, dtype=np.uint8)) + b"\x00\x00")
    with pytest.raises(DatasetError, match=r"10 payload bytes.*12 bytes"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "header"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 5))
    with pytest.raises(DatasetError, match="header"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000, dtype=np.uint8)))[:20])
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# find_fashion_mnist
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_find_explicit_dir(tmp_path: Path, gz: bool) -> None:
    directory = make_fashion_dir(tmp_path / "fm", gz=gz)
    assert find_fashion_mnist(directory) == directory
    assert find_fashion_mnist(str(directory)) == directory


def test_find_accepts_mixed_plain_and_gzip(fashion_dir: Path) -> None:
    plain = fashion_dir / FASHION_FILES[0]
    (fashion_dir / f"{FASHION_FILES[0]}.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    assert find_fashion_mnist(fashion_dir) == fashion_dir


def test_find_via_env_var(fashion_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNAS_DATA_DIR", str(fashion_dir))
    assert find_fashion_mnist() == fashion_dir


@pytest.mark.parametrize("sub", ["fashion-mnist", "fashion_mnist"])
def test_find_in_subdirectory(tmp_path: Path, sub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fashion_dir(tmp_path / "data" / sub, gz=True)
    assert find_fashion_mnist(tmp_path / "data") == tmp_path / "data" / sub
    monkeypatch.setenv("CNNAS_DATA_DIR", str(tmp_path / "data"))
    assert find_fashion_mnist() == tmp_path / "data" / sub


def test_find_default_dirs(fashion_dir: Path, tmp_path: Path, monkeypatch) -> None:
    assert find_fashion_mnist(system_dirs=(fashion_dir.parent / "x", fashion_dir)) == fashion_dir
    # After the system folders: where `cnnas data fetch fashion-mnist` puts the files.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fetched = make_fashion_dir(tmp_path / "xdg" / "cnnas" / "datasets" / "fashion-mnist")
    assert find_fashion_mnist(system_dirs=(tmp_path / "x",)) == fetched


def test_find_missing_dir_explains_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DatasetError) as info:
        find_fashion_mnist(missing)
    message = str(info.value)
    assert str(missing) in message
    assert str(missing / "fashion-mnist") in message
    assert "dataset-fashion-mnist" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message
    assert "CNNAS_DATA_DIR" in message
    for stem in FASHION_FILES:
        assert stem in message


def test_find_explicit_dir_does_not_fall_back(
    fashion_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrong --data-dir must fail loudly rather than silently use other data.
    monkeypatch.setenv("CNNAS_DATA_DIR", str(fashion_dir))
    with pytest.raises(DatasetError, match="no-such-dir"):
        find_fashion_mnist(tmp_path / "no-such-dir", system_dirs=(fashion_dir,))


def test_find_env_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNAS_DATA_DIR", str(tmp_path / "env-dir"))
    with pytest.raises(DatasetError, match="env-dir"):
        find_fashion_mnist()


def test_find_reports_partially_missing_files(fashion_dir: Path) -> None:
    (fashion_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="missing t10k-labels-idx1-ubyte"):
        find_fashion_mnist(fashion_dir)


# --------------------------------------------------------------------------------------------
# stratified_split
# --------------------------------------------------------------------------------------------


def test_stratified_split_partitions_and_stratifies() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    keep, split = stratified_split(labels, 0.2, seed=1)

    for idx in (keep, split):
        assert idx.dtype == torch.int64
        assert torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(torch.sort(torch.cat([keep, split])).values, torch.arange(100))
    assert torch.bincount(labels[split]).tolist() == [10, 6, 4]


def test_stratified_split_is_deterministic() -> None:
    labels = torch.arange(1000) % 7
    a = stratified_split(labels, 0.3, seed=5)
    b = stratified_split(labels, 0.3, seed=5)
    c = stratified_split(labels, 0.3, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_stratified_split_small_classes() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3] + [4] * 10)
    keep, split = stratified_split(labels, 0.05, seed=0)
    # Classes with >= 2 items give at least one to the split; singletons stay behind.
    assert sorted(labels[split].tolist()) == [0, 1, 4]
    keep, split = stratified_split(labels, 0.95, seed=0)
    # ... and every class keeps at least one item.
    assert set(labels[keep].tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, math.nan, True, "0.1"])
def test_stratified_split_rejects_bad_fraction(fraction: object) -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(torch.arange(10) % 2, fraction, seed=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# load_dataset on a fake Fashion-MNIST
# --------------------------------------------------------------------------------------------


def test_load_fake_fashion_shapes_and_splits(fashion_dir: Path) -> None:
    data = load_dataset("fashion-mnist", data_dir=fashion_dir, val_fraction=0.1, seed=0)

    assert isinstance(data, ImageData)
    assert data.name == "fashion-mnist"
    assert data.num_classes == 10 and data.classes[0] == "T-shirt/top"
    assert data.input_shape == (1, 28, 28)
    assert data.source == str(fashion_dir)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (180, 20, 50)
    for x, y in (
        (data.train_x, data.train_y),
        (data.val_x, data.val_y),
        (data.test_x, data.test_y),
    ):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 28, 28) and x.shape[0] == y.shape[0]
        assert x.is_contiguous() and y.is_contiguous()
        assert x.device.type == "cpu"

    train_ids, val_ids = image_ids(data.train_x), image_ids(data.val_x)
    assert not set(train_ids.tolist()) & set(val_ids.tolist())
    assert sorted(train_ids.tolist() + val_ids.tolist()) == list(range(200))
    # Labels travel with their images (fake labels are id % 10).
    assert torch.equal(data.train_y, train_ids % 10)
    assert torch.equal(data.val_y, val_ids % 10)
    assert image_ids(data.test_x).tolist() == list(range(10_000, 10_050))

    # Statistics are over train_x only, per channel, in 0..255 units.
    train = data.train_x.double()
    assert data.mean == pytest.approx((train.mean().item(),))
    assert data.std == pytest.approx((train.std(unbiased=False).item(),))
    assert all(isinstance(v, float) for v in data.mean + data.std)
    assert "train=180" in repr(data)


def test_load_fake_fashion_gzip(tmp_path: Path) -> None:
    directory = make_fashion_dir(tmp_path / "fm", gz=True)
    data = load_dataset("fashion-mnist", data_dir=directory)
    assert len(data.train_y) + len(data.val_y) == 200


def test_load_is_deterministic(fashion_dir: Path) -> None:
    a = load_dataset("fashion-mnist", data_dir=fashion_dir, seed=3)
    b = load_dataset("fashion-mnist", data_dir=fashion_dir, seed=3)
    c = load_dataset("fashion-mnist", data_dir=fashion_dir, seed=4)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.mean == b.mean and a.std == b.std
    assert not torch.equal(image_ids(a.val_x), image_ids(c.val_x))
    assert torch.equal(a.test_x, c.test_x)


def test_load_stratifies_uneven_classes(tmp_path: Path) -> None:
    counts = [40, 30, 30, 20, 20, 20, 10, 10, 10, 10]
    labels = np.repeat(np.arange(10), counts)
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    directory = make_fashion_dir(tmp_path / "fm", train_labels=labels)

    data = load_dataset("fashion-mnist", data_dir=directory, val_fraction=0.2, seed=7)

    assert torch.bincount(data.val_y, minlength=10).tolist() == [round(0.2 * n) for n in counts]
    assert torch.bincount(data.train_y, minlength=10).tolist() == [
        n - round(0.2 * n) for n in counts
    ]


def test_load_subset(fashion_dir: Path) -> None:
    full = load_dataset("fashion-mnist", data_dir=fashion_dir, seed=1)
    data = load_dataset("fashion-mnist", data_dir=fashion_dir, subset=60, seed=1)

    assert len(data.train_y) + len(data.val_y) == 60
    assert torch.bincount(data.train_y, minlength=10).tolist() == [5] * 10
    assert torch.bincount(data.val_y, minlength=10).tolist() == [1] * 10
    # The test set is never subsetted.
    assert torch.equal(data.test_x, full.test_x) and torch.equal(data.test_y, full.test_y)

    whole = load_dataset("fashion-mnist", data_dir=fashion_dir, subset=10_000, seed=1)
    assert len(whole.train_y) + len(whole.val_y) == 200


def test_load_subset_total_is_exact_with_uneven_classes(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(10), [37, 29, 23, 19, 17, 13, 11, 7, 5, 3])
    directory = make_fashion_dir(tmp_path / "fm", train_labels=labels)
    for subset in (20, 33, 77, 150):
        data = load_dataset("fashion-mnist", data_dir=directory, subset=subset)
        assert len(data.train_y) + len(data.val_y) == subset


def test_load_rejects_count_mismatch(fashion_dir: Path) -> None:
    write_idx(fashion_dir / "train-labels-idx1-ubyte", np.arange(19, dtype=np.uint8) % 10)
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=fashion_dir)
    message = str(info.value)
    assert "200 images" in message and "19 labels" in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message


def test_load_rejects_small_count_mismatch(tmp_path: Path) -> None:
    directory = make_fashion_dir(tmp_path / "fm", n_train=20, n_test=10)
    write_idx(directory / "t10k-images-idx3-ubyte", fake_images(np.zeros(12)))
    with pytest.raises(DatasetError, match=r"12 images.*10 labels"):
        load_dataset("fashion-mnist", data_dir=directory)


def test_load_rejects_out_of_range_labels(fashion_dir: Path) -> None:
    write_idx(fashion_dir / "t10k-labels-idx1-ubyte", np.full(50, 12, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"0\.\.9.*\[12\]"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)


def test_load_rejects_wrong_image_layout(fashion_dir: Path) -> None:
    write_idx(fashion_dir / "train-images-idx3-ubyte", np.zeros((200, 784), dtype=np.uint8))
    with pytest.raises(DatasetError, match="3-D"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)


def test_load_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "'cifar10'" in message
    for name in DATASETS:
        assert name in message


def test_registry_unknown_name_lists_known_names() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'fashion_mnist'") as info:
        dataset_entry("fashion_mnist")
    assert str(sorted(DATASETS)) in str(info.value)


def test_registry_names_are_the_datasets() -> None:
    entries = [dataset_entry(name) for name in DATASETS]
    assert all(isinstance(e, DatasetEntry) for e in entries)
    assert tuple(e.name for e in entries) == DATASETS
    assert DATASETS[:4] == ("fashion-mnist", "digits", "mnist", "kmnist")
    assert DATASETS[-2:] == ("image-folder", "npz")
    # Only the user's own files need data.path; everything else has a download or is bundled.
    assert {e.name for e in entries if e.user_path} == {"image-folder", "npz"}
    assert {e.name for e in entries if e.fetch is None} == {"digits", "image-folder", "npz"}


def test_fixed_class_count_checks_subset_before_reading(tmp_path: Path) -> None:
    # cifar-100 has 100 classes: a subset of 150 fails before the (missing) files are looked for.
    assert dataset_entry("cifar-100").num_classes == 100
    with pytest.raises(DatasetError, match=r"subset must be an integer >= 200"):
        load_dataset("cifar-100", data_dir=tmp_path / "nowhere", subset=150)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.5, 2, math.nan])
def test_bad_val_fraction(val_fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=val_fraction)


@pytest.mark.parametrize("subset", [0, 19, -5, True, 50.0])
def test_bad_subset(subset: object) -> None:
    with pytest.raises(DatasetError, match="subset"):
        load_dataset("digits", subset=subset)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)

    assert a.input_shape == (1, 8, 8)
    assert a.num_classes == 10 and a.classes == tuple("0123456789")
    assert a.source == "sklearn.datasets.load_digits"
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert int(a.train_x.max()) == 255 and int(a.train_x.min()) == 0
    assert len(a.train_y) + len(a.val_y) + len(a.test_y) == 1797
    assert abs(len(a.test_y) - 0.2 * 1797) <= 10
    # The test split is fixed, whatever the study seed; train/val are not.
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.val_y, b.val_y) or not torch.equal(a.val_x, b.val_x)
    assert set(a.test_y.tolist()) == set(range(10))

    small = load_dataset("digits", subset=100, seed=2)
    assert len(small.train_y) + len(small.val_y) == 100
    assert torch.equal(small.test_x, a.test_x)


# --------------------------------------------------------------------------------------------
# real data and import hygiene
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_FASHION_DIR.is_dir(), reason=f"{REAL_FASHION_DIR} not installed")
def test_real_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (54_000, 6_000, 10_000)
    assert data.input_shape == (1, 28, 28)
    assert torch.bincount(data.val_y).tolist() == [600] * 10
    assert 72.0 < data.mean[0] < 74.0
    assert 85.0 < data.std[0] < 95.0


def test_data_modules_import_nothing_heavy() -> None:
    # The objectives package __init__ imports the training stack, but loading data must stay
    # possible for light-weight tools: load _data (and through it the registry and every
    # reader) under a bare package that skips that __init__.
    folder = str(Path(cnnas.objectives.__file__).parent)
    code = (
        "import sys, types, importlib\n"
        "import cnnas\n"
        "package = types.ModuleType('cnnas.objectives')\n"
        f"package.__path__ = [{folder!r}]\n"
        "sys.modules['cnnas.objectives'] = package\n"
        "importlib.import_module('cnnas.objectives._data')\n"
        "importlib.import_module('cnnas.objectives._fetch')\n"
        "heavy = {'optuna', 'lightning', 'pytorch_lightning', 'mlflow', 'sklearn', 'PIL'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert result.stdout.strip() == "[]"
