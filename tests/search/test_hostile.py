"""Hostile input through the real ``cnnas`` command line: YAML that repeats keys or expands
aliases without bound, names and paths that point outside the project, stores and databases
that are damaged or unreachable, passwords in URLs. Each must end in one ``error: ...`` line of
bounded length, exit status 2, and nothing created.

The fuzz test at the end generates its malformed configs from a fixed seed, so a failure names a
case that can be run again.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cnnas.search import StudyRun, load_config
from cnnas.search._config import ConfigError
from cnnas.search._storage import safe_url
from cnnas.search.cli import MAX_MESSAGE, main
from tests.search import _fs

readonly_dir = _fs.readonly_dir  # a fixture

VALID = """\
study:
  name: hostile
  trials: 1
  sampler: random
data:
  dataset: digits
train:
  epochs: 1
  batch_size: 256
  accelerator: cpu
registry:
  register: false
space:
  blocks: [1]
  base_filters: [4]
  dense_layers: [0]
"""
# An error line may quote a value or a path, but never more than the CLI's bound.
MAX_ERR = MAX_MESSAGE + 200


def _input_was_accepted(self, *args, **kwargs):
    pytest.fail("the input was accepted and the CLI started to create the study")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory; opening a study (the first write) fails the test."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("CNNAS_DATA_DIR", raising=False)
    monkeypatch.setattr(StudyRun, "open", _input_was_accepted)
    return work


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err[:3000]
    assert lines[0].startswith("error: "), lines[0][:300]
    assert len(err) <= MAX_ERR, len(err)
    return lines[0]


def start_bad(capsys, workdir: Path, text: str | bytes, *extra: str) -> str:
    """``cnnas study start`` on a config that must be refused: exit 2, one bounded error line,
    nothing created. Returns the line."""
    path = workdir / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    status, out, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "runs", *extra
    )
    assert status == 2, (out[:500], err[:500])
    line = assert_one_error_line(err)
    assert sorted(os.listdir(workdir)) == ["config.yaml"], "nothing created"
    return line


# --- duplicate keys ---------------------------------------------------------------------------


def test_a_key_given_twice_is_refused_with_both_lines(capsys, workdir):
    text = VALID.replace("  trials: 1\n", "  trials: 1\n  seed: 3\n  trials: 100\n")
    line = start_bad(capsys, workdir, text)
    assert "study.trials" in line and "line 3" in line and "line 5" in line, line


def test_a_section_given_twice_is_refused_not_replaced(capsys, workdir):
    line = start_bad(capsys, workdir, VALID + "study:\n  name: other\n")
    assert "study is given twice" in line
    assert "line 1" in line and f"line {VALID.count(chr(10)) + 1}" in line, line


def test_the_same_key_in_two_sections_is_no_duplicate(tmp_path):
    cfg = load_config(
        _write(tmp_path, "study:\n  seed: 3\ntrain:\n  epochs: 3\ndata:\n  subset: 30\n")
    )
    assert cfg.study.seed == 3 and cfg.train.epochs == 3


def test_mlflow_yml_refuses_duplicate_keys_too(tmp_path):
    from cnnas.search._config import load_mlflow_config

    path = tmp_path / "mlflow.yml"
    path.write_text("experiment: a\nexperiment: b\n")
    with pytest.raises(ConfigError, match=r"experiment.*line 1.*line 2"):
        load_mlflow_config(path)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


# --- aliases ----------------------------------------------------------------------------------


def _bomb_config() -> str:
    """A "billion laughs" under a valid key: each anchor holds nine aliases of the one before,
    so space.blocks expands to 9**9 (387 million) strings."""
    items = ['&l0 ["1","1","1","1","1","1","1","1","1"]']
    items += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "space:\n  blocks: [" + ", ".join(items) + "]\n"


def test_an_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    """From a real process: refused in seconds, in one short line (the old reader took 88 s
    and 9.8 GB, and printed 2 GB)."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_bomb_config())
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cnnas", "study", "start", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = assert_one_error_line(proc.stderr)
    assert "alias" in line, line
    assert seconds < 60, seconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_a_recursive_alias_is_refused(capsys, workdir):
    line = start_bad(capsys, workdir, "space:\n  blocks: &a [1, *a]\n")
    assert "alias" in line


