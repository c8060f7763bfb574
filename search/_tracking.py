"""MLflow tracking: one parent run per study, one child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids rather than the fluent API's
"active run" globals, so a worker never logs into another trial's run. Values are sent in
``log_batch`` calls: a trial's whole history is one call, not one per value (5.3 ms per
``log_metric`` against 0.16 ms per metric in a batch, measured on SQLite).

Runs carry MLflow's standard tags (user, source, the git commit of the cnnas code that ran), which
``create_run`` does not set by itself; a value that is not set is left out rather than logged as
the string ``'None'``. A trained network is logged twice over: its files under the run's
``model/`` (what ``cnnas pull`` verifies) and as an MLflow Model (``_mlflow_model``), which MLflow's
own tools load, serve and register.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils import mlflow_tags

from cnnas.models import ArchSpec, save_model
from cnnas.objectives import TrialResult

from ._config import MlflowConfig
from ._mlflow_model import log_logged_model
from ._storage import safe_text, safe_url
from .errors import ConfigError, UsageError

__all__ = [
    "FINAL_METRICS",
    "Tracker",
    "check_tracking",
    "flatten",
    "source_tags",
    "tracking_uri",
    "ui_url",
]

# MLflow's limits per log_batch call.
_MAX_PARAMS, _MAX_METRICS = 100, 1000
_TAG_LIMIT = 5000
# The scalar metrics a trial's run ends with (its curves hold val_acc, train_loss, ...).
FINAL_METRICS = ("params", "macs", "ratio", "seconds", "epochs")


# Characters a path cannot carry into a ``sqlite:///`` URI: SQLAlchemy reads '?' and '#' as the
# start of the query and decodes '%XX', and MLflow creates the store's folder from the raw URI, so
# escaping them would still leave a stray folder beside the project.
_URI_UNSAFE = "?#%"


def tracking_uri(cfg: MlflowConfig, project_dir: str | Path) -> str:
    """Where the runs go: mlflow.yml's ``tracking_uri`` when it names one (an explicit choice
    in the project's file), else ``$MLFLOW_TRACKING_URI`` (MLflow's own convention, so MLflow's
    tools and cnnas agree), else a SQLite database in the project folder.

    Raises ConfigError for a project folder whose path a SQLite URI cannot carry (``?``, ``#``,
    ``%``): the store would land outside the project."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return local_store_uri(project_dir)


def local_store_uri(project_dir: str | Path) -> str:
    """The ``sqlite:///`` URI of the project folder's MLflow store (see :func:`tracking_uri`)."""
    path = (Path(project_dir) / "mlflow.db").resolve()
    bad = sorted({c for c in str(path) if c in _URI_UNSAFE})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ConfigError(
            f"study.project_dir: {str(path.parent)!r} holds {shown}, which the local MLflow "
            "store's SQLite URI cannot carry (the database would be written elsewhere); choose "
            "a folder without '?', '#' and '%', or set tracking_uri in mlflow.yml"
        )
    return f"sqlite:///{path}"


def _tracking_origin(cfg: MlflowConfig) -> str:
    """Where the tracking URI came from, as a message names it."""
    if cfg.tracking_uri:
        return "mlflow.yml tracking_uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "tracking_uri ($MLFLOW_TRACKING_URI)"
    return "the local MLflow store"


# How long the up-front check waits for a tracking server or database before it gives up.
CHECK_TIMEOUT = 10.0


def check_tracking(cfg: MlflowConfig, project_dir: str | Path) -> str:
    """The tracking URI, checked before anything is created; writes nothing.

    A local SQLite store must be whole, half-built (it is rebuilt when opened) or absent: a
    file that is no database, or a store with runs that this MLflow cannot open, is a
    UsageError that says what to do. A server or database must answer within
    ``CHECK_TIMEOUT`` seconds: MLflow's own client retries for minutes before it fails.
    """
    uri = tracking_uri(cfg, project_dir)
    where = _tracking_origin(cfg)
    if _sqlite_path(uri) is not None:
        _refuse_unusable_store(_sqlite_path(uri))
    elif uri.startswith(("http://", "https://")):
        _reach(where, uri, _http_problem)
    elif re.match(r"(postgresql|mysql|mssql)(\+\w+)?://", uri):
        _reach(where, uri, _database_problem)
    return uri


