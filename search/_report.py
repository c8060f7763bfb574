"""The study report: one self-contained HTML page and a Markdown summary of a finished study.

The page holds the Pareto front (plot and table), the optimisation history, the parameter
importances, the training curves of the front members, the champion's confusion matrix on the
held-out test split, and the budget spent. Every plot is a matplotlib PNG embedded as a base64
data URI, so the page opens from disk without a network; an inline plotly page would carry
plotly.js (4.8 MB) with it. The interactive Pareto plot (``pareto.html``) is written beside it.

History and importances are Optuna's own plots (``optuna.visualization.matplotlib``); the curves
come from the per-epoch metrics MLflow recorded in each trial's run. Everything is logged to the
study's MLflow parent run under ``report/`` and to optuna-dashboard: the Markdown as the study's
note, the PNGs and the page as study artifacts in a file store in the project folder.
"""

from __future__ import annotations

import base64
import html
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from models import ModelFileError, load_model

from ._aliases import assign_aliases
from ._plots import pareto_plot
from ._registry import (
    MODEL_ARTIFACT,
    _download_model,
    _member,
    confusion_matrix,
    front_trials,
    registered_model_name,
    test_accuracy,
)
from ._study import FINISHED, StudyRun, state_counts, trial_spec

__all__ = [
    "DASHBOARD_ARTIFACTS",
    "REPORT_ARTIFACT_DIR",
    "Report",
    "dashboard_artifact_store",
    "write_report",
]

# Folder of the MLflow parent run that receives the report's files.
REPORT_ARTIFACT_DIR = "report"
# Folder in the project directory where optuna-dashboard's artifact store keeps its files.
DASHBOARD_ARTIFACTS = "dashboard-artifacts"

# Section ids of the page, in order, with their headings. Tests and links rely on the ids.
SECTIONS = {
    "budget": "Budget spent",
    "pareto": "Pareto front",
    "front": "Front members",
    "history": "Optimisation history",
    "importances": "Parameter importances",
    "curves": "Training curves of the front members",
    "confusion": "Confusion matrix of the champion",
}

_DPI = 100


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


# --- small helpers -------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _num(value: Any, fmt: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return format(v, fmt) if math.isfinite(v) else "–"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _trained(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials that were trained (or repeat a trained one): not rejected by budget."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "val_acc" in t.user_attrs and "infeasible" not in t.user_attrs
    ]


def _wall_seconds(t: FrozenTrial) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return max((t.datetime_complete - t.datetime_start).total_seconds(), 0.0)


def _device_name(value: str) -> str:
    """'CPU' or 'GPU (<model>)' from a recorded device: 'cpu', 'cuda:0', 'gpu' or a GPU's name."""
    v = value.strip()
    if v.lower().startswith("cpu"):
        return "CPU"
    if v.lower().startswith(("cuda", "gpu")):
        return "GPU"
    return f"GPU ({v})"


def _device_of(t: FrozenTrial, configured: str) -> str:
    """Where a trial ran: its recorded ``device`` attribute, else the configured accelerator."""
    recorded = t.user_attrs.get("device")
    if recorded:
        return _device_name(str(recorded))
    if configured in ("cpu", "gpu"):
        return configured.upper()
    return f"not recorded (train.accelerator: {configured})"


# --- the parts ------------------------------------------------------------------------------------


@dataclass
class _Budget:
    counts: dict[str, int]
    rows: list[tuple[str, int, float, float]]  # device, trials, wall seconds, training seconds
    span: float  # first trial start to last trial end, seconds
    total_trials: int  # the study's configured total


