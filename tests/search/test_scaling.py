"""Many workers on one study, against real stores: the local journal file + MLflow SQLite, and
PostgreSQL (Optuna) + an MLflow tracking server on PostgreSQL. Each test asserts that nothing was
lost or duplicated: the requested number of trials, unique numbers, one MLflow run per trial with
the trial's values, nothing left RUNNING.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas.search import cli, load_config, prepare, run_study
from cnnas.search._storage import open_storage
from cnnas.search.cli._servers import tracking_server_command

PG = ("127.0.0.1", 5432)
TINY_SPACE = {
    "blocks": [1, 2],
    "convs": [1],
    "base_filters": [4, 8],
    "kernels": [3],
    "pools": ["max", "none"],
    "aggregations": ["flatten", "gap"],
    "dense_layers": {"min": 0, "max": 1},
    "dense_width": {"min": 8, "max": 64},
}


def _pg_up() -> bool:
    try:
        with socket.create_connection(PG, timeout=2):
            return True
    except OSError:
        return False


needs_pg = pytest.mark.skipif(not _pg_up(), reason="PostgreSQL at 127.0.0.1:5432")


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    """``new()`` creates an empty PostgreSQL database and returns its URL; all are dropped after."""
    import psycopg

    made: list[str] = []

    def admin():
        return psycopg.connect(
            host=PG[0], port=PG[1], dbname="postgres", user="postgres", autocommit=True
        )

    def new() -> str:
        name = f"cnnas_test_{uuid.uuid4().hex[:12]}"
        with admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return f"postgresql://postgres@{PG[0]}:{PG[1]}/{name}"

    yield new
    for name in made:
        with admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def write_config(tmp_path: Path, name: str, trials: int, **study) -> Path:
    cfg = {
        "study": {
            "name": name,
            "trials": trials,
            "seed": 5,
            "project_dir": str(tmp_path / "runs"),
            **study,
        },
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 64},
        "registry": {"register": False},
        "space": TINY_SPACE,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cnnas(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnas", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_nothing_lost(study: optuna.Study, client: MlflowClient, trials: int) -> None:
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))), "unique, consecutive trial numbers"
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    retried = {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}
    counted = [t for t in study.trials if not (t.state == TrialState.FAIL and t.number in retried)]
    assert len(counted) == trials, f"{len(counted)} trials for {trials} requested"
    parent = study.user_attrs["mlflow_parent_run_id"]
    exp = client.get_experiment_by_name("cnnas")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    by_trial: dict[int, list] = {}
    for r in runs:
        if "cnnas.final_of" in r.data.tags:
            continue  # a network of the final phase, trained again after the search
        by_trial.setdefault(int(r.data.tags["cnnas.trial"]), []).append(r)
    assert sorted(by_trial) == numbers, "one MLflow run per trial, none extra"
    assert all(len(v) == 1 for v in by_trial.values()), "no duplicated runs"
    for t in study.trials:
        (r,) = by_trial[t.number]
        assert r.info.status != "RUNNING", f"run of trial {t.number} left RUNNING"
        assert r.info.run_id == t.user_attrs["mlflow_run_id"]
        if t.state == TrialState.COMPLETE and "infeasible" not in t.user_attrs:
            assert r.info.status == "FINISHED"
            assert r.data.metrics["val_acc"] == pytest.approx(t.values[0])
            assert r.data.metrics["params"] == t.user_attrs["params"]


# --- four workers -----------------------------------------------------------------------------


@pytest.mark.slow
def test_four_local_workers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, "local4", trials=12)
    code, out = finish(
        cnnas("study", "start", "--config", str(config), "--workers", "4", cwd=tmp_path)
    )
    assert code == 0, out
    cfg = load_config(config)
    study = optuna.load_study(study_name="local4", storage=open_storage(cfg))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert_nothing_lost(study, client, 12)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) >= 2, f"trials ran in one process only: {workers}"


def start_tracking_server(tmp_path: Path, backend: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cnnas(
        "tracking-server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--port",
        str(port),
        "--workers",
        "1",
        cwd=tmp_path,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for("the MLflow server", healthy, timeout=180)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@needs_pg
@pytest.mark.slow
def test_four_workers_on_postgresql_and_an_mlflow_server_lose_and_duplicate_nothing(
    tmp_path: Path, pg_database
) -> None:
    optuna_url, mlflow_db = pg_database(), pg_database()
    server, server_url = start_tracking_server(tmp_path, mlflow_db)
    try:
        (tmp_path / "mlflow.yml").write_text(yaml.safe_dump({"tracking_uri": server_url}))
        config = write_config(
            tmp_path,
            "pg4",
            trials=12,
            storage=optuna_url,
            heartbeat_interval=2,
            grace_period=10,
        )
        data = yaml.safe_load(config.read_text())
        data["mlflow"] = str(tmp_path / "mlflow.yml")
        config.write_text(yaml.safe_dump(data))
        # The study and its MLflow parent run exist first; then four workers join at once.
        prepare(load_config(config)).open()
        workers = [
            cnnas("worker", "--study", "pg4", "--config", str(config), cwd=tmp_path)
            for _ in range(4)
        ]
        results = [finish(p) for p in workers]
        for code, out in results:
            assert code == 0, out
        assert all("joined study 'pg4'" in out for _, out in results)
        study = optuna.load_study(study_name="pg4", storage=optuna_url)
        assert_nothing_lost(study, MlflowClient(tracking_uri=server_url), 12)
        assert len({t.user_attrs["worker"] for t in study.trials}) >= 2
    finally:
        stop(server)


# --- killed workers ---------------------------------------------------------------------------


def _kill_mid_trial(tmp_path: Path, config: Path, study_name: str) -> tuple[int, str]:
    """Starts a worker, SIGKILLs it while it trains a trial; returns that trial's number and
    the worker's id."""
    cfg = load_config(config)
    worker = cnnas("worker", "--study", study_name, "--config", str(config), cwd=tmp_path)
    found: dict[str, int] = {}

    def running() -> bool:
        assert worker.poll() is None, worker.stdout.read()
        study = optuna.load_study(study_name=study_name, storage=open_storage(cfg))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{worker.pid}") and (
                "mlflow_run_id" in t.user_attrs
            ):
                found["number"] = t.number
                return True
        return False

    wait_for("a running trial", running, timeout=180)
    time.sleep(0.5)  # into training
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    return found["number"], f"{socket.gethostname()}:{worker.pid}"


