"""What a trial recorded, read back as one typed record, and the one Pareto front of a study.

A trial keeps everything as Optuna user attributes (so that optuna-dashboard, other workers and
later commands can read it without this code). The names of those attributes live here and only
here: the study writes them through :data:`ATTR` and every reader goes through
:class:`TrialRecord`, so no command tests ``"infeasible" in trial.user_attrs`` on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from cnnas.models import ArchSpec

from ._aliases import COMPLEXITIES, Member, pareto_members

__all__ = [
    "ATTR",
    "COUNTED_STATES",
    "TrialRecord",
    "counted_trials",
    "front",
    "members",
    "records",
    "state_counts",
]


class _Attrs:
    """The user-attribute names a trial is recorded under (one constant per fact)."""

    # Written when the trial's architecture is known, before any training.
    worker = "worker"
    spec = "spec"
    spec_hash = "spec_hash"
    identity = "identity"  # spec hash, plus '+aug' when trained with augmentation
    augment = "augment"
    params = "params"
    macs = "macs"
    # Median milliseconds of one image and of a batch (the study's latency settings).
    latency_ms = "latency_ms"
    latency_batch_ms = "latency_batch_ms"
    device = "device"
    run_id = "mlflow_run_id"
    # The budget violations (> 0: over), for samplers that read them and for the dashboard.
    constraints = "constraints"
    # The outcome.
    curves = "curves"
    infeasible = "infeasible"  # why the architecture was not trained
    duplicate_of = "duplicate_of"  # the earlier trial whose result this one took
    pruned = "pruned"  # why training stopped early
    pruned_epoch = "pruned_epoch"
    failure = "fail_reason"
    interrupted = "interrupted"  # stopped by Ctrl-C: not counted, the study trains another
    oom_batch_size = "oom_batch_size"
    # Retries of trials whose worker died.
    retry_of = "retry_of"
    # Set when the trial is queued from study.start_from: the point's index in that list.
    start_point = "start_point"
    retry_history = "retry_history"


ATTR = _Attrs()

# The final metrics of a trained trial (TrialResult.metrics()), as user attributes.
METRICS = (
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "params",
    "macs",
    "ratio",
    "seconds",
    "epochs",
    "executed_macs",
)

# States that count towards a study's trial total; a RUNNING trial does not.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as every command sees it, read from its ``FrozenTrial``."""

    number: int
    state: TrialState
    values: tuple[float, ...] | None
    params: int | None
    macs: int | None
    # MACs per image its validation images actually ran (adaptive depth); else ``macs``.
    executed_macs: float | None
    latency_ms: float | None
    latency_batch_ms: float | None
    val_acc: float | None
    val_loss: float | None
    train_acc: float | None
    train_loss: float | None
    ratio: float | None
    seconds: float | None
    epochs: int | None
    curves: dict[str, list[float]]
    spec_dict: dict[str, Any] | None
    spec_hash: str | None
    identity: str | None
    augment: bool
    run_id: str | None
    worker: str | None
    device: str | None
    infeasible: str | None
    duplicate_of: int | None
    pruned: str | None
    failure: str | None
    interrupted: bool
    retry_of: int | None
    # The study.start_from point the trial ran (its index), or None: the sampler proposed it.
    start_point: int | None
    started: datetime | None
    completed: datetime | None
    attrs: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        a = t.user_attrs
        macs = a.get(ATTR.macs)
        dup = a.get(ATTR.duplicate_of)
        retry = a.get(ATTR.retry_of)
        point = a.get(ATTR.start_point)
        return cls(
            number=t.number,
            state=t.state,
            values=tuple(t.values) if t.values is not None else None,
            params=None if a.get(ATTR.params) is None else int(a[ATTR.params]),
            macs=None if macs is None else int(macs),
            executed_macs=_float(a.get("executed_macs", macs)),
            latency_ms=_float(a.get(ATTR.latency_ms)),
            latency_batch_ms=_float(a.get(ATTR.latency_batch_ms)),
            val_acc=_float(a.get("val_acc")),
            val_loss=_float(a.get("val_loss")),
            train_acc=_float(a.get("train_acc")),
            train_loss=_float(a.get("train_loss")),
            ratio=_float(a.get("ratio")),
            seconds=_float(a.get("seconds")),
            epochs=None if a.get("epochs") is None else int(a["epochs"]),
            curves={k: list(v) for k, v in (a.get(ATTR.curves) or {}).items()},
            spec_dict=a.get(ATTR.spec),
            spec_hash=a.get(ATTR.spec_hash),
            identity=a.get(ATTR.identity),
            augment=bool(a.get(ATTR.augment, False)),
            run_id=a.get(ATTR.run_id),
            worker=a.get(ATTR.worker),
            device=a.get(ATTR.device),
            infeasible=a.get(ATTR.infeasible),
            duplicate_of=None if dup is None else int(dup),
            pruned=a.get(ATTR.pruned),
            failure=a.get(ATTR.failure),
            interrupted=bool(a.get(ATTR.interrupted, False)),
            retry_of=None if retry is None else int(retry),
            start_point=None if point is None else int(point),
            started=t.datetime_start,
            completed=t.datetime_complete,
            attrs=dict(a),
        )

    @property
    def spec(self) -> ArchSpec | None:
        """The architecture the trial trained, rebuilt from its stored spec (not the space)."""
        return ArchSpec.from_dict(self.spec_dict) if self.spec_dict else None

    @property
    def trained(self) -> bool:
        """Complete with a measured accuracy: trained, or a repeat of a trained architecture."""
        return (
            self.state == TrialState.COMPLETE
            and self.infeasible is None
            and self.val_acc is not None
        )

    @property
    def candidate(self) -> bool:
        """May stand on the front: trained, and not a repeat (its original stands for it)."""
        return self.trained and self.duplicate_of is None and math.isfinite(self.val_acc or 0.0)

    def complexity(self, axis: str) -> float:
        """The trial's size on the front's complexity axis.

        ``params``: trainable parameters. ``macs``: the MACs per image its validation images
        actually executed, which is the full count except for adaptive-depth networks; that is
        what a MACs study minimises, so the front, the registry and the aliases all use it.
        ``latency``: the median milliseconds of one image on the machine that timed it.
        """
        if axis == "params":
            return float(self.params or 0)
        if axis == "macs":
            return float(self.executed_macs if self.executed_macs is not None else self.macs or 0)
        if axis == "latency":
            return float(self.latency_ms or 0.0)
        raise ValueError(f"unknown complexity axis {axis!r}; known: {', '.join(COMPLEXITIES)}")

    def wall_seconds(self) -> float:
        if self.started is None or self.completed is None:
            return 0.0
        return max((self.completed - self.started).total_seconds(), 0.0)