def test_small_aliases_still_work(tmp_path):
    text = "space:\n  kernels: &k [3, 5]\n  base_filters: [8, 16]\ntrain:\n  epochs: 2\n"
    cfg = load_config(_write(tmp_path, text.replace("[8, 16]", "[8, 16]\n  convs: [1, 2]")))
    assert cfg.space.kernels == (3, 5) and cfg.train.epochs == 2
    merged = "study: &s\n  seed: 4\n  trials: 3\ntrain:\n  epochs: 2\n"
    assert load_config(_write(tmp_path, merged)).study.seed == 4


# --- names and paths --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "...", "-rf", ".hidden"])
def test_a_study_name_that_is_no_plain_name_is_refused(capsys, workdir, name):
    line = start_bad(capsys, workdir, VALID, f"--name={name}")
    assert "study.name" in line and "letter" in line, line


@pytest.mark.parametrize(
    ("section", "key"), [("study", "project_dir"), ("data", "data_dir"), ("data", "cache_dir")]
)
def test_a_nul_character_in_a_path_is_refused(capsys, workdir, section, key):
    text = VALID.replace(f"{section}:\n", f'{section}:\n  {key}: "a\\0b"\n', 1)
    line = start_bad(capsys, workdir, text)
    assert f"{section}.{key}" in line and "NUL" in line, line


def test_a_project_dir_that_is_a_file_is_refused(capsys, workdir):
    (workdir / "config.yaml").write_text(VALID)
    (workdir / "afile").write_text("x")
    status, _, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "afile"
    )
    assert status == 2
    line = assert_one_error_line(err)
    assert "study.project_dir" in line and "not a folder" in line, line
    assert sorted(os.listdir(workdir)) == ["afile", "config.yaml"]


def test_a_project_dir_inside_a_file_is_refused(capsys, workdir):
    (workdir / "config.yaml").write_text(VALID)
    (workdir / "afile").write_text("x")
    status, _, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "afile/runs"
    )
    assert status == 2
    assert "study.project_dir" in assert_one_error_line(err)


def test_a_read_only_project_dir_is_refused(capsys, workdir, readonly_dir):
    (workdir / "config.yaml").write_text(VALID)
    status, _, err = cli(
        capsys,
        "study",
        "start",
        "--config",
        "config.yaml",
        "--project-dir",
        str(readonly_dir / "runs"),
    )
    assert status == 2
    line = assert_one_error_line(err)
    assert "study.project_dir" in line and "writ" in line, line
    assert os.listdir(readonly_dir) == []


@pytest.mark.parametrize("part", ["q?x=1#f", "a%20b", "50%"])
def test_a_project_dir_a_sqlite_uri_cannot_hold_is_refused_before_anything(capsys, workdir, part):
    (workdir / "config.yaml").write_text(VALID)
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml", "--project-dir", part)
    assert status == 2
    line = assert_one_error_line(err)
    assert "study.project_dir" in line and "tracking_uri" in line, line
    assert sorted(os.listdir(workdir)) == ["config.yaml"]


def test_a_project_dir_with_spaces_is_fine(tmp_path, monkeypatch, seed_mlflow):
    from cnnas.search._config import MlflowConfig
    from cnnas.search._tracking import Tracker, tracking_uri

    project = tmp_path / "my runs"
    uri = tracking_uri(MlflowConfig(), project)
    assert uri == f"sqlite:///{project / 'mlflow.db'}"
    seed_mlflow(project)
    tracker = Tracker(MlflowConfig(), project)
    parent = tracker.parent_run("s", None, {})
    assert tracker.client.get_run(parent).info.status == "RUNNING"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my runs"]


# --- passwords --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://me:hunter2@db:5432/optuna", "hunter2"),
        ("postgresql://me:hun@ter2@db:5432/optuna", "ter2"),
        ("postgresql://me:p@ss:w@rd@db/optuna", "rd"),
        ("postgresql://me@db/optuna?password=hunter2&sslmode=require", "hunter2"),
        ("postgresql://db/optuna?sslmode=require&password=hunter2", "hunter2"),
        ("postgresql://me:hunter2@db/optuna?password=hunter3", "hunter3"),
        ("postgresql+psycopg://me:hunter%402@db/optuna", "hunter"),
    ],
)
def test_safe_url_masks_every_password(url, secret):
    shown = safe_url(url)
    assert secret not in shown, shown
    assert "***" in shown and "db" in shown


