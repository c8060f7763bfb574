"""Turning a study's :class:`~._collect.Findings` into files: the PNGs, one self-contained HTML
page (every plot embedded as a base64 data URI, so it opens from disk without a network; an
inline plotly page would carry plotly.js, 4.8 MB, with it) and a Markdown summary.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .._format import duration, human, num
from ._collect import Budget, Findings, accuracy_study
from ._plots import (
    confusion_plot,
    curves_plot,
    history_plot,
    importance_plot,
    pareto_plot,
)

__all__ = ["SECTIONS", "Rendered", "markdown", "md_escape", "render"]

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


@dataclass
class Rendered:
    """The files of a report and the words that go with its plots."""

    findings: Findings
    html: Path
    markdown: Path
    images: dict[str, Path]  # section id -> PNG
    interactive: Path | None  # pareto.html
    notes: dict[str, str]  # section id -> a sentence under the heading
    generated: str


def _draw(f: Findings, out: Path) -> tuple[dict[str, Path], Path | None, dict[str, str]]:
    """The plots that the findings allow, and the sentence under each."""
    images: dict[str, Path] = {}
    notes: dict[str, str] = {}
    label = {"params": "parameters", "macs": "MACs"}.get(f.complexity, "latency")
    interactive = None
    if f.trained:
        finals = {n: r.test_acc for n, r in f.finals.items()} if f.with_test else {}
        images["pareto"], interactive = pareto_plot(
            f.trained,
            f.front,
            f.complexity,
            out,
            f"{f.name}: accuracy vs {label}",
            finals,
            {n for n, r in f.finals.items() if r.reference},
        )
        notes["pareto"] = (
            f"Every trained trial (grey) and the front (red): validation accuracy in the search "
            f"against {label}, log scale. {len(f.front)} trial(s) on the front."
            + (
                " Stars: the networks the final phase trained again, at their test accuracy "
                "(diamonds: references from study.start_from), joined to their search score."
                if finals
                else ""
            )
        )
        images["history"] = history_plot(accuracy_study(f.study, f.measured), out / "history.png")
        notes["history"] = (
            "Optuna's optimisation history of validation accuracy over the trained trials "
            "(budget-rejected trials left out)."
        )
    if f.importances:
        images["importances"] = importance_plot(
            f.importances, f"{f.name}: what decides accuracy and size", out / "importances.png"
        )
        notes["importances"] = (
            "Optuna's parameter importances (fANOVA) over the trained trials: the share of the "
            f"variation in validation accuracy and in log10 {f.complexity} each search parameter "
            "explains."
        )
    if f.front:
        images["curves"] = curves_plot(f.front, f.curves, f.complexity, out / "curves.png")
        notes["curves"] = "Per-epoch values recorded in each front member's MLflow run."
    if f.confusion is not None and f.champion is not None:
        images["confusion"] = confusion_plot(
            f.confusion,
            f.classes,
            f"trial {f.champion.trial.number}: test accuracy {f.champion_acc:.4f} "
            f"({f.test_images} images)",
            out / "confusion.png",
        )
        notes["confusion"] = (
            f"Champion: {f.champion.source}. Held-out test split, {f.test_images} images "
            f"never seen by the search; accuracy {f.champion_acc:.4f}. Rows: true class; "
            "columns: predicted."
        )
    return images, interactive, notes


def render(f: Findings, out: Path) -> Rendered:
    """Draws the plots and writes ``report.html`` and ``report.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    images, interactive, notes = _draw(f, out)
    r = Rendered(
        findings=f,
        html=out / "report.html",
        markdown=out / "report.md",
        images=images,
        interactive=interactive,
        notes=notes,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    r.html.write_text(_html(r), encoding="utf-8")
    r.markdown.write_text(
        markdown(r, lambda s: images[s].name if s in images else None), encoding="utf-8"
    )
    return r


# --- tables -----------------------------------------------------------------------------------


def _title(f: Findings) -> str:
    return f"cnnas study report: {f.name}"


def _front_rows(f: Findings) -> tuple[list[str], list[list[str]]]:
    tested, final = bool(f.tests), bool(f.finals)
    head = ["trial", "val_acc", *(["test_acc"] if tested else [])]
    final_head = ["final test_acc", "final epochs"] if f.with_test else ["final epochs"]
    head += [*(final_head if final else []), "train_acc", "params", "MACs"]
    head += ["ratio", "secs", "aliases", "architecture"]
    rows = []
    for r in f.front:
        spec = r.spec
        rows.append(
            [
                str(r.number),
                num(r.val_acc, ".4f"),
                *([num(f.tests.get(r.number), ".4f")] if tested else []),
                *(_final_cells(f, r.number) if final else []),
                num(r.train_acc, ".4f"),
                human(r.params or 0),
                human(r.macs or 0),
                num(r.ratio, ".3e"),
                num(r.seconds, ".1f"),
                ", ".join(f.trial_aliases.get(r.number, [])),
                spec.summary() if spec else "?",
            ]
        )
    return head, rows


def _final_cells(f: Findings, number: int) -> list[str]:
    done = f.finals.get(number)
    cells = [num(done.test_acc, ".4f"), str(done.epochs)] if done else ["–", "–"]
    return cells if f.with_test else cells[1:]


def _count_rows(b: Budget) -> list[tuple[str, int]]:
    c = b.counts
    return [
        ("complete", c.get("complete", 0)),
        ("  of which infeasible (over budget, not trained)", c.get("infeasible", 0)),
        ("  of which duplicates (result of an earlier trial)", c.get("duplicate", 0)),
        ("pruned", c.get("pruned", 0)),
        ("failed", c.get("fail", 0)),
        ("running (unfinished)", c.get("running", 0)),
    ]


def _device_rows(b: Budget) -> list[tuple[str, str, str, str]]:
    return [(d, str(n), duration(w), duration(s)) for d, n, w, s in b.rows]


def _finished(b: Budget) -> str:
    return (
        f"{sum(n for _, n, _, _ in b.rows)} of {b.total_trials} trials finished in "
        f"{duration(b.span)} from the first start to the last end."
    )


# --- Markdown ---------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """``text`` as literal (GitHub-flavoured) Markdown: ``|`` would end a table cell, and ``~``
    (architecture strings write dropout as ``~0.25``) or ``*`` would turn into strikethrough or
    emphasis. Underscores inside words (``val_acc``) are literal in GFM and stay as they are."""
    out = str(text)
    for ch in "\\`*~|[]<>":
        out = out.replace(ch, "\\" + ch)
    return out


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(md_escape(x) for x in cells) + " |"

    return "\n".join([line(head), line(["---"] * len(head)), *(line(r) for r in rows)])


def markdown(r: Rendered, image_url: Callable[[str], str | None]) -> str:
    """The summary; ``image_url(section)`` gives the link of a section's PNG (None: no link)."""
    f = r.findings
    out = [f"# {md_escape(_title(f))}", "", f"Generated {r.generated}.", ""]
    out += [f"- **{k}:** {md_escape(v)}" for k, v in f.facts]
    b = f.budget
    out += ["", f"## {SECTIONS['budget']}", "", _finished(b), ""]
    out.append(_md_table(["trials", "count"], [(k.strip(), str(v)) for k, v in _count_rows(b)]))
    out += ["", _md_table(["device", "trials", "trial time", "training time"], _device_rows(b))]
    for section in ("pareto", "front", "history", "importances", "curves", "confusion"):
        out += ["", f"## {SECTIONS[section]}", ""]
        if section in r.notes:
            out += [md_escape(r.notes[section]), ""]
        if section == "front":
            if f.front:
                out.append(_md_table(*_front_rows(f)))
            else:
                out.append("No trained trial yet: the front is empty.")
            continue
        url = image_url(section)
        if section in r.images and url:
            out.append(f"![{SECTIONS[section]}]({url})")
        elif section in f.missing:
            out.append(f"*Not shown: {md_escape(f.missing[section])}*")
    return "\n".join(out).rstrip() + "\n"


# --- HTML -------------------------------------------------------------------------------------

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


def _html_budget(b: Budget) -> list[str]:
    e = html.escape
    return [
        f'<section id="budget"><h2>{e(SECTIONS["budget"])}</h2>',
        f"<p>{e(_finished(b))} Trial time is each trial's wall clock (training, evaluation, "
        "logging); training time is the fits alone, repeats and budget-rejected trials "
        "counting nothing.</p>",
        _html_table(["trials", "count"], [(k, str(v)) for k, v in _count_rows(b)], {0}),
        _html_table(["device", "trials", "trial time", "training time"], _device_rows(b), {0}),
        "</section>",
    ]


def _html_section(r: Rendered, section: str) -> list[str]:
    e, f = html.escape, r.findings
    parts = [f'<section id="{section}"><h2>{e(SECTIONS[section])}</h2>']
    if section in r.notes:
        parts.append(f"<p>{e(r.notes[section])}</p>")
    if section == "front":
        if f.front:
            head, rows = _front_rows(f)
            parts.append(_html_table(head, rows, {len(head) - 2, len(head) - 1}))
        else:
            parts.append('<p class="missing">No trained trial yet: the front is empty.</p>')
    elif section in r.images:
        parts.append(
            f'<img id="{section}-plot" alt="{e(SECTIONS[section])}" '
            f'src="{_data_uri(r.images[section])}">'
        )
    elif section in f.missing:
        parts.append(f'<p class="missing">Not shown: {e(f.missing[section])}</p>')
    if section == "pareto" and r.interactive is not None:
        parts.append(
            f'<p class="note">Interactive version (hover for architectures): '
            f'<a href="{e(r.interactive.name)}">{e(r.interactive.name)}</a>, beside this '
            "page.</p>"
        )
    if section == "importances" and f.importances:
        names = list(f.importances)
        params = list(next(iter(f.importances.values())))
        rows = [[p] + [num(f.importances[n].get(p), ".3f") for n in names] for p in params]
        parts.append(_html_table(["parameter", *names], rows, {0}))
    parts.append("</section>")
    return parts


def _html(r: Rendered) -> str:
    e, f = html.escape, r.findings
    title = _title(f)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="note">Generated {e(r.generated)}.</p>',
        "<nav>" + "".join(f'<a href="#{k}">{e(v)}</a>' for k, v in SECTIONS.items()) + "</nav>",
        "<ul>" + "".join(f"<li><b>{e(k)}:</b> {e(v)}</li>" for k, v in f.facts) + "</ul>",
        *_html_budget(f.budget),
    ]
    for section in ("pareto", "front", "history", "importances", "curves", "confusion"):
        parts += _html_section(r, section)
    parts.append("</body></html>")
    return "\n".join(parts)
