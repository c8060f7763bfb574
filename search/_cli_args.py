"""Command-line options shared by several ``cnnas`` commands (a module of its own so that the
commands defined outside search/cli.py can use them without importing it)."""

from __future__ import annotations

import argparse

__all__ = ["add_study_ref"]


def add_study_ref(p: argparse.ArgumentParser) -> None:
    """The options that name an existing study: cnnas pareto, register, report."""
    p.add_argument("name", help="study name")
    p.add_argument("--config", help="the study's config (default: the one it was started with)")
    p.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    p.add_argument("--data-dir", help="folder of the dataset files")
    p.add_argument(
        "--complexity",
        choices=("params", "macs"),
        help="complexity axis of the front (default: the study's study.complexity)",
    )