def test_a_password_in_the_query_is_not_shown_in_messages(capsys, workdir):
    (workdir / "config.yaml").write_text(
        VALID.replace(
            "  sampler: random\n",
            "  sampler: random\n  storage: postgresql://me@127.0.0.1:1/none?password=hunter2\n",
        )
    )
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml")
    assert status == 2
    line = assert_one_error_line(err)
    assert "hunter2" not in line and "password=***" in line, line


def test_an_unencoded_at_sign_leaks_no_part_of_the_password(capsys, workdir):
    (workdir / "config.yaml").write_text(
        VALID.replace(
            "  sampler: random\n",
            "  sampler: random\n  storage: postgresql://me:s3cr@t-tail@127.0.0.1:1/none\n",
        )
    )
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml")
    assert status == 2
    line = assert_one_error_line(err)
    assert "t-tail" not in line and "s3cr" not in line, line


# --- the MLflow tracking URI, checked before anything ----------------------------------------


def _mlflow_yml(workdir: Path, uri: str) -> None:
    (workdir / "mlflow.yml").write_text(yaml.safe_dump({"tracking_uri": uri}))
    (workdir / "config.yaml").write_text(VALID)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://postgres:pw@127.0.0.1:1/mlflow",
        "http://127.0.0.1:{port}",
    ],
    ids=["postgresql", "http"],
)
def test_an_unreachable_tracking_uri_is_refused_in_seconds(capsys, workdir, uri):
    uri = uri.format(port=_unused_port())
    _mlflow_yml(workdir, uri)
    start = time.monotonic()
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml")
    assert time.monotonic() - start < 30
    assert status == 2
    line = assert_one_error_line(err)
    assert "tracking_uri" in line and "127.0.0.1" in line and "pw" not in line, line
    assert sorted(os.listdir(workdir)) == ["config.yaml", "mlflow.yml"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: the worst tracking server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        sock.close()


def test_a_tracking_server_that_never_answers_is_refused_in_bounded_time(
    capsys, workdir, silent_server
):
    _mlflow_yml(workdir, silent_server)
    start = time.monotonic()
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml")
    assert time.monotonic() - start < 30
    assert status == 2
    assert "tracking_uri" in assert_one_error_line(err)


def test_an_unreachable_tracking_uri_from_the_environment_is_refused(capsys, workdir, monkeypatch):
    (workdir / "config.yaml").write_text(VALID)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_unused_port()}")
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml")
    assert status == 2
    line = assert_one_error_line(err)
    assert "MLFLOW_TRACKING_URI" in line, line
    assert sorted(os.listdir(workdir)) == ["config.yaml"]


# --- damaged stores ---------------------------------------------------------------------------


def test_a_damaged_journal_names_the_file_and_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    journal = runs / "optuna.journal"
    journal.write_bytes(b'{"op_code": 0, "worker_id": "x", "study_name": "s"\n\x00\xff{{{\n')
    before = journal.read_bytes()
    (tmp_path / "config.yaml").write_text(VALID)
    for argv in (
        ["study", "start", "--config", "config.yaml", "--project-dir", "runs"],
        ["study", "status", "hostile", "--project-dir", "runs"],
    ):
        status, _, err = cli_plain(capsys, *argv)
        assert status == 2, err
        line = assert_one_error_line(err)
        assert str(Path("runs") / "optuna.journal") in line and "damaged" in line, line
        assert "move it away" in line or "backup" in line, line
    assert journal.read_bytes() == before
    assert sorted(p.name for p in runs.iterdir()) == ["optuna.journal"]


def cli_plain(capsys, *argv: str) -> tuple[int, str, str]:
    return cli(capsys, *argv)


def test_a_damaged_mlflow_db_names_the_file_and_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mlflow.db").write_bytes(b"this is no database at all" * 200)
    (tmp_path / "config.yaml").write_text(VALID)
    status, _, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "runs"
    )
    assert status == 2
    line = assert_one_error_line(err)
    assert "mlflow.db" in line and ("move it away" in line or "backup" in line), line
    assert sorted(p.name for p in runs.iterdir()) == ["mlflow.db"], "no study was created"


