"""``cnnas report STUDY``: the study report as a page, a summary, and logged copies of both."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cli_args import add_study_ref
from ._report import DASHBOARD_ARTIFACTS, REPORT_ARTIFACT_DIR, write_report

__all__ = ["add_parsers", "cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    # cli imports this module to register the command; importing cli at the top would be a cycle.
    from .cli import _attach

    run = _attach(args)
    report = write_report(
        run, args.out, complexity=args.complexity, test=not args.no_test, log=not args.no_log
    )
    out = sys.stdout
    print(f"report of study {run.cfg.study.name!r}:", file=out)
    print(f"  page:    {report.html}  ({report.html.stat().st_size / 1e6:.2f} MB)", file=out)
    print(f"  summary: {report.markdown}", file=out)
    if report.interactive is not None:
        print(f"  interactive Pareto plot: {report.interactive}", file=out)
    print(f"  champion: {report.champion_source}", file=out)
    for section, why in report.missing.items():
        print(f"  not shown ({section}): {why}", file=out)
    if report.mlflow_run_id:
        print(
            f"logged to MLflow parent run {report.mlflow_run_id} ({REPORT_ARTIFACT_DIR}/) and to "
            f"optuna-dashboard (the study's note; files in "
            f"{run.project_dir / DASHBOARD_ARTIFACTS})",
            file=out,
        )
    return 0


def add_parsers(sub: Any) -> None:
    """Adds ``report`` to the ``cnnas`` subcommands (``sub``: argparse's subparsers object)."""
    p = sub.add_parser(
        "report",
        help="the study report: one HTML page and a Markdown summary, logged to the parent run",
    )
    add_study_ref(p)  # the same study reference as cnnas pareto / register
    p.add_argument(
        "--out",
        help="folder for report.html, report.md and the PNGs (default: PROJECT/reports/NAME)",
    )
    p.add_argument(
        "--no-test",
        action="store_true",
        help="skip the held-out test evaluation (no test accuracy, no confusion matrix)",
    )
    p.add_argument(
        "--no-log",
        action="store_true",
        help="write the files only: nothing to the MLflow parent run or optuna-dashboard",
    )
    p.set_defaults(func=cmd_report)
