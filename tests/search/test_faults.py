"""Faults of real processes against the real local stores (the Optuna journal file and MLflow's
SQLite store): SIGKILL at any moment of a study's life, two processes creating one study at the
same moment, Ctrl-C twice, a resume on other data, runs a crash left RUNNING, a full disk.

After each fault the same command must resume the study: nothing half-written, nothing lost,
nothing counted twice.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas.search import StudyConfig, cli, load_config, prepare, run_study
from cnnas.search._final import FINAL_ATTR, final_runs
from cnnas.search._records import COUNTED_STATES, counted_trials, records
from cnnas.search._storage import open_storage
from cnnas.search.errors import StudyMismatch
from tests.search import _fs

small_disk = _fs.small_disk  # a fixture

SPACE = {
    "blocks": [1, 2],
    "convs": [1],
    "base_filters": [4, 8],
    "kernels": [3, 5],
    "pools": ["max", "none"],
    "aggregations": ["flatten", "gap"],
    "dense_layers": {"min": 0, "max": 1},
    "dense_width": {"min": 8, "max": 64},
}


def write_config(tmp_path: Path, name: str, **study) -> Path:
    cfg = {
        "study": {"name": name, "trials": 3, "project_dir": str(tmp_path / "runs"), **study},
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 128, "accelerator": "cpu"},
        "registry": {"register": False},
        "space": SPACE,
    }
    if "final" in StudyConfig.__dataclass_fields__:
        cfg["final"] = {"share": 0.0}  # the final phase is no part of these faults
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Cnnas:
    """``cnnas ARGS`` in a process of its own; its output lines are collected as they come."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnnas", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 180) -> bool:
        """True once a line matches; False if the process ended first."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(rx.search(ln) for ln in list(self.lines)):
                return True
            if self.proc.poll() is not None:
                self._reader.join(5)
                return any(rx.search(ln) for ln in self.lines)
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)

    def finish(self, timeout: float = 600) -> int:
        self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode


def journal_study(tmp_path: Path, name: str) -> optuna.Study:
    cfg = load_config(tmp_path / f"{name}.yaml")
    return optuna.load_study(study_name=name, storage=open_storage(cfg))


def mlflow_client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def all_runs(client: MlflowClient) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, max_results=5000)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """No template store: the first start builds MLflow's tables the slow way (2-3 s)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CNNAS_CACHE_DIR", str(cache))
    return cache


# --- the store appears whole or not at all ----------------------------------------------------


def _store_files(runs: Path) -> list[Path]:
    return [*runs.glob("mlflow.db"), *runs.glob(".mlflow.db.*.tmp")] if runs.is_dir() else []


def test_a_store_killed_while_it_is_created_is_never_half_built(tmp_path, empty_cache):
    """SIGKILL while a new project's MLflow store is created, 0.3 and 1 s after its file
    (or its temporary file) appears, two starts in a row: the same command then runs the
    study, and no temporary store is left behind. (The old code built the store in place: the
    first kill left a half-built mlflow.db that every later start crashed on.)"""
    config = write_config(tmp_path, "born", trials=1)
    runs = tmp_path / "runs"
    argv = ("study", "start", "--config", str(config), "--no-report")
    for delay in (0.3, 1.0):
        proc = Cnnas(*argv, cwd=tmp_path)
        end = time.monotonic() + 180
        while not _store_files(runs) and proc.proc.poll() is None:
            assert time.monotonic() < end
            time.sleep(0.005)
        time.sleep(delay)
        code = proc.proc.poll()
        assert code is None, f"the start died by itself ({code}):\n{proc.output[-3000:]}"
        proc.kill()
    last = Cnnas(*argv, cwd=tmp_path)
    assert last.finish() == 0, last.output[-3000:]
    assert not list(runs.glob(".mlflow.db.*.tmp"))
    study = journal_study(tmp_path, "born")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


