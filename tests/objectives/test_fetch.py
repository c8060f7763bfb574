"""Downloads from a local HTTP server standing in for the official hosts."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnas.objectives import DATASETS, DatasetError, Remote, dataset_entry, fetch, load_dataset
from cnnas.objectives._fetch import REMOTES, remote_for

from .datasets import IDX_STEMS, emnist_stems, make_idx_dir


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_remote(served: Path, name: str = "mnist") -> Remote:
    folder = make_idx_dir(served / name)
    files = tuple((f"{stem}.gz", md5(folder / f"{stem}.gz")) for stem in IDX_STEMS)
    return Remote(name, "http://unused.invalid/", files)


def test_fetch_downloads_verifies_and_loads(server, tmp_path: Path) -> None:
    url, served = server
    remote = idx_remote(served)
    log = io.StringIO()
    folder = fetch("mnist", tmp_path / "data", mirror=url, remote=remote, out=log)
    assert folder == tmp_path / "data" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, _ in remote.files)
    assert "MD5 ok" in log.getvalue() and url in log.getvalue()
    assert load_dataset("mnist", data_dir=tmp_path / "data").num_classes == 10

    # A second fetch finds the files in place and downloads nothing.
    (served / "mnist").rename(served / "gone")
    log = io.StringIO()
    fetch("mnist", tmp_path / "data", mirror=url, remote=remote, out=log)
    assert log.getvalue().count("present, MD5 ok") == 4


def test_fetch_checksum_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    url, served = server
    good = idx_remote(served)
    bad_first = Remote("mnist", "", ((good.files[0][0], "0" * 32), *good.files[1:]))
    with pytest.raises(DatasetError, match=r"checksum mismatch.*expected MD5 0{32}, got"):
        fetch("mnist", tmp_path / "data", mirror=url, remote=bad_first, out=io.StringIO())
    assert not (tmp_path / "data" / "mnist").exists()

    # A later file that fails keeps the verified ones before it, and nothing of its own.
    bad_second = Remote("mnist", "", (good.files[0], (good.files[1][0], "0" * 32)))
    with pytest.raises(DatasetError, match="checksum mismatch"):
        fetch("mnist", tmp_path / "data", mirror=url, remote=bad_second, out=io.StringIO())
    kept = [p.name for p in (tmp_path / "data" / "mnist").iterdir()]
    assert kept == [good.files[0][0]]


def test_fetch_http_error(server, tmp_path: Path) -> None:
    url, _ = server
    remote = Remote("kmnist", "", (("train-images-idx3-ubyte.gz", "0" * 32),))
    with pytest.raises(DatasetError, match="HTTP 404"):
        fetch("kmnist", tmp_path / "d", mirror=url, remote=remote, out=io.StringIO())
    assert not (tmp_path / "d" / "kmnist").exists()


def test_fetch_emnist_unzips_flat(server, tmp_path: Path) -> None:
    url, served = server
    source = make_idx_dir(tmp_path / "src", emnist_stems("digits"))
    (served / "emnist").mkdir()
    archive = served / "emnist" / "gzip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in source.iterdir():
            zf.write(f, f"gzip/{f.name}")
    remote = Remote("emnist", "", (("gzip.zip", md5(archive)),), unzip=True)
    folder = fetch("emnist-digits", tmp_path / "data", mirror=url, remote=remote, out=io.StringIO())
    assert not (folder / "gzip.zip").exists()
    assert load_dataset("emnist-digits", data_dir=tmp_path / "data").num_classes == 10
    log = io.StringIO()
    fetch("emnist", tmp_path / "data", mirror=url, remote=remote, out=log)
    assert "unpacked before" in log.getvalue()


def test_fetch_uses_a_system_copy(tmp_path: Path) -> None:
    system = make_idx_dir(tmp_path / "usr-share")
    remote = Remote(
        "fashion-mnist",
        "http://unused.invalid/",
        tuple((f"{stem}.gz", "0" * 32) for stem in IDX_STEMS),
        local_dirs=(system,),
    )
    log = io.StringIO()
    assert fetch("fashion-mnist", remote=remote, out=log) == system
    assert "nothing to download" in log.getvalue()
    # With a folder to fill, the system files are copied (no network: the URL is invalid).
    folder = fetch("fashion-mnist", tmp_path / "data", remote=remote, out=io.StringIO())
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in IDX_STEMS)
    log = io.StringIO()
    fetch("fashion-mnist", tmp_path / "data", remote=remote, out=log)
    assert log.getvalue().count("present, same as") == 4


def test_remote_names() -> None:
    assert remote_for("emnist-letters").name == "emnist"
    assert remote_for("cifar-100-coarse").name == "cifar-100"
    with pytest.raises(DatasetError, match="downloadable: mnist, fashion-mnist"):
        remote_for("image-folder")
    for remote in REMOTES.values():
        assert all(len(digest) == 32 for _, digest in remote.files)


def test_every_download_of_the_registry_is_a_remote() -> None:
    fetched = {dataset_entry(name).fetch for name in DATASETS} - {None}
    assert fetched == set(REMOTES)
    for name in DATASETS:
        entry = dataset_entry(name)
        if entry.fetch is not None:
            assert remote_for(name) is REMOTES[entry.fetch]
    # A download's own name works too, where it is no dataset name (emnist holds six).
    assert remote_for("emnist") is REMOTES["emnist"]
    assert REMOTES["mnist"].files[0][0] == f"{IDX_STEMS[0]}.gz"
