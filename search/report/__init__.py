"""The study report: one self-contained HTML page and a Markdown summary of a study.

Three steps: :func:`collect` gathers what the report says (no files), ``render`` draws the plots
and writes the pages, ``publish`` logs them to the MLflow parent run and to optuna-dashboard.
The page holds the Pareto front (plot and table), the optimisation history, the parameter
importances, the training curves of the front members, the champion's confusion matrix on the
held-out test split, and the budget spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._study import StudyRun
from ._collect import Findings, collect
from ._plots import pareto_plot
from ._publish import DASHBOARD_ARTIFACTS, REPORT_ARTIFACT_DIR, dashboard_artifact_store, publish
from ._render import SECTIONS, md_escape, render

__all__ = [
    "DASHBOARD_ARTIFACTS",
    "REPORT_ARTIFACT_DIR",
    "SECTIONS",
    "Findings",
    "Report",
    "collect",
    "dashboard_artifact_store",
    "md_escape",
    "pareto_plot",
    "write_report",
]


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote and chose."""

    html: Path  # the self-contained page
    markdown: Path  # the summary, linking the PNGs beside it
    images: dict[str, Path]  # section id -> PNG, for the sections that have a plot
    interactive: Path | None  # pareto.html (plotly inlined), None when nothing was trained
    champion: int | None  # trial number whose confusion matrix is shown
    champion_source: str  # how the champion was chosen, in words
    # Section id -> why it has no plot (too few trials, no test evaluation, ...).
    missing: dict[str, str] = field(default_factory=dict)
    # Where the files were logged: MLflow parent run id, and dashboard artifact ids by file name.
    mlflow_run_id: str | None = None
    dashboard_artifacts: dict[str, str] = field(default_factory=dict)


def write_report(
    run: StudyRun,
    out_dir: str | Path | None = None,
    *,
    complexity: str | None = None,
    test: bool = True,
    log: bool = True,
) -> Report:
    """Writes ``report.html`` (self-contained), ``report.md`` and the PNGs into ``out_dir``.

    ``run`` is an opened study (``StudyRun.open``). ``out_dir`` defaults to
    ``<project_dir>/reports/<study>``; ``complexity`` to the study's. ``test`` evaluates the
    front members on the held-out test split and draws the champion's confusion matrix; without
    it both are left out. ``log`` sends the files to the MLflow parent run (``report/``) and to
    optuna-dashboard (the study's note and artifacts). A part that cannot be drawn (importances
    of too few trials, say) says why on the page.
    """
    if run.study is None or run.tracker is None:
        raise ValueError("write_report needs an opened StudyRun (call run.open() first)")
    complexity = complexity or run.cfg.study.complexity
    out = Path(out_dir) if out_dir is not None else run.project_dir / "reports" / run.cfg.study.name
    found = collect(run, complexity, test=test)
    rendered = render(found, out)
    ids = publish(run, rendered) if log else {}
    champ = found.champion
    return Report(
        html=rendered.html,
        markdown=rendered.markdown,
        images=dict(rendered.images),
        interactive=rendered.interactive,
        champion=champ.trial.number if champ else None,
        champion_source=champ.source if champ else "the front is empty",
        missing=dict(found.missing),
        mlflow_run_id=run.parent_run_id if log else None,
        dashboard_artifacts=ids,
    )
