"""References that train from the study's start (``final.head_start``), beside the search.

The final phase trains the ``study.start_from`` networks as references: the networks the user
knew, trained as they would have trained them instead of running a study. A reference needs no
search (its architecture is known before the first trial), yet in the final phase it gets only
that phase's share of the budget, where the user's own network would have had all of it. With
``final.head_start`` each reference starts training in a lane of its own when the study starts
and trains until the study's end, while one worker fewer searches beside it: on 2 cores the
search has one core for the whole search phase, where it had two for part of it, and the
reference trains for the whole budget.

The lanes run in a thread of this process (``_lanes.run_lanes``); their epochs and weights wait
in memory until the final phase, which records them as it records its own networks: during
the search the study's processes write the stores, and MLflow is written by one writer at a
time. Its trial number is the enqueued start point's; the search runs that trial too, at the
search's fidelity, and the final phase checks that it ran the same architecture.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import optuna
import torch
from optuna.trial import TrialState

from cnnas.models import ArchSpec, count_macs, count_params
from cnnas.objectives import ImageData

from ._final import (
    REFERENCE_MAX_EPOCHS,
    RESERVE_SECONDS,
    FinalRun,
    _announce,
    _start_run,
    final_runs,
    final_source,
    finish_lane_result,
    is_reference,
    lane_count,
)
from ._lanes import DataSource, Job, LaneEvent, run_lanes
from ._records import ATTR
from ._space import suggest_augment, suggest_spec
from ._study import StudyRun
from .errors import StudyFailing

__all__ = ["HeadStart", "start_head_start"]

# The first plan of a reference's epochs, before its first epoch is timed (the search has timed
# nothing yet): the lane re-plans them after every epoch at the pace it meets, so this only
# shapes the first epoch's part of the schedule.
FIRST_PLAN_EPOCHS = 10

Line = Callable[[str], None]


class HeadStart:
    """The references training since the study's start, in lanes run by a thread of this
    process: their trial numbers (with the spec each lane trains), the CPU threads the lanes
    took from this process, and what they have reported so far."""

    def __init__(self, jobs: list[Job], source: DataSource, seconds: float, line: Line) -> None:
        self.trials: dict[int, dict] = {j.trial: j.spec for j in jobs}
        self.deadline = time.monotonic() + seconds  # when the lanes stop at the latest
        self.threads = min(len(jobs), max(torch.get_num_threads() - 1, 1))
        self._line = line
        self._events: list[LaneEvent] = []
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        torch.set_num_threads(max(torch.get_num_threads() - self.threads, 1))
        # A daemon: an interrupted study must not wait for it (stop() ends its lanes).
        self._thread = threading.Thread(
            target=self._run,
            args=([[j] for j in jobs], source, seconds),
            name="cnnas-head-start",
            daemon=True,
        )
        self._thread.start()

    def _run(self, lanes: list[list[Job]], source: DataSource, seconds: float) -> None:
        try:
            run_lanes(lanes, source, seconds, self.threads, self._on_event, self._stop)
        except BaseException as e:  # reported by collect(), in the study's own thread
            self._errors.append(e)

    def _on_event(self, event: LaneEvent) -> None:
        self._events.append(event)
        if event.kind == "epoch":
            self._line(
                f"        head start, trial {event.trial} epoch {event.epoch + 1:>3}  "
                f"train_loss {event.values.get('train_loss', 0):.4f}  "
                f"({event.values.get('epoch_seconds', 0):.1f}s)"
            )

    def stop(self) -> None:
        """Stops the lanes (an interrupt, a failing search); what they trained is lost."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=30)
        self._give_back_threads()

    def _give_back_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(torch.get_num_threads() + self.threads)
            self.threads = 0

    def collect(self, run: StudyRun, data: ImageData, line: Line) -> list[FinalRun]:
        """Waits for the lanes (they end by the study's deadline), then records each reference
        they trained as a network of the final phase: its MLflow run with every epoch, its
        model, its test accuracy. ``data``: the final phase's (for the test split and the
        preprocessing the network was trained with)."""
        if self._thread.is_alive():
            left = max(self.deadline - time.monotonic(), 0.0)
            line(f"final training: waiting for the head start's lane(s), at most {left:.0f} s")
        self._thread.join()
        self._give_back_threads()
        if self._errors:
            raise StudyFailing(str(self._errors[0]))
        recs = {r.number: r for r in run.records()}
        done = final_runs(run.study)
        out: list[FinalRun] = []
        for trial, spec in self.trials.items():
            finished = [e for e in self._events if e.kind == "done" and e.trial == trial]
            r = recs.get(trial)
            if not finished:
                continue
            if r is None or not r.candidate or not is_reference(run, r) or r.spec is None:
                line(f"  trial {trial} (reference): trained from the start, not recorded: its "
                     "search trial did not complete")  # fmt: skip
                continue
            if r.spec.to_dict() != spec:
                line(f"  trial {trial} (reference): trained from the start, not recorded: the "
                     "search ran another architecture under its number")  # fmt: skip
                continue
            run_id = _start_run(run, r)
            for e in self._events:
                if e.kind == "epoch" and e.trial == trial:
                    run.tracker.log_epoch(run_id, e.epoch, e.values)
            final = finish_lane_result(run, r, run_id, data, finished[0], done)
            _announce(run, final, line, "head start, ")
            out.append(final)
        return out


