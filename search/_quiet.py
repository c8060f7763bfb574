"""The libraries' own chatter, turned down to warnings.

Optuna announces every trial, MLflow every schema migration and every artifact download (with a
progress bar); a study prints its own progress, one line a trial. The CLI and every worker
process call :func:`quiet_libraries` once at start.
"""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
