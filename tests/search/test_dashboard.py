"""optuna-dashboard reads the study's journal file while a study writes to it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from cnnas.search.cli import build_parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def cnnas(*args: str, cwd: Path) -> subprocess.Popen:
    code = "import sys; from cnnas.search.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_dashboard_shows_a_study_while_it_runs(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "study": {"name": "live", "trials": 6, "project_dir": str(tmp_path / "runs")},
                "data": {"dataset": "digits"},
                "train": {"epochs": 4, "batch_size": 32},
                "space": {
                    "blocks": [1, 2],
                    "convs": [1],
                    "base_filters": [8, 16],
                    "kernels": [3],
                    "pools": ["max", "none"],
                    "aggregations": ["flatten", "gap"],
                    "dense_layers": [0, 1],
                },
            }
        )
    )
    study = cnnas("study", "start", "--config", str(config), cwd=tmp_path)
    port = free_port()
    dashboard = None
    try:
        journal = tmp_path / "runs" / "optuna.journal"
        deadline = time.monotonic() + 120
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        dashboard = cnnas(
            "dashboard", "live", "--config", str(config), "--port", str(port), cwd=tmp_path
        )
        seen_live = None
        while time.monotonic() < deadline:
            detail = get_json(f"http://127.0.0.1:{port}/api/studies/0?after=0")
            if detail is not None and detail["name"] == "live":
                done = [t for t in detail["trials"] if t["state"] == "Complete"]
                if done and study.poll() is None:
                    seen_live = len(done)  # trials visible while the study still runs
                    break
            if study.poll() is not None:
                break
            time.sleep(0.3)
        assert seen_live, "the dashboard never showed a finished trial while the study ran"
        assert study.wait(timeout=300) == 0, study.stdout.read()
        final = get_json(f"http://127.0.0.1:{port}/api/studies/0?after=0")
        assert len(final["trials"]) == 6
        assert final["objective_names"] == ["val_acc", "params"]
    finally:
        for p in (study, dashboard):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_dashboard_binds_to_loopback_by_default() -> None:
    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"


def test_dashboard_warns_when_exposed(tmp_path: Path, monkeypatch, capsys) -> None:
    import optuna
    import optuna_dashboard

    from cnnas.search import cli

    runs = tmp_path / "runs"
    runs.mkdir()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(runs / "optuna.journal"))
    )
    optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda *a, **k: calls.append(k))
    args = ["dashboard", "s", "--project-dir", str(runs), "--host", "0.0.0.0"]
    assert cli.main(args) == 0
    assert len(calls) == 1 and (calls[0]["host"], calls[0]["port"]) == ("0.0.0.0", 8080)
    assert calls[0]["artifact_store"] is not None  # the report's plots in the study's note
    assert "no authentication" in capsys.readouterr().err
    assert cli.main(["dashboard", "s", "--project-dir", str(runs)]) == 0
    assert calls[-1]["host"] == "127.0.0.1"
    assert "no authentication" not in capsys.readouterr().err