def _assert_retried(study: optuna.Study, client: MlflowClient, killed: int) -> None:
    dead = study.trials[killed]
    assert dead.state == TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1, "retried exactly once"
    (retry,) = retries
    assert retry.state == TrialState.COMPLETE
    assert retry.params == dead.params, "the same architecture"
    assert retry.user_attrs["spec_hash"] == dead.user_attrs["spec_hash"]
    run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "worker" in run.data.tags["cnnas.failure"]


@needs_pg
@pytest.mark.slow
def test_a_killed_worker_trial_fails_by_heartbeat_and_is_retried_once(
    tmp_path: Path, pg_database
) -> None:
    url = pg_database()
    config = write_config(
        tmp_path, "killed", trials=4, storage=url, heartbeat_interval=1, grace_period=3
    )
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 30  # long enough to be killed mid-training
    config.write_text(yaml.safe_dump(data))
    cfg = load_config(config)
    run = prepare(cfg)
    run.open()  # the study and its parent run exist; no trial yet
    killed, _ = _kill_mid_trial(tmp_path, config, "killed")
    time.sleep(4)  # past the grace period: the trial's heartbeat is stale
    cfg = cfg.replace("train", epochs=1)
    run = prepare(cfg)
    study = run_study(run)  # the next worker fails the stale trial and runs its retry
    _assert_retried(study, run.tracker.client, killed)
    assert_nothing_lost(study, run.tracker.client, 4)


