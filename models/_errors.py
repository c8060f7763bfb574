"""The errors of cnnas: one base class for every layer, and the spec's own error.

The base lives in the lowest layer so that every layer can derive from it (``models`` imports
nothing of the layers above); the command line turns any :class:`CnnasError` into exit status 2.
"""

from __future__ import annotations

__all__ = ["CnnasError", "SpecError"]


class CnnasError(Exception):
    """Bad input or a bad file, with a message that says what is wrong and what is allowed."""


class SpecError(CnnasError, ValueError):
    """An architecture spec is invalid. ``path`` names the field (``blocks[2].kernel``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        # Both arguments in args, so pickle and copy rebuild it (errors cross process boundaries).
        super().__init__(path, message)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def under(self, prefix: str) -> SpecError:
        """The same error with ``prefix`` in front of its path, for errors raised by a child."""
        path = f"{prefix}.{self.path}" if self.path else prefix
        return type(self)(path, self.message)
