"""What a user sees during and after a study: the trials-run line, the estimate of a long study,
a readable confusion matrix, and architecture strings that survive Markdown."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch
import yaml

from cnnas.models import ArchSpec, ConvBlock
from cnnas.search.cli import main
from cnnas.search.cli._models import confusion_table
from cnnas.search.report import md_escape

SPACE = {
    "blocks": [1],
    "base_filters": [4],
    "kernels": [3],
    "convs": [1],
    "pools": ["max"],
    "aggregations": ["gap"],
    "dense_layers": [0],
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cnnas(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def config(tmp: Path, **study) -> Path:
    cfg = {
        "study": {"name": "seen", "project_dir": str(tmp / "runs"), **study},
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "accelerator": "cpu"},
        "space": SPACE,
        "final": {"share": 0.0},
        "registry": {"register": False},
    }
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_end_of_the_search_says_how_many_of_the_planned_trials_ran(tmp_path) -> None:
    rc, out, err = cnnas("study", "start", "--config", config(tmp_path, trials=2), "--no-report")
    assert rc == 0, err
    assert re.search(r"ran 2 of 2 planned trials \(all of them\); 2 in this run", out), out


def test_a_long_study_says_how_long_after_its_first_trial(tmp_path) -> None:
    # A hundred thousand trials at this pace (a tenth of a second each on a fast machine) is far
    # more than 10 minutes; the timeout stops it early.
    cfg = config(tmp_path, trials=100_000, timeout=4)
    rc, out, err = cnnas("study", "start", "--config", cfg, "--no-report")
    assert rc == 0, err
    estimate = re.search(r"about (.+) for the 99999 trial\(s\) left at this pace", out)
    assert estimate, out
    assert "the search stops starting trials after 0m 04s" in out
    assert re.search(r"ran \d+ of 100000 planned trials \(study\.timeout", out), out


def test_a_short_study_gives_no_estimate(tmp_path) -> None:
    rc, out, err = cnnas("study", "start", "--config", config(tmp_path, trials=2), "--no-report")
    assert rc == 0, err
    assert "at this pace" not in out


def test_the_confusion_matrix_shows_long_class_names_in_full_and_aligned() -> None:
    names = ["class_a_very_long_name", "b", "another long class"]
    text = confusion_table(names, [[12, 0, 1], [0, 7, 0], [3, 0, 1000]])
    lines = text.splitlines()
    assert len(lines) == 4  # a header and one row a class, no unlabelled column
    for name in names:
        assert name in lines[0]  # every header in full
    assert [ln.split()[-3:] for ln in lines[1:]] == [["12", "0", "1"], ["0", "7", "0"],
                                                     ["3", "0", "1000"]]  # fmt: skip
    # Columns end where their headers end.
    ends = [lines[0].index(n) + len(n) for n in names]
    for line, row in zip(lines[1:], ([12, 0, 1], [0, 7, 0], [3, 0, 1000]), strict=True):
        cells = [m.end() for m in re.finditer(r"\d+", line)]
        assert cells == ends, (line, row)


def test_architecture_strings_are_literal_in_markdown() -> None:
    spec = ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=(ConvBlock(8, pool="avg", dropout=0.25), ConvBlock(8, pool="max", dropout=0.25)),
    )
    text = spec.summary()
    assert "~" in text and "|" in text and ">" in text
    escaped = md_escape(text)
    # No unescaped ~ (strikethrough), | (a table cell's end) or > (a quote) is left.
    assert not re.search(r"(?<!\\)[~|>]", escaped), escaped
    assert escaped.replace("\\", "") == text
    assert md_escape("val_acc") == "val_acc"  # underscores inside words are literal in GFM
