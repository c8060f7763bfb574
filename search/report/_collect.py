"""Gathering what a study report says: counts and time spent, the front, test accuracies, the
champion and its confusion matrix, parameter importances, the front's curves.

Nothing here draws or writes a file; :mod:`._render` turns the :class:`Findings` into pages.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from cnnas.models import ModelFileError
from cnnas.objectives import Predictor

from .._aliases import Member, assign_aliases
from .._final import FinalRun, final_runs, kendall_tau
from .._records import COUNTED_STATES, TrialRecord, front, members, state_counts
from .._registry import MODEL_ARTIFACT, download_model, registered_model_name, test_accuracy
from .._study import StudyRun

__all__ = ["Budget", "Champion", "Findings", "collect"]


@dataclass
class Budget:
    """Where the study's time went."""

    counts: dict[str, int]
    rows: list[tuple[str, int, float, float]]  # device, trials, wall seconds, training seconds
    span: float  # first trial start to last trial end, seconds
    total_trials: int  # the study's configured total


@dataclass
class Champion:
    trial: TrialRecord
    run_id: str  # the MLflow run holding the weights to evaluate
    source: str  # how it was chosen, in words


@dataclass
class Findings:
    """Everything both documents say, computed once."""

    study: optuna.Study
    name: str
    complexity: str
    trained: list[TrialRecord]  # trained, not repeats: the Pareto plot's points
    measured: set[int]  # trials with a measured accuracy, repeats included: the history's
    front: list[TrialRecord]
    tests: dict[int, float]
    trial_aliases: dict[int, list[str]]
    budget: Budget
    champion: Champion | None
    champion_acc: float | None
    confusion: torch.Tensor | None
    classes: tuple[str, ...]
    test_images: int
    importances: dict[str, dict[str, float]]
    curves: dict[int, dict[str, list[float]]]  # front member -> val_acc, train_loss, val_loss
    facts: list[tuple[str, str]]
    # The final phase's networks by trial, and Kendall's tau of their search and final scores.
    finals: dict[int, FinalRun] = field(default_factory=dict)
    rank_agreement: float | None = None
    # False under --no-test: no figure measured on the test split is shown, the final phase's
    # test accuracies included.
    with_test: bool = True
    # Section id -> why it has no plot (too few trials, no test evaluation, ...).
    missing: dict[str, str] = field(default_factory=dict)


def _device_name(value: str) -> str:
    """'CPU' or 'GPU (<model>)' from a recorded device: 'cpu', 'cuda:0', 'gpu' or a GPU's name."""
    v = value.strip()
    if v.lower().startswith("cpu"):
        return "CPU"
    if v.lower().startswith(("cuda", "gpu")):
        return "GPU"
    return f"GPU ({v})"


def _device_of(r: TrialRecord, configured: str) -> str:
    """Where a trial ran: its recorded device, else the configured accelerator."""
    if r.device:
        return _device_name(str(r.device))
    if configured in ("cpu", "gpu"):
        return configured.upper()
    return f"not recorded (train.accelerator: {configured})"


def _budget(run: StudyRun, recs: Sequence[TrialRecord]) -> Budget:
    counts = {k.removeprefix("trials_"): int(v) for k, v in state_counts(recs).items()}
    configured = run.cfg.train.accelerator
    by_device: dict[str, list[float]] = {}
    starts, ends = [], []
    for r in recs:
        if r.state not in COUNTED_STATES:
            continue
        row = by_device.setdefault(_device_of(r, configured), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += r.wall_seconds()
        # A repeat copies its twin's seconds without training: only real fits count.
        if r.duplicate_of is None and r.infeasible is None:
            if r.seconds is not None:
                row[2] += r.seconds
            else:  # pruned or failed mid-fit: the epochs it did run
                row[2] += float(sum(r.curves.get("epoch_seconds", [])))
        if r.started:
            starts.append(r.started)
        if r.completed:
            ends.append(r.completed)
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    rows = [(d, int(v[0]), v[1], v[2]) for d, v in sorted(by_device.items())]
    return Budget(counts, rows, span, run.cfg.study.trials)


def _registered_champion(run: StudyRun, by_number: dict[int, TrialRecord]) -> Champion | None:
    name = registered_model_name(run.mlflow_cfg.registered_model, run.cfg.study.name)
    try:
        version = run.tracker.client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    if version.tags.get("cnnas.study") != run.cfg.study.name:
        return None
    number = int(version.tags.get("cnnas.trial", -1))
    if number not in by_number:
        return None
    refit = version.tags.get("cnnas.refit") == "1"
    return Champion(
        by_number[number],
        version.run_id,
        f"registered model {name!r} @champion: version {version.version} "
        f"(trial {number}{', retrained on train + validation' if refit else ''})",
    )


def _champion(
    run: StudyRun, recs: Sequence[TrialRecord], aliases: dict[str, Member]
) -> Champion | None:
    """The registered @champion of this study, else the front member the champion rule picks."""
    if not aliases:
        return None
    by_number = {r.number: r for r in recs}
    registered = _registered_champion(run, by_number)
    if registered is not None:
        return registered
    described = f"champion rule {run.cfg.registry.rule().rule!r} (registry.champion)"
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
    return Champion(trial, trial.run_id, source)


def accuracy_study(study: optuna.Study, trained: set[int]) -> optuna.Study:
    """An in-memory single-objective copy of ``study``: validation accuracy of trained trials.

    Every other trial (budget-rejected, pruned, failed) becomes a FAIL placeholder, so trial
    numbers stay those of the study while Optuna's plots skip them: an infeasible trial's
    accuracy 0 is a marker, not a measurement.
    """
    copy = optuna.create_study(direction="maximize", study_name=study.study_name)
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


def importances(study: optuna.Study, complexity: str) -> dict[str, dict[str, float]]:
    """Optuna's fANOVA importances of the search parameters for accuracy and for size.

    fANOVA measures the share of a target's variance a parameter explains, whichever way the
    target points; Optuna's default (PED-ANOVA) reads a target as "lower is better", which would
    rank parameters by how they lower accuracy. Size is taken as log10: one model 10x larger
    than another is one step at any scale. Seeded: the same study gives the same numbers.
    ``study`` is :func:`accuracy_study`'s copy.
    """
    trained = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {
            name: optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=target
            )
            for name, target in targets.items()
        }