def _start_points(run: StudyRun) -> list[tuple[int, ArchSpec, bool]]:
    """The queued start points whose reference a head start can train: not trained by an
    earlier run of the final phase, fully given (replayed with a FixedTrial: a partial point
    is completed by the sampler, so its architecture is not known yet) and within budget."""
    cfg, data = run.cfg, run.data
    done = final_runs(run.study)
    out = []
    for t in run.study.get_trials(deepcopy=False):
        i = t.user_attrs.get(ATTR.start_point)
        if i is None or t.number in done or t.state not in (TrialState.WAITING, TrialState.RUNNING):
            continue
        point = dict(cfg.study.start_from[int(i)])
        try:
            trial = optuna.trial.FixedTrial(point, t.number)
            spec = suggest_spec(trial, cfg.space, data.input_shape, data.num_classes)
            augment = suggest_augment(trial, cfg.space)
        except ValueError:
            continue
        s = cfg.study
        if (s.max_params and count_params(spec) > s.max_params) or (
            s.max_macs and count_macs(spec) > s.max_macs
        ):
            continue
        out.append((t.number, spec, augment))
    return out


def start_head_start(run: StudyRun, started: float, line: Line) -> HeadStart | None:
    """Starts the references' lanes when ``final.head_start`` applies (references on, a
    timeout, more than one lane on a CPU); None otherwise. ``started``: the study's
    ``time.monotonic()`` start, which ``study.timeout`` counts from."""
    cfg = run.cfg
    f = cfg.final
    if not (f.head_start and f.references and f.share > 0 and cfg.study.timeout):
        return None
    lanes = lane_count(run)
    points = _start_points(run)[: lanes - 1]  # one lane at least is left for the search
    if lanes < 2 or not points:
        return None
    reserve = min(RESERVE_SECONDS, 0.1 * cfg.study.timeout)
    seconds = cfg.study.timeout - (time.monotonic() - started) - reserve
    if seconds <= 0:
        return None
    jobs = []
    for number, spec, augment in points:
        train = cfg.train.to_train_config(cfg.study.seed, augment=augment)
        train = dataclasses.replace(train, schedule=f.schedule, max_epochs=REFERENCE_MAX_EPOCHS)
        jobs.append(
            Job(
                trial=number,
                spec=spec.to_dict(),
                cfg=train,
                seed=cfg.study.seed + number,
                slot=seconds,
                epoch_seconds=seconds / FIRST_PLAN_EPOCHS,
            )
        )
    head = HeadStart(jobs, final_source(run), seconds, line)
    for number, spec, _ in points:
        line(
            f"head start: trial {number} (reference, study.start_from: {spec.summary()}) "
            f"trains from now in a lane of its own, about {seconds:.0f} s (final.head_start)"
        )
    return head
