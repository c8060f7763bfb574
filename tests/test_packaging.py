"""cnnas as an installed package: one ``cnnas`` namespace that a user's own ``models`` or
``search`` cannot shadow, a command line whose help loads nothing heavy, shell completion, and
the presets and constants the parser names without importing them."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnnas
from cnnas.search._config import COMPLEXITY, preset_names
from cnnas.search.cli._parser import COMPLEXITY_CHOICES, PRESET_NAMES

HEAVY = ("torch", "mlflow", "pytorch_lightning", "optuna")


def python(
    code: str, *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_version_is_the_installed_distributions() -> None:
    assert cnnas.__version__ == importlib.metadata.version("cnnas")


def test_the_parsers_constants_match_the_code() -> None:
    assert set(PRESET_NAMES) == set(preset_names())
    assert tuple(COMPLEXITY_CHOICES) == tuple(COMPLEXITY)


@pytest.mark.parametrize(
    "argv", [["--help"], ["study", "start", "--help"], ["pareto", "--help"], ["--version"]]
)
def test_help_and_version_import_nothing_heavy(argv, tmp_path) -> None:
    code = (
        "import sys\n"
        "from cnnas.search.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_import_cnnas_loads_nothing_heavy(tmp_path) -> None:
    done = python(
        f"import sys, cnnas, cnnas.search; print(sorted(m for m in {HEAVY!r} if m in sys.modules))",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def shadowing(tmp_path) -> Path:
    """A user's project with the generic names cnnas must not take or be taken by."""
    (tmp_path / "models.py").write_text("raise ImportError('the user\\'s own models.py')\n")
    (tmp_path / "search.py").write_text("raise ImportError('the user\\'s own search.py')\n")
    pkg = tmp_path / "objectives"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("AGGREGATIONS = 'the user\\'s own'\n")
    return tmp_path


def test_a_users_models_and_search_change_nothing_for_cnnas(shadowing) -> None:
    code = (
        "import cnnas, cnnas.models, cnnas.objectives, cnnas.search\n"
        "from cnnas.models import AGGREGATIONS, ArchSpec\n"
        "from cnnas.search import load, load_preset\n"
        "import objectives\n"
        'assert objectives.AGGREGATIONS == "the user\'s own", objectives.AGGREGATIONS\n'
        "assert 'gap' in AGGREGATIONS\n"
        "assert load_preset('digits-quick').study.name == 'digits-quick'\n"
        "print(cnnas.models.__name__, cnnas.__version__)\n"
    )
    done = python(code, cwd=shadowing, env={"PYTHONPATH": str(shadowing)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "cnnas.models"


def test_the_cli_starts_beside_a_users_models(shadowing) -> None:
    env = {**os.environ, "PYTHONPATH": str(shadowing)}
    for argv in (["--version"], ["--help"], ["config", "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "cnnas", *argv],
            cwd=shadowing,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (argv, done.stderr)
    assert "digits-quick" in done.stdout


def test_python_dash_m_cnnas_is_the_cli(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cnnas", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == f"cnnas {cnnas.__version__}"


def test_shell_completion_offers_commands_options_and_presets(tmp_path) -> None:
    out = tmp_path / "completions.txt"

    def complete(line: str) -> list[str]:
        env = {
            **os.environ,
            "_ARGCOMPLETE": "1",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_IFS": "\n",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        }
        done = subprocess.run(
            [sys.executable, "-m", "cnnas"], cwd=tmp_path, env=env, capture_output=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return out.read_text().split()

    assert "study" in complete("cnnas stu")
    assert "--preset" in complete("cnnas study start --pre")
    assert set(complete("cnnas study start --preset fashion")) == {
        "fashion-mnist-cpu",
        "fashion-mnist-gpu",
    }


def test_config_show_writes_a_preset_that_reads_back(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cnnas", "config", "show", "--preset", "fashion-mnist-cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (tmp_path / "mine.yaml").write_text(done.stdout)
    from cnnas.search import load_config, load_preset

    assert load_config(tmp_path / "mine.yaml") == load_preset("fashion-mnist-cpu")
    assert "# Training epochs per trial." in done.stdout  # every key carries its documentation


def test_config_and_preset_together_are_refused(tmp_path, capsys) -> None:
    from cnnas.search.cli import main

    assert main(["study", "start", "--preset", "digits-quick", "--config", "x.yaml"]) == 2
    assert "--config and --preset" in capsys.readouterr().err
    assert main(["study", "start", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "digits-quick" in err
    assert not list(tmp_path.iterdir())


def test_json_outputs_are_documented(tmp_path) -> None:
    """Every --json command has its example in the docs, and the example parses."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "scripting.md").read_text()
    for command in ("study status", "pareto", "evaluate", "predict"):
        marker = f"<!-- json: {command} -->"
        assert marker in readme, f"docs/scripting.md lacks the --json example of cnnas {command}"
        block = readme.split(marker, 1)[1].split("```json\n", 1)[1].split("\n```", 1)[0]
        json.loads(block)