def test_a_store_of_an_older_mlflow_with_runs_is_refused_with_the_upgrade_command(
    capsys, tmp_path, monkeypatch, mlflow_db_template
):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    db = Path(shutil.copy(mlflow_db_template, runs / "mlflow.db"))
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
        con.execute(
            "INSERT INTO runs (run_uuid, experiment_id, lifecycle_stage, status) "
            "VALUES ('r1', 0, 'active', 'FINISHED')"
        )
    (tmp_path / "config.yaml").write_text(VALID)
    status, _, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "runs"
    )
    assert status == 2
    line = assert_one_error_line(err)
    assert "mlflow db upgrade" in line and "mlflow.db" in line, line
    assert sorted(p.name for p in runs.iterdir()) == ["mlflow.db"]


def test_data_fetch_with_a_bad_mirror_exits_2(tmp_path, capsys) -> None:
    status = main(["data", "fetch", "mnist", "--dir", str(tmp_path / "d"), "--mirror", "nope"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and "not a URL" in err
    assert not (tmp_path / "d").exists()


# --- Ctrl-C -----------------------------------------------------------------------------------


# 0.3 to 0.6 s: inside numpy's first import, where an interrupt used to end in a RecursionError
# traceback about 1 run in 6; several tries there so that a return of it shows.
@pytest.mark.parametrize("delay", [0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 1.0, 2.5])
def test_ctrl_c_at_start_up_prints_no_traceback(tmp_path, delay):
    """While the command imports its libraries or loads the data: a line, exit 130."""
    (tmp_path / "config.yaml").write_text(VALID)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnas", "study", "start", "--config", "config.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    proc.send_signal(2)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the study finished before the signal")
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "interrupted" in err + out


# --- the fuzz test ----------------------------------------------------------------------------

# Keys of the valid config and values of the wrong kind for each.
_TARGETS = [
    ("study", "trials"),
    ("study", "name"),
    ("study", "seed"),
    ("study", "sampler"),
    ("study", "project_dir"),
    ("data", "dataset"),
    ("data", "subset"),
    ("data", "val_fraction"),
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "lr"),
    ("space", "blocks"),
    ("space", "kernels"),
    ("space", "base_filters"),
]
_WRONG_VALUES = [
    "[1, [2, [3]]]",
    "{a: 1}",
    '"ten"',
    "true",
    "~",
    "-1",
    "1.5",
    "1e999",
    "-.inf",
    ".nan",
    "0x7fffffffffffffffffff",
    "9" * 5000,
    "2001-13-45",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    '"\\u202e\\u0000\\x1b[31mred"',
    '"' + "é" * 50000 + '"',
    "[" + ", ".join(["1"] * 20000) + "]",
    "!!python/name:os.system",
    "&x [*x]",
]


def _fuzz_cases() -> list[tuple[str, str]]:
    rng = random.Random(17)
    base = yaml.safe_load(VALID)
    cases: list[tuple[str, str]] = []
    # wrong kinds of value under known keys
    for i in range(24):
        section, key = rng.choice(_TARGETS)
        # A plain string is a fine name or folder: every other value is wrong for every key.
        plain = key in ("name", "project_dir")
        value = rng.choice([v for v in _WRONG_VALUES if not (plain and v == '"ten"')])
        lines = [ln for ln in VALID.splitlines() if ln != f"  {key}: {base[section].get(key)}"]
        head = lines.index(f"{section}:")
        text = "\n".join([*lines[: head + 1], f"  {key}: {value}", *lines[head + 1 :]])
        cases.append((f"value-{i}-{section}.{key}", text + "\n"))
    # duplicate keys at every depth
    cases.append(("dup-top", VALID + "train:\n  epochs: 2\n"))
    cases.append(("dup-nested", VALID.replace("  epochs: 1\n", "  epochs: 1\n  epochs: 1\n")))
    cases.append(("dup-flow", "space: {blocks: [1], blocks: [2]}\n"))
    cases.append(("dup-quoted", 'study:\n  trials: 1\n  "trials": 2\n'))
    # aliases
    cases.append(("alias-bomb", _bomb_config()))
    cases.append(("alias-recursive-map", "study: &s {name: x, other: *s}\n"))
    cases.append(("alias-undefined", "study: *nothing\n"))
    cases.append(
        (
            "alias-wide",
            "a: &a "
            + "["
            + ",".join(["1"] * 200)
            + "]\n"
            + "space:\n  blocks: ["
            + ",".join(["*a"] * 200)
            + "]\n",
        )
    )
    # unicode and control characters in keys and values
    cases.append(("unicode-key", VALID + "trïals: 3\n"))
    cases.append(("rtl-key", 'study:\n  "tri\\u202eals": 3\n'))
    cases.append(("escape-key", 'study:\n  "\\x1b[2J\\nerror: fake": 3\n'))
    cases.append(("newline-value", 'study:\n  sampler: "tpe\\nerror: fake"\n'))
    cases.append(("long-key", "study:\n  " + "k" * 100000 + ": 1\n"))
    cases.append(("emoji-name", 'study:\n  name: "🐍"\n'))
    cases.append(("bom-and-nul", '\ufeffstudy:\n  name: "a\\0b"\n'))
    # huge and deep
    cases.append(("huge-file", "study:\n  name: " + "x" * (2 << 20) + "\n"))
    cases.append(("deep-nesting", "space:\n  blocks: " + "[" * 5000 + "]" * 5000 + "\n"))
    cases.append(("huge-trials", "study:\n  trials: " + "9" * 4000 + "\n"))
    cases.append(("not-utf8", "study:\n  name: \udcff\n"))
    cases.append(("many-documents", VALID + "---\n" + VALID))
    return cases


FUZZ = _fuzz_cases()


def test_the_fuzz_has_enough_cases():
    assert len(FUZZ) >= 30


@pytest.mark.parametrize(("case", "text"), FUZZ, ids=[c for c, _ in FUZZ])
def test_fuzz_malformed_configs_exit_2_with_one_bounded_line_and_create_nothing(
    capsys, workdir, case, text
):
    data = text.encode("utf-8", "surrogateescape")
    start = time.monotonic()
    line = start_bad(capsys, workdir, data)
    assert time.monotonic() - start < 20, case
    assert "Traceback" not in line
    # A value echoed into the message is escaped: no terminal control, no second line.
    assert "\x1b" not in line and "\u202e" not in line and "\x00" not in line


# --- a password is never printed ----------------------------------------------------------------


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _pg_up(), reason="PostgreSQL at 127.0.0.1:5432")
def test_a_study_on_a_database_with_a_password_never_prints_it(tmp_path, monkeypatch, capsys):
    """PostgreSQL here trusts local connections and ignores the password, so a study runs with
    one in its URLs: neither the start line nor status (text or JSON) shows it."""
    import uuid

    import psycopg

    names = [f"cnnas_pw_{uuid.uuid4().hex[:10]}" for _ in range(2)]

    def admin():
        return psycopg.connect(
            host="127.0.0.1", dbname="postgres", user="postgres", autocommit=True
        )

    with admin() as c:
        for name in names:
            c.execute(f"CREATE DATABASE {name}")
    try:
        monkeypatch.chdir(tmp_path)
        optuna_url, mlflow_url = (
            f"postgresql://postgres:hunter2@127.0.0.1:5432/{n}" for n in names
        )
        (tmp_path / "mlflow.yml").write_text(yaml.safe_dump({"tracking_uri": mlflow_url}))
        config = VALID.replace(
            "  sampler: random\n", f"  sampler: random\n  storage: {optuna_url}\n"
        )
        (tmp_path / "config.yaml").write_text(config)
        status = main(["study", "start", "--config", "config.yaml", "--no-report"])
        assert status == 0, capsys.readouterr().err
        assert main(["study", "status", "hostile", "--config", "config.yaml"]) == 0
        assert main(["study", "status", "hostile", "--config", "config.yaml", "--json"]) == 0
        out, err = capsys.readouterr()
        assert "hunter2" not in out + err
        assert "postgres:***@127.0.0.1" in out
    finally:
        with admin() as c:
            for name in names:
                c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_one_database_for_both_stores_is_refused_before_anything(capsys, workdir):
    """Optuna and MLflow each keep their schema version in a table named alembic_version: one
    database cannot hold both (the second store to arrive fails on the first one's)."""
    url = "postgresql://postgres@127.0.0.1:5432/test"
    (workdir / "mlflow.yml").write_text(yaml.safe_dump({"tracking_uri": url + "?sslmode=prefer"}))
    (workdir / "config.yaml").write_text(
        VALID.replace("  sampler: random\n", f"  sampler: random\n  storage: {url}\n")
    )
    status, _, err = cli(capsys, "study", "start", "--config", "config.yaml")
    assert status == 2
    line = assert_one_error_line(err)
    assert "same database" in line and "study.storage" in line and "tracking_uri" in line, line
