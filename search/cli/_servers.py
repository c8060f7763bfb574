"""``cnnas dashboard`` (optuna-dashboard) and ``cnnas tracking-server`` (mlflow server)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .._storage import check_project_dir, existing_storage, existing_study, safe_url
from .._tracking import local_store_uri
from ._common import out_folder, study_config

__all__ = ["LOCAL_HOSTS", "cmd_dashboard", "cmd_tracking_server", "tracking_server_command"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _warn_exposed(host: str, what: str) -> None:
    if host not in LOCAL_HOSTS:
        print(
            f"warning: {what} has no authentication; binding to {host} lets anyone who can "
            "reach this machine read and change what it serves",
            file=sys.stderr,
        )


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from ..report import dashboard_artifact_store

    cfg = study_config(args)
    storage = existing_storage(cfg)
    path = "/dashboard"
    if args.name:
        existing_study(cfg, args.name)
        path += f"/studies/{storage.get_study_id_from_name(args.name)}"
    _warn_exposed(args.host, "optuna-dashboard")
    print(f"optuna-dashboard at http://{args.host}:{args.port}{path} (Ctrl-C to stop)", flush=True)
    # The study report's plots, linked from the study's note, are served from this store.
    optuna_dashboard.run_server(
        storage,
        host=args.host,
        port=args.port,
        artifact_store=dashboard_artifact_store(cfg.study.project_dir),
    )
    return 0


def tracking_server_command(
    backend: str, artifacts: str, host: str, port: int, workers: int = 2
) -> list[str]:
    """The ``mlflow server`` command line ``cnnas tracking-server`` runs."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def cmd_tracking_server(args: argparse.Namespace) -> int:
    """``mlflow server`` with cnnas's defaults: loopback only, artifacts served by the server."""
    cfg = study_config(args)
    project = Path(cfg.study.project_dir)
    if not args.backend_store_uri or not args.artifacts_destination:
        check_project_dir(cfg)
    backend = args.backend_store_uri or local_store_uri(project)
    artifacts = args.artifacts_destination or str(project / "mlartifacts")
    if "://" not in artifacts:
        out_folder(artifacts, "--artifacts-destination")
    _warn_exposed(args.host, "the MLflow server")
    command = tracking_server_command(backend, artifacts, args.host, args.port, args.workers)
    if backend.startswith("sqlite:///"):
        database = Path(backend.removeprefix("sqlite:///"))
        out_folder(str(database.parent), "--backend-store-uri")
        database.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"MLflow tracking server at http://{args.host}:{args.port} (backend {safe_url(backend)}, "
        f"artifacts {artifacts}); set tracking_uri: http://<this host>:{args.port} in mlflow.yml",
        flush=True,
    )
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
