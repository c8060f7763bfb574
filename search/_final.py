"""The final phase of a study: the networks it hands over, trained at full fidelity.

A search scores many architectures cheaply (few epochs, often a data subset); what a user takes
away must be trained properly. After the search, the members the registry's aliases point at
(the champion first) are trained again from scratch on the whole training pool (train +
validation, or train alone), for as many epochs as the rest of the study's budget allows, with
the final recipe (the one-cycle schedule by default: it plans for the epochs it is given and
needs no validation split to decide when to decay). Each is scored once on the held-out test
split; those are the figures the registry and the report give. The search-fidelity scores stay
on the trials, and the rank agreement between the two (Kendall's tau over the members) says how
far the cheap scores could be trusted.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from cnnas.models import build, count_macs, count_params
from cnnas.objectives import ImageData, TrainConfig, epoch_seconds, evaluate, load_dataset

from ._aliases import assign_aliases, within_limits
from ._lanes import DataSource, Job, LaneEvent, LaneFailed, run_lanes
from ._records import TrialRecord, front, members
from ._study import StudyRun
from .errors import StudyFailing

__all__ = [
    "FINAL_ATTR",
    "FinalPlan",
    "FinalRun",
    "Lane",
    "contenders",
    "final_members",
    "final_runs",
    "fitting_epochs",
    "is_reference",
    "kendall_tau",
    "kept_runs",
    "lane_count",
    "plan_final",
    "plan_lanes",
    "probe_epochs",
    "reference_members",
    "searched_before",
    "stand_in",
    "train_final",
]

# Study user attribute: {trial number: FinalRun as a dict}.
FINAL_ATTR = "final_runs"
# The most epochs a reference trains (it trains for its whole time otherwise; a bound all the
# same, for a tiny network on a long budget).
REFERENCE_MAX_EPOCHS = 1000
# Seconds kept free after the final phase for registering the networks and writing the report
# (measured on the CPU preset: about 10 s together), at most a tenth of a short budget.
RESERVE_SECONDS = 15.0

Line = Callable[[str], None]


@dataclass(frozen=True)
class FinalRun:
    """One network of the final phase."""

    trial: int
    run_id: str
    test_acc: float
    test_loss: float
    epochs: int
    seconds: float
    # The trial's validation accuracy in the search (its cheap score), for the rank agreement.
    search_val_acc: float
    params: int
    macs: int
    data: str  # what it trained on: "train+val" or "train"
    # A study.start_from network trained as a yardstick (final.references), not a front member.
    reference: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinalPlan:
    """Who is trained, for how many epochs, within which budget."""

    members: tuple[TrialRecord, ...]
    epochs: int  # the champion's; train_final re-plans the others into the time left
    budget: float  # seconds
    estimate: float  # seconds the plan should take
    reason: str  # how the numbers were derived, in words
    # Seconds one epoch of each member takes on the final data (by trial number).
    epoch_seconds: Mapping[int, float] = dataclasses.field(default_factory=dict)


def final_runs(study: Any) -> dict[int, FinalRun]:
    """The final phase's networks recorded on the study, by trial number."""
    return {int(k): FinalRun(**v) for k, v in study.user_attrs.get(FINAL_ATTR, {}).items()}


def final_members(recs: Sequence[TrialRecord], run: StudyRun) -> list[TrialRecord]:
    """The networks to hand over, the champion first: the alias members, the champion alone, or
    the whole front (``final.members``); then the references (``reference_members``)."""
    chosen = _front_members(recs, run)
    return chosen + [r for r in reference_members(recs, run) if r not in chosen]


def reference_members(recs: Sequence[TrialRecord], run: StudyRun) -> list[TrialRecord]:
    """The trained trials of ``study.start_from``'s networks, in its order, when
    ``final.references`` is on: the final phase trains them as it trains the search's finds."""
    if not run.cfg.final.references:
        return []
    starts = [r for r in recs if r.start_point is not None and r.candidate]
    return sorted(starts, key=lambda r: (r.start_point, r.number))


def is_reference(run: StudyRun, r: TrialRecord) -> bool:
    """Whether the final phase trains ``r`` as a reference: a study.start_from network, with
    final.references on (it may be a front member as well)."""
    return run.cfg.final.references and r.start_point is not None


