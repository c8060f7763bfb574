"""Where the public datasets' files are looked for, and the message when they are not there.

Readers get a :class:`Place` from the dataset registry instead of knowing dataset names
themselves, so the names (and the download that provides each) are listed in one place only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._errors import DatasetError

__all__ = ["DATA_DIR_ENV", "Place", "default_data_dir"]

#: Environment variable naming a data directory, used when no explicit directory is given.
DATA_DIR_ENV = "CNNAS_DATA_DIR"

_HOW_TO_FETCH = (
    "download it with `cnnas data fetch {fetch} --dir DIR` and set data.data_dir: DIR (or "
    "data.path to the folder itself)"
)


def default_data_dir() -> Path:
    """Where ``cnnas data fetch`` puts datasets and loading looks for them by default.

    ``$CNNAS_DATA_DIR`` when set, else ``$XDG_CACHE_HOME/cnnas/datasets`` (``~/.cache/...``).
    """
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cnnas" / "datasets"


@dataclass(frozen=True)
class Place:
    """Where to look for one public dataset: the user's ``path``/``data_dir`` and its folders."""

    name: str  # the dataset, as messages name it
    fetch: str  # the `cnnas data fetch` name whose download provides it
    # Sub-folders of a data directory that may hold it: the name `cnnas data fetch` writes
    # first, then the layouts other tools leave behind (torchvision's <Name>/raw, ...).
    subdirs: tuple[str, ...]
    path: str | os.PathLike | None = None  # the dataset's own folder or file; only there
    data_dir: str | os.PathLike | None = None  # a folder holding it or its sub-folders

    def candidates(self) -> tuple[list[Path], str]:
        """The folders (or the one file) to look in, and how to name their origin in errors."""
        if self.path is not None:
            return [Path(self.path).expanduser()], "data.path"
        if self.data_dir is not None:
            root, origin = Path(self.data_dir).expanduser(), "the given data directory"
        else:
            root, origin = default_data_dir(), "the default data directory"
        return [root, *(root / sub for sub in self.subdirs)], origin

    def not_found(self, origin: str, looked: list[Path], expected: list[str]) -> DatasetError:
        """The error listing every place looked in, the files expected and how to get them."""
        places = "\n".join(
            f"  {p}" + ("" if p.exists() else " (does not exist)") for p in dict.fromkeys(looked)
        )
        files = "\n".join(f"  {e}" for e in expected)
        return DatasetError(
            f"{self.name} not found in {origin}. Looked in:\n{places}\nfor:\n{files}\nTo get it: "
            + _HOW_TO_FETCH.format(fetch=self.fetch)
        )
