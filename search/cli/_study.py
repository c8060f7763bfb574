"""``cnnas study start``, ``cnnas study status`` and ``cnnas worker``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import torch
from optuna.trial import FrozenTrial, TrialState

from .._config import StudyConfig
from .._final import final_budget, train_final
from .._format import duration, human, size
from .._head_start import HeadStart, start_head_start
from .._records import TrialRecord, front, records
from .._storage import existing_study, safe_url, storage_location, worker_id
from .._study import StudyRun, prepare, run_study, search_timeout
from .._tracking import tracking_uri
from .._workers import plan_workers, run_workers
from ..errors import StudyFailing, UsageError
from ._common import (
    counts_json,
    emit_json,
    front_table,
    ignore_further_interrupts,
    mlflow_ui_hint,
    state_line,
    study_config,
    trial_json,
)
from ._results import register

__all__ = ["cmd_study_start", "cmd_study_status", "cmd_worker"]


class Progress:
    """One line per finished trial; per-epoch lines too when the output is a terminal."""

    def __init__(
        self, total: int, out: TextIO, verbose: bool, timeout: float | None = None
    ) -> None:
        self.total, self.out, self.verbose = total, out, verbose
        self.timeout = timeout  # the search's share of study.timeout, for the estimate
        self.estimated = False

    def estimate(self, run: StudyRun, trial: FrozenTrial) -> None:
        """After the first trained trial, what the rest will take at its pace, when that is long
        (more than 10 minutes): a study with no config at all runs for an hour on 2 cores."""
        r = TrialRecord.from_trial(trial)
        if self.estimated or not r.trained or r.duplicate_of is not None:
            return
        self.estimated = True
        left = self.total - run.finished_count()
        pace = r.wall_seconds()
        total = left * pace
        if left <= 0 or total < 600:
            return
        limit = ""
        if self.timeout is not None and self.timeout < total:
            limit = f"; the search stops starting trials after {duration(self.timeout)}"
        print(
            f"        about {duration(total)} for the {left} trial(s) left at this pace "
            f"({duration(pace)} the first){limit}",
            file=self.out,
            flush=True,
        )

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        if self.verbose:
            print(
                f"        epoch {epoch + 1:>3}  train_loss {values.get('train_loss', 0):.4f}  "
                f"val_acc {values.get('val_acc', 0):.4f}  ({values.get('epoch_seconds', 0):.1f}s)",
                file=self.out,
                flush=True,
            )

    @staticmethod
    def describe(r: TrialRecord) -> str:
        """What became of a trial, in a few words."""
        if r.state == TrialState.COMPLETE and r.infeasible is not None:
            return f"infeasible, not trained: {r.infeasible}"
        if r.state == TrialState.COMPLETE:
            what = (
                f"val_acc {r.val_acc:.4f}  params {human(r.params or 0):>7}  "
                f"MACs {human(r.macs or 0):>7}  {r.seconds or 0:6.1f}s"
            )
            if r.duplicate_of is not None:
                what += f"  (same as trial {r.duplicate_of}: not trained again)"
            return what
        if r.state == TrialState.PRUNED:
            return f"PRUNED: {(r.pruned or '')[:140]}"
        reason = r.failure or ""
        return f"{r.state.name}" + (f": {reason.splitlines()[-1][:120]}" if reason else "")

    def trial(self, run: StudyRun, trial: FrozenTrial) -> None:
        recs = run.records()
        axis = run.cfg.study.complexity
        top = front(recs, axis)
        best = max(top, key=lambda r: r.val_acc) if top else None
        best_text = (
            f"  | front {len(top)}, best {best.val_acc:.4f} @ {size(best.complexity(axis), axis)}"
            if best
            else ""
        )
        print(
            f"[{run.finished_count():>3}/{self.total}] trial {trial.number:<4} "
            f"{self.describe(TrialRecord.from_trial(trial))}{best_text}",
            file=self.out,
            flush=True,
        )
        self.estimate(run, trial)


def _print_front(recs: list[TrialRecord], name: str, axis: str, out: TextIO) -> None:
    top = front(recs, axis)
    print(
        f"\nPareto front of study {name!r} (val_acc up, {axis} down): "
        f"{len(top)} trial(s); {state_line(recs)}",
        file=out,
    )
    if top:
        print(front_table(top), file=out)


def _look_further(
    cfg: StudyConfig, config_arg: str | None, mlflow: Sequence[str], out: TextIO
) -> None:
    """The commands to look further; ``mlflow`` opens the MLflow UI on the training runs."""
    flag = f" --config {config_arg}" if config_arg else ""
    name = cfg.study.name
    ui = "".join(f"\n  {line}" for line in mlflow)
    print(
        "\nLook further:\n"
        f"  cnnas study status {name}{flag}      # trials and the front\n"
        f"  cnnas pareto {name}{flag}            # front with test accuracy, plots\n"
        f"  cnnas dashboard {name}{flag}         # optuna-dashboard on 127.0.0.1:8080\n"
        f"  # MLflow: the runs with their curves and specs, and the registered models:{ui}",
        file=out,
    )


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.devices is not None and not all(d.strip().isdigit() for d in args.devices.split(",")):
        raise UsageError(f"--devices takes GPU indices like 0,1,2; got {args.devices!r}")


def _run_in_workers(
    run: StudyRun, args: argparse.Namespace, out: TextIO, head: HeadStart | None = None
) -> bool:
    """Runs the study in worker processes when asked to; False when this process should.
    ``head``: references training since the start hold some of the workers' lanes and cores."""
    workers = run.cfg.study.workers - (len(head.trials) if head is not None else 0)
    plans = plan_workers(workers, args.devices.split(",") if args.devices else None)
    if head is not None:
        cores = max(torch.get_num_threads() // len(plans), 1)  # what the head start left
        plans = [dataclasses.replace(p, threads=cores) for p in plans]
    if len(plans) == 1 and plans[0].device is None:
        return False
    where = ", ".join(f"GPU {p.device}" if p.device else "CPU" for p in plans)
    print(f"{len(plans)} worker process(es): {where}", file=out, flush=True)
    start = time.perf_counter()
    codes = run_workers(run.cfg.to_json_dict(), plans)
    bad = [f"worker {i} exited {c}" for i, c in enumerate(codes) if c != 0]
    if bad:
        print("warning: " + "; ".join(bad), file=sys.stderr)
    run.end_parent("FINISHED", time.perf_counter() - start)
    return True


def cmd_study_start(args: argparse.Namespace) -> int:
    started = time.monotonic()  # study.timeout is the whole budget, the final phase included
    _check_workers(args)
    run = prepare(study_config(args))  # raises on bad input; nothing written yet
    cfg, out = run.cfg, sys.stdout
    run.open()
    data = run.data
    print(
        f"study {cfg.study.name!r}: {run.finished_count()} of {cfg.study.trials} trials done; "
        f"dataset {data.name} {data.input_shape}, {len(data.train_y)} train / "
        f"{len(data.val_y)} validation images; storage {safe_url(storage_location(cfg))}; "
        f"MLflow {safe_url(run.tracker.uri)} (parent run {run.parent_run_id})",
        file=out,
        flush=True,
    )
    if run.sizing:
        print(run.sizing, file=out, flush=True)
    progress = Progress(
        cfg.study.trials, out, args.verbose or out.isatty(), timeout=search_timeout(cfg)
    )
    failing = None
    head = None
    searched = time.monotonic()
    began = time.time()  # trials that started earlier are earlier runs' (their search time)
    before = run.finished_count()
    try:
        if not args.devices:
            head = start_head_start(run, started, _lines(out, progress.verbose))
        if not _run_in_workers(run, args, out, head):
            run_study(run, on_trial=progress.trial, on_epoch=progress.epoch)
        _trials_run(run, before, time.monotonic() - searched, out)
        _final_phase(run, started, time.monotonic() - searched, began, out, progress.verbose, head)
    except StudyFailing as e:
        failing = e
    except KeyboardInterrupt:
        ignore_further_interrupts()
        print("\ninterrupted: the study is saved; run the same command to resume", file=out)
        return 130
    finally:
        if head is not None:
            head.stop()  # ends its lanes unless the final phase collected them
    recs = run.records()
    _print_front(recs, cfg.study.name, cfg.study.complexity, out)
    if cfg.registry.register and not args.no_register and front(recs, cfg.study.complexity):
        register(run, cfg.study.complexity, refit=False, out=out)
    if not args.no_report and run.finished_count():
        from ..report import write_report

        report = write_report(run, complexity=cfg.study.complexity)
        print(f"\nreport: {report.html}\n        {report.markdown}", file=out)
    _look_further(cfg, args.config, [safe_url(c) for c in run.tracker.ui_commands()], out)
    if failing is not None:
        print(f"\nerror: {failing}", file=sys.stderr)
        return 1
    return 0


def _trials_run(run: StudyRun, before: int, seconds: float, out: TextIO) -> None:
    """How many of the planned trials ran, and why the search stopped where it did."""
    done, planned = run.finished_count(), run.cfg.study.trials
    if done >= planned:
        why = "all of them"
    else:
        limit = search_timeout(run.cfg)
        why = f"study.timeout: the search's {duration(limit)}" if limit else "stopped early"
    print(
        f"\nran {done} of {planned} planned trials ({why}); {done - before} in this run, "
        f"{duration(seconds)}",
        file=out,
        flush=True,
    )


def _lines(out: TextIO, verbose: bool) -> Callable[[str], None]:
    def line(text: str) -> None:
        # Per-epoch lines (indented deepest) only on a terminal or with -v, as in the search.
        if verbose or not text.startswith("        "):
            print(text, file=out, flush=True)

    return line


def _final_phase(
    run: StudyRun,
    started: float,
    searched: float,
    began: float,
    out: TextIO,
    verbose: bool,
    head: HeadStart | None = None,
) -> None:
    """The handed-over networks trained at full fidelity, in what is left of the budget."""
    if run.cfg.final.share <= 0:
        return
    budget = final_budget(run, started, searched, began=began)
    print("", file=out)
    train_final(run, budget, _lines(out, verbose), head)


def cmd_study_status(args: argparse.Namespace) -> int:
    cfg = study_config(args)
    study = existing_study(cfg, args.name)
    stored = study.user_attrs.get("config", {}).get("study", {})
    axis = stored.get("complexity", cfg.study.complexity)
    recs = records(study.get_trials(deepcopy=False))
    mlflow_uri = safe_url(tracking_uri(cfg.mlflow_config(), cfg.study.project_dir))
    if args.json:
        emit_json(
            {
                "study": args.name,
                "storage": safe_url(storage_location(cfg)),
                "objectives": list(study.metric_names or []),
                "directions": [d.name.lower() for d in study.directions],
                "complexity": axis,
                "trials": counts_json(recs, int(stored.get("trials", cfg.study.trials))),
                "front": [trial_json(r) for r in front(recs, axis)],
                "complete": [trial_json(r) for r in recs if r.state == TrialState.COMPLETE]
                if args.all
                else None,
                "mlflow_tracking_uri": mlflow_uri,
            }
        )
        return 0
    _print_front(recs, args.name, axis, sys.stdout)
    if args.all:
        done = [r for r in recs if r.state == TrialState.COMPLETE]
        print("\nAll complete trials:")
        print(front_table(done))
    _look_further(
        cfg.replace("study", name=args.name), args.config, [mlflow_ui_hint(mlflow_uri)], sys.stdout
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.device is not None:
        if not args.device.strip().isdigit():
            raise UsageError(f"--device takes one GPU index like 0; got {args.device!r}")
        # Before anything initialises CUDA: this process sees its one GPU as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device.strip()
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = study_config(args)
    if args.device is not None:
        cfg = cfg.replace("train", accelerator="gpu")
    run = prepare(cfg)  # config, storage reachable, dataset
    existing_study(run.cfg, args.study)  # a worker joins; it never creates a study
    me = worker_id()
    run.worker = me  # a sampler seed of its own
    run.open(reopen_parent=False)
    out = sys.stdout
    print(
        f"worker {me} joined study {args.study!r} ({run.finished_count()} of "
        f"{run.cfg.study.trials} trials done); storage {safe_url(storage_location(run.cfg))}; "
        f"MLflow {safe_url(run.tracker.uri)} (parent run {run.parent_run_id})",
        file=out,
        flush=True,
    )
    progress = Progress(run.cfg.study.trials, out, verbose=args.verbose or out.isatty())
    try:
        run_study(run, on_trial=progress.trial, on_epoch=progress.epoch, shared=True)
    except StudyFailing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        ignore_further_interrupts()
        print("\ninterrupted: this worker's trial is recorded as failed; the study goes on")
        return 130
    print(f"worker {me}: the study has its {run.cfg.study.trials} trials", file=out)
    return 0
