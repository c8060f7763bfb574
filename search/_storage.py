"""Where studies live: the Optuna storage, reaching it, the start lock, and who a worker is.

The local default is a journal file in the project folder; a database URL (PostgreSQL for many
machines) is the alternative. Everything here can be asked of a config without creating a file:
commands that only read a study use :func:`existing_study`, which refuses to create storages.
"""

from __future__ import annotations

import os
import re
import socket
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial

from ._config import StudyConfig
from .errors import ConfigError, UsageError

__all__ = [
    "StartLock",
    "check_project_dir",
    "check_storage",
    "existing_storage",
    "existing_study",
    "open_storage",
    "process_gone",
    "safe_text",
    "safe_url",
    "same_database",
    "storage_location",
    "worker_id",
]


def storage_location(cfg: StudyConfig) -> str:
    """The storage as a user would name it: a URL, or the journal file's path."""
    if cfg.study.storage:
        return cfg.study.storage
    return str(Path(cfg.study.project_dir) / "optuna.journal")


def _engine_kwargs(url: str) -> dict[str, Any]:
    # pool_pre_ping: a worker that waited through a database restart reconnects instead of
    # failing its next trial on a dead connection.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        # An unreachable server should fail in seconds, not after the OS's TCP timeout.
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def open_storage(
    cfg: StudyConfig, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> BaseStorage:
    """The Optuna storage: the configured database URL, or a journal file in the project folder.

    The journal file is the local default because it takes concurrent writers (several workers,
    optuna-dashboard reading) with file locks and appends a few bytes per change: 6.5 ms per trial
    against 124 ms for SQLite, measured here. A database storage gets Optuna's heartbeat: a
    running trial that stays silent for ``study.grace_period`` seconds (its worker was killed) is
    failed by the next worker that starts a trial, and ``on_stale`` is called with it.

    A journal or database that cannot be read (damaged, or of another Optuna) is a UsageError
    that names it and says what to do; the file itself is left as it is.
    """
    if cfg.study.storage:
        url = cfg.study.storage
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=cfg.study.heartbeat_interval,
                    grace_period=cfg.study.grace_period,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except Exception as e:  # a damaged SQLite file, a schema of another Optuna
            raise UsageError(
                f"study.storage: the database {safe_url(url)!r} cannot be used as an Optuna "
                f"storage ({safe_text(_first_line(e), url)}); if it is damaged, restore it from "
                "a backup or name another database"
            ) from None
    path = Path(storage_location(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise UsageError(f"the study journal {path} cannot be opened: {e.strerror}") from None
    except Exception as e:  # JSON that does not parse, or log entries Optuna cannot replay
        raise UsageError(
            f"the study journal {path} is damaged and cannot be read ({type(e).__name__}: "
            f"{_first_line(e)[:200]}); move it away to start afresh (its studies are lost), or "
            "restore it from a backup"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# Query parameters that carry a secret (libpq's password, tokens of HTTP stores).
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|access_token|api_key|apikey)=)[^&;#]*"
)


def _secrets(url: str) -> list[str]:
    """The password of ``url`` (user info or query), as written and decoded."""
    found = [m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(url)]
    _, sep, rest = url.partition("://")
    if sep:
        # The user info ends at the last '@' before the query: an unencoded '@' in a password
        # belongs to the password (the database drivers cut at the first one).
        before_query = _SECRET_PARAM.sub("", rest).split("?", 1)[0]
        userinfo = before_query.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    return [s for s in {*found, *(unquote(f) for f in found)} if s]


def safe_url(url: str) -> str:
    """The URL without its password (in the user info, unencoded ``@`` included, or in the
    query as ``?password=``), for messages."""
    masked = _SECRET_PARAM.sub(r"\1***", url)
    scheme, sep, rest = masked.partition("://")
    if not sep:
        return masked
    head, query_sep, query = rest.partition("?")
    userinfo, at, host = head.rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{head}{query_sep}{query}"


def safe_text(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with every piece of ``url``'s password masked:
    a driver that cut the URL at an unencoded ``@`` names the password's tail as a host."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        pieces = [secret, *re.split(r"[@:/]", secret)]
        for piece in sorted(set(pieces), key=len, reverse=True):
            if len(piece) >= 3:
                text = text.replace(piece, "***")
    return text.replace(url, safe_url(url))


def check_storage(cfg: StudyConfig) -> None:
    """Raises ConfigError when the configured database cannot be reached, UsageError when the
    local journal is damaged; writes nothing."""
    url = cfg.study.storage
    if not url:
        if Path(storage_location(cfg)).is_file():
            open_storage(cfg)  # reads an existing journal (appends nothing): damage shows here
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    except Exception as e:  # a malformed URL or a missing driver
        raise ConfigError(
            f"study.storage: cannot use {safe_url(url)!r}: {safe_text(_first_line(e), url)}"
        ) from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        raise ConfigError(
            f"study.storage: cannot reach the database {safe_url(url)!r}: "
            f"{safe_text(_first_line(e), url)}"
        ) from None
    finally:
        engine.dispose()


def same_database(a: str, b: str) -> bool:
    """Two URLs name one database (driver, user, password and options aside)."""
    import sqlalchemy

    try:
        ua, ub = sqlalchemy.engine.make_url(a), sqlalchemy.engine.make_url(b)
    except Exception:  # an http:// tracking server, a malformed URL
        return False
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        return bool(ua.database) and ua.database == ub.database
    port = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(ua.get_backend_name())
    return (ua.host or "localhost", ua.port or port, ua.database) == (
        ub.host or "localhost",
        ub.port or port,
        ub.database,
    )


def check_project_dir(cfg: StudyConfig) -> None:
    """Raises ConfigError when ``study.project_dir`` cannot hold the local stores: a file, a
    folder inside a file, a folder this process cannot write, a name too long. Writes nothing."""
    raw = cfg.study.project_dir
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"study.project_dir: {raw!r} is a file, not a folder; name a folder")
    too_long = [p for p in path.parts if len(os.fsencode(p)) > 255]
    if too_long:
        raise ConfigError(
            f"study.project_dir: a folder name in {raw[:80]!r}... is longer than 255 bytes"
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"study.project_dir: {raw!r} lies inside {str(existing)!r}, which is a file, not a "
            "folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"would be created in {str(existing)!r}, which is"
        raise ConfigError(
            f"study.project_dir: {raw!r} {what} not writable by this user; name a folder you "
            "can write"
        )


def _has_optuna_tables(url: str) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def existing_storage(cfg: StudyConfig, name: str | None = None) -> BaseStorage:
    """The study storage, refusing to create a journal file, a SQLite file or Optuna's tables
    in a database where there are none."""
    location = storage_location(cfg)
    url = cfg.study.storage
    study = f"no study named {name!r}: " if name else ""
    # Opening a missing journal file or SQLite database would create it.
    if not url:
        path: str | None = location
    elif url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
    else:
        path = None
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{study}no study storage at {location}; start a study first")
    if url and path is None:
        check_storage(cfg)
        if not _has_optuna_tables(url):
            raise UsageError(f"{study}the database {safe_url(location)} holds no Optuna studies")
    return open_storage(cfg)


def existing_study(cfg: StudyConfig, name: str) -> optuna.Study:
    """The named study, or a UsageError listing the studies the storage holds."""
    storage = existing_storage(cfg, name)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UsageError(
            f"no study named {name!r} in {safe_url(storage_location(cfg))}; "
            f"studies there: {sorted(names)}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def worker_id() -> str:
    """This process as trials record it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(worker: str) -> bool:
    """The worker ran on this host and its process no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker: only a heartbeat could tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


class StartLock:
    """Serialises "count the trials, then create the next one" among all workers of a study.

    A PostgreSQL session advisory lock for a database storage (released by the server if the
    worker dies), an exclusive ``flock`` on a file beside a local storage (released by the
    kernel if the worker dies). Use it as a context manager around counting and ``study.ask()``.
    """

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        self._held = False
        self._conn: Any = None
        self._engine: Any = None
        self._file: Any = None
        url = cfg.study.storage
        self._pg = bool(url) and url.startswith("postgresql")
        # Advisory locks take a 64-bit key: the study's name, hashed.
        self._key = zlib.crc32(f"cnnas:{cfg.study.name}".encode())

    def _lock_path(self) -> Path:
        url, name = self.cfg.study.storage, self.cfg.study.name
        if url and url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///") + f".{name}.lock")
        if url:
            # Another database without advisory locks: a lock file serves one machine only.
            return Path(self.cfg.study.project_dir) / f".{name}.lock"
        return Path(storage_location(self.cfg) + f".{name}.lock")

    def __enter__(self) -> StartLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self._held:
            return
        if self._pg:
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(
                    self.cfg.study.storage,
                    poolclass=sqlalchemy.pool.NullPool,
                    **_engine_kwargs(self.cfg.study.storage),
                )
                self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({self._key})"))
            self._conn.commit()
        else:
            import fcntl

            if self._file is None:
                path = self._lock_path()
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a+")  # noqa: SIM115 -- held across calls
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._pg:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({self._key})"))
            self._conn.commit()
        else:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self.release()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._engine.dispose()
                self._conn = self._engine = None
            if self._file is not None:
                self._file.close()
                self._file = None