def _budget(run: StudyRun) -> _Budget:
    study = run.study
    counts = {k.removeprefix("trials_"): int(v) for k, v in state_counts(study).items()}
    configured = run.cfg.train.accelerator
    by_device: dict[str, list[float]] = {}
    starts, ends = [], []
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        row = by_device.setdefault(_device_of(t, configured), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += _wall_seconds(t)
        a = t.user_attrs
        # A repeat copies its twin's seconds without training: only real fits count.
        if "duplicate_of" not in a and "infeasible" not in a:
            if "seconds" in a:
                row[2] += float(a["seconds"])
            else:  # pruned or failed mid-fit: the epochs it did run
                row[2] += float(sum(a.get("curves", {}).get("epoch_seconds", [])))
        if t.datetime_start:
            starts.append(t.datetime_start)
        if t.datetime_complete:
            ends.append(t.datetime_complete)
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    rows = [(d, int(r[0]), r[1], r[2]) for d, r in sorted(by_device.items())]
    return _Budget(counts, rows, span, run.cfg.study.trials)


@dataclass
class _Champion:
    trial: FrozenTrial
    run_id: str  # the MLflow run holding the weights to evaluate
    source: str


def _champion(
    run: StudyRun, front: Sequence[FrozenTrial], aliases: dict[str, Any]
) -> _Champion | None:
    """The registered @champion of this study, else the front member the champion rule picks."""
    if not front:
        return None
    by_number = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    name = registered_model_name(run.mlflow_cfg.registered_model, run.cfg.study.name)
    try:
        version = run.tracker.client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        version = None
    if version is not None and version.tags.get("cnnas.study") == run.cfg.study.name:
        number = int(version.tags.get("cnnas.trial", -1))
        if number in by_number:
            refit = version.tags.get("cnnas.refit") == "1"
            return _Champion(
                by_number[number],
                version.run_id,
                f"registered model {name!r} @champion: version {version.version} "
                f"(trial {number}{', retrained on train + validation' if refit else ''})",
            )
    rule = run.cfg.registry.rule()
    described = f"champion rule {rule.rule!r} (registry.champion)"
    chosen = aliases.get("champion")
    if chosen is None:
        chosen = aliases["most-accurate"]
        source = (
            f"no front member meets the {described}; showing the most accurate member, "
            f"trial {chosen.trial} (nothing registered yet)"
        )
    else:
        source = f"trial {chosen.trial}, picked by the {described}; not registered yet"
    trial = by_number[chosen.trial]
    return _Champion(trial, trial.user_attrs["mlflow_run_id"], source)


def _accuracy_study(study: optuna.Study) -> optuna.Study:
    """An in-memory single-objective copy of ``study``: validation accuracy of trained trials.

    Every other trial (budget-rejected, pruned, failed) becomes a FAIL placeholder, so trial
    numbers stay those of the study while Optuna's plots skip them: an infeasible trial's
    accuracy 0 is a marker, not a measurement.
    """
    copy = optuna.create_study(direction="maximize", study_name=study.study_name)
    trained = {t.number for t in _trained(study)}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.number in trained:
            copy.add_trial(
                optuna.trial.create_trial(
                    params=t.params,
                    distributions=t.distributions,
                    value=float(t.user_attrs["val_acc"]),
                    user_attrs=t.user_attrs,
                )
            )
        else:
            copy.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    return copy


def _history_plot(study: optuna.Study, path: Path) -> Path:
    """Optuna's optimisation history of validation accuracy, with the best so far."""
    # Optuna's matplotlib plots switch the global style to ggplot; keep that to this figure.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(
            _accuracy_study(study), target_name="validation accuracy"
        )
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        ax.set_title(f"{study.study_name}: validation accuracy by trial")
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _save(fig, path)


def _importances(study: optuna.Study, complexity: str) -> dict[str, dict[str, float]]:
    """Optuna's fANOVA importances of the search parameters for accuracy and for size.

    fANOVA measures the share of a target's variance a parameter explains, whichever way the
    target points; Optuna's default (PED-ANOVA) reads a target as "lower is better", which would
    rank parameters by how they lower accuracy. Size is taken as log10: one model 10x larger
    than another is one step at any scale. Seeded: the same study gives the same numbers.
    """
    copy = _accuracy_study(study)
    trained = copy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    distinct = {tuple(sorted(t.params.items())) for t in trained}
    if len(trained) < 2 or len(distinct) < 2:
        raise ValueError(
            f"{len(trained)} trained trial(s) with {len(distinct)} distinct parameter set(s); "
            "importances need at least two that differ"
        )
    targets = {
        "val_acc": lambda t: t.value,
        f"log10 {complexity}": lambda t: math.log10(max(float(t.user_attrs[complexity]), 1.0)),
    }
    return {
        name: optuna.importance.get_param_importances(
            copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=target
        )
        for name, target in targets.items()
    }


