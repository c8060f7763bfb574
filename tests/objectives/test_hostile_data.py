"""Datasets that are hostile or degenerate: images wider than 8 bits, images without pixels,
classes named twice, broken symbolic links, too few images to split, a mirror that is no URL.
Each is read correctly or refused with a DatasetError that names the source."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnas.objectives import DatasetError, fetch, load_dataset

from .datasets import make_image_folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNAS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# --- wider than 8 bits ------------------------------------------------------------------------


def _wide_folder(root: Path, make) -> Path:
    """Two classes of four images each, written by ``make(path, level)`` at a dark and a
    bright level (fractions of full scale)."""
    for name, level in (("dark", 0.25), ("bright", 0.75)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            make(root / name / f"{i}.png", level)
    return root


def test_16_bit_grayscale_pngs_are_scaled_not_clipped(tmp_path: Path) -> None:
    def png16(path: Path, level: float) -> None:
        Image.fromarray(np.full((6, 6), int(level * 65535), dtype=np.uint16)).save(path)

    root = _wide_folder(tmp_path / "wide", png16)
    assert Image.open(root / "dark" / "0.png").mode.startswith("I")
    data = load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")
    assert data.input_shape == (1, 6, 6)
    x = np.concatenate([data.train_x.numpy(), data.val_x.numpy(), data.test_x.numpy()])
    y = np.concatenate([data.train_y.numpy(), data.val_y.numpy(), data.test_y.numpy()])
    bright, dark = data.classes.index("bright"), data.classes.index("dark")
    # 0.75 and 0.25 of 65535 are 191 and 64 in 8 bits; clipping made both 255.
    assert np.all(x[y == bright] == 191) and np.all(x[y == dark] == 64)


def test_32_bit_integer_and_float_images_are_scaled(tmp_path: Path) -> None:
    def tif(path: Path, level: float) -> None:
        kind = path.parent.name
        array = np.full((5, 5), level, dtype=np.float32)
        if kind == "dark":  # a 32-bit integer image holding 16-bit values
            array = np.full((5, 5), int(level * 65535), dtype=np.int32)
        Image.fromarray(array).save(path.with_suffix(".tif"))

    root = _wide_folder(tmp_path / "wide", tif)
    data = load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")
    x = np.concatenate([data.train_x.numpy(), data.val_x.numpy(), data.test_x.numpy()])
    y = np.concatenate([data.train_y.numpy(), data.val_y.numpy(), data.test_y.numpy()])
    assert np.all(x[y == data.classes.index("bright")] == 191)
    assert np.all(x[y == data.classes.index("dark")] == 64)


def test_8_bit_images_are_unchanged_by_the_scaling(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "p", rgb=False, sizes=((8, 8),), formats=("png",))
    data = load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")
    first = sorted((root / "cat").iterdir())[0]
    pixels = np.asarray(Image.open(first))
    assert any(np.array_equal(pixels, img[0]) for img in data.train_x.numpy()) or any(
        np.array_equal(pixels, img[0])
        for img in np.concatenate([data.val_x.numpy(), data.test_x.numpy()])
    )


# --- images without pixels --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 0, 8), (40, 8, 0), (40, 1, 0, 8)])
def test_images_of_zero_height_or_width_are_refused(tmp_path: Path, shape) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros(shape, dtype=np.uint8), y=np.arange(40) % 2)
    with pytest.raises(DatasetError, match=r"empty\.npz.*no pixels"):
        load_dataset("npz", path=path)


def test_idx_images_of_zero_height_are_refused(tmp_path: Path) -> None:
    from .datasets import idx_bytes

    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = (np.arange(20) % 2).astype(np.uint8)
    for prefix, n in (("train", 20), ("t10k", 20)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes(np.zeros((n, 0, 28), dtype=np.uint8))
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:n]))
    with pytest.raises(DatasetError, match=r"no pixels"):
        load_dataset("mnist", data_dir=folder)


# --- class names ------------------------------------------------------------------------------


def test_an_npz_naming_a_class_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.npz"
    np.savez(
        path,
        x=np.zeros((40, 8, 8), dtype=np.uint8),
        y=np.arange(40) % 3,
        classes=np.array(["cat", "dog", "cat"]),
    )
    with pytest.raises(DatasetError, match=r"twice\.npz.*'cat'.*twice"):
        load_dataset("npz", path=path)


def test_class_folders_that_differ_only_in_unicode_form_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    nfc, nfd = "caf\u00e9", "cafe\u0301"  # both show as café
    make_image_folder(root, (nfc, nfd), per_class=6, sizes=((8, 8),), formats=("png",))
    with pytest.raises(DatasetError, match=r"twice"):
        load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")


# --- symbolic links ---------------------------------------------------------------------------


def _folder_with_links(tmp_path: Path, per_class: int) -> Path:
    root = make_image_folder(tmp_path / "p", per_class=per_class, sizes=((8, 8),), formats=("png",))
    os.symlink(tmp_path / "nowhere.png", root / "cat" / "dangling.png")
    os.symlink("loop.png", root / "dog" / "loop.png")
    return root


def test_broken_symlinks_in_an_image_folder_are_skipped_as_unreadable(tmp_path, capsys) -> None:
    root = _folder_with_links(tmp_path, per_class=150)
    data = load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 300
    err = capsys.readouterr().err
    assert "skipped 2 of 302 images" in err and "dangling.png" in err


def test_too_many_broken_symlinks_refuse_the_folder_by_name(tmp_path: Path) -> None:
    root = _folder_with_links(tmp_path, per_class=10)
    with pytest.raises(DatasetError, match=r"2 of 22 images cannot be read.*dangling\.png"):
        load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")


def test_a_class_folder_that_is_a_symlink_loop_is_not_a_traceback(tmp_path, capsys) -> None:
    root = make_image_folder(tmp_path / "p", per_class=6, sizes=((8, 8),), formats=("png",))
    os.symlink("ghost", root / "ghost")
    os.symlink(tmp_path / "absent", root / "missing")
    data = load_dataset("image-folder", path=root, cache_dir=tmp_path / "c")
    assert data.classes == ("cat", "dog")
    err = capsys.readouterr().err
    assert "ghost" in err and "missing" in err


# --- too few images to split ------------------------------------------------------------------


def test_an_npz_too_small_for_a_validation_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    x = np.zeros((2, 8, 8), dtype=np.uint8)
    np.savez(path, x=x, y=np.array([0, 1]), x_test=x, y_test=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"tiny\.npz.*0 validation images"):
        load_dataset("npz", path=path)


def test_an_npz_too_small_for_a_test_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.zeros((2, 8, 8), dtype=np.uint8), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"tiny\.npz.*0 test images"):
        load_dataset("npz", path=path)


def test_the_smallest_npz_that_splits_loads(tmp_path: Path) -> None:
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((6, 8, 8), dtype=np.uint8), y=np.array([0, 0, 0, 1, 1, 1]))
    data = load_dataset("npz", path=path, test_fraction=0.3, val_fraction=0.5)
    assert len(data.train_y) and len(data.val_y) and len(data.test_y)


# --- data fetch --mirror ----------------------------------------------------------------------


@pytest.mark.parametrize("mirror", ["not a url", "ftp//x", "://nohost", "http://", "file"])
def test_a_mirror_that_is_no_url_is_refused_before_anything(tmp_path, mirror) -> None:
    with pytest.raises(DatasetError, match=r"mirror.*not a URL"):
        fetch("mnist", tmp_path / "data", mirror=mirror)
    assert not (tmp_path / "data").exists()


def test_a_mirror_from_the_environment_is_checked_too(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CNNAS_DATA_MIRROR", "not a url")
    with pytest.raises(DatasetError, match=r"CNNAS_DATA_MIRROR.*not a URL"):
        fetch("mnist", tmp_path / "data")
