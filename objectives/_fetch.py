"""Downloads of the public datasets from their official sources, checksum-verified.

Every file is streamed to a temporary file beside its target, its MD5 compared with the value
the dataset's authors (and torchvision) publish, and only then renamed into place: an
interrupted or corrupt download leaves nothing that a later load could mistake for data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ._datasets import dataset_entry
from ._errors import DatasetError
from ._idx import FASHION_MNIST_DIRS, IDX_STEMS, read_idx
from ._locate import default_data_dir

__all__ = ["MIRROR_ENV", "REMOTES", "Remote", "fetch", "remote_for"]

#: Environment variable: a base URL serving ``<name>/<file>`` in place of the official hosts.
MIRROR_ENV = "CNNAS_DATA_MIRROR"


@dataclass(frozen=True)
class Remote:
    """One downloadable dataset: where its files are and what they must hash to."""

    name: str  # the folder under the data directory, and the name `cnnas data fetch` takes
    base_url: str  # official location; a file's URL is base_url + file name
    files: tuple[tuple[str, str], ...]  # (file name, MD5 hex digest)
    # A zip whose members are unpacked (flattened) into the folder and then deleted.
    unzip: bool = False
    # Folders where a system package installs the same files (used, not downloaded).
    local_dirs: tuple[Path, ...] = ()


# The official hosts serve the IDX files gzip-compressed.
_IDX_FILES = tuple(f"{stem}.gz" for stem in IDX_STEMS)

# MD5s as published with each dataset and listed by torchvision's dataset classes.
REMOTES: dict[str, Remote] = {
    "mnist": Remote(
        "mnist",
        # yann.lecun.com refuses most downloads now; this is torchvision's mirror of its files.
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        tuple(
            zip(
                _IDX_FILES,
                (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "9fb629c4189551a2d022fa330f9573f3",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
                strict=True,
            )
        ),
    ),
    "fashion-mnist": Remote(
        "fashion-mnist",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        tuple(
            zip(
                _IDX_FILES,
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
                strict=True,
            )
        ),
        local_dirs=FASHION_MNIST_DIRS,
    ),
    "kmnist": Remote(
        "kmnist",
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        tuple(
            zip(
                _IDX_FILES,
                (
                    "bdb82020997e1d708af4cf47b453dcf7",
                    "e144d726b3acfaa3e44228e80efcd344",
                    "5c965bf0a639b31b8f53240b1b52f4d7",
                    "7320c461ea6c1c855c0b718fb2a4b134",
                ),
                strict=True,
            )
        ),
    ),
    "emnist": Remote(
        "emnist",
        "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/",
        (("gzip.zip", "58c8d27c78d21e728a6bc7b3cc06412e"),),
        unzip=True,
    ),
    "cifar-10": Remote(
        "cifar-10",
        "https://www.cs.toronto.edu/~kriz/",
        (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    ),
    "cifar-100": Remote(
        "cifar-100",
        "https://www.cs.toronto.edu/~kriz/",
        (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
    ),
}


def remote_for(name: str) -> Remote:
    """The download providing dataset ``name`` (``emnist-letters`` -> emnist, ...), or the
    download of that name itself (``emnist``)."""
    try:
        base = dataset_entry(name).fetch
    except DatasetError:
        base = name
    if base not in REMOTES:
        raise DatasetError(
            f"unknown dataset {name!r} for data fetch; downloadable: {', '.join(REMOTES)} "
            "(emnist-<split> comes with emnist, cifar-100-coarse with cifar-100; image-folder "
            "and npz are your own files)"
        )
    return REMOTES[base]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _download(url: str, target: Path, md5: str, out: TextIO) -> None:
    """``url`` -> ``target``, through a temporary file renamed only once the MD5 matches."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as handle:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except urllib.error.HTTPError as exc:
                raise DatasetError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DatasetError(f"cannot download {url}: {reason}") from None
            with response:
                total = int(response.headers.get("Content-Length") or 0)
                done, shown = 0, 0
                print(
                    f"  {url} -> {target}" + (f" ({_mib(total)})" if total else ""),
                    file=out,
                    flush=True,
                )
                while block := response.read(1 << 20):
                    handle.write(block)
                    digest.update(block)
                    done += len(block)
                    # A line per tenth of the file (or per 16 MiB when the size is unknown).
                    step = total / 10 if total else 16 << 20
                    if done - shown >= step:
                        shown = done
                        pct = f" ({100 * done / total:.0f}%)" if total else ""
                        print(f"    {_mib(done)}{pct}", file=out, flush=True)
        got = digest.hexdigest()
        if got != md5:
            raise DatasetError(
                f"checksum mismatch for {url}: expected MD5 {md5}, got {got} ({done} bytes); "
                "the download is corrupt or the file changed upstream; nothing was kept"
            )
        os.replace(tmp, target)
        print(f"    {target.name}: {_mib(done)}, MD5 ok", file=out, flush=True)
    finally:
        tmp.unlink(missing_ok=True)


