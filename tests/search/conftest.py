"""Fixtures shared by the search tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with every table created.

    Creating the tables takes about two seconds (MLflow runs its migrations); copying the file
    takes milliseconds. The store holds only MLflow's own 'Default' experiment, so the study's
    experiment and its artifact location are still created by the code under test.
    """
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def seed_mlflow(mlflow_db_template):
    """``seed_mlflow(project_dir)`` puts a copy of the empty MLflow store in ``project_dir``."""

    def seed(project_dir: Path) -> Path:
        project_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(mlflow_db_template, project_dir / "mlflow.db"))

    return seed
