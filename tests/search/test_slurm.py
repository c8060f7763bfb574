"""``deploy/slurm-workers.sh`` under a real SLURM: a one-node cluster on 127.0.0.1 (munged,
slurmctld and slurmd started here with a key of their own), the template submitted as a 2-task
job array against a study in PostgreSQL, MLflow's runs in PostgreSQL too.

Needs root (slurmd starts the tasks as the submitting user) and Debian's ``slurm-wlm`` and
``munge`` packages (``apt-get install -y slurm-wlm munge``), and PostgreSQL at 127.0.0.1:5432;
otherwise it is skipped with the reason. The node declares two GPUs backed by /dev/null and
/dev/zero, so the template's ``--gres=gpu:1`` is scheduled as written; slurmd reports the
configured CPUs and memory (``SlurmdParameters=config_overrides``), and the test asks for one CPU
and 1 GB per task on the command line, as a site with small nodes would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas.search import StudyConfig
from cnnas.search._records import COUNTED_STATES, counted_trials, records

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "slurm-workers.sh"
PG = ("127.0.0.1", 5432)
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "slurmd must run as root to start tasks"
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"apt-get install -y slurm-wlm munge (missing: {', '.join(absent)})"
    try:
        with socket.create_connection(PG, timeout=2):
            pass
    except OSError:
        return "PostgreSQL at 127.0.0.1:5432"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A one-node SLURM cluster in ``root``; every daemon is this test's own process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: list[Path] = []

    def start(self) -> None:
        munge = self.root / "munge"
        for d in (munge, self.root / "state", self.root / "spool", self.root / "log"):
            d.mkdir(parents=True)
        munge.chmod(0o700)
        key, socket_path = munge / "munge.key", munge / "munge.socket"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={socket_path}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            check=True,
        )
        self.pids.append(munge / "munged.pid")
        self._write_conf(socket_path)
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)
        self.pids.append(self.root / "slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(self.conf), "-N", "node1"], check=True, env=self.env)
        self.pids.append(self.root / "slurmd-node1.pid")
        self._wait_idle()

    def _write_conf(self, munge_socket: Path) -> None:
        r, host = self.root, socket.gethostname()
        self.conf.write_text(
            f"""\
