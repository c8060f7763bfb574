"""Networks of the final phase trained side by side: one process a lane, the CPU cores shared.

On a CPU, two processes of one thread each train more images a second than one process of two
threads (small convolutions do not keep two threads busy: measured 1.3-1.5x on 2 cores), and
the final phase has several independent networks to train. So it can give each lane a share of
the cores and a list of networks, trained one after the other, each for its time slot.

A lane only trains. It loads the data itself (nothing large crosses between processes), sends
every finished epoch and every trained network's weights back as plain values, and touches no
store: the parent process writes MLflow and the study, so each network is recorded once, by one
writer, as soon as it is done. A lane that finishes hands its cores to the lanes still training
(they take them at their next epoch), and a time-budgeted fit turns that speed into epochs.

This module imports torch and cnnas.objectives only, so a lane starts without MLflow or Optuna.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataSource", "Job", "LaneEvent", "run_lanes"]

# Seconds the parent waits for an event before it looks whether a lane died without a word.
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class DataSource:
    """How a lane loads the final data: ``load_dataset``'s arguments, and whether validation
    joins training (final.data train+val)."""

    dataset: str
    kwargs: dict[str, Any]
    seed: int
    merge_val: bool

    def load(self) -> Any:
        import torch

        from cnnas.objectives import load_dataset

        data = load_dataset(self.dataset, **self.kwargs, seed=self.seed)
        if not self.merge_val:
            return data
        return dataclasses.replace(
            data,
            train_x=torch.cat([data.train_x, data.val_x]),
            train_y=torch.cat([data.train_y, data.val_y]),
        )


@dataclass(frozen=True)
class Job:
    """One network a lane trains: its spec, recipe and seed, and its share of the lane's time.

    ``slot`` is the seconds planned for it; the lane gives it, when it starts, its proportion
    of the time the lane really has left (``slot`` over the slots still to train), so that an
    earlier network's overrun is shared instead of landing on the last one.
    """

    trial: int
    spec: dict[str, Any]
    cfg: Any  # cnnas.objectives.TrainConfig
    seed: int
    slot: float
    # Seconds one epoch should take in this lane (the plan's estimate): the first plan.
    epoch_seconds: float


@dataclass(frozen=True)
class LaneEvent:
    """What a lane reports: ``kind`` is 'start', 'epoch' (``values``: the epoch's curves'
    last values, ``epoch``: its index) or 'done' (``weights``: the trained network's state
    dict, serialised; ``result``: the TrialResult's scalar fields and curves)."""

    kind: str
    lane: int
    trial: int
    epoch: int = -1
    values: dict[str, float] = field(default_factory=dict)
    weights: bytes = b""
    result: dict[str, Any] = field(default_factory=dict)


class LaneFailed(RuntimeError):
    """A lane's training raised, or the lane process died."""


def _threads(cores: int, alive: Any) -> int:
    return max(1, cores // max(int(alive.value), 1))


def _relay(events: Any, lane: int, trial: int, alive: Any, cores: int, parent: int) -> Any:
    """A Lightning callback (built here, in the lane: Lightning is imported only there) that
    sends every epoch to the parent, takes the cores a finished lane left, and ends the lane
    when the parent is gone (killed: nobody would read its results)."""
    import pytorch_lightning as pl
    import torch

    class Relay(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            if os.getppid() != parent:
                os._exit(1)
            n = _threads(cores, alive)
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            values = {k: float(v[-1]) for k, v in module.curves.items() if v}
            epoch = len(module.curves["val_acc"]) - 1
            events.put(LaneEvent("epoch", lane, trial, epoch=epoch, values=values))

    return Relay()


def _lane(
    index: int,
    jobs: Sequence[Job],
    source: DataSource,
    deadline: float,
    events: Any,
    alive: Any,
    cores: int,
    parent: int,
) -> None:
    """A lane process: trains its jobs in order, reporting each; the parent decides on
    interrupts (it terminates the lanes), so Ctrl-C, sent to the whole group, is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        from cnnas.models import ArchSpec
        from cnnas.objectives import fit

        torch.set_num_threads(_threads(cores, alive))
        data = source.load()
        for i, job in enumerate(jobs):
            # This job's share of the time the lane has left (see Job).
            left = max(deadline - time.monotonic(), 0.0)
            share = job.slot / max(sum(j.slot for j in jobs[i:]), 1e-9)
            budget = max(left * share, 1e-3)
            cfg = dataclasses.replace(
                job.cfg,
                epochs=max(1, min(int(budget // max(job.epoch_seconds, 1e-3)), job.cfg.max_epochs)),
                time_budget=budget,
                # A safety net for an epoch far slower than the plan (the time budget ends the
                # fit otherwise): half as long again.
                max_seconds=max(1.5 * budget, 1.0),
            )
            events.put(LaneEvent("start", index, job.trial))
            relay = _relay(events, index, job.trial, alive, cores, parent)
            result = fit(ArchSpec.from_dict(job.spec), data, cfg, seed=job.seed, callbacks=[relay])
            buffer = io.BytesIO()
            torch.save(result.model.state_dict(), buffer)
            fields: dict[str, Any] = dict(result.metrics())
            fields["curves"] = result.curves
            events.put(
                LaneEvent("done", index, job.trial, weights=buffer.getvalue(), result=fields)
            )
    except BaseException:
        events.put(LaneEvent("failed", index, -1, result={"traceback": traceback.format_exc()}))
        raise
    finally:
        with alive.get_lock():
            alive.value -= 1
        events.put(LaneEvent("exit", index, -1))


def run_lanes(
    lanes: Sequence[Sequence[Job]],
    source: DataSource,
    seconds: float,
    cores: int,
    on_event: Callable[[LaneEvent], None],
    stop: threading.Event | None = None,
) -> None:
    """Trains every lane's jobs, the lanes side by side, within ``seconds``; calls
    ``on_event`` in this process for each start, epoch and trained network, as they come.

    Raises :class:`LaneFailed` when a lane's training raises or its process dies; the other
    lanes are stopped then, as on Ctrl-C (what was reported done stays done). ``stop``, set
    from another thread, stops every lane and returns (lanes run in a thread of their own
    while the study searches: see ``_head_start``)."""
    ctx = mp.get_context("spawn")  # a clean process: no copied thread pools or CUDA state
    events = ctx.Queue()
    alive = ctx.Value("i", len(lanes))
    deadline = time.monotonic() + seconds
    procs = [
        ctx.Process(
            target=_lane,
            args=(i, list(jobs), source, deadline, events, alive, cores, os.getpid()),
            name=f"cnnas-lane-{i}",
            daemon=True,
        )
        for i, jobs in enumerate(lanes)
    ]
    for p in procs:
        p.start()
    ended: set[int] = set()
    try:
        while len(ended) < len(procs):
            if stop is not None and stop.is_set():
                return
            try:
                event = events.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if i not in ended and not p.is_alive()]
                if dead:
                    # A lane that ended says so first; one that died (killed, out of memory)
                    # may still have words in the queue: read them before giving up on it.
                    time.sleep(_POLL_SECONDS)
                    if events.empty():
                        codes = ", ".join(f"lane {i}: exit code {procs[i].exitcode}" for i in dead)
                        raise LaneFailed(f"a lane of the final phase died ({codes})") from None
                continue
            if event.kind == "exit":
                ended.add(event.lane)
            elif event.kind == "failed":
                raise LaneFailed(
                    f"lane {event.lane} of the final phase failed:\n{event.result['traceback']}"
                )
            else:
                on_event(event)
    finally:
        _stop(procs, events)


def _stop(procs: Sequence[Any], events: Any) -> None:
    """Ends the lanes still running. A lane that put events nobody read cannot exit until its
    queue's feeder thread has written them into the pipe, so the parent keeps reading (and
    dropping) them while it waits; a lane still there after that is killed."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    until = time.monotonic() + 10.0
    while any(p.is_alive() for p in procs) and time.monotonic() < until:
        try:
            while True:
                events.get_nowait()
        except (queue.Empty, OSError, EOFError):
            pass
        for p in procs:
            p.join(timeout=0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=5)
    events.close()