def _front_members(recs: Sequence[TrialRecord], run: StudyRun) -> list[TrialRecord]:
    cfg = run.cfg
    top = front(recs, cfg.study.complexity)
    if not top:
        return []
    if cfg.final.members == "front":
        return list(top)
    aliases = assign_aliases(members(top), cfg.registry.rule(), cfg.study.complexity)
    order = ["champion", "most-accurate", "knee", "smallest", "best-ratio"]
    if cfg.final.members == "champion":
        order = order[:1] if "champion" in aliases else ["most-accurate"]
    by_number = {r.number: r for r in top}
    chosen: list[TrialRecord] = []
    for alias in order:
        m = aliases.get(alias)
        if m is not None and by_number[m.trial] not in chosen:
            chosen.append(by_number[m.trial])
    chosen += contenders(top, chosen, run)
    # A member barely smaller than a clearly better one is not worth its share of the phase
    # (measured on the CPU preset: the 'smallest' alias was 1.92k parameters at 0.64, the
    # knee 2.00k at 0.83; it took 78 of 267 s): the better one stands for it.
    axis = cfg.study.complexity
    return [r for r in chosen if stand_in(r, chosen, axis) is None]


def contenders(
    top: Sequence[TrialRecord], chosen: Sequence[TrialRecord], run: StudyRun
) -> list[TrialRecord]:
    """``final.contenders`` front members besides ``chosen``, within the champion's limits,
    the most accurate in the search first (ties: the smaller, then the lower trial number).

    Why: the champion is the search's pick at its few epochs, and those scores rank networks
    that learn at different speeds unreliably (in a 10-minute study on the CPU preset the
    champion, one conv layer, scored 0.871 in the search and 0.898 trained; an 11.4k network
    just behind it in the search was never trained). A few more within the limits cost a
    share of the final phase and give the user measured alternatives of the same size."""
    n = run.cfg.final.contenders
    if n <= 0:
        return []
    rule = run.cfg.registry.rule()
    ok = {m.trial for m in members(top) if within_limits(m, rule)}
    allowed = [r for r in top if r not in chosen and r.number in ok]
    axis = run.cfg.study.complexity
    allowed.sort(key=lambda r: (-(r.val_acc or 0.0), r.complexity(axis), r.number))
    return allowed[:n]


# Sizes within this fraction of each other are one size on the front's log scale: of two such
# members the more accurate stands for the other in the final phase and the registry.
NEAR = 0.1


def stand_in(
    r: TrialRecord, others: Sequence[TrialRecord], axis: str = "params"
) -> TrialRecord | None:
    """The member of ``others`` that stands for ``r``: at most ``NEAR`` larger on ``axis``
    and more accurate in the search (the most accurate such), or None."""
    size = r.complexity(axis)
    better = [
        o
        for o in others
        if o.number != r.number
        and o.complexity(axis) <= (1 + NEAR) * size
        and (o.val_acc or 0.0) > (r.val_acc or 0.0)
    ]
    return max(better, key=lambda o: (o.val_acc or 0.0, -o.number)) if better else None


def _epoch_seconds(r: TrialRecord, scale: float) -> float:
    """A member's seconds per epoch on the final data: its search epochs, scaled by data size."""
    times = r.curves.get("epoch_seconds") or [max((r.seconds or 1.0) / max(r.epochs or 1, 1), 0.1)]
    return max(sum(times) / len(times), 1e-3) * scale


