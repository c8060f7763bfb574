"""Every error of the search layer, on the one base the whole package shares.

The command line maps any :class:`CnnasError` (these, and the spec, model-file and dataset errors
of the layers below) to ``error: <message>`` and exit status 2; :class:`StudyFailing` is not bad
input but a study that cannot go on, exit status 1.
"""

from __future__ import annotations

from cnnas.models import CnnasError, ModelFileError, SpecError
from cnnas.objectives import DatasetError

__all__ = [
    "CnnasError",
    "ConfigError",
    "DatasetError",
    "ModelFileError",
    "RegistryError",
    "SpecError",
    "StudyFailing",
    "StudyMismatch",
    "UsageError",
]


class ConfigError(CnnasError, ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


class UsageError(CnnasError):
    """Bad input found by the command line itself: an option, a path, a missing study."""


class StudyMismatch(CnnasError, ValueError):
    """An existing study cannot be resumed with this config or this dataset."""


class RegistryError(CnnasError, ValueError):
    """A registered model, version or alias does not exist, or a pull cannot be completed."""


class StudyFailing(RuntimeError):
    """Too many trials in a row failed; going on would burn the budget."""
