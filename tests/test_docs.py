"""The README is the user's manual: its commands and reference must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from cnnas.search._config import MlflowConfig, describe, preset_names

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_readme_starts_with_the_setup_commands() -> None:
    """The first command runs a preset from a checkout, the second the same from the wheel."""
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert "pip install -e . && cnnas study start --preset fashion-mnist-cpu" in blocks[0]
    assert "torch==2.13.0" in blocks[0] and "dataset-fashion-mnist" in blocks[0]
    assert ".whl" in blocks[1] and "cnnas study start --preset fashion-mnist-cpu" in blocks[1]
    assert any("pytest" in b and "torch==2.13.0" in b for b in blocks[:3])


def test_configuration_reference_lists_every_key() -> None:
    for key, _, _ in describe():
        assert f"| `{key}` |" in README, f"README's configuration table lacks {key}"
    for key, _, _ in describe(MlflowConfig):
        assert f"| `{key}` |" in README, f"README's mlflow.yml table lacks {key}"


def test_every_preset_named_in_the_readme_exists() -> None:
    # Study presets have a dash in their names; the experiments have their own (small, full).
    named = set(re.findall(r"--preset ([a-z0-9]+-[\w-]+)", README))
    assert "fashion-mnist-cpu" in named
    assert named <= set(preset_names()), named - set(preset_names())
