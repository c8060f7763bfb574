"""Sending a rendered report where a user looks: the study's MLflow parent run (``report/``) and
optuna-dashboard (the Markdown as the study's note, the files as study artifacts in a file store
in the project folder)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna

from .._study import StudyRun
from ._render import Rendered, markdown

__all__ = ["DASHBOARD_ARTIFACTS", "REPORT_ARTIFACT_DIR", "dashboard_artifact_store", "publish"]

# Folder of the MLflow parent run that receives the report's files.
REPORT_ARTIFACT_DIR = "report"
# Folder in the project directory where optuna-dashboard's artifact store keeps its files.
DASHBOARD_ARTIFACTS = "dashboard-artifacts"


def dashboard_artifact_store(project_dir: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    """The artifact store optuna-dashboard must be started with to show the report's files."""
    path = Path(project_dir) / DASHBOARD_ARTIFACTS
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def _upload_to_dashboard(
    study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore, files: Sequence[Path]
) -> dict[str, str]:
    """Study artifacts by file name. A file uploaded before is overwritten in place, so running
    the report again neither piles up copies nor breaks the links in an earlier note."""
    existing = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}
    ids = {}
    for path in files:
        if path.name in existing:
            with path.open("rb") as f:
                store.write(existing[path.name], f)
            ids[path.name] = existing[path.name]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ids[path.name] = optuna.artifacts.upload_artifact(
                    artifact_store=store, file_path=str(path), study_or_trial=study
                )
    return ids


def publish(run: StudyRun, r: Rendered) -> dict[str, str]:
    """Logs the report's files to the parent run and to optuna-dashboard; returns the
    dashboard's artifact ids by file name."""
    import optuna_dashboard

    client = run.tracker.client
    for path in [
        r.html,
        r.markdown,
        *r.images.values(),
        *([r.interactive] if r.interactive else []),
    ]:
        client.log_artifact(run.parent_run_id, str(path), REPORT_ARTIFACT_DIR)
    study = run.study
    store = dashboard_artifact_store(run.project_dir)
    ids = _upload_to_dashboard(study, store, [*r.images.values(), r.html])
    # The note links the plots through the dashboard's own artifact URLs.
    study_id = study._study_id  # noqa: SLF001 -- the dashboard's URLs carry Optuna's id

    def url(section: str) -> str | None:
        if section not in r.images:
            return None
        return f"/artifacts/{study_id}/{ids[r.images[section].name]}"

    optuna_dashboard.save_note(study, markdown(r, url))
    return ids