def _reach(where: str, uri: str, probe: Callable[[str], str | None]) -> None:
    """Runs ``probe(uri)`` (None: reachable, else the problem) with a deadline: a DNS lookup
    or a server that accepts and never answers must not hold the command."""
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(probe(uri)), daemon=True)
    thread.start()
    thread.join(CHECK_TIMEOUT + 1)
    problem = result[0] if result else f"no answer within {CHECK_TIMEOUT:g} s"
    if problem is not None:
        raise ConfigError(
            f"{where}: cannot reach {safe_url(uri)!r}: {safe_text(problem, uri)}; start the "
            "tracking server (cnnas tracking-server) or the database, or fix the URI"
        )


def _http_problem(uri: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT):
            return None
    except urllib.error.HTTPError as e:
        # Any answer but a server error is a server there (a proxy may want a login first).
        return f"the server answered HTTP {e.code}" if e.code >= 500 else None
    except urllib.error.URLError as e:
        return str(getattr(e, "reason", e))
    except (OSError, ValueError) as e:  # a timeout, a reset, a malformed URL
        return f"{type(e).__name__}: {e}"


def _database_problem(uri: str) -> str | None:
    import sqlalchemy

    args = {"connect_timeout": int(CHECK_TIMEOUT)} if not uri.startswith("mssql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args)
    except Exception as e:  # a malformed URL, a missing driver
        return _first_line(e)
    try:
        with engine.connect():
            return None
    except Exception as e:
        return _first_line(e)
    finally:
        engine.dispose()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """``{"blocks": [{"filters": 8}]}`` -> ``{"blocks.0.filters": "8"}``, for run params.

    A ``None`` (a setting left unset) gives no param: MLflow's convention for "not set" is an
    absent key, and the string ``'None'`` would read as a value in the UI and in searches.
    """
    out: dict[str, str] = {}
    if data is None:
        return out
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, (list, tuple)) and any(isinstance(v, (Mapping, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = str(list(data) if isinstance(data, tuple) else data)
    return out


def _curve_metrics(curves: Mapping[str, Sequence[float]], now: int) -> list[Metric]:
    """Per-epoch values as metric histories: step = epoch."""
    return [
        Metric(name, float(v), now, step)
        for name, values in curves.items()
        for step, v in enumerate(values)
    ]


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# The MLflow UI's "Machine learning" view. MLflow 3.17's UI chooses the view from this URL
# parameter (or from the user's last choice in the browser) and opens every experiment on its
# GenAI overview otherwise; the experiment tag below is what the UI's own selector writes, which
# later versions may read again.
_ML_VIEW = "workflowType=machine_learning"
_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ui_url(base: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's training runs, e.g.
    ``http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning``."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{_ML_VIEW}"


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's standard run tags for this process: user, source, and the git commit (branch,
    remote) of the cnnas code when it runs from a git checkout.

    ``mlflow.start_run`` sets these; ``MlflowClient.create_run`` does not. MLflow's own git tag
    names the repository of ``sys.argv[0]``, which for the ``cnnas`` command is a virtualenv's
    script that git ignores, so the commit is looked up where the cnnas code itself lives.
    """
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    main = sys.argv[0] if sys.argv and sys.argv[0] else ""
    tags = {
        mlflow_tags.MLFLOW_USER: user,
        mlflow_tags.MLFLOW_SOURCE_NAME: os.path.abspath(main) if os.path.isfile(main) else "python",
        mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL",
    }
    code = Path(__file__).resolve().parent
    for key, get in (
        (mlflow_tags.MLFLOW_GIT_COMMIT, get_git_commit),
        (mlflow_tags.MLFLOW_GIT_BRANCH, get_git_branch),
        (mlflow_tags.MLFLOW_GIT_REPO_URL, get_git_repo_url),
    ):
        try:
            value = get(str(code))
        except Exception:  # git missing or broken: the tags are a courtesy, never an error
            value = None
        if value:
            tags[key] = str(value)
    return tags


def _template_path() -> Path:
    """An empty MLflow SQLite store of this MLflow version, in the user's cache."""
    root = os.environ.get("CNNAS_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    if not os.environ.get("CNNAS_CACHE_DIR"):
        base = base / "cnnas"
    return base / f"mlflow-{mlflow.__version__}-empty.db"


def _sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (SQLAlchemy's reading: query and escapes decoded), or
    None for another store or an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    import sqlalchemy

    try:
        database = sqlalchemy.engine.make_url(uri).database
    except Exception:  # SQLAlchemy will say what is wrong with it when MLflow opens it
        return None
    return Path(database) if database and database != ":memory:" else None


@functools.cache
def _head_revision() -> str:
    """The schema revision of a whole store of this MLflow version."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


@dataclass(frozen=True)
class _Store:
    """What a local SQLite store file holds, read without changing it."""

    state: str  # absent, whole, rebuild (half-built, nothing in it), damaged, other-version
    revision: str | None = None
    runs: int = 0
    problem: str = ""


def _inspect_store(path: Path) -> _Store:
    if not path.exists():
        return _Store("absent")
    if path.is_dir():
        return _Store("damaged", problem="it is a folder")
    if path.stat().st_size == 0:
        return _Store("rebuild")
    try:
        return _read_store(path, read_only=True)
    except sqlite3.Error as e:
        # A process killed in the middle of a write leaves a hot rollback journal; a read-only
        # connection cannot roll it back and reports "attempt to write a readonly database".
        # A writable one rolls it back under SQLite's own locks (as MLflow's next write would),
        # which restores the store as it was before that write: recovery, not a change.
        hot = path.with_name(f"{path.name}-journal").exists()
        if not (isinstance(e, sqlite3.OperationalError) and "readonly" in str(e) and hot):
            return _Store("damaged", problem=str(e))
    try:
        return _read_store(path, read_only=False)
    except sqlite3.Error as e:
        return _Store("damaged", problem=str(e))


def _read_store(path: Path, *, read_only: bool) -> _Store:
    """What ``path`` holds; raises sqlite3.Error where it cannot be read."""
    mode = "ro" if read_only else "rw"  # rw never creates the file
    con = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        revision = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        models = (
            con.execute("SELECT count(*) FROM registered_models").fetchone()[0]
            if "registered_models" in tables
            else 0
        )
        experiments = (
            con.execute("SELECT count(*) FROM experiments WHERE experiment_id != 0").fetchone()[0]
            if "experiments" in tables
            else 0
        )
    finally:
        con.close()
    if revision == _head_revision() and {"runs", "experiments", "registered_models"} <= tables:
        return _Store("whole", revision)
    if not (runs or models or experiments):
        # Killed while its tables were being created (by an older cnnas, or MLflow itself):
        # nothing is in it, so building it again loses nothing.
        return _Store("rebuild", revision)
    return _Store("other-version", revision, runs + models)


def _refuse_unusable_store(path: Path) -> None:
    """A UsageError, saying what to do, for a store file cnnas cannot use or rebuild."""
    store = _inspect_store(path)
    if store.state == "damaged":
        raise UsageError(
            f"the MLflow store {path} is damaged or no SQLite database ({store.problem}); move "
            "it away (a new, empty store is then created) or restore it from a backup"
        )
    if store.state == "other-version":
        raise UsageError(
            f"the MLflow store {path} has schema revision {store.revision or 'none'}, not "
            f"{_head_revision()} of MLflow {mlflow.__version__}, and holds {store.runs} runs or "
            f"models: back it up, then run `mlflow db upgrade sqlite:///{path}` (or use the "
            "MLflow version that wrote it, or move it away to start a new store)"
        )


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file to leave behind), released by
    the kernel if this process dies."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build_store(path: Path) -> None:
    """MLflow's tables, created the slow way (some fifty schema migrations) in ``path``."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def _ensure_sqlite_store(uri: str) -> None:
    """Makes sure the local store is whole: built under a temporary name and renamed into place,
    so it appears whole or not at all; a half-built one (a crash of an older cnnas) is rebuilt,
    a damaged one refused with what to do.

    Creating MLflow's tables runs some fifty schema migrations: 2.8 s here, most of a short
    study's fixed cost. An empty store of the same MLflow version, copied, is the same file: the
    first store a machine builds is kept as the template of the next.
    """
    path = _sqlite_path(uri)
    if path is None:
        return
    if _inspect_store(path).state == "whole":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):  # another process may be building it this moment
        if _inspect_store(path).state == "whole":
            return
        _refuse_unusable_store(path)
        _remove_leftovers(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            template = _template_path()
            if template.is_file() and _inspect_store(template).state == "whole":
                shutil.copyfile(template, tmp)
            else:
                _build_store(tmp)
                _keep_as_template(tmp)
            os.replace(tmp, path)
        except Exception as e:
            if not _is_disk_error(e):
                raise
            raise UsageError(
                f"cannot create the MLflow store {path}: {_first_line(e)}; nothing was kept "
                "(free some space, or name another study.project_dir)"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)


def _is_disk_error(e: BaseException) -> bool:
    """A full disk, a quota, a read-only or vanished folder, as OSError or from SQLite."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return any(w in text for w in ("disk is full", "disk i/o", "readonly", "unable to open"))


def _remove_leftovers(path: Path) -> None:
    """Temporary stores of processes that died while building one (``.mlflow.db.PID.tmp``)."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        pid = leftover.name.removeprefix(f".{path.name}.").removesuffix(".tmp")
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _keep_as_template(path: Path) -> None:
    """Stores a just-created, still empty store as the template; a cache we cannot write is
    only a missed speed-up."""
    template = _template_path()
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp)
        os.replace(tmp, template)
    except OSError:
        tmp.unlink(missing_ok=True)


class Tracker:
    """Writes a study's runs to one MLflow experiment."""

    def __init__(self, cfg: MlflowConfig, project_dir: Path) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg, project_dir)
        _ensure_sqlite_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            # A tracking server chooses (and serves) the artifact store itself, so every machine
            # that reaches the server reaches the weights; locally they go in the project folder.
            remote = self.uri.startswith(("http://", "https://", "databricks"))
            location = cfg.artifact_location or (
                None if remote else (project_dir / "mlartifacts").resolve().as_uri()
            )
            try:
                self.experiment_id = self.client.create_experiment(
                    cfg.experiment, artifact_location=location
                )
            except MlflowException:
                # Another study's process created it this moment.
                exp = self.client.get_experiment_by_name(cfg.experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id

    # --- the study's parent run -------------------------------------------------------------

    def parent_run(self, study_name: str, existing: str | None, config: Mapping[str, Any]) -> str:
        """The study's parent run: ``existing`` reopened if it still exists, else a new one."""
        if existing:
            try:
                run = self.client.get_run(existing)
            except MlflowException:
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                if run.info.status != "RUNNING":
                    self.client.update_run(existing, status="RUNNING")
                return existing
        self._mark_experiment()
        run = self.client.create_run(
            self.experiment_id,
            run_name=study_name,
            tags={**source_tags(), "cnnas.study": study_name, "cnnas.role": "study"},
        )
        params = [Param(k, v[:_TAG_LIMIT]) for k, v in flatten(config).items()]
        for chunk in _chunks(params, _MAX_PARAMS):
            self.client.log_batch(run.info.run_id, params=chunk)
        return run.info.run_id

    def _mark_experiment(self) -> None:
        """Tags the experiment as classic model training (see ``_EXPERIMENT_KIND``), once."""
        key, value = _EXPERIMENT_KIND
        try:
            if self.client.get_experiment(self.experiment_id).tags.get(key) != value:
                self.client.set_experiment_tag(self.experiment_id, key, value)
        except MlflowException:  # a server that refuses experiment tags: only a UI nicety lost
            pass

    def ui_commands(self) -> list[str]:
        """How to open the MLflow UI on this experiment's training runs: a command to start the
        UI on a local store (none for a tracking server), then the page to open."""
        if self.uri.startswith(("http://", "https://")):
            return [f"open {ui_url(self.uri, self.experiment_id)}"]
        return [
            f"mlflow ui --backend-store-uri {self.uri} --port 5000",
            f"open {ui_url('http://127.0.0.1:5000', self.experiment_id)}",
        ]

    def end_parent(self, run_id: str, summary: Mapping[str, float], status: str) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items()]
        self.client.log_batch(run_id, metrics=metrics)
        self.client.set_terminated(run_id, status=status)

    def end_fit(self, run_id: str, result: TrialResult) -> None:
        """Closes a run that trained without live logging: its whole history and final metrics."""
        metrics = {k: float(getattr(result, k)) for k in FINAL_METRICS}
        self.end_trial(run_id, "FINISHED", metrics=metrics, curves=result.curves)

    # --- one run per trial --------------------------------------------------------------------

    def start_trial(
        self,
        parent_id: str,
        study_name: str,
        number: int,
        spec: ArchSpec,
        *,
        run_name: str | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name or f"{study_name}-trial-{number}",
            tags={
                **source_tags(),
                "mlflow.parentRunId": parent_id,
                "cnnas.study": study_name,
                "cnnas.trial": str(number),
                "cnnas.role": "trial",
                "cnnas.spec_hash": spec.spec_hash(),
                "cnnas.arch": spec.summary()[:_TAG_LIMIT],
                # The caller's say last: a final training or an experiment names its own role.
                **(extra_tags or {}),
            },
        )
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(spec.to_dict(), "spec").items()]
        for chunk in _chunks(params, _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        self.client.log_dict(run_id, spec.to_dict(), "spec.json")
        return run_id

    def log_epoch(self, run_id: str, epoch: int, values: Mapping[str, float]) -> None:
        """One finished epoch's values as metric steps, so a running trial's curves show live."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in values.items()]
        self.client.log_batch(run_id, metrics=metrics)
        # The last epoch's points, as logged: they become the trained network's model metrics.
        self._last_epoch[run_id] = metrics

    @functools.cached_property
    def _last_epoch(self) -> dict[str, list[Metric]]:
        return {}

    @functools.cached_property
    def _model_ids(self) -> dict[str, str]:
        """run id -> the id of the MLflow Model logged in it, until the run ends."""
        return {}

    def log_metrics(
        self, run_id: str, values: Mapping[str, float], *, model_id: str | None = None
    ) -> None:
        """Values at step 0; with ``model_id`` they are also that MLflow Model's metrics."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in values.items()]
        self.client.log_batch(run_id, metrics=metrics)

    def model_id(self, run_id: str) -> str | None:
        """The id of the MLflow Model a run logged (its output), or None."""
        outputs = self.client.get_run(run_id).outputs
        models = list(outputs.model_outputs) if outputs is not None else []
        return models[-1].model_id if models else None

    def log_model(self, run_id: str, model: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Saves the trained network under the run's ``model/`` (spec, safetensors, metadata,
        manifest) and logs it as the run's MLflow Model; returns the metadata with the
        ``model_id``.

        A network saved without its normalisation (``extra`` has no ``mean`` and ``std``, as the
        layer-skip experiment's routed networks) gets the files only: no pyfunc could prepare
        its input.
        """
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            meta = save_model(model, folder, extra=dict(extra))
            self.client.log_artifacts(run_id, str(folder), "model")
            if "mean" not in extra or "std" not in extra:
                return meta
            last = self._last_epoch.pop(run_id, None) or self._latest_metrics(run_id)
            tags = {f"cnnas.{k}": str(extra[k]) for k in ("study", "trial") if k in extra}
            model_id = log_logged_model(
                self.client,
                self.experiment_id,
                run_id,
                folder,
                name=self.client.get_run(run_id).info.run_name or f"run-{run_id}",
                step=max((m.step for m in last), default=0),
                metrics=last,
                tags={**tags, "cnnas.spec_hash": str(meta["spec_hash"])},
            )
        self._model_ids[run_id] = model_id
        return {**meta, "model_id": model_id}

    def _latest_metrics(self, run_id: str) -> list[Metric]:
        """Each metric's latest point in a run that was not logged live (a refit): the last
        epoch of each curve and the final values."""
        latest = []
        for key in self.client.get_run(run_id).data.metrics:
            history = self.client.get_metric_history(run_id, key)
            if history:
                latest.append(max(history, key=lambda m: (m.step, m.timestamp)))
        return latest

    def end_trial(
        self,
        run_id: str,
        status: str,
        *,
        metrics: Mapping[str, float] | None = None,
        curves: Mapping[str, Sequence[float]] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Closes a trial's run: its final metrics, any curves not logged live, and its tags in
        as few batches as MLflow allows, then the status (FINISHED, KILLED or FAILED)."""
        now = int(time.time() * 1000)
        self._last_epoch.pop(run_id, None)
        # The final values (params, MACs, ...) are also the trained network's model metrics.
        model_id = self._model_ids.pop(run_id, None)
        batch = _curve_metrics(curves or {}, now)
        batch += [
            Metric(k, float(v), now, 0, model_id=model_id) for k, v in (metrics or {}).items()
        ]
        run_tags = [RunTag(k, str(v)[:_TAG_LIMIT]) for k, v in (tags or {}).items()]
        chunks = list(_chunks(batch, _MAX_METRICS)) or [[]]
        for i, chunk in enumerate(chunks):
            if chunk or (run_tags and i == 0):
                self.client.log_batch(run_id, metrics=chunk, tags=run_tags if i == 0 else [])
        self.client.set_terminated(run_id, status=status)
