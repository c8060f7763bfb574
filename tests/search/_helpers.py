"""Reading a study the way the commands do, for assertions."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial

from cnnas.search._aliases import Member
from cnnas.search._records import front, members, records, state_counts

# A small space on 8x8 digits: every network trains in milliseconds.
SMALL_SPACE = {
    "blocks": {"min": 1, "max": 2},
    "base_filters": [4, 8],
    "kernels": [3],
    "convs": [1],
    "batch_norm": [False],
    "pools": ["max", "none"],
    "block_dropout": [0.0],
    "aggregations": ["gap", "flatten"],
    "dense_layers": [0],
}


def front_of(study: optuna.Study, axis: str | None = None) -> list[FrozenTrial]:
    """The trials of the study's one Pareto front on ``axis`` (default: the complexity its
    config names), smallest first."""
    if axis is None:
        axis = study.user_attrs.get("config", {}).get("study", {}).get("complexity", "params")
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    return [by_number[r.number] for r in front(records(trials), axis)]


def members_of(trials: Sequence[FrozenTrial]) -> list[Member]:
    """The trials as the alias rules see them."""
    return members(records(trials))


def counts_of(study: optuna.Study) -> dict[str, float]:
    return state_counts(records(study.get_trials(deepcopy=False)))