ClusterName=cnnastest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}/slurmd-%n
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r / "log"}/slurmctld.log
SlurmdLogFile={r / "log"}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
GresTypes=gpu
NodeName=node1 NodeHostname={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=65536 Gres=gpu:2
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        (r / "gres.conf").write_text(
            "NodeName=node1 Name=gpu File=/dev/null\nNodeName=node1 Name=gpu File=/dev/zero\n"
        )

    def run(self, *argv: str, **kwargs) -> str:
        kwargs.setdefault("env", self.env)
        done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
        if done.returncode:
            raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
        return done.stdout

    def logs(self) -> str:
        """The tail of each daemon's log, for a failure message."""
        return "\n".join(p.read_text()[-1500:] for p in (self.root / "log").glob("*.log"))

    def _wait_idle(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.run("sinfo", "-h", "-o", "%t").strip() == "idle":
                    return
            except AssertionError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the SLURM node never became idle:\n{self.logs()}")

    def wait_for_job(self, job: str, timeout: float = 900) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            queued = self.run("squeue", "-h", "-j", job, "-o", "%i %T %r").strip()
            if not queued:
                return
            # A task whose launch failed is requeued and held: it would wait out the timeout.
            if "launch failed" in queued:
                raise AssertionError(f"job {job} could not be launched:\n{queued}\n{self.logs()}")
            time.sleep(1)
        raise AssertionError(f"job {job} still queued or running after {timeout} s")

    def tasks(self, job: str) -> dict[str, dict[str, str]]:
        """Each array task's JobState and ExitCode, by task id."""
        out: dict[str, dict[str, str]] = {}
        for record in self.run("scontrol", "-o", "show", "job", job).splitlines():
            fields = dict(f.split("=", 1) for f in record.split() if "=" in f)
            out[fields["ArrayTaskId"]] = fields
        return out

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        pids = []
        for pid_file in self.pids:
            try:
                pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        end = time.monotonic() + 15
        while pids and time.monotonic() < end:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A daemon of ours that exited but was not reaped yet (its parent is init) is gone too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # Not under tmp_path: slurmstepd makes Unix sockets in the spool folder, and a socket's path
    # may not exceed 108 bytes, which pytest's deeper tmp_path (pytest-xdist's popen-gwN level,
    # a long test name) can pass.
    root = Path(tempfile.mkdtemp(prefix="cnnas-slurm-", dir="/tmp"))
    c = Cluster(root / "slurm")
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def databases() -> Iterator[list[str]]:
    """Two empty PostgreSQL databases (the Optuna study's, MLflow's), dropped afterwards."""
    import psycopg

    names = [f"cnnas_slurm_{uuid.uuid4().hex[:10]}" for _ in range(2)]

    def admin():
        return psycopg.connect(
            host=PG[0], port=PG[1], dbname="postgres", user="postgres", autocommit=True
        )

    with admin() as conn:
        for n in names:
            conn.execute(f"CREATE DATABASE {n}")
    yield [f"postgresql://postgres@{PG[0]}:{PG[1]}/{n}" for n in names]
    with admin() as conn:
        for n in names:
            conn.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


def test_the_slurm_template_runs_a_two_task_job_array_on_one_study(tmp_path, cluster, databases):
    optuna_url, mlflow_url = databases
    trials = 6
    (tmp_path / "mlflow.yml").write_text(yaml.safe_dump({"tracking_uri": mlflow_url}))
    cfg = {
        "study": {
            "name": "slurm",
            "trials": trials,
            "storage": optuna_url,
            "project_dir": str(tmp_path / "runs"),
        },
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 128, "accelerator": "cpu"},
        "registry": {"register": False},
        "space": {
            "blocks": [1, 2],
            "convs": [1],
            "base_filters": [4, 8],
            "kernels": [3],
            "pools": ["max", "none"],
            "aggregations": ["flatten", "gap"],
            "dense_layers": [0],
        },
        "mlflow": str(tmp_path / "mlflow.yml"),
    }
    if "final" in StudyConfig.__dataclass_fields__:
        cfg["final"] = {"share": 0.0}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # Step 1 of the template's instructions: start the study on one machine (it runs trials
    # too, here two of the six, and closes its parent run when it stops).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["study", "start", "--config", str(config), "--trials", "2", "--no-report"]
    start = subprocess.run(
        [sys.executable, "-m", "cnnas", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    parent = optuna.load_study(study_name="slurm", storage=optuna_url).user_attrs[
        "mlflow_parent_run_id"
    ]

    started = time.monotonic()
    job = cluster.run(
        "sbatch",
        "--parsable",
        "--array=0-1",
        "--cpus-per-task=1",
        "--mem=1G",
        str(TEMPLATE),
        str(config),
        "slurm",
        cwd=tmp_path,
        env={**cluster.env, "CNNAS_VENV": sys.prefix, "OMP_NUM_THREADS": "1"},
    ).strip()
    cluster.wait_for_job(job)
    seconds = time.monotonic() - started
    logs = {p.name: p.read_text() for p in sorted(tmp_path.glob("cnnas-worker-*.log"))}
    tasks = cluster.tasks(job)
    shown = "\n".join(f"--- {name}\n{text[-2500:]}" for name, text in logs.items())
    assert sorted(tasks) == ["0", "1"], tasks
    for task in tasks.values():
        assert task["JobState"] == "COMPLETED" and task["ExitCode"] == "0:0", (task, shown)
    assert len(logs) == 2 and all("joined study 'slurm'" in t for t in logs.values()), shown
    print(f"SLURM job array of 2 tasks: {seconds:.0f} s")

    study = optuna.load_study(study_name="slurm", storage=optuna_url)
    assert [t.number for t in study.trials] == list(range(trials)), "exactly the total"
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert counted_trials(records(study.trials), COUNTED_STATES) == trials
    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name("cnnas")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == [], "nothing RUNNING"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    by_trial = sorted(int(r.data.tags["cnnas.trial"]) for r in children)
    assert by_trial == list(range(trials)), "one MLflow run per trial"
    for t in study.trials:
        (r,) = [c for c in children if c.data.tags["cnnas.trial"] == str(t.number)]
        assert r.info.run_id == t.user_attrs["mlflow_run_id"] and r.info.status == "FINISHED"
    workers = {t.user_attrs["worker"] for t in study.trials[2:]}
    print(f"trials 2-5 by {len(workers)} SLURM task(s): {sorted(workers)}")
