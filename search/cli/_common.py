"""What several commands share: the study config with the command line's overrides (applied
here, once), attaching to an existing study, tables, and JSON output."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .._config import StudyConfig, load_config, load_preset
from .._format import human
from .._records import COUNTED_STATES, TrialRecord, counted_trials, state_counts
from .._storage import existing_study
from .._study import StudyRun, prepare
from ..errors import UsageError

__all__ = [
    "attach",
    "counts_json",
    "emit_json",
    "front_table",
    "ignore_further_interrupts",
    "mlflow_ui_hint",
    "out_folder",
    "state_line",
    "study_config",
    "trial_json",
]


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The config a command works with: ``--config`` or ``--preset`` (else the defaults), with
    every override the command line gives applied, here and nowhere else."""
    preset = getattr(args, "preset", None)
    if preset and getattr(args, "config", None):
        raise UsageError("--config and --preset name two configs; give one of them")
    cfg = load_preset(preset) if preset else load_config(getattr(args, "config", None))
    study = {
        key: getattr(args, attr, None)
        for key, attr in (
            ("name", "name"),
            ("trials", "trials"),
            ("timeout", "timeout"),
            ("project_dir", "project_dir"),
            ("workers", "workers"),
        )
    }
    if isinstance(getattr(args, "study", None), str):  # cnnas worker --study NAME
        study["name"] = args.study
    cfg = cfg.replace("study", **study)
    if getattr(args, "data_dir", None):
        cfg = cfg.replace("data", data_dir=args.data_dir)
    return cfg


def attach(args: argparse.Namespace) -> StudyRun:
    """An existing study with its data, tracker and parent run; creates nothing.

    Without ``--config`` the study's own stored settings (dataset, split, training) are used,
    with the storage and project folder this command line names.
    """
    cfg = study_config(args)
    study = existing_study(cfg, args.name)
    stored = study.user_attrs.get("config")
    if stored and not args.config:
        where = {"project_dir": cfg.study.project_dir, "storage": cfg.study.storage}
        cfg = StudyConfig.from_dict({**stored, "study": {**stored["study"], **where}})
        if getattr(args, "data_dir", None):
            cfg = cfg.replace("data", data_dir=args.data_dir)
    run = prepare(cfg.replace("study", name=args.name))
    run.open(reopen_parent=False)
    if getattr(args, "complexity", None) is None:
        args.complexity = run.cfg.study.complexity
    return run


def state_line(recs: Sequence[TrialRecord]) -> str:
    counts = state_counts(recs)
    shown = [f"{int(v)} {k.removeprefix('trials_')}" for k, v in counts.items() if v]
    return ", ".join(shown) or "no trials"


def front_table(trials: Sequence[TrialRecord], test_acc: dict[int, float] | None = None) -> str:
    """The columns of the paper's table for each trial, one row each (test accuracy once
    evaluated)."""
    test_acc = test_acc or {}
    nan = float("nan")
    head = (
        f"{'trial':>5}  {'val_acc':>7}  {'train_acc':>9}  {'val_loss':>8}  {'train_loss':>10}  "
        f"{'params':>8}  {'MACs':>8}  {'ratio':>9}  {'secs':>6}  "
        + (f"{'test_acc':>8}  " if test_acc else "")
        + "architecture"
    )
    rows = [head]
    for r in trials:
        spec = r.spec
        rows.append(
            f"{r.number:>5}  {_or(r.val_acc):>7.4f}  {_or(r.train_acc):>9.4f}  "
            f"{_or(r.val_loss):>8.4f}  {_or(r.train_loss):>10.4f}  {human(r.params or 0):>8}  "
            f"{human(r.macs or 0):>8}  {_or(r.ratio):>9.3e}  {_or(r.seconds):>6.1f}  "
            + (f"{test_acc.get(r.number, nan):>8.4f}  " if test_acc else "")
            + (spec.summary() if spec else "?")
        )
    return "\n".join(rows)


def _or(value: float | None) -> float:
    return float("nan") if value is None else value


def trial_json(r: TrialRecord, test_acc: float | None = None) -> dict[str, Any]:
    """One trial in the ``--json`` outputs; the keys are documented in the README."""
    spec = r.spec
    out: dict[str, Any] = {
        "number": r.number,
        "state": r.state.name,
        "val_acc": r.val_acc,
        "val_loss": r.val_loss,
        "train_acc": r.train_acc,
        "train_loss": r.train_loss,
        "params": r.params,
        "macs": r.macs,
        "executed_macs": r.executed_macs,
        "ratio": r.ratio,
        "seconds": r.seconds,
        "epochs": r.epochs,
        "architecture": spec.summary() if spec else None,
        "spec_hash": r.spec_hash,
        "mlflow_run_id": r.run_id,
        "infeasible": r.infeasible,
        "duplicate_of": r.duplicate_of,
    }
    if test_acc is not None:
        out["test_acc"] = test_acc
    return out


def counts_json(recs: Sequence[TrialRecord], planned: int) -> dict[str, Any]:
    counts = {k.removeprefix("trials_"): int(v) for k, v in state_counts(recs).items()}
    return {**counts, "counted": counted_trials(recs, COUNTED_STATES), "planned": planned}


def emit_json(document: dict[str, Any], out: TextIO | None = None) -> None:
    """One JSON document on stdout. NaN is not JSON: missing or non-finite values are null."""
    print(json.dumps(_finite(document), indent=2), file=out or sys.stdout)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def mlflow_ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"


def ignore_further_interrupts() -> None:
    """After the first Ctrl-C has been handled (the study recorded it), a second one while the
    command says so and exits must not end it with a traceback."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing to hold back
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def out_folder(path: str | None, option: str = "--out") -> Path | None:
    """``path`` as a folder a command may write its files into, checked before anything is
    written: not a file, not inside a file, writable (it or the folder it would be made in).
    ``.`` and an existing folder are fine: the command writes its own file names there."""
    if path is None:
        return None
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option}: {path!r} is a file, not a folder; name a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option}: {path!r} lies inside {str(existing)!r}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: {str(existing)!r} is not writable by this user")
    return folder