def _unzip(archive: Path, folder: Path, out: TextIO) -> None:
    """Unpack the archive's files flat into ``folder`` (each through a temporary file)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                # Only the base name is used, so no member can write outside the folder.
                base = info.filename.rsplit("/", 1)[-1]
                if info.is_dir() or not base or base.startswith("."):
                    continue
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as dst, zf.open(info) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    os.replace(tmp, folder / base)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{archive} is not a readable zip archive ({exc})") from None
    print(f"  unpacked {archive.name} into {folder}", file=out, flush=True)


def _local_copy(remote: Remote) -> Path | None:
    """A system folder holding the dataset's files, each a well-formed IDX file."""
    for directory in remote.local_dirs:
        files = [directory / name for name, _ in remote.files]
        if not all(f.is_file() for f in files):
            continue
        try:
            for f in files:
                read_idx(f)
        except DatasetError:
            continue
        return directory
    return None


def _keep_present(target: Path, md5: str, local: Path | None, out: TextIO) -> None:
    """Keep ``target`` if its MD5 is right (or matches the system copy), else delete it."""
    got = _md5(target)
    if got == md5:
        print(f"  {target}: present, MD5 ok", file=out)
    elif local is not None and got == _md5(local / target.name):
        # The system package recompresses its files, so their MD5 is its own.
        print(f"  {target}: present, same as {local / target.name}", file=out)
    else:
        print(f"  {target}: MD5 differs, downloading it again", file=out)
        target.unlink()


def _fetch_file(
    remote: Remote,
    folder: Path,
    file_name: str,
    md5: str,
    *,
    local: Path | None,
    mirror: str | None,
    out: TextIO,
) -> None:
    """One file of ``remote`` into ``folder``: kept if present and right, else copied from the
    system copy ``local``, else downloaded (and unpacked, for a zip)."""
    target = folder / file_name
    if remote.unzip and (folder / f".{file_name}.done").is_file():
        print(f"  {file_name}: unpacked before, kept", file=out)
        return
    if target.is_file():
        _keep_present(target, md5, local, out)
    if not target.is_file() and local is not None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file_name}.", suffix=".part")
        os.close(fd)
        shutil.copyfile(local / file_name, tmp)  # a valid IDX file (_local_copy)
        os.replace(tmp, target)
        print(f"  {target}: copied from {local}", file=out)
        return
    if not target.is_file():
        base = f"{mirror.rstrip('/')}/{remote.name}/" if mirror else remote.base_url
        _download(base + file_name, target, md5, out)
    if remote.unzip:
        _unzip(target, folder, out)
        (folder / f".{file_name}.done").write_text(md5 + "\n")
        target.unlink()


def _check_mirror(mirror: str, origin: str) -> None:
    """A mirror is a URL with a scheme urllib can fetch and, but for file:, a host."""
    parts = urllib.parse.urlsplit(mirror)
    if parts.scheme not in ("http", "https", "ftp", "file") or (
        parts.scheme != "file" and not parts.netloc
    ):
        raise DatasetError(
            f"the data mirror {mirror[:200]!r} ({origin}) is not a URL; give one like "
            "https://host/datasets/ that serves <name>/<file> (or file:///folder/)"
        )


def fetch(
    name: str,
    directory: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    remote: Remote | None = None,
    out: TextIO | None = None,
) -> Path:
    """Download dataset ``name`` into ``directory/<name>/`` and return that folder.

    ``directory`` defaults to ``default_data_dir()``, where ``load_dataset`` looks without a
    ``data_dir``. Files already there with the right checksum are kept. Without a
    ``directory``, a system copy (Fashion-MNIST's Debian package) is used and its folder
    returned; with one, the system copy is copied there instead of downloaded. ``mirror``
    (default ``$CNNAS_DATA_MIRROR``) replaces the official hosts: files are fetched from
    ``<mirror>/<name>/<file>``. ``remote`` overrides the built-in table entry. Progress goes
    to ``out`` (default stderr).

    Raises:
        DatasetError: unknown name, a download that fails, or a checksum mismatch (nothing of
            the failed file is left behind).
    """
    out = out if out is not None else sys.stderr
    remote = remote or remote_for(name)
    origin = "--mirror"
    if mirror is None and os.environ.get(MIRROR_ENV):
        mirror, origin = os.environ[MIRROR_ENV], f"${MIRROR_ENV}"
    if mirror is not None:
        _check_mirror(mirror, origin)
    local = _local_copy(remote)
    if local is not None and directory is None:
        print(f"{remote.name}: present in {local}; nothing to download", file=out)
        return local
    root = Path(directory).expanduser() if directory is not None else default_data_dir()
    folder = root / remote.name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for file_name, md5 in remote.files:
            _fetch_file(remote, folder, file_name, md5, local=local, mirror=mirror, out=out)
    except BaseException:
        if created:
            # A folder this call created holds only what finished; drop it if nothing did.
            for leftover in folder.glob(".*.part"):
                leftover.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
        raise
    print(f"{remote.name}: ready in {folder}", file=out)
    return folder