_KILLED_MID_WRITE = """
import os, signal, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA cache_size = 10")  # a small page cache spills the write into the file
con.execute("BEGIN IMMEDIATE")
con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, 'r')",
                [(f"k{i}", "x" * 200) for i in range(5000)])
con.execute("UPDATE experiments SET name = 'renamed' WHERE experiment_id = 0")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_killed_in_the_middle_of_a_write_is_rolled_back_and_used(
    tmp_path, mlflow_db_template
):
    """SIGKILL during an MLflow write leaves a hot rollback journal beside mlflow.db. The next
    start read it with a read-only connection, which cannot roll the journal back ("attempt to
    write a readonly database"), and refused the store as damaged: exit 2 where the study should
    have resumed (seen once in the SIGKILL test below). Now the journal is rolled back, the
    half-done write vanishes, and the study runs."""
    runs = tmp_path / "runs"
    runs.mkdir()
    db = Path(shutil.copy(mlflow_db_template, runs / "mlflow.db"))
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(db)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (runs / "mlflow.db-journal").stat().st_size > 0, "no hot journal: the test is moot"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT count(*) FROM tags")
    study = run_study(prepare(load_config(write_config(tmp_path, "resumed", trials=1))))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    with sqlite3.connect(db) as con:  # the killed write is gone, the study's runs are there
        assert con.execute("SELECT count(*) FROM tags WHERE run_uuid = 'r'").fetchone() == (0,)
        assert con.execute("SELECT name FROM experiments WHERE experiment_id = 0").fetchone() == (
            "Default",
        )
    client = mlflow_client(tmp_path)
    assert client.get_run(study.trials[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def test_a_half_built_store_of_an_older_cnnas_is_rebuilt(tmp_path, empty_cache):
    """What the old code left after a kill: some of MLflow's tables, no runs. Rebuilt, so the
    study runs (it crashed with 'table ... already exists')."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    runs = tmp_path / "runs"
    runs.mkdir()
    engine = sqlalchemy.create_engine(f"sqlite:///{runs / 'mlflow.db'}")
    InitialBase.metadata.create_all(engine)
    engine.dispose()
    with sqlite3.connect(runs / "mlflow.db") as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
    study = run_study(prepare(load_config(write_config(tmp_path, "rebuilt", trials=1))))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    run_id = study.trials[0].user_attrs["mlflow_run_id"]
    assert mlflow_client(tmp_path).get_run(run_id).info.status == "FINISHED"


def test_a_store_that_cannot_be_written_leaves_no_temporary_file(tmp_path, empty_cache, small_disk):
    """A full disk while the store is built: one error line, exit 2, no ``.mlflow.db.*.tmp``,
    and no study without its parent run."""
    disk = small_disk("256k")
    config = write_config(tmp_path, "full", trials=1)
    data = yaml.safe_load(config.read_text())
    data["study"]["project_dir"] = str(disk / "runs")
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "cnnas", "study", "start", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "mlflow.db" in line, proc.stderr[-2000:]
    assert "No space left on device" in line or "disk is full" in line, line
    assert not list((disk / "runs").glob(".mlflow.db.*")), os.listdir(disk / "runs")
    assert not (disk / "runs" / "mlflow.db").exists()
    assert not (disk / "runs" / "optuna.journal").exists(), "no study without its run"


# --- two processes, one new study -------------------------------------------------------------


def _open_at_once(configs: list[str], barrier, out) -> None:
    from cnnas.search import load_config, prepare

    for config in configs:
        try:
            run = prepare(load_config(config))
            barrier.wait(timeout=300)
            run.open()
            out.put((config, run.parent_run_id))
        except BaseException as e:
            barrier.abort()  # the other process must not wait for this one
            out.put((config, f"error: {type(e).__name__}: {e}"))
            raise


def test_two_processes_opening_one_new_study_make_one_parent_run(tmp_path):
    """Two processes pass every check, then open a new study at the same instant (a barrier),
    five studies over: one study and one parent run each, the same one in both processes."""
    # Not a fork of this multi-threaded test process (it can inherit a held lock): a fork
    # server that imported cnnas once, so both processes reach the barrier in seconds.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["cnnas.search"])
    configs = [str(write_config(tmp_path, f"race{i}", trials=2)) for i in range(5)]
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(configs, barrier, out)) for _ in "ab"]
    for p in procs:
        p.start()
    got: dict[str, set[str]] = {}
    for _ in range(2 * len(configs)):
        config, parent = out.get(timeout=600)
        assert not parent.startswith("error: "), f"{Path(config).stem}: {parent}"
        got.setdefault(config, set()).add(parent)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    client = mlflow_client(tmp_path)
    runs = all_runs(client)
    for i, config in enumerate(configs):
        assert len(got[config]) == 1, f"race{i}: two parent runs {got[config]}"
        parents = [
            r.info.run_id
            for r in runs
            if r.data.tags.get("cnnas.role") == "study" and r.data.tags["cnnas.study"] == f"race{i}"
        ]
        assert parents == list(got[config])
        assert journal_study(tmp_path, f"race{i}").user_attrs["mlflow_parent_run_id"] in parents