def _importance_plot(importances: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    """Grouped bars, one group per parameter, ordered by its importance for accuracy.

    Drawn here rather than by optuna.visualization.matplotlib.plot_param_importances: with
    several targets Optuna 5 sorts each target's bars by its own order but labels them all
    with the last one's, so bars end up next to the wrong parameter names.
    """
    names = list(importances)
    params = sorted(importances[names[0]], key=lambda p: importances[names[0]][p])
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.4 * len(params) + 1.5)))
    colors = ("#2a6f97", "#d1495b", "#8ab17d")
    for i, name in enumerate(names):
        pos = [k + (len(names) - 1 - i) * height for k in range(len(params))]
        values = [importances[name].get(p, 0.0) for p in params]
        ax.barh(pos, values, height=height, color=colors[i % len(colors)], label=name)
        for y, v in zip(pos, values, strict=True):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
    ax.set_yticks([k + height * (len(names) - 1) / 2 for k in range(len(params))], params)
    ax.set_xlabel("importance (fANOVA: share of the variance explained)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_xlim(0, max(max(v.values(), default=0) for v in importances.values()) * 1.15 or 1)
    return _save(fig, path)


def _curves(run: StudyRun, t: FrozenTrial) -> dict[str, list[float]]:
    """The per-epoch values MLflow recorded in the trial's run, else the trial's own copy."""
    out: dict[str, list[float]] = {}
    run_id = t.user_attrs.get("mlflow_run_id")
    client = run.tracker.client
    for key in ("val_acc", "train_loss", "val_loss"):
        try:
            history = client.get_metric_history(run_id, key) if run_id else []
        except MlflowException:
            history = []
        if history:
            out[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
        elif key in t.user_attrs.get("curves", {}):
            out[key] = list(t.user_attrs["curves"][key])
    return out


def _curves_plot(run: StudyRun, front: Sequence[FrozenTrial], complexity: str, path: Path) -> Path:
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, t in enumerate(front):
        c = _curves(run, t)
        color = cmap(i / max(len(front) - 1, 1))
        label = f"trial {t.number} ({_human(t.user_attrs.get(complexity, 0))})"
        if "val_acc" in c:
            epochs = range(1, len(c["val_acc"]) + 1)
            acc_ax.plot(epochs, c["val_acc"], "-o", ms=3, color=color, label=label)
        if "train_loss" in c:
            epochs = range(1, len(c["train_loss"]) + 1)
            loss_ax.plot(epochs, c["train_loss"], "-", color=color, label=f"{label} train")
        if "val_loss" in c:
            epochs = range(1, len(c["val_loss"]) + 1)
            loss_ax.plot(epochs, c["val_loss"], "--", color=color)
    acc_ax.set_title("validation accuracy")
    loss_ax.set_title("loss (solid: train, dashed: validation)")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _confusion(run: StudyRun, champ: _Champion) -> tuple[float, torch.Tensor]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(_download_model(run.tracker.client, champ.run_id, Path(tmp)))
    data = run.data
    return confusion_matrix(model, data.test_x, data.test_y, data.mean, data.std, data.num_classes)


def _confusion_plot(matrix: torch.Tensor, classes: Sequence[str], title: str, path: Path) -> Path:
    n = len(classes)
    size = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    m = matrix.numpy()
    ax.imshow(m, cmap="Blues")
    top = m.max() if m.size else 0
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7 if n > 10 else 8,
                    color="white" if m[i, j] > top / 2 else "black",
                )
    names = [str(c)[:12] for c in classes]
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


# --- the documents --------------------------------------------------------------------------------


@dataclass
class _Content:
    """Everything both documents say, computed once."""

    title: str
    generated: str
    facts: list[tuple[str, str]]
    budget: _Budget
    complexity: str
    front: list[FrozenTrial]
    tests: dict[int, float]
    trial_aliases: dict[int, list[str]]
    champion: _Champion | None
    champion_acc: float | None
    importances: dict[str, dict[str, float]]
    images: dict[str, Path]
    missing: dict[str, str]
    interactive: Path | None
    notes: dict[str, str]  # section id -> a sentence under the heading


def _front_rows(c: _Content) -> tuple[list[str], list[list[str]]]:
    tested = bool(c.tests)
    head = ["trial", "val_acc", *(["test_acc"] if tested else []), "train_acc", "params", "MACs"]
    head += ["ratio", "secs", "aliases", "architecture"]
    rows = []
    for t in c.front:
        a = t.user_attrs
        spec = trial_spec(t)
        rows.append(
            [
                str(t.number),
                _num(a.get("val_acc"), ".4f"),
                *([_num(c.tests.get(t.number), ".4f")] if tested else []),
                _num(a.get("train_acc"), ".4f"),
                _human(a.get("params", 0)),
                _human(a.get("macs", 0)),
                _num(a.get("ratio"), ".3e"),
                _num(a.get("seconds"), ".1f"),
                ", ".join(c.trial_aliases.get(t.number, [])),
                spec.summary() if spec else "?",
            ]
        )
    return head, rows


def _count_rows(b: _Budget) -> list[tuple[str, int]]:
    c = b.counts
    return [
        ("complete", c.get("complete", 0)),
        ("  of which infeasible (over budget, not trained)", c.get("infeasible", 0)),
        ("  of which duplicates (result of an earlier trial)", c.get("duplicate", 0)),
        ("pruned", c.get("pruned", 0)),
        ("failed", c.get("fail", 0)),
        ("running (unfinished)", c.get("running", 0)),
    ]


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |"

    return "\n".join([line(head), line(["---"] * len(head)), *(line(r) for r in rows)])


def _markdown(c: _Content, image_url: Callable[[str], str | None]) -> str:
    """The summary; ``image_url(section)`` gives the link of a section's PNG (None: no link)."""
    out = [f"# {c.title}", "", f"Generated {c.generated}.", ""]
    out += [f"- **{k}:** {v}" for k, v in c.facts]
    b = c.budget
    out += ["", f"## {SECTIONS['budget']}", ""]
    out.append(
        f"{sum(n for _, n, _, _ in b.rows)} of {b.total_trials} trials finished "
        f"in {_duration(b.span)} from the first start to the last end."
    )
    out += ["", _md_table(["trials", "count"], [(k.strip(), str(v)) for k, v in _count_rows(b)])]
    out += [
        "",
        _md_table(
            ["device", "trials", "trial time", "training time"],
            [(d, str(n), _duration(w), _duration(s)) for d, n, w, s in b.rows],
        ),
    ]
    for section in ("pareto", "front", "history", "importances", "curves", "confusion"):
        out += ["", f"## {SECTIONS[section]}", ""]
        if section in c.notes:
            out += [c.notes[section], ""]
        if section == "front":
            if c.front:
                out.append(_md_table(*_front_rows(c)))
            else:
                out.append("No trained trial yet: the front is empty.")
            continue
        url = image_url(section)
        if section in c.images and url:
            out.append(f"![{SECTIONS[section]}]({url})")
        elif section in c.missing:
            out.append(f"*Not shown: {c.missing[section]}*")
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top;
white-space:nowrap}th{background:#f4f5f7}td.l,th.l{text-align:left}td.l{white-space:normal}
img{max-width:100%;height:auto;border:1px solid #eee}
.missing{color:#8a5a00;background:#fff7e6;padding:.4rem .6rem;border-left:3px solid #e0a100}
.note{color:#555}nav a{margin-right:.8rem}code{background:#f4f5f7;padding:0 .2rem}
"""


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> str:
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(
            f"<{tag}{' class=l' if i in left else ''}>{html.escape(str(v))}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html(c: _Content) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(c.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(c.title)}</h1>",
        f'<p class="note">Generated {e(c.generated)}.</p>',
        "<nav>" + "".join(f'<a href="#{k}">{e(v)}</a>' for k, v in SECTIONS.items()) + "</nav>",
        "<ul>" + "".join(f"<li><b>{e(k)}:</b> {e(v)}</li>" for k, v in c.facts) + "</ul>",
    ]
    b = c.budget
    parts.append(f'<section id="budget"><h2>{e(SECTIONS["budget"])}</h2>')
    parts.append(
        f"<p>{sum(n for _, n, _, _ in b.rows)} of {b.total_trials} trials finished in "
        f"{e(_duration(b.span))} from the first start to the last end. Trial time is each "
        "trial's wall clock (training, evaluation, logging); training time is the fits alone, "
        "repeats and budget-rejected trials counting nothing.</p>"
    )
    parts.append(_html_table(["trials", "count"], [(k, str(v)) for k, v in _count_rows(b)], {0}))
    parts.append(
        _html_table(
            ["device", "trials", "trial time", "training time"],
            [(d, str(n), _duration(w), _duration(s)) for d, n, w, s in b.rows],
            {0},
        )
    )
    parts.append("</section>")
    for section in ("pareto", "front", "history", "importances", "curves", "confusion"):
        parts.append(f'<section id="{section}"><h2>{e(SECTIONS[section])}</h2>')
        if section in c.notes:
            parts.append(f"<p>{e(c.notes[section])}</p>")
        if section == "front":
            if c.front:
                head, rows = _front_rows(c)
                parts.append(_html_table(head, rows, {len(head) - 2, len(head) - 1}))
            else:
                parts.append('<p class="missing">No trained trial yet: the front is empty.</p>')
        elif section in c.images:
            parts.append(
                f'<img id="{section}-plot" alt="{e(SECTIONS[section])}" '
                f'src="{_data_uri(c.images[section])}">'
            )
        elif section in c.missing:
            parts.append(f'<p class="missing">Not shown: {e(c.missing[section])}</p>')
        if section == "pareto" and c.interactive is not None:
            parts.append(
                f'<p class="note">Interactive version (hover for architectures): '
                f'<a href="{e(c.interactive.name)}">{e(c.interactive.name)}</a>, beside this '
                "page.</p>"
            )
        if section == "importances" and c.importances:
            names = list(c.importances)
            params = list(next(iter(c.importances.values())))
            rows = [[p] + [_num(c.importances[n].get(p), ".3f") for n in names] for p in params]
            parts.append(_html_table(["parameter", *names], rows, {0}))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- logging --------------------------------------------------------------------------------------


def dashboard_artifact_store(project_dir: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    """The artifact store optuna-dashboard must be started with to show the report's files."""
    path = Path(project_dir) / DASHBOARD_ARTIFACTS
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def _upload_to_dashboard(
    study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore, files: Sequence[Path]
) -> dict[str, str]:
    """Study artifacts by file name. A file uploaded before is overwritten in place, so running
    the report again neither piles up copies nor breaks the links in an earlier note."""
    existing = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}
    ids = {}
    for path in files:
        if path.name in existing:
            with path.open("rb") as f:
                store.write(existing[path.name], f)
            ids[path.name] = existing[path.name]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ids[path.name] = optuna.artifacts.upload_artifact(
                    artifact_store=store, file_path=str(path), study_or_trial=study
                )
    return ids


# --- the entry point ------------------------------------------------------------------------------


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
    front members on the held-out test split (recorded once, as ``cnnas pareto`` does) and draws
    the champion's confusion matrix; without it both are left out. ``log`` sends the files to the
    MLflow parent run (``report/``) and to optuna-dashboard (the study's note and artifacts).
    A part that cannot be drawn (importances of too few trials, say) says why on the page.
    """
    if run.study is None or run.tracker is None:
        raise ValueError("write_report needs an opened StudyRun (call run.open() first)")
    study, cfg = run.study, run.cfg
    complexity = complexity or cfg.study.complexity
    out = Path(out_dir) if out_dir is not None else run.project_dir / "reports" / cfg.study.name
    out.mkdir(parents=True, exist_ok=True)

    trained = _trained(study)
    front = front_trials(study, complexity)
    tests = {t.number: test_accuracy(run, t) for t in front} if test else {}
    members = [_member(t) for t in front]
    aliases = assign_aliases(members, cfg.registry.rule(), complexity) if members else {}
    trial_aliases: dict[int, list[str]] = {}
    for alias, m in sorted(aliases.items()):
        trial_aliases.setdefault(m.trial, []).append(alias)

    images: dict[str, Path] = {}
    missing: dict[str, str] = {}
    notes: dict[str, str] = {}
    label = "parameters" if complexity == "params" else "MACs"
    interactive = None
    if trained:
        png, interactive = pareto_plot(
            [t for t in trained if "duplicate_of" not in t.user_attrs],
            front,
            complexity,
            out,
            f"{cfg.study.name}: validation accuracy vs {label}",
        )
        images["pareto"] = png
        notes["pareto"] = (
            f"Every trained trial (grey) and the front (red): validation accuracy against "
            f"{label}, log scale. {len(front)} trial(s) on the front."
        )
        images["history"] = _history_plot(study, out / "history.png")
        notes["history"] = (
            "Optuna's optimisation history of validation accuracy over the trained trials "
            "(budget-rejected trials left out)."
        )
    else:
        for section in ("pareto", "history"):
            missing[section] = "no trial has been trained yet"

    importances: dict[str, dict[str, float]] = {}
    try:
        importances = _importances(study, complexity)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        missing["importances"] = f"parameter importances cannot be computed: {e}"
    else:
        images["importances"] = _importance_plot(
            importances,
            f"{cfg.study.name}: what decides accuracy and size",
            out / "importances.png",
        )
        notes["importances"] = (
            "Optuna's parameter importances (fANOVA) over the trained trials: the share of the "
            f"variation in validation accuracy and in log10 {complexity} each search parameter "
            "explains."
        )

    if front:
        images["curves"] = _curves_plot(run, front, complexity, out / "curves.png")
        notes["curves"] = "Per-epoch values recorded in each front member's MLflow run."
    else:
        missing["curves"] = "the front is empty"

    champ = _champion(run, front, aliases)
    champ_acc = None
    if champ is None:
        missing["confusion"] = "the front is empty"
    elif not test:
        missing["confusion"] = "the held-out test evaluation was skipped (--no-test)"
    else:
        try:
            champ_acc, matrix = _confusion(run, champ)
        except (MlflowException, OSError, ModelFileError) as e:
            missing["confusion"] = (
                f"the weights of trial {champ.trial.number} cannot be loaded from run "
                f"{champ.run_id}/{MODEL_ARTIFACT}: {str(e).splitlines()[0]}"
            )
        else:
            images["confusion"] = _confusion_plot(
                matrix,
                run.data.classes,
                f"trial {champ.trial.number}: test accuracy {champ_acc:.4f} "
                f"({len(run.data.test_y)} images)",
                out / "confusion.png",
            )
            notes["confusion"] = (
                f"Champion: {champ.source}. Held-out test split, {len(run.data.test_y)} images "
                f"never seen by the search; accuracy {champ_acc:.4f}. Rows: true class; "
                "columns: predicted."
            )

    data = run.data
    title = f"cnnas study report: {cfg.study.name}"
    facts = [
        (
            "dataset",
            f"{data.name} {tuple(data.input_shape)}, {data.num_classes} classes; "
            f"{len(data.train_y)} train / {len(data.val_y)} validation / {len(data.test_y)} test",
        ),
        (
            "objectives",
            " and ".join(
                f"{n} ({d.name.lower()})"
                for n, d in zip(
                    study.metric_names or ["val_acc", complexity], study.directions, strict=False
                )
            ),
        ),
        ("sampler", f"{cfg.study.sampler}, seed {cfg.study.seed}"),
        (
            "training",
            f"{cfg.train.epochs} epoch(s), batch {cfg.train.batch_size}, "
            f"accelerator {cfg.train.accelerator}",
        ),
        ("MLflow parent run", f"{run.parent_run_id} ({run.tracker.uri})"),
    ]
    if champ is not None:
        facts.append(("champion", champ.source))
    content = _Content(
        title=title,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        facts=facts,
        budget=_budget(run),
        complexity=complexity,
        front=front,
        tests=tests,
        trial_aliases=trial_aliases,
        champion=champ,
        champion_acc=champ_acc,
        importances=importances,
        images=images,
        missing=missing,
        interactive=interactive,
        notes=notes,
    )

    html_path = out / "report.html"
    html_path.write_text(_html(content), encoding="utf-8")
    md_path = out / "report.md"
    md_path.write_text(
        _markdown(content, lambda s: images[s].name if s in images else None), encoding="utf-8"
    )

    dashboard_ids: dict[str, str] = {}
    if log:
        files = [html_path, md_path, *images.values()]
        client = run.tracker.client
        for path in [*files, *([interactive] if interactive else [])]:
            client.log_artifact(run.parent_run_id, str(path), REPORT_ARTIFACT_DIR)
        store = dashboard_artifact_store(run.project_dir)
        dashboard_ids = _upload_to_dashboard(study, store, [*images.values(), html_path])
        study_id = study._study_id

        def dashboard_url(section: str) -> str | None:
            if section not in images:
                return None
            return f"/artifacts/{study_id}/{dashboard_ids[images[section].name]}"

        optuna_dashboard_note(study, _markdown(content, dashboard_url))

    return Report(
        html=html_path,
        markdown=md_path,
        images=dict(images),
        interactive=interactive,
        champion=champ.trial.number if champ else None,
        champion_source=champ.source if champ else "the front is empty",
        missing=dict(missing),
        mlflow_run_id=run.parent_run_id if log else None,
        dashboard_artifacts=dashboard_ids,
    )


def optuna_dashboard_note(study: optuna.Study, markdown: str) -> None:
    """Makes ``markdown`` the study's note in optuna-dashboard (a new version of it)."""
    import optuna_dashboard

    optuna_dashboard.save_note(study, markdown)
