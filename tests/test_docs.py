"""The README is the user's manual: its commands and reference must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from search._config import MlflowConfig, describe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert "cnnas study start --config configs/" in blocks[0]
    assert "torch==2.13.0" in blocks[0] and "dataset-fashion-mnist" in blocks[0]
    assert "pytest" in blocks[1] and "torch==2.13.0" in blocks[1]


def test_configuration_reference_lists_every_key() -> None:
    for key, _, _ in describe():
        assert f"| `{key}` |" in README, f"README's configuration table lacks {key}"
    for key, _, _ in describe(MlflowConfig):
        assert f"| `{key}` |" in README, f"README's mlflow.yml table lacks {key}"


def test_every_preset_named_in_the_readme_exists() -> None:
    for name in re.findall(r"configs/([\w.-]+\.yaml)", README):
        assert (ROOT / "configs" / name).is_file(), name