def fitting_epochs(
    chosen: Sequence[TrialRecord],
    budget: float,
    epoch_seconds: Mapping[int, float],
    limit: int,
    pace: float = 1.0,
) -> int:
    """The epochs each of ``chosen`` can train within ``budget`` seconds (at most ``limit``),
    when their epochs take ``pace`` times ``epoch_seconds`` (by trial number)."""
    per_epoch = pace * sum(epoch_seconds[r.number] for r in chosen)
    return min(int(budget // per_epoch), limit)


def plan_final(
    run: StudyRun,
    recs: Sequence[TrialRecord],
    budget: float,
    final_images: int,
    measured: Mapping[int, float] | None = None,
    keep: Collection[int] = (),
) -> FinalPlan | None:
    """The plan that fits ``budget`` seconds, or None when not one epoch of the champion fits.

    ``measured``: each member's seconds per epoch on the final data, timed (``probe_epochs``);
    without it, its search epochs scaled to the larger data. ``keep``: the trial numbers of
    members trained already (``kept_runs``), left out of the plan."""
    members_ = final_members(recs, run)
    chosen = [r for r in members_ if r.number not in keep]
    if not chosen or budget <= 0:
        return None
    scale = final_images / max(len(run.data.train_y), 1)
    limit = run.cfg.final.max_epochs
    if measured:
        times = {r.number: measured[r.number] for r in chosen}
        how = "timed on the final data"
    else:
        times = {r.number: _epoch_seconds(r, scale) for r in chosen}
        how = f"their search epochs x {scale:.2f} for the larger data"
    # The champion's larger share only while the champion is still to train.
    share = run.cfg.final.champion_share if chosen[0] is members_[0] else 0.0
    while chosen:
        per_epoch = sum(times[r.number] for r in chosen)
        epochs = fitting_epochs(chosen, budget, times, limit)
        if epochs >= 1:
            reason = (
                f"{len(chosen)} network(s) x {epochs} epoch(s) on {final_images:,} images: about "
                f"{per_epoch:.1f} s an epoch for all of them ({how}), within {budget:.0f} s"
            )
            estimate = per_epoch * epochs
            split = _champion_first(chosen, budget, times, limit, share, epochs)
            if split is not None:
                epochs, rest_epochs = split
                champion = times[chosen[0].number]
                estimate = epochs * champion + rest_epochs * (per_epoch - champion)
                reason = (
                    f"the champion x {epochs} epoch(s) (final.champion_share {share:g}), then "
                    f"{len(chosen) - 1} network(s) x {rest_epochs} epoch(s), on "
                    f"{final_images:,} images: about {per_epoch:.1f} s an epoch for all of them "
                    f"({how}), within {budget:.0f} s"
                )
            if epochs == limit:
                reason += f" (final.max_epochs {limit})"
            return FinalPlan(tuple(chosen), epochs, budget, estimate, reason, times)
        chosen = chosen[:-1]  # the budget is short: fewer networks, the champion last to go
    return None


def _champion_first(
    chosen: Sequence[TrialRecord],
    budget: float,
    times: Mapping[int, float],
    limit: int,
    share: float,
    equal: int,
) -> tuple[int, int] | None:
    """The champion's epochs from ``share`` of the budget and the others' from what is left,
    or None when that gives the champion no more than ``equal`` epochs or the others none
    (train_final gives them the epochs that fit the time actually left)."""
    if share <= 0 or len(chosen) < 2:
        return None
    champion, rest = chosen[0], chosen[1:]
    epochs = fitting_epochs([champion], share * budget, times, limit)
    rest_epochs = fitting_epochs(rest, budget - epochs * times[champion.number], times, epochs)
    return (epochs, rest_epochs) if epochs > equal and rest_epochs >= 1 else None


# A probe trains on 1/PROBE_FRACTION of the final data; it runs only when the final data has
# PROBE_MIN_STEPS batches in that fraction (fewer steps time the fixed costs, not the epochs)
# and when the search's estimate promises PROBE_MIN_EPOCHS epochs (else it would eat them).
PROBE_FRACTION = 12
PROBE_MIN_STEPS = 8
PROBE_MIN_EPOCHS = 4


def probe_epochs(
    run: StudyRun, members: Sequence[TrialRecord], data: ImageData
) -> dict[int, float]:
    """Each member's seconds per epoch on ``data``, timed by ``epoch_seconds`` on a
    twelfth of it with the final recipe (about a quarter of an epoch each).

    The search's own epoch times predict this only roughly: they were taken on the search's
    data subset, where each epoch's fixed costs weigh more, at other moments of a shared
    machine (measured on the CPU preset: the networks took 1.14x the plan in one run, 0.70x
    in the next)."""
    cfg = run.cfg
    times = {}
    for r in members:
        train_cfg = dataclasses.replace(
            cfg.train.to_train_config(cfg.study.seed, augment=r.augment),
            schedule=cfg.final.schedule,
        )
        times[r.number] = epoch_seconds(
            r.spec, data, train_cfg, fraction=PROBE_FRACTION, trainer=run.trainer
        )
    return times


def final_data(run: StudyRun) -> ImageData:
    """The whole training pool (no ``data.subset``), with validation merged into training when
    ``final.data`` is ``train+val`` (its validation split then only draws the curves)."""
    cfg = run.cfg
    kwargs = {**cfg.data.load_kwargs(), "subset": None}
    data = load_dataset(cfg.data.dataset, **kwargs, seed=cfg.study.seed)
    if cfg.final.data == "train":
        return data
    return dataclasses.replace(
        data,
        train_x=torch.cat([data.train_x, data.val_x]),
        train_y=torch.cat([data.train_y, data.val_y]),
    )


class _LiveEpochs(pl.Callback):
    """Sends each finished epoch of a final training to its MLflow run and to the progress."""

    def __init__(self, run: StudyRun, run_id: str, line: Line, label: str, epochs: int) -> None:
        self.run, self.run_id, self.line, self.label, self.epochs = run, run_id, line, label, epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        values = {k: v[-1] for k, v in module.curves.items() if v}
        epoch = len(module.curves["val_acc"]) - 1
        self.run.tracker.log_epoch(self.run_id, epoch, values)
        self.line(
            f"        {self.label} epoch {epoch + 1:>3}/{self.epochs}  "
            f"train_loss {values.get('train_loss', 0):.4f}  "
            f"({values.get('epoch_seconds', 0):.1f}s)"
        )


def _train_config(run: StudyRun, r: TrialRecord) -> TrainConfig:
    """The final recipe for one member: the study's training with the final schedule; a
    search network at most final.max_epochs, a reference as many as its time allows."""
    cfg = run.cfg
    train_cfg = cfg.train.to_train_config(cfg.study.seed, augment=r.augment)
    most = REFERENCE_MAX_EPOCHS if is_reference(run, r) else cfg.final.max_epochs
    return dataclasses.replace(train_cfg, schedule=cfg.final.schedule, max_epochs=most)


def _start_run(run: StudyRun, r: TrialRecord) -> str:
    cfg = run.cfg
    tags = {"cnnas.final_of": str(r.number), "cnnas.role": "final"}
    if is_reference(run, r):
        tags["cnnas.reference"] = str(r.start_point)
    return run.tracker.start_trial(
        run.parent_run_id,
        cfg.study.name,
        r.number,
        r.spec,
        run_name=f"{cfg.study.name}-trial-{r.number}-final",
        extra_tags=tags,
    )


def _finish_run(
    run: StudyRun,
    r: TrialRecord,
    run_id: str,
    data: ImageData,
    model: torch.nn.Module,
    epochs: int,
    seconds: float,
) -> FinalRun:
    """Scores a trained member once on the test split, logs its model and closes its run."""
    cfg = run.cfg
    loss, acc = evaluate(model, data.test_x, data.test_y, data.mean, data.std)
    spec = r.spec
    params, macs = count_params(spec), count_macs(spec)
    extra = {**run.model_extra(r.number), "final_epochs": epochs, "trained_on": cfg.final.data}
    # model_extra's preprocessing is the search data's; the final data's statistics are the
    # ones this network was trained with.
    extra.update(mean=list(data.mean), std=list(data.std))
    run.tracker.log_model(run_id, model, extra)
    run.tracker.end_trial(
        run_id,
        "FINISHED",
        metrics={
            "test_acc": acc,
            "test_loss": loss,
            "params": float(params),
            "macs": float(macs),
            "seconds": seconds,
            "epochs": float(epochs),
        },
    )
    return FinalRun(
        trial=r.number,
        run_id=run_id,
        test_acc=acc,
        test_loss=loss,
        epochs=epochs,
        seconds=seconds,
        search_val_acc=float(r.val_acc or 0.0),
        params=int(params),
        macs=int(macs),
        data=cfg.final.data,
        reference=is_reference(run, r),
    )


def _train_one(
    run: StudyRun,
    r: TrialRecord,
    data: ImageData,
    epochs: int,
    seconds: float,
    max_seconds: float,
    line: Line,
) -> FinalRun:
    cfg = run.cfg
    # ``epochs`` is the plan; the time budget lets the fit re-plan them at the pace it meets
    # and end annealed within its ``seconds`` (a time limit alone would cut the schedule).
    train_cfg = dataclasses.replace(
        _train_config(run, r), epochs=epochs, time_budget=seconds, max_seconds=max_seconds
    )
    run_id = _start_run(run, r)
    live = _LiveEpochs(run, run_id, line, f"trial {r.number}", epochs)
    result = run.trainer(r.spec, data, train_cfg, seed=cfg.study.seed + r.number, callbacks=[live])
    return _finish_run(run, r, run_id, data, result.model, result.epochs, result.seconds)


def finish_lane_result(
    run: StudyRun,
    r: TrialRecord,
    run_id: str,
    data: ImageData,
    event: LaneEvent,
    done: dict[int, FinalRun],
) -> FinalRun:
    """A network a lane trained (its 'done' event): rebuilt from the weights it sent, scored,
    logged to its MLflow run and recorded on the study."""
    model = build(r.spec)
    model.load_state_dict(torch.load(io.BytesIO(event.weights), weights_only=True))
    model.eval()
    epochs, seconds = int(event.result["epochs"]), float(event.result["seconds"])
    result = _finish_run(run, r, run_id, data, model, epochs, seconds)
    _record(run, done, result)
    return result


def _announce(run: StudyRun, result: FinalRun, line: Line, where: str = "") -> None:
    role = " (reference)" if result.reference else ""
    line(
        f"  {where}trial {result.trial}{role}: test accuracy {result.test_acc:.4f} after "
        f"{result.epochs} epoch(s), {result.seconds:.0f} s (search: val_acc "
        f"{result.search_val_acc:.4f})"
    )


def _record(run: StudyRun, done: dict[int, FinalRun], result: FinalRun) -> None:
    done[result.trial] = result
    # Recorded after each network, so an interrupted phase keeps what it finished.
    run.study.set_user_attr(FINAL_ATTR, {str(k): v.to_dict() for k, v in done.items()})


def lane_count(run: StudyRun) -> int:
    """Networks the final phase trains at once: ``study.workers`` on a CPU, else one."""
    cfg = run.cfg
    on_cpu = cfg.train.accelerator == "cpu" or (
        cfg.train.accelerator == "auto" and not torch.cuda.is_available()
    )
    return max(cfg.study.workers, 1) if on_cpu else 1


def train_final(
    run: StudyRun, budget: float, line: Line = print, head: Any = None
) -> list[FinalRun]:
    """Trains the members that fit ``budget`` seconds and records them on the study.

    ``head``: the references training since the study's start (``_head_start.HeadStart``);
    they are left to it, and recorded when its lanes end, after this phase's own networks."""
    deadline = time.monotonic() + budget
    recs = run.records()
    chosen = final_members(recs, run)
    kept = kept_runs(run, chosen)
    for f in kept.values():
        line(
            f"final training: trial {f.trial} kept from an earlier run of this study (test "
            f"accuracy {f.test_acc:.4f} after {f.epochs} epoch(s) on {f.data})"
        )
    # Left out as the kept networks are: trained in the head start's lanes, which hold on to
    # their cores until the study's end.
    skip = set(kept) | set(head.trials if head is not None else ())
    data = final_data(run)
    free = lane_count(run) - (len(head.trials) if head is not None else 0)
    lanes = min(free, len([r for r in chosen if r.number not in skip]))
    if lanes > 1:
        out = list(kept.values()) + _train_in_lanes(run, recs, data, budget, lanes, skip, line)
    else:
        out = _train_one_by_one(run, recs, data, budget, deadline, kept, line, skip)
    if head is not None:
        out += head.collect(run, data, line)
    tau = kendall_tau([(f.search_val_acc, f.test_acc) for f in out])
    if tau is not None:
        line(f"rank agreement of search and final scores: Kendall's tau {tau:+.2f}")
    return out


def _train_one_by_one(
    run: StudyRun,
    recs: Sequence[TrialRecord],
    data: ImageData,
    budget: float,
    deadline: float,
    kept: dict[int, FinalRun],
    line: Line,
    skip: Collection[int] = (),
) -> list[FinalRun]:
    """One network after the other, each with the whole process's threads. ``skip``: trial
    numbers not to train (the kept ones, and those trained elsewhere)."""
    chosen = final_members(recs, run)
    skip = set(skip) | set(kept)
    plan = plan_final(run, recs, budget, len(data.train_y), keep=skip)
    batch = run.cfg.train.batch_size
    if (
        plan is not None
        and plan.epochs >= PROBE_MIN_EPOCHS
        and len(data.train_y) // PROBE_FRACTION >= PROBE_MIN_STEPS * batch
    ):
        line(f"final training: timing an epoch of each of {len(plan.members)} network(s)")
        measured = probe_epochs(run, plan.members, data)
        plan = plan_final(
            run, recs, deadline - time.monotonic(), len(data.train_y), measured, keep=skip
        )
    if plan is None:
        todo = [r for r in chosen if r.number not in skip]
        if todo:
            who = "the champion" if todo[0] is chosen[0] else f"trial {todo[0].number}"
            line(f"final training: skipped, {budget:.0f} s cannot train one epoch of {who}")
        return list(kept.values())
    line(f"final training: {plan.reason}")
    done = final_runs(run.study)
    out: list[FinalRun] = list(kept.values())
    planned = taken = 0.0  # seconds the networks trained so far were estimated at, and took
    for i, r in enumerate(plan.members):
        epochs = plan.epochs
        pace = taken / planned if planned else 1.0  # seconds taken per second planned so far
        if i:
            # Testing and registering each network, and a machine whose load changes, are not
            # in the plan: the networks left get the epochs that fit the time left at the
            # pace measured so far, so the phase ends on time instead of cutting the last
            # network's schedule short. At least one epoch each: every alias the registry
            # will set keeps a network trained on the final data (at worst one epoch of each
            # over the budget). Faster than planned, they get the epochs the time left allows
            # (up to final.max_epochs): a plan from the search's epochs alone can be far off
            # (2 epochs planned, 46% of the phase used, in a study of two CPU workers).
            left = deadline - time.monotonic()
            rest = plan.members[i:]
            limit = run.cfg.final.max_epochs
            epochs = max(fitting_epochs(rest, left, plan.epoch_seconds, limit, pace), 1)
            if epochs != plan.epochs:
                line(
                    f"  the {len(rest)} network(s) left: {epochs} epoch(s) each, to fit the "
                    f"{left:.0f} s left (epochs take {pace:.2f}x the plan's estimate)"
                )
        estimate = plan.epoch_seconds[r.number] * epochs
        # Its share of the time really left, in the plan's proportions (equal epochs, or the
        # champion's share): the fit re-plans its epochs at the pace it meets and ends
        # annealed within it, so a plan that was off costs epochs, never the phase's end.
        rest = plan.members[i:]
        if i == 0 and plan.estimate > 0:
            fraction = min(estimate / plan.estimate, 1.0)
        else:
            fraction = plan.epoch_seconds[r.number] / sum(
                plan.epoch_seconds[m.number] for m in rest
            )
        seconds = max(deadline - time.monotonic(), 0.0) * fraction
        # A safety net for an epoch far slower than planned (the time budget ends it otherwise).
        max_seconds = max(1.5 * seconds, 1.0)
        line(f"  trial {r.number}: {r.spec.summary()}")
        started = time.monotonic()
        result = _train_one(run, r, data, epochs, max(seconds, 1e-3), max_seconds, line)
        planned += estimate
        taken += time.monotonic() - started
        _announce(run, result, line)
        _record(run, done, result)
        out.append(result)
    return out


@dataclass(frozen=True)
class Lane:
    """Networks one lane trains in turn: each with its slot of the lane's seconds and the
    epochs planned for it (the first plan: its fit re-plans them at the pace it meets)."""

    members: tuple[TrialRecord, ...]
    slots: tuple[float, ...]
    epochs: tuple[int, ...]


def plan_lanes(
    run: StudyRun,
    chosen: Sequence[TrialRecord],
    budget: float,
    times: Mapping[int, float],
    lanes: int,
) -> list[Lane]:
    """Who trains in which lane, for how long.

    Each reference (``final.references``) gets a lane of its own while one is left for the
    others, and trains in it for the whole ``budget``: as its user would have trained it alone.
    The search's networks share the other lanes, spread over them longest first; a lane's
    networks train equal epochs (at most ``final.max_epochs``, the champion's share first when
    ``final.champion_share`` asks for one) in ``budget``, the last ones left out when not one
    epoch fits. ``times``: each one's seconds per epoch in a lane.
    """
    cfg = run.cfg
    refs = [r for r in chosen if is_reference(run, r)]
    others = [r for r in chosen if not is_reference(run, r)]
    # A reference of which not one epoch fits the budget is left out, as a network would be.
    refs = [r for r in refs if times[r.number] <= budget]
    alone = refs[: lanes - 1] if others else refs[:lanes]
    others += [r for r in refs if r not in alone]
    out = [
        Lane((r,), (budget,), (max(min(int(budget // times[r.number]), REFERENCE_MAX_EPOCHS), 1),))
        for r in alone
    ]
    shared: list[list[TrialRecord]] = [[] for _ in range(max(lanes - len(alone), 0))]
    for r in sorted(others, key=lambda r: -times[r.number]) if shared else []:
        # Longest first, each to the lane with the least work so far; the champion lands in
        # the first lane since that is empty when it comes (ties go to the lower lane).
        min(shared, key=lambda ms: sum(times[m.number] for m in ms)).append(r)
    limit = cfg.final.max_epochs
    for members_ in shared:
        members_.sort(key=others.index)  # the champion first, as the aliases order them
        while members_:
            epochs = fitting_epochs(members_, budget, times, limit)
            if epochs >= 1:
                each = [epochs] * len(members_)
                share = cfg.final.champion_share if members_[0] is chosen[0] else 0.0
                split = _champion_first(members_, budget, times, limit, share, epochs)
                if split is not None:
                    each = [split[0]] + [split[1]] * (len(members_) - 1)
                slots = tuple(e * times[m.number] for e, m in zip(each, members_, strict=True))
                out.append(Lane(tuple(members_), slots, tuple(each)))
                break
            members_.pop()  # the budget is short: fewer networks, the first one last to go
    return out


def _lane_times(run: StudyRun, chosen: Sequence[TrialRecord], images: int) -> dict[int, float]:
    """Each member's seconds per epoch in a lane, from its search epochs scaled to the final
    data (lanes run only with study.workers > 1, so the search's trials ran with a lane's share
    of the cores too). Rough, and enough: every fit in a lane re-plans its epochs at the pace it
    meets; these only split a shared lane's time and make the first plans."""
    scale = images / max(len(run.data.train_y), 1)
    return {r.number: _epoch_seconds(r, scale) for r in chosen}


def final_source(run: StudyRun) -> DataSource:
    """How a lane loads the final data (``final_data``'s, in the lane's own process)."""
    cfg = run.cfg
    return DataSource(
        cfg.data.dataset,
        {**cfg.data.load_kwargs(), "subset": None},
        cfg.study.seed,
        merge_val=cfg.final.data != "train",
    )


def _train_in_lanes(
    run: StudyRun,
    recs: Sequence[TrialRecord],
    data: ImageData,
    budget: float,
    lanes: int,
    skip: Collection[int],
    line: Line,
) -> list[FinalRun]:
    """The members in ``lanes`` processes side by side, the cores shared between them."""
    cfg = run.cfg
    chosen = [r for r in final_members(recs, run) if r.number not in skip]
    times = _lane_times(run, chosen, len(data.train_y))
    plan = plan_lanes(run, chosen, budget, times, lanes)
    if not plan:
        line(f"final training: skipped, {budget:.0f} s cannot train one epoch of any network")
        return []
    cores = max(torch.get_num_threads(), 1)
    line(
        f"final training: {sum(len(lane.members) for lane in plan)} network(s) in "
        f"{len(plan)} lanes side by side on {cores} CPU thread(s), {budget:.0f} s "
        f"(study.workers {cfg.study.workers}; a lane that finishes hands its threads over):"
    )
    for i, lane in enumerate(plan):
        parts = [
            f"trial {m.number}{' (reference)' if is_reference(run, m) else ''} "
            f"{slot:.0f} s (about {e} epoch(s))"
            for m, slot, e in zip(lane.members, lane.slots, lane.epochs, strict=True)
        ]
        line(f"  lane {i + 1}: " + ", then ".join(parts))
    by_number = {r.number: r for r in chosen}
    jobs = [
        [
            Job(
                trial=m.number,
                spec=m.spec.to_dict(),
                cfg=_train_config(run, m),
                seed=cfg.study.seed + m.number,
                slot=slot,
                epoch_seconds=times[m.number],
            )
            for m, slot in zip(lane.members, lane.slots, strict=True)
        ]
        for lane in plan
    ]
    source = final_source(run)
    done = final_runs(run.study)
    out: list[FinalRun] = []
    runs: dict[int, str] = {}

    def on_event(event: LaneEvent) -> None:
        r = by_number[event.trial]
        where = f"lane {event.lane + 1}, "
        if event.kind == "start":
            runs[r.number] = _start_run(run, r)
            line(f"  {where}trial {r.number}: {r.spec.summary()}")
        elif event.kind == "epoch":
            run.tracker.log_epoch(runs[r.number], event.epoch, event.values)
            line(
                f"        {where}trial {r.number} epoch {event.epoch + 1:>3}  train_loss "
                f"{event.values.get('train_loss', 0):.4f}  "
                f"({event.values.get('epoch_seconds', 0):.1f}s)"
            )
        elif event.kind == "done":
            result = finish_lane_result(run, r, runs[r.number], data, event, done)
            _announce(run, result, line, where)
            out.append(result)

    try:
        run_lanes(jobs, source, budget, cores, on_event)
    except LaneFailed as e:
        # As a failing search: the study registers what is done, then says why and exits 1.
        raise StudyFailing(str(e)) from None
    return out


def kendall_tau(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Kendall's tau-b of the pairs' two orders (None for fewer than 3 pairs): +1 when the
    search ranked the networks as their final test accuracies do, -1 when exactly reversed."""
    if len(pairs) < 3:
        return None
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            da = pairs[i][0] - pairs[j][0]
            db = pairs[i][1] - pairs[j][1]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else None


def final_budget(
    run: StudyRun, started: float, search_seconds: float, *, began: float | None = None
) -> float:
    """Seconds left for the final phase: what remains of ``study.timeout`` (minus a reserve
    for registering and reporting), or, without a timeout, ``final.share`` of the whole time
    in the ratio the search took (share / (1 - share) x the search's seconds).

    Without a timeout the search's seconds are the whole study's: this run's, and, with
    ``began`` (this run's ``time.time()`` at its start), those of the runs before it, so that a
    study resumed after its search ended still earns its final phase. The seconds its kept
    networks took (``kept_runs``) are spent already."""
    share = run.cfg.final.share
    if share <= 0:
        return 0.0
    timeout = run.cfg.study.timeout
    if timeout is not None:
        reserve = min(RESERVE_SECONDS, 0.1 * timeout)
        return max(timeout - (time.monotonic() - started) - reserve, 0.0)
    if began is not None:
        search_seconds += searched_before(run.study.get_trials(deepcopy=False), began)
    kept = kept_runs(run, final_members(run.records(), run))
    return max(share / (1.0 - share) * search_seconds - sum(f.seconds for f in kept.values()), 0.0)


def searched_before(trials: Sequence[Any], before: float) -> float:
    """Wall seconds the study searched before ``before`` (a ``time.time()``): the union of the
    spans of its finished trials that started earlier. A union, not a sum: parallel workers'
    trials overlap; and the time between two runs of the study is in no trial."""
    spans = sorted(
        (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
        for t in trials
        if t.datetime_start is not None
        and t.datetime_complete is not None
        and t.datetime_start.timestamp() < before
    )
    total, end = 0.0, -math.inf
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def kept_runs(run: StudyRun, chosen: Sequence[TrialRecord]) -> dict[int, FinalRun]:
    """The members of ``chosen`` that an earlier run of this study's final phase trained on the
    same data (``final.data``): a resumed or repeated phase keeps them instead of training them
    again (a trial's architecture and seed are fixed, so it would train the same network)."""
    done = final_runs(run.study)
    return {
        r.number: done[r.number]
        for r in chosen
        if r.number in done and done[r.number].data == run.cfg.final.data
    }
