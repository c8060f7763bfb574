"""What every experiment shares: training one spec with per-epoch test scores, MLflow runs,
tables and plots.

An experiment trains a handful of fixed architectures (no sampler), so the pieces here are thin
wrappers around ``objectives.fit`` and ``search.Tracker``: one parent run per invocation in the
experiment's own MLflow experiment, one child run per trained model.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from cnnas.models import ArchSpec, count_macs, count_params
from cnnas.objectives import ImageData, Predictor, TrainConfig, TrialResult, fit

from .._config import MlflowConfig, load_mlflow_config
from .._tracking import Tracker

__all__ = [
    "Column",
    "EpochRecorder",
    "ExperimentLog",
    "ModelQueue",
    "ModelRun",
    "markdown_head",
    "markdown_row",
    "plot_curves",
    "publish_report",
    "scored_test_set",
    "start_log",
    "train_model",
    "write_table",
]


@dataclass(frozen=True)
class ModelRun:
    """One trained model of an experiment: its spec, its fit result and its test scores."""

    name: str
    spec: ArchSpec
    result: TrialResult
    # Loss and accuracy on the test split after the last epoch (the per-epoch values are in
    # ``result.curves['test_loss']`` / ``['test_acc']``).
    test_loss: float
    test_acc: float
    # Free-form labels the experiment attaches (factor, value, seed, fraction, ...).
    labels: Mapping[str, Any] = field(default_factory=dict)


class EpochRecorder(pl.Callback):
    """Scores the network on held-out images after every epoch and prints one progress line.

    ``objectives.fit`` records train and validation curves; seed 003's "Summary" figures plot
    train and *test* loss and accuracy per epoch, so this callback adds the test ones without
    touching the training loop. It runs after the epoch's validation, so the epoch is complete.
    """

    def __init__(
        self,
        name: str,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        epochs: int,
        out: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.name, self.x, self.y, self.mean, self.std = name, x, y, mean, std
        self.epochs, self.out = epochs, out
        self.loss: list[float] = []
        self.acc: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        was_training = net.training
        loss, acc = Predictor(net, self.mean, self.std).evaluate(self.x, self.y)
        net.train(was_training)
        self.loss.append(loss)
        self.acc.append(acc)
        if self.out is not None:
            c = pl_module.curves
            print(
                f"    {self.name:<28} epoch {len(self.acc):>3}/{self.epochs}  "
                f"train_loss {c['train_loss'][-1]:.4f}  train_acc {c['train_acc'][-1]:.4f}  "
                f"val_acc {c['val_acc'][-1]:.4f}  test_loss {loss:.4f}  test_acc {acc:.4f}  "
                f"({c['epoch_seconds'][-1]:.1f}s)",
                file=self.out,
                flush=True,
            )


def train_model(
    name: str,
    spec: ArchSpec,
    data: ImageData,
    cfg: TrainConfig,
    *,
    seed: int | None = None,
    test_limit: int | None = None,
    labels: Mapping[str, Any] | None = None,
    out: TextIO | None = sys.stdout,
) -> ModelRun:
    """Trains ``spec`` with ``objectives.fit`` and scores it on the test split every epoch.

    ``test_limit`` scores only the first that many test images (a small preset's time goes into
    training, not into scoring 10,000 images a few dozen times); the report says how many.
    """
    x, y = scored_test_set(data, test_limit)
    recorder = EpochRecorder(name, x, y, data.mean, data.std, cfg.epochs, out)
    result = fit(spec, data, cfg, seed=seed, callbacks=[recorder])
    curves = {**result.curves, "test_loss": recorder.loss, "test_acc": recorder.acc}
    result = dataclasses.replace(result, curves=curves)
    return ModelRun(
        name=name,
        spec=spec,
        result=result,
        test_loss=recorder.loss[-1],
        test_acc=recorder.acc[-1],
        labels=dict(labels or {}),
    )


def scored_test_set(data: ImageData, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images and labels an experiment scores: the first ``limit`` (None: all)."""
    x, y = data.test_x, data.test_y
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


class ModelQueue:
    """Trains an experiment's models one after another, each with a numbered progress line,
    per-epoch test scores (``train_model``) and, when there is a log, one child run.

    ``runs`` holds every trained model in training order.
    """

    def __init__(
        self,
        total: int,
        cfg: TrainConfig,
        log: ExperimentLog | None,
        *,
        test_limit: int | None,
        out: TextIO,
    ) -> None:
        self.total, self.cfg, self.log = total, cfg, log
        self.test_limit, self.out = test_limit, out
        self.runs: list[ModelRun] = []

    def train(
        self,
        name: str,
        spec: ArchSpec,
        data: ImageData,
        *,
        seed: int | None = None,
        labels: Mapping[str, Any] | None = None,
        sizes: bool = False,
        metrics: Callable[[ModelRun], Mapping[str, float]] | None = None,
    ) -> ModelRun:
        """Trains ``spec`` on ``data``; ``sizes`` adds params and MACs to the progress line,
        ``metrics`` adds the experiment's own metrics to the child run's test scores."""
        line = f"[{len(self.runs) + 1:>2}/{self.total}] {name}: {spec.summary()}"
        if sizes:
            line += f"  ({count_params(spec):,} params, {count_macs(spec):,} MACs)"
        print(line, file=self.out, flush=True)
        run = train_model(
            name,
            spec,
            data,
            self.cfg,
            seed=seed,
            test_limit=self.test_limit,
            labels=labels,
            out=self.out,
        )
        self.runs.append(run)
        if self.log is not None:
            scores = {"test_acc": run.test_acc, "test_loss": run.test_loss}
            self.log.log_model(run, {**scores, **(metrics(run) if metrics else {})})
        return run


