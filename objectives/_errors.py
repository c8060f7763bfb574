"""The one error of the data layer, in a module of its own so every reader can raise it."""

from __future__ import annotations

from cnnas.models import CnnasError

__all__ = ["DatasetError"]


class DatasetError(CnnasError, ValueError):
    """A dataset is missing, unreadable or inconsistent.

    The message says what is wrong, where it was looked for, and how to fix it.
    """