@pytest.mark.slow
def test_a_killed_local_worker_trial_is_failed_and_retried_at_the_next_start(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "killed-local", trials=3)
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 30
    config.write_text(yaml.safe_dump(data))
    cfg = load_config(config)
    run = prepare(cfg)
    run.open()
    killed, worker = _kill_mid_trial(tmp_path, config, "killed-local")
    run = prepare(cfg.replace("train", epochs=1))
    study = run_study(run)
    _assert_retried(study, run.tracker.client, killed)
    assert worker in study.trials[killed].user_attrs["fail_reason"]
    assert_nothing_lost(study, run.tracker.client, 3)


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_and_the_study_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, "interrupted", trials=3)
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 30
    config.write_text(yaml.safe_dump(data))
    proc = cnnas("study", "start", "--config", str(config), cwd=tmp_path)
    cfg = load_config(config)

    def training() -> bool:
        """A trial is RUNNING and its MLflow run already holds an epoch: it is training."""
        assert proc.poll() is None, proc.stdout.read()
        if not (tmp_path / "runs" / "optuna.journal").exists():
            return False
        study = optuna.load_study(study_name="interrupted", storage=open_storage(cfg))
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
        return any(
            "mlflow_run_id" in t.user_attrs
            and client.get_metric_history(t.user_attrs["mlflow_run_id"], "val_acc")
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        )

    wait_for("a trial in training", training, timeout=180)
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130, out
    assert "run the same command to resume" in out
    study = optuna.load_study(study_name="interrupted", storage=open_storage(cfg))
    (stopped,) = study.trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert client.get_run(stopped.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    # resumable: the same command runs the rest
    config.write_text(config.read_text().replace("epochs: 30", "epochs: 1"))
    code, out = finish(cnnas("study", "start", "--config", str(config), cwd=tmp_path))
    assert code == 0, out
    study = optuna.load_study(study_name="interrupted", storage=open_storage(cfg))
    # The interrupted trial does not use up a slot: the study reaches its 3 trained trials.
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3
    assert all(r.info.status != "RUNNING" for r in client.search_runs(["1"]))


# --- bad input --------------------------------------------------------------------------------


def test_an_unreachable_database_is_bad_input_and_nothing_is_created(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path, "nowhere", trials=1, storage="postgresql://postgres@127.0.0.1:1/none"
    )
    assert cli.main(["study", "start", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "study.storage: cannot reach the database" in err and "127.0.0.1:1" in err
    assert cli.main(["worker", "--study", "nowhere", "--config", str(config)]) == 2
    assert "study.storage: cannot reach" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nowhere.yaml"]


def test_a_password_is_not_shown_in_messages(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path, "secret", trials=1, storage="postgresql://me:hunter2@127.0.0.1:1/none"
    )
    assert cli.main(["study", "start", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "me:***@" in err


def test_a_worker_never_creates_a_study(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "absent", trials=1)
    assert cli.main(["worker", "--study", "absent", "--config", str(config)]) == 2
    assert "no study named 'absent'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absent.yaml"]
    # with a storage that holds another study
    run_study(prepare(load_config(write_config(tmp_path, "other", trials=1))))
    assert cli.main(["worker", "--study", "absent", "--config", str(config)]) == 2
    assert "studies there: ['other']" in capsys.readouterr().err


@needs_pg
def test_a_worker_on_an_empty_database_creates_nothing(
    tmp_path: Path, monkeypatch, capsys, pg_database
) -> None:
    import sqlalchemy

    monkeypatch.chdir(tmp_path)
    url = pg_database()
    config = write_config(tmp_path, "absent", trials=1, storage=url)
    assert cli.main(["worker", "--study", "absent", "--config", str(config)]) == 2
    assert "holds no Optuna studies" in capsys.readouterr().err
    engine = sqlalchemy.create_engine(url)
    assert sqlalchemy.inspect(engine).get_table_names() == [], "no tables created"
    engine.dispose()
    assert not (tmp_path / "runs").exists()


# --- exposure ---------------------------------------------------------------------------------


def test_the_servers_bind_to_loopback_by_default() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["tracking-server"]).host == "127.0.0.1"
    assert parser.parse_args(["dashboard"]).host == "127.0.0.1"
    command = tracking_server_command("sqlite:///x.db", "art", "127.0.0.1", 5000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in command


def test_the_tracking_server_warns_when_exposed(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["tracking-server", "--host", "0.0.0.0"]) == 0
    assert "no authentication" in capsys.readouterr().err
    assert calls and calls[0][calls[0].index("--host") + 1] == "0.0.0.0"
