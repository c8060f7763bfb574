"""The Pareto plot: every trained trial, the front joined up, as PNG and interactive HTML.

Complexity goes on a log axis: architectures of 1k and 1M parameters are both common in one
study, and the interesting part of the front is usually at the small end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from ._study import trial_spec

__all__ = ["pareto_plot"]


def _label(t: FrozenTrial) -> str:
    spec = trial_spec(t)
    return f"trial {t.number}: {spec.summary() if spec else '?'}"


def pareto_plot(
    trials: Sequence[FrozenTrial],
    front: Sequence[FrozenTrial],
    complexity: str,
    out_dir: Path,
    title: str,
) -> tuple[Path, Path]:
    """Writes ``pareto.png`` and ``pareto.html`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    front_ids = {t.number for t in front}
    others = [t for t in trials if t.number not in front_ids]
    front = sorted(front, key=lambda t: t.user_attrs[complexity])

    def xs(ts: Sequence[FrozenTrial]) -> list[float]:
        return [t.user_attrs[complexity] for t in ts]

    def ys(ts: Sequence[FrozenTrial]) -> list[float]:
        return [t.user_attrs["val_acc"] for t in ts]

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.scatter(xs(others), ys(others), s=18, color="#9aa5b1", label="trial")
    ax.plot(xs(front), ys(front), "-o", color="#d1495b", ms=6, label="Pareto front")
    for t in front:
        ax.annotate(
            str(t.number),
            (t.user_attrs[complexity], t.user_attrs["val_acc"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters" if complexity == "params" else "MACs per image")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = out_dir / "pareto.png"
    fig.savefig(png)
    plt.close(fig)

    page = go.Figure()
    page.add_trace(
        go.Scatter(
            x=xs(others),
            y=ys(others),
            mode="markers",
            name="trial",
            text=[_label(t) for t in others],
            marker={"color": "#9aa5b1"},
        )
    )
    page.add_trace(
        go.Scatter(
            x=xs(front),
            y=ys(front),
            mode="lines+markers",
            name="Pareto front",
            text=[_label(t) for t in front],
            marker={"color": "#d1495b"},
        )
    )
    page.update_layout(
        title=title,
        xaxis_type="log",
        xaxis_title="parameters" if complexity == "params" else "MACs per image",
        yaxis_title="validation accuracy",
        template="plotly_white",
    )
    html = out_dir / "pareto.html"
    # The plotly library is inlined so the page opens without a network.
    page.write_html(html, include_plotlyjs=True, full_html=True)
    return png, html
