"""Pareto-aware early stopping for multi-objective studies.

Optuna's pruners work on one objective (``trial.report`` raises ``NotImplementedError`` in a
multi-objective study). The rule here compares like with like instead: at the end of an epoch, a
trial is stopped when enough completed trials that were no larger (parameters or MACs) had, at the
same epoch, a clearly higher validation accuracy. Such a trial can hardly end on the front: it is
already beaten at this epoch by smaller networks, and it is not cheaper than them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pytorch_lightning as pl

from ._records import TrialRecord

__all__ = ["OptunaPruning", "ParetoPruner", "PruneRule", "Reference", "prune_reason", "references"]


@dataclass(frozen=True)
class PruneRule:
    """When a running trial is stopped. The defaults live in one place, the config's
    ``pruning`` section (search/_config.py), where bench/pruning.py's measured setting is."""

    # Accuracy points (fraction) by which a comparable trial must lead to count as clearly better.
    margin: float
    # How many clearly better, no larger, completed trials it takes to stop a trial.
    min_better: int
    # Epochs (1-based) that are never judged; a trial is only ever compared at the same epoch.
    warmup_epochs: int


@dataclass(frozen=True)
class Reference:
    """A completed trial as the rule sees it: its size and its per-epoch validation accuracy."""

    trial: int
    complexity: float
    val_acc: tuple[float, ...]


def prune_reason(
    epoch: int,
    accuracy: float,
    complexity: float,
    refs: Sequence[Reference],
    rule: PruneRule,
) -> str | None:
    """Why a trial at ``epoch`` (0-based) with this accuracy and size should stop, or None."""
    if epoch + 1 <= rule.warmup_epochs:
        return None
    better = [
        r
        for r in refs
        if r.complexity <= complexity
        and len(r.val_acc) > epoch
        and r.val_acc[epoch] >= accuracy + rule.margin
    ]
    if len(better) < rule.min_better:
        return None
    shown = ", ".join(f"{r.trial} ({r.val_acc[epoch]:.3f})" for r in better[:5])
    return (
        f"epoch {epoch + 1}: val_acc {accuracy:.4f} is at least {rule.margin:g} below "
        f"{len(better)} completed trials no larger than it at the same epoch: {shown}"
    )


def references(trials: Sequence[TrialRecord], complexity: str) -> list[Reference]:
    """The trained trials of a study (repeats left out) with their validation-accuracy curves."""
    return [
        Reference(r.number, r.complexity(complexity), tuple(r.curves["val_acc"]))
        for r in trials
        if r.candidate and r.curves.get("val_acc")
    ]


class ParetoPruner(pl.Callback):
    """Stops a trial's training by :func:`prune_reason`, raising ``optuna.TrialPruned``.

    ``refs()`` gives the study's completed trials when asked (once an epoch), so a trial is
    judged against what other workers finished meanwhile. It only judges: what the trial
    recorded up to the stop is the study's to write.
    """

    def __init__(
        self, refs: Callable[[], Sequence[Reference]], complexity: float, rule: PruneRule
    ) -> None:
        self.refs = refs
        self.complexity = complexity
        self.rule = rule

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        curves = module.curves
        if not curves["val_acc"]:
            return
        epoch = len(curves["val_acc"]) - 1
        if epoch + 1 <= self.rule.warmup_epochs or epoch + 1 >= trainer.max_epochs:
            return  # nothing to judge yet, or nothing left to save
        reason = prune_reason(epoch, curves["val_acc"][-1], self.complexity, self.refs(), self.rule)
        if reason is not None:
            raise optuna.TrialPruned(reason)


class OptunaPruning(pl.Callback):
    """Reports each epoch's validation accuracy to Optuna and stops the trial when the study's
    pruner (median, Hyperband, successive halving) says so. Single-objective studies only:
    Optuna refuses ``trial.report`` with several objectives.

    Runs at the end of the training epoch, after Lightning's validation loop, so the value
    reported for epoch ``e`` is that epoch's validation accuracy.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        curves = module.curves
        if not curves["val_acc"]:
            return
        epoch = len(curves["val_acc"]) - 1
        self.trial.report(float(curves["val_acc"][-1]), epoch)
        if epoch + 1 >= trainer.max_epochs or not self.trial.should_prune():
            return
        raise optuna.TrialPruned(
            f"epoch {epoch + 1}: val_acc {curves['val_acc'][-1]:.4f}; "
            f"Optuna's {type(self.trial.study.pruner).__name__} stopped it"
        )
