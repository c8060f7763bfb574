"""File systems that refuse writes, for tests of what a command does when it cannot write:
a folder this process cannot write, and a tiny one that fills up. Import the fixtures into a
test module to use them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["readonly_dir", "small_disk"]


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path) -> Iterator[Path]:
    """A folder this process cannot write: a read-only tmpfs for root (who ignores modes),
    mode 0o555 for anyone else."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if not _mount_tmpfs(path, "ro,size=1m"):
        pytest.skip("root without mount: no folder is read-only to this process")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[str], Path]]:
    """``small_disk("256k")``: a folder on a tmpfs of that size (root only), unmounted after."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        path = tmp_path / f"disk-{len(mounted)}"
        path.mkdir()
        if not _mount_tmpfs(path, f"size={size}"):
            pytest.skip("needs root and mount for a small tmpfs")
        mounted.append(path)
        return path

    try:
        yield make
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)], check=False)