# --- a resume on other data -------------------------------------------------------------------


def _npz(path: Path, classes: tuple[str, ...], size: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = 30 * len(classes)
    y = np.arange(n) % len(classes)
    x = (rng.integers(0, 60, size=(n, size, size)) + 150 * (y[:, None, None] % 2)).astype(np.uint8)
    np.savez(path, x=x, y=y, classes=np.array(classes))
    return path


@pytest.mark.parametrize("change", ["classes", "image size", "images"])
def test_resuming_a_study_on_other_data_is_refused(tmp_path, monkeypatch, capsys, change):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "data", trials=1)
    data = yaml.safe_load(config.read_text())
    data["data"] = {"dataset": "npz", "path": str(_npz(tmp_path / "a.npz", ("cat", "dog")))}
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["study", "start", "--config", str(config), "--no-report"]) == 0
    other = tmp_path / "b.npz"
    if change == "classes":
        _npz(other, ("car", "bus"))
    elif change == "image size":
        _npz(other, ("cat", "dog"), size=10)
    else:
        _npz(other, ("cat", "dog"), seed=1)
    data["data"]["path"] = str(other)
    data["study"]["trials"] = 2
    config.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert cli.main(["study", "start", "--config", str(config), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'data'" in err and "two datasets" in err, err
    assert len(journal_study(tmp_path, "data").trials) == 1, "no trial was started"
    # The same data resumes, from another folder too.
    shutil.copy(tmp_path / "a.npz", tmp_path / "moved.npz")
    data["data"]["path"] = str(tmp_path / "moved.npz")
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["study", "start", "--config", str(config), "--no-report"]) == 0
    assert len(journal_study(tmp_path, "data").trials) == 2


def test_the_dataset_identity_is_recorded(tmp_path):
    cfg = load_config(write_config(tmp_path, "ident", trials=1))
    run = prepare(cfg)
    run.open()
    ident = run.study.user_attrs["data_identity"]
    assert ident["name"] == "digits" and ident["input_shape"] == [1, 8, 8]
    assert ident["classes"] == [str(i) for i in range(10)] and len(ident["fingerprint"]) == 16
    prepare(cfg).open()  # the same data again
    with pytest.raises(StudyMismatch, match=r"split"):
        prepare(cfg.replace("data", subset=200)).open()


# --- runs a crash left RUNNING ----------------------------------------------------------------


def test_runs_left_running_by_a_crash_are_closed_when_the_study_is_next_opened(tmp_path):
    run = prepare(load_config(write_config(tmp_path, "left", trials=2)))
    study = run_study(run)
    client = run.tracker.client
    done = study.trials[0]
    # A crash between study.tell and closing the run; and one right after creating a run.
    client.update_run(done.user_attrs["mlflow_run_id"], status="RUNNING")
    parent = study.user_attrs["mlflow_parent_run_id"]
    orphan = client.create_run(
        run.tracker.experiment_id,
        tags={"mlflow.parentRunId": parent, "cnnas.trial": "7", "cnnas.role": "trial"},
    ).info.run_id
    again = prepare(load_config(write_config(tmp_path, "left", trials=2)))
    again.open(reopen_parent=False)
    closed = client.get_run(done.user_attrs["mlflow_run_id"])
    assert closed.info.status == "FINISHED"
    assert closed.data.metrics["params"] == done.user_attrs["params"]
    assert client.get_run(orphan).info.status == "KILLED"


# --- a resumed study explores ----------------------------------------------------------------


def test_a_resumed_study_proposes_new_architectures_and_reaches_its_total(tmp_path, monkeypatch):
    """Before: the resumed sampler had the study's seed, so trial 3 was trial 0 again (and only
    recognised as a repeat); a Ctrl-C'd trial also used up a slot."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "again", trials=3, sampler="random")
    assert cli.main(["study", "start", "--config", str(config), "--no-report"]) == 0
    assert (
        cli.main(["study", "start", "--config", str(config), "--no-report", "--trials", "6"]) == 0
    )
    trials = journal_study(tmp_path, "again").trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    first, resumed = trials[:3], trials[3:]
    assert all("duplicate_of" not in t.user_attrs for t in resumed)
    assert all(r.params != f.params for r, f in zip(resumed, first, strict=True))


def test_a_study_killed_in_its_final_phase_trains_it_when_resumed(tmp_path):
    """Without study.timeout the final phase's budget is final.share of the study's search
    time. Before: of this run's search time, which is none on a resume after the search ended,
    so the resumed study skipped its final phase and registered the search's networks."""
    config = write_config(tmp_path, "final", trials=4)
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 2
    data["registry"]["register"] = True
    # 0.75: a final phase three times the search's length, so the kill lands inside it.
    data["final"] = {"share": 0.75, "members": "champion", "max_epochs": 500}
    config.write_text(yaml.safe_dump(data))
    argv = ("study", "start", "--config", str(config), "--no-report")
    first = Cnnas(*argv, "-v", cwd=tmp_path)  # -v: the final phase's epochs are printed
    assert first.wait_for(r"trial \d+ epoch +\d+/"), first.output
    first.kill()
    study = journal_study(tmp_path, "final")
    assert FINAL_ATTR not in study.user_attrs, first.output  # killed before it finished

    second = Cnnas(*argv, cwd=tmp_path)
    assert second.finish() == 0, second.output
    assert "ran 4 of 4 planned trials" in second.output and "0 in this run" in second.output
    assert "skipped" not in second.output, second.output
    (f,) = final_runs(journal_study(tmp_path, "final")).values()
    assert f.epochs > 2, second.output  # trained for the budget the earlier search earned
    client = mlflow_client(tmp_path)
    (v,) = client.search_model_versions("name = 'cnnas-final'")
    assert v.run_id == f.run_id and v.tags["cnnas.refit"] == "final"

    # The same command once more: the network is kept, not trained a third time.
    third = Cnnas(*argv, cwd=tmp_path)
    assert third.finish() == 0, third.output
    assert f"trial {f.trial} kept from an earlier run" in third.output, third.output
    finals = [r for r in all_runs(client) if r.data.tags.get("cnnas.role") == "final"]
    assert len(finals) == 2  # the killed one and the one kept
    assert [r.info.status for r in finals if r.info.run_id != f.run_id] == ["KILLED"]


# --- Ctrl-C twice -----------------------------------------------------------------------------


def _interrupting(spec, data, cfg, *, seed, callbacks=()):
    """A trainer stopped by Ctrl-C in its first epoch (the signal itself, not a raise)."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the handler raises KeyboardInterrupt here
    raise AssertionError("SIGINT was not delivered")


@pytest.mark.parametrize("where", ["end_trial", "end_parent", "both"])
def test_a_second_ctrl_c_while_the_first_is_recorded_is_held_back(tmp_path, where):
    """The second Ctrl-C arrives exactly while the interrupted trial's run (end_trial) or the
    parent run (end_parent) is written: the write completes, the trial is FAIL (interrupted),
    its run and the parent run KILLED, and the interrupt still ends the study."""
    run = prepare(load_config(write_config(tmp_path, "twice", trials=2)), trainer=_interrupting)
    run.open()
    tracker = run.tracker
    for name in ("end_trial", "end_parent") if where == "both" else (where,):
        real = getattr(tracker, name)

        def again(*args, _real=real, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once more, mid-write
            time.sleep(0.05)
            return _real(*args, **kwargs)

        setattr(tracker, name, again)
    with pytest.raises(KeyboardInterrupt):
        run_study(run)
    (trial,) = run.study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True
    client = tracker.client
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(run.parent_run_id).info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in all_runs(client))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_ctrl_c_twice_from_outside_at_random_gaps_loses_nothing(tmp_path):
    """The same from outside, by timing: the second SIGINT 0 to 0.3 s after the first, while
    the trial and the parent run are written. Exit 130, no traceback, nothing RUNNING."""
    config = write_config(tmp_path, "twice", trials=2)
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 50
    config.write_text(yaml.safe_dump(data))
    proc = Cnnas("study", "start", "--config", str(config), "--no-report", "-v", cwd=tmp_path)
    assert proc.wait_for(r"epoch +1 "), proc.output
    proc.proc.send_signal(signal.SIGINT)
    time.sleep(random.uniform(0, 0.3))
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish(timeout=120) == 130, proc.output
    assert "Traceback" not in proc.output and "UnboundLocalError" not in proc.output
    study = journal_study(tmp_path, "twice")
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True
    client = mlflow_client(tmp_path)
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in all_runs(client))


# --- SIGKILL at ten moments of a study's life -------------------------------------------------

# Where a kill lands: (what the test waits for in the output, the largest extra delay). The
# study's output says which phase it is in; the delay after it is drawn at random.
MOMENTS = {
    "store creation": (None, 0.8),
    "trial start": (r"^\[ *\d+/\d+\] trial", 0.05),
    "training": (r"epoch +1 ", 0.3),
    "recording": (r"epoch +2 ", 0.4),  # the last epoch: then the trial is recorded
    "registration": (r"^Pareto front of study", 1.5),
    "report": (r"^registered model", 1.0),
}
SCHEDULE = [
    "store creation",
    "trial start",
    "training",
    "recording",
    "trial start",
    "training",
    "registration",
    "registration",
    "report",
    "report",
]


@pytest.fixture
def fault_seed() -> Iterator[int]:
    seed = int(os.environ.get("CNNAS_FAULT_SEED", "0")) or random.randrange(1, 10**6)
    yield seed
    print(f"fault test seed: CNNAS_FAULT_SEED={seed}")


@pytest.mark.slow
def test_sigkill_at_ten_moments_of_a_study_and_it_still_completes(
    tmp_path, empty_cache, fault_seed
):
    """A digits study (4 trials, registration and report on) killed with SIGKILL at ten
    moments of its life, each in a fresh start of the same command; then run to the end.
    It must resume each time, reach its total, leave no MLflow run RUNNING, and lose or count
    twice no trial."""
    rng = random.Random(fault_seed)
    trials = 4
    config = write_config(tmp_path, "faults", trials=trials, retries=10)
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 2
    data["registry"]["register"] = True
    config.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    argv = ("study", "start", "--config", str(config), "-v")
    kills = []
    for moment in SCHEDULE:
        proc = Cnnas(*argv, cwd=tmp_path)
        pattern, most = MOMENTS[moment]
        if pattern is None:  # the store's file (or its temporary one) appears
            while not _store_files(runs) and proc.proc.poll() is None:
                time.sleep(0.005)
            reached = proc.proc.poll() is None
        else:
            reached = proc.wait_for(pattern)
        delay = rng.uniform(0, most)
        time.sleep(delay)
        if proc.proc.poll() is not None:
            assert proc.proc.returncode == 0, proc.output
        proc.kill()
        kills.append((moment, reached, round(delay, 3), proc.proc.returncode))
        assert "Traceback" not in proc.output, (kills, proc.output[-3000:])
    last = Cnnas(*argv, cwd=tmp_path)
    assert last.finish() == 0, (kills, last.output[-4000:])
    print("kills:", kills)
    assert sum(1 for _, reached, _, code in kills if reached and code == -9) >= 8, kills

    study = journal_study(tmp_path, "faults")
    recs = records(study.trials)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    # resumed and reached its total: the killed trials were failed and run again
    assert counted_trials(recs, COUNTED_STATES) == trials
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == trials
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = [t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried)), "a trial retried twice"
    for t in study.trials:
        if t.state == TrialState.FAIL:
            assert t.number in retried or t.user_attrs.get("interrupted"), t.user_attrs
    # one parent run, every run closed, one run per trial that got one
    client = mlflow_client(tmp_path)
    everything = all_runs(client)
    assert [r.info.status for r in everything if r.info.status == "RUNNING"] == []
    parents = [r for r in everything if r.data.tags.get("cnnas.role") == "study"]
    assert [p.info.run_id for p in parents] == [study.user_attrs["mlflow_parent_run_id"]]
    by_trial: dict[int, list] = {}
    for r in everything:
        if r.data.tags.get("cnnas.role") == "trial":
            by_trial.setdefault(int(r.data.tags["cnnas.trial"]), []).append(r)
    for t in complete:
        (r,) = by_trial[t.number]
        assert r.info.run_id == t.user_attrs["mlflow_run_id"] and r.info.status == "FINISHED"
        assert r.data.metrics["val_acc"] == pytest.approx(t.values[0])
        assert r.data.metrics["params"] == t.user_attrs["params"]
    # the registry holds the front once, and the report was written
    names = [m.name for m in client.search_registered_models()]
    assert names == ["cnnas-faults"]
    versions = client.search_model_versions("name = 'cnnas-faults'")
    sources = [v.run_id for v in versions]
    assert len(sources) == len(set(sources)), "a trial registered twice"
    assert (runs / "reports" / "faults" / "report.html").is_file()
    json.dumps(kills)
