"""MkDocs hooks: the start page is the README, and the configuration reference is generated from
the config schema at build time.

``<!-- readme -->`` (docs/index.md) becomes the repository's README.md with its ``docs/`` links
made relative to the site, so the landing page has one source.

``<!-- config-reference -->`` and ``<!-- mlflow-reference -->`` in a page become the tables of
every key of a study config and of mlflow.yml, with its default and its one-line documentation,
read from ``cnnas.search._config`` (the dataclasses the config is checked against), so the page
cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _table(rows: list[tuple[str, str, str]]) -> str:
    out = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in rows:
        cell = doc.replace("|", "\\|")
        out.append(f"| `{key}` | `{default}` | {cell} |")
    return "\n".join(out)


def _readme() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)
    # Links out of docs/ (the licence) point at the repository's files, not at site pages.
    return text.replace("](LICENSE)", "](https://spdx.org/licenses/MIT.html)")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- readme -->" in markdown:
        return markdown.replace("<!-- readme -->", _readme())
    if "<!-- config-reference -->" not in markdown and "<!-- mlflow-reference -->" not in markdown:
        return markdown
    from cnnas.search._config import MlflowConfig, describe

    markdown = markdown.replace("<!-- config-reference -->", _table(describe()))
    return markdown.replace("<!-- mlflow-reference -->", _table(describe(MlflowConfig)))