def records(trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    """Every trial as a record, in trial-number order."""
    return sorted((TrialRecord.from_trial(t) for t in trials), key=lambda r: r.number)


def members(recs: Iterable[TrialRecord]) -> list[Member]:
    """The front candidates as the alias rules see them (MACs: executed, see ``complexity``)."""
    return [
        Member(
            r.number,
            float(r.val_acc),
            int(r.params or 0),
            r.complexity("macs"),
            r.complexity("latency"),
        )
        for r in recs
        if r.candidate
    ]


def front(recs: Sequence[TrialRecord], axis: str = "params") -> list[TrialRecord]:
    """The Pareto front of validation accuracy (up) against ``axis`` (down), smallest first.

    The one front of a study: ``study status``, ``pareto``, ``register``, the report and the
    aliases all read it. Candidates with identical objectives all stay.
    """
    by_number = {r.number: r for r in recs}
    return [by_number[m.trial] for m in pareto_members(members(recs), axis)]


def counted_trials(recs: Sequence[TrialRecord], states: Sequence[TrialState]) -> int:
    """Trials in ``states`` that count towards the total: a failure that was queued again is
    replaced by its retry, and an interrupted trial (Ctrl-C) is replaced by the next one."""
    retried = {r.retry_of for r in recs if r.retry_of is not None}
    return sum(
        r.state in states
        and not (r.state == TrialState.FAIL and (r.number in retried or r.interrupted))
        for r in recs
    )


def state_counts(recs: Sequence[TrialRecord]) -> dict[str, float]:
    """Trials by state, and how many complete ones were infeasible or repeats."""
    counts = {f"trials_{s.name.lower()}": 0.0 for s in (*COUNTED_STATES, TrialState.RUNNING)}
    counts["trials_infeasible"] = counts["trials_duplicate"] = 0.0
    for r in recs:
        key = f"trials_{r.state.name.lower()}"
        if key in counts:
            counts[key] += 1
        counts["trials_infeasible"] += r.infeasible is not None
        counts["trials_duplicate"] += r.duplicate_of is not None
    return counts
