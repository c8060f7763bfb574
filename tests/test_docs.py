"""The README and the docs site are the user's manual: their commands and reference must match
the code, and the site must build without a warning."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cnnas.search._config import MlflowConfig, StudyConfig, describe, preset_names
from cnnas.search.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(b for b in bash_blocks(README) if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_readme_starts_with_the_setup_commands() -> None:
    """The first command runs a preset from a checkout, the second the same from the wheel."""
    blocks = bash_blocks(README)
    assert "pip install -e . && cnnas study start --preset fashion-mnist-cpu" in blocks[0]
    assert "torch==2.13.0" in blocks[0] and "dataset-fashion-mnist" in blocks[0]
    assert ".whl" in blocks[1] and "cnnas study start --preset fashion-mnist-cpu" in blocks[1]
    assert any("pytest" in b and "torch==2.13.0" in b for b in blocks[:3])


def test_the_readme_is_a_landing_page() -> None:
    assert len(README.splitlines()) <= 170
    for page in DOCS:
        if page not in ("index.md",):
            assert f"docs/{page}" in README, f"the README does not link docs/{page}"


@pytest.mark.parametrize("cls", [StudyConfig, MlflowConfig], ids=["study", "mlflow"])
def test_every_config_key_is_documented(cls) -> None:
    """The configuration page is generated from these docs: a key without one fails here."""
    undocumented = [key for key, _, doc in describe(cls) if not doc.strip()]
    assert not undocumented, undocumented


def test_every_preset_named_in_the_docs_exists() -> None:
    # Study presets have a dash in their names; the experiments have their own (small, full).
    named = set()
    for text in (README, *DOCS.values()):
        named |= set(re.findall(r"--preset ([a-z0-9]+-[\w-]+)", text))
    assert "fashion-mnist-cpu" in named
    assert named <= set(preset_names()), named - set(preset_names())


def documented_commands() -> list[str]:
    """Every ``cnnas ...`` line of a bash block in the README and the docs."""
    lines = []
    for text in (README, *DOCS.values()):
        for block in bash_blocks(text):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.strip()
                if line.startswith("cnnas "):
                    # up to a comment, a redirection or a pipe
                    lines.append(re.split(r"\s+(?:#|>|\|)", line)[0])
    return sorted(set(lines))


@pytest.mark.parametrize("command", documented_commands())
def test_every_documented_command_parses(command: str) -> None:
    build_parser().parse_args(shlex.split(command)[1:])  # argparse exits 2 on a wrong option


def test_the_docs_site_builds_strictly(tmp_path) -> None:
    """Broken links, unknown anchors and pages missing from the navigation fail the build."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "configuration" / "index.html").is_file()
    page = (tmp_path / "configuration" / "index.html").read_text()
    for key, _, _ in describe():
        assert f"<code>{key}</code>" in page, key