# --- MLflow ---------------------------------------------------------------------------------------


class ExperimentLog:
    """One parent run per invocation in MLflow experiment ``experiment``, a child run per model.

    The tracking URI comes from mlflow.yml the way ``cnnas study`` finds it (``tracking_uri`` or
    ``sqlite:///<project_dir>/mlflow.db``); only the experiment name is the experiment's own, so
    its runs do not mix with a study's.
    """

    def __init__(
        self,
        experiment: str,
        project_dir: Path,
        *,
        mlflow_config: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        cfg: MlflowConfig = load_mlflow_config(mlflow_config)
        cfg = dataclasses.replace(cfg, experiment=experiment)
        if tracking_uri:
            cfg = dataclasses.replace(cfg, tracking_uri=tracking_uri)
        project_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(cfg, project_dir)
        self.experiment = experiment
        self.uri = self.tracker.uri
        self.parent_id = ""
        self.name = ""
        self._count = 0

    def start(self, name: str, config: Mapping[str, Any]) -> str:
        self.name = name
        self.parent_id = self.tracker.parent_run(name, None, config)
        return self.parent_id

    def log_model(self, run: ModelRun, metrics: Mapping[str, float]) -> str:
        """A finished child run: spec, per-epoch curves, final metrics, labels as tags."""
        tags = {f"cnnas.{k}": str(v) for k, v in run.labels.items()}
        run_id = self.tracker.start_trial(
            self.parent_id,
            self.name,
            self._count,
            run.spec,
            run_name=run.name,
            extra_tags={"cnnas.experiment": self.experiment, **tags},
        )
        self._count += 1
        self.tracker.log_metrics(run_id, metrics)
        self.tracker.end_fit(run_id, run.result)
        return run_id

    def finish(
        self, report_dir: Path, summary: Mapping[str, float], status: str = "FINISHED"
    ) -> None:
        """Uploads the report folder under the parent run's ``report/`` and closes it."""
        if report_dir.is_dir():
            self.tracker.client.log_artifacts(self.parent_id, str(report_dir), "report")
        self.tracker.end_parent(self.parent_id, summary, status)


def start_log(
    log: ExperimentLog | None, kind: str, data: ImageData, config: Mapping[str, Any]
) -> None:
    """Opens ``log``'s parent run ``<kind>-<local time>`` (nothing without a log); its
    parameters are the dataset's name and training-image count, then ``config``."""
    if log is not None:
        log.start(
            f"{kind}-{stamp()}",
            {"dataset": data.name, "train_images": len(data.train_y), **config},
        )


def publish_report(
    out_dir: Path,
    report: str,
    verdicts: Sequence[str],
    log: ExperimentLog | None,
    summary: Mapping[str, float],
    out: TextIO,
) -> Path:
    """Writes ``report`` to ``out_dir/report.md``, uploads the folder and closes the parent run
    with ``summary`` (when there is a log), prints the verdicts; returns the report's path."""
    path = out_dir / "report.md"
    path.write_text(report)
    if log is not None:
        log.finish(out_dir, summary)
    print(f"report: {path}", file=out)
    for v in verdicts:
        print("  " + v.replace("**", ""), file=out)
    return path


# --- tables ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: header, how to format a value for Markdown."""

    key: str
    header: str
    fmt: str = "{}"

    def show(self, value: Any) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        return self.fmt.format(value)


def markdown_row(cells: Iterable[Any]) -> str:
    """One Markdown table row of ``cells`` as they print."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_head(headers: Sequence[str], *, numbers: bool = False) -> list[str]:
    """A Markdown table's header row and rule; ``numbers`` right-aligns all but the first column."""
    rule = "---:|" if numbers else "---|"
    return [markdown_row(headers), "|---|" + rule * (len(headers) - 1)]


def write_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    out_dir: Path,
    stem: str,
    *,
    footer: str = "",
) -> tuple[Path, Path, str]:
    """Writes ``stem.csv`` (raw values) and ``stem.md`` (formatted); returns both and the text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([c.key for c in columns])
        for row in rows:
            writer.writerow([row.get(c.key, "") for c in columns])
    lines = markdown_head([c.header for c in columns])
    for row in rows:
        lines.append(markdown_row(c.show(row.get(c.key, "")) for c in columns))
    md = "\n".join(lines) + "\n"
    if footer:
        md += "\n" + footer.strip() + "\n"
    md_path.write_text(md)
    return csv_path, md_path, md


# --- plots ----------------------------------------------------------------------------------------


def plot_curves(
    runs: Sequence[ModelRun],
    keys: Sequence[tuple[str, str]],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """One panel per ``(curve key, panel title)``, one line per run, epochs on the x axis."""
    n = len(keys)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.6 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (key, panel) in zip(axes.flat, keys, strict=False):
        for i, run in enumerate(runs):
            values = run.result.curves.get(key, [])
            ax.plot(
                range(1, len(values) + 1),
                values,
                marker="o",
                markersize=3,
                color=cmap(i % 20),
                label=run.name,
            )
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def stamp() -> str:
    """A run name suffix: local time to the second."""
    return time.strftime("%Y%m%d-%H%M%S")
