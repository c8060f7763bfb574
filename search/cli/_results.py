"""``cnnas pareto``, ``cnnas register`` and ``cnnas report``: a study's result."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from .._final import FinalRun, final_runs, kendall_tau
from .._format import AXIS_NAMES
from .._records import front
from .._registry import register_front, test_accuracy
from .._study import StudyRun
from ._common import attach, emit_json, front_table, out_folder, state_line, trial_json

__all__ = ["cmd_pareto", "cmd_register", "cmd_report", "register"]


def register(run: StudyRun, complexity: str, refit: bool, out: TextIO) -> dict[str, Any]:
    """Registers the front and says which versions the aliases point at."""
    reg = run.cfg.registry
    epochs = (reg.refit_epochs or 2 * run.cfg.train.epochs) if refit else None
    info = register_front(run, reg.rule(), complexity=complexity, refit_epochs=epochs)
    print(f"\nregistered model {info['name']!r}: {len(info['versions'])} version(s)", file=out)
    for alias, (trial, version) in sorted(info["aliases"].items()):
        print(f"  @{alias:<14} version {version:>3}  (trial {trial})", file=out)
    if "champion" in info["aliases"]:
        print(f"pull one: cnnas pull {info['name']}@champion --out ./model", file=out)
    return info


def cmd_pareto(args: argparse.Namespace) -> int:
    from ..report import pareto_plot

    out = out_folder(args.out)  # before attach(), which writes to the study
    run = attach(args)
    recs = run.records()
    top = front(recs, args.complexity)
    tests = {} if args.no_test else {r.number: test_accuracy(run, r) for r in top}
    label = AXIS_NAMES[args.complexity]
    out_dir = out or run.project_dir / "reports" / run.cfg.study.name
    finals = final_runs(run.study)
    png, html = pareto_plot(
        [r for r in recs if r.candidate],
        top,
        args.complexity,
        out_dir,
        f"{run.cfg.study.name}: accuracy vs {label}",
        {n: f.test_acc for n, f in finals.items()},
        {n for n, f in finals.items() if f.reference},
    )
    for path in (png, html):
        run.tracker.client.log_artifact(run.parent_run_id, str(path), "pareto")
    tau = kendall_tau([(f.search_val_acc, f.test_acc) for f in finals.values()])
    if args.json:
        emit_json(
            {
                "study": run.cfg.study.name,
                "complexity": args.complexity,
                "front": [_with_final(trial_json(r, tests.get(r.number)), finals) for r in top],
                # The study.start_from networks the final phase trained (final.references).
                "references": [
                    _with_final(trial_json(r), finals)
                    for r in recs
                    if r.number in finals and finals[r.number].reference
                ],
                "rank_agreement": tau,
                "plot": {"png": png, "html": html},
                "mlflow_parent_run_id": run.parent_run_id,
            }
        )
        return 0
    print(
        f"Pareto front of {run.cfg.study.name!r}: val_acc up, {label} down; "
        f"{len(top)} trial(s); {state_line(recs)}"
    )
    print(front_table(top, tests))
    if finals:
        print("\ntrained again at full fidelity (the registered networks):")
        for f in finals.values():
            role = " (reference: study.start_from)" if f.reference else ""
            print(
                f"  trial {f.trial:>4}: test {f.test_acc:.4f} after {f.epochs} epoch(s) on "
                f"{f.data}; in the search val_acc {f.search_val_acc:.4f}{role}"
            )
        if tau is not None:
            print(f"rank agreement of search and final scores: Kendall's tau {tau:+.2f}")
    print(f"\nplot: {png}\ninteractive: {html}\n(also in the study's MLflow parent run)")
    return 0


def _with_final(row: dict[str, Any], finals: dict[int, FinalRun]) -> dict[str, Any]:
    """A front member's JSON with its full-fidelity figures, null when it was not retrained."""
    f = finals.get(row["number"])
    row["final_test_acc"] = f.test_acc if f else None
    row["final_epochs"] = f.epochs if f else None
    row["final_mlflow_run_id"] = f.run_id if f else None
    return row


def cmd_register(args: argparse.Namespace) -> int:
    run = attach(args)
    register(run, args.complexity, args.refit, sys.stdout)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import DASHBOARD_ARTIFACTS, REPORT_ARTIFACT_DIR, write_report

    out_dir = out_folder(args.out)  # before attach(), which writes to the study
    run = attach(args)
    report = write_report(
        run, out_dir, complexity=args.complexity, test=not args.no_test, log=not args.no_log
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
