"""The study's plots: the Pareto front (PNG and interactive HTML), the optimisation history,
parameter importances, the front's training curves and the champion's confusion matrix.

Complexity goes on a log axis: architectures of 1k and 1M parameters are both common in one
study, and the interesting part of the front is usually at the small end.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import optuna
import plotly.graph_objects as go
import torch

from .._format import size
from .._records import TrialRecord

__all__ = [
    "confusion_plot",
    "curves_plot",
    "history_plot",
    "importance_plot",
    "pareto_plot",
]

_DPI = 100


def _save(fig: plt.Figure, path: Path, dpi: int = _DPI) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _label(r: TrialRecord) -> str:
    spec = r.spec
    return f"trial {r.number}: {spec.summary() if spec else '?'}"


def axis_label(complexity: str) -> str:
    return {"params": "parameters", "macs": "MACs per image"}.get(
        complexity, "latency (ms per image)"
    )


def pareto_plot(
    trials: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    complexity: str,
    out_dir: Path,
    title: str,
    finals: Mapping[int, float] | None = None,
    references: Collection[int] = (),
) -> tuple[Path, Path]:
    """Writes ``pareto.png`` and ``pareto.html`` into ``out_dir``; returns their paths.

    The trials and the front at the search's validation accuracy; with ``finals`` (trial number
    -> test accuracy after the final phase), each of those networks where the final training
    took it, joined to its search score, the ``references`` (study.start_from) marked apart.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = dict(finals or {})
    front_ids = {r.number for r in front}
    others = [r for r in trials if r.number not in front_ids]
    front = sorted(front, key=lambda r: r.complexity(complexity))
    by_number = {r.number: r for r in trials}
    trained = [by_number[n] for n in sorted(finals) if n in by_number]
    searched = [r for r in trained if r.number not in references]
    refs = [r for r in trained if r.number in references]
    groups = (
        ("after the final phase: test accuracy", searched, "*", "#1d3557"),
        ("reference (study.start_from): test accuracy", refs, "D", "#2a9d8f"),
    )

    def xs(rs: Sequence[TrialRecord]) -> list[float]:
        return [r.complexity(complexity) for r in rs]

    def ys(rs: Sequence[TrialRecord]) -> list[float]:
        return [float(r.val_acc) for r in rs]

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.scatter(xs(others), ys(others), s=18, color="#9aa5b1", label="trial")
    ax.plot(xs(front), ys(front), "-o", color="#d1495b", ms=6, label="Pareto front")
    for r in front:
        ax.annotate(
            str(r.number),
            (r.complexity(complexity), r.val_acc),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    for r in trained:
        x = r.complexity(complexity)
        ax.plot([x, x], [r.val_acc, finals[r.number]], ":", color="#457b9d", lw=1)
    for name, rs, marker, color in groups:
        if rs:
            ys_ = [finals[r.number] for r in rs]
            ax.scatter(xs(rs), ys_, marker=marker, s=70, color=color, label=name, zorder=3)
    # A trial that never learned (10% on ten classes) would stretch the axis down to it and
    # squash the front: the axis starts a little below the front and the final networks.
    shown = ys(front) + list(finals.values())
    if shown:
        low = max(min(shown) - 0.05, 0.0)
        hidden = sum(float(r.val_acc) < low for r in others)
        ax.set_ylim(bottom=low)
        if hidden:
            note = f"{hidden} trial(s) below {low:.2f} not shown"
            ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=8, color="#6c757d")
    ax.set_xscale("log")
    ax.set_xlabel(axis_label(complexity))
    ax.set_ylabel("accuracy (validation in the search)" if finals else "validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    png = _save(fig, out_dir / "pareto.png", dpi=120)

    page = go.Figure()
    for name, rs, color, mode in (
        ("trial", others, "#9aa5b1", "markers"),
        ("Pareto front", front, "#d1495b", "lines+markers"),
    ):
        page.add_trace(
            go.Scatter(
                x=xs(rs),
                y=ys(rs),
                mode=mode,
                name=name,
                text=[_label(r) for r in rs],
                marker={"color": color},
            )
        )
    for name, rs, marker, color in groups:
        if rs:
            page.add_trace(
                go.Scatter(
                    x=xs(rs),
                    y=[finals[r.number] for r in rs],
                    mode="markers",
                    name=name,
                    text=[_label(r) for r in rs],
                    marker={
                        "color": color,
                        "size": 11,
                        "symbol": "star" if marker == "*" else "diamond",
                    },
                )
            )
    page.update_layout(
        title=title,
        xaxis_type="log",
        xaxis_title=axis_label(complexity),
        yaxis_title="accuracy (validation in the search)" if finals else "validation accuracy",
        template="plotly_white",
    )
    html = out_dir / "pareto.html"
    # The plotly library is inlined so the page opens without a network.
    page.write_html(html, include_plotlyjs=True, full_html=True)
    return png, html


def history_plot(accuracy_study: optuna.Study, path: Path) -> Path:
    """Optuna's optimisation history of validation accuracy, with the best so far."""
    # Optuna's matplotlib plots switch the global style to ggplot; keep that to this figure.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(
            accuracy_study, target_name="validation accuracy"
        )
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        ax.set_title(f"{accuracy_study.study_name}: validation accuracy by trial")
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _save(fig, path)


def importance_plot(importances: dict[str, dict[str, float]], title: str, path: Path) -> Path:
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


def curves_plot(
    front: Sequence[TrialRecord],
    curves: Mapping[int, Mapping[str, Sequence[float]]],
    complexity: str,
    path: Path,
) -> Path:
    """Validation accuracy (left) and losses (right) per epoch, one colour per front member."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(front):
        c = curves.get(r.number, {})
        color = cmap(i / max(len(front) - 1, 1))
        label = f"trial {r.number} ({size(r.complexity(complexity), complexity)})"
        for ax, key, style, suffix in (
            (acc_ax, "val_acc", "-o", ""),
            (loss_ax, "train_loss", "-", " train"),
            (loss_ax, "val_loss", "--", None),
        ):
            if key in c:
                epochs = range(1, len(c[key]) + 1)
                kwargs = {"ms": 3} if style == "-o" else {}
                named = f"{label}{suffix}" if suffix is not None else None
                ax.plot(epochs, c[key], style, color=color, label=named, **kwargs)
    acc_ax.set_title("validation accuracy")
    loss_ax.set_title("loss (solid: train, dashed: validation)")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def confusion_plot(matrix: torch.Tensor, classes: Sequence[str], title: str, path: Path) -> Path:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
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
