"""The pruning benchmark's replay: the rule's own decisions on a finished study's trials.

The figures in the README come from this function, so it is checked on hand-made trials whose
epochs and hypervolume are worked out by hand.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from cnnas.search._pruning import PruneRule

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_pruning():
    sys.path.insert(0, str(BENCH))  # bench scripts import their siblings by name
    try:
        yield importlib.import_module("pruning")
    finally:
        sys.path.remove(str(BENCH))


def trained(number_params: float, curve: list[float], **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.COMPLETE,
        values=[curve[-1], number_params],
        user_attrs={
            "params": number_params,
            "val_acc": curve[-1],
            "curves": {"val_acc": curve},
            **attrs,
        },
    )


def test_replay_counts_the_epochs_up_to_each_stop_and_drops_stopped_trials(bench_pruning) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trials(
        [
            trained(100, [0.50, 0.90, 0.95]),  # nothing before it: trains 3 epochs
            trained(1000, [0.30, 0.50, 0.60]),  # 0.30 < 0.50 - margin at epoch 1: stops, 1 epoch
            trained(50, [0.20, 0.40, 0.90]),  # smaller than every reference: trains 3 epochs
            trained(1000, [0.52, 0.91, 0.99]),  # within the margin at every judged epoch: 3
            trained(100, [0.50, 0.90, 0.95], duplicate_of=0),  # a repeat trains nothing
            trained(10, [0.1, 0.1, 0.1], infeasible="over budget"),  # never trained
        ]
    )
    epochs, hv = bench_pruning.replay(study, PruneRule(margin=0.02, min_better=1, warmup_epochs=0))
    assert epochs == 3 + 1 + 3 + 3
    # the front: (0.90, 50), (0.95, 100), (0.99, 1000) in (accuracy, log10 params), to 10^8
    expected = (
        0.90 * (math.log10(100) - math.log10(50))
        + 0.95 * (math.log10(1000) - math.log10(100))
        + 0.99 * (8.0 - math.log10(1000))
    )
    assert hv == pytest.approx(expected)


def test_replay_never_judges_the_last_epoch_and_respects_the_warm_up(bench_pruning) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trials(
        [
            trained(100, [0.90, 0.90, 0.90]),
            trained(1000, [0.10, 0.89, 0.20]),  # warm-up hides epoch 1; the last is not judged
        ]
    )
    epochs, _ = bench_pruning.replay(study, PruneRule(margin=0.02, min_better=1, warmup_epochs=1))
    assert epochs == 6
    epochs, _ = bench_pruning.replay(study, PruneRule(margin=0.02, min_better=1, warmup_epochs=0))
    assert epochs == 3 + 1