def _curves(run: StudyRun, r: TrialRecord) -> dict[str, list[float]]:
    """The per-epoch values MLflow recorded in the trial's run, else the trial's own copy."""
    out: dict[str, list[float]] = {}
    client = run.tracker.client
    for key in ("val_acc", "train_loss", "val_loss"):
        try:
            history = client.get_metric_history(r.run_id, key) if r.run_id else []
        except MlflowException:
            history = []
        if history:
            out[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
        elif key in r.curves:
            out[key] = list(r.curves[key])
    return out


def _confusion(run: StudyRun, champ: Champion) -> tuple[float, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor.from_dir(download_model(run.tracker.client, champ.run_id, Path(tmp)))
    return predictor.confusion_matrix(run.data.test_x, run.data.test_y)


def _facts(run: StudyRun, complexity: str, champ: Champion | None) -> list[tuple[str, str]]:
    data, cfg, study = run.data, run.cfg, run.study
    objectives = " and ".join(
        f"{n} ({d.name.lower()})"
        for n, d in zip(
            study.metric_names or ["val_acc", complexity], study.directions, strict=False
        )
    )
    facts = [
        (
            "dataset",
            f"{data.name} {tuple(data.input_shape)}, {data.num_classes} classes; "
            f"{len(data.train_y)} train / {len(data.val_y)} validation / {len(data.test_y)} test",
        ),
        ("objectives", objectives),
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
    return facts


def _champion_matrix(
    run: StudyRun, champ: Champion | None, test: bool, missing: dict[str, str]
) -> tuple[float | None, Any]:
    if champ is None:
        missing["confusion"] = "the front is empty"
        return None, None
    if not test:
        missing["confusion"] = "the held-out test evaluation was skipped (--no-test)"
        return None, None
    try:
        return _confusion(run, champ)
    except (MlflowException, OSError, ModelFileError) as e:
        missing["confusion"] = (
            f"the weights of trial {champ.trial.number} cannot be loaded from run "
            f"{champ.run_id}/{MODEL_ARTIFACT}: {str(e).splitlines()[0]}"
        )
        return None, None


def collect(run: StudyRun, complexity: str, *, test: bool = True) -> Findings:
    """What the report of ``run`` (an opened study) says. ``test`` evaluates the front members
    on the held-out test split (recorded once, as ``cnnas pareto`` does)."""
    recs = run.records()
    trained = [r for r in recs if r.candidate]
    top = front(recs, complexity)
    tests = {r.number: test_accuracy(run, r) for r in top} if test else {}
    aliases = assign_aliases(members(top), run.cfg.registry.rule(), complexity) if top else {}
    trial_aliases: dict[int, list[str]] = {}
    for alias, m in sorted(aliases.items()):
        trial_aliases.setdefault(m.trial, []).append(alias)
    missing: dict[str, str] = {}
    if not trained:
        for section in ("pareto", "history"):
            missing[section] = "no trial has been trained yet"
    measured = {r.number for r in recs if r.trained}
    try:
        found = importances(accuracy_study(run.study, measured), complexity)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        found = {}
        missing["importances"] = f"parameter importances cannot be computed: {e}"
    if not top:
        missing["curves"] = "the front is empty"
    champ = _champion(run, recs, aliases)
    champ_acc, matrix = _champion_matrix(run, champ, test, missing)
    finals = final_runs(run.study)
    tau = kendall_tau([(f.search_val_acc, f.test_acc) for f in finals.values()]) if test else None
    facts = _facts(run, complexity, champ)
    if finals:
        epochs = sorted({f.epochs for f in finals.values()})
        facts.append(
            (
                "final training",
                f"{len(finals)} network(s) trained again on {next(iter(finals.values())).data} "
                f"for {'/'.join(map(str, epochs))} epoch(s); the registered versions are these"
                + (f"; rank agreement with the search, Kendall's tau {tau:+.2f}" if tau else ""),
            )
        )
    return Findings(
        study=run.study,
        name=run.cfg.study.name,
        complexity=complexity,
        trained=trained,
        measured=measured,
        front=top,
        tests=tests,
        trial_aliases=trial_aliases,
        budget=_budget(run, recs),
        champion=champ,
        champion_acc=champ_acc,
        confusion=matrix,
        classes=tuple(run.data.classes),
        test_images=len(run.data.test_y),
        importances=found,
        curves={r.number: _curves(run, r) for r in top},
        facts=facts,
        finals=finals,
        rank_agreement=tau,
        with_test=test,
        missing=missing,
    )
