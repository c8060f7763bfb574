"""Studies: preparing one, opening it, and running its trials to the total.

The order of :func:`prepare` matters: everything that can be wrong with the user's input (the
config, mlflow.yml, the storage, the dataset) is checked before the first file, study or run is
created, so a mistake leaves nothing behind.

One trial takes one path (:func:`run_trial`): under the study's start lock, count and
``study.ask()``; sample the architecture and open its MLflow run; decide the outcome
(``_objective.evaluate``); then :func:`record` writes it, once, to both stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnas.objectives import ImageData, fit, input_statistics, load_dataset

from ._config import SINGLE_OBJECTIVE_PRUNERS, MlflowConfig, StudyConfig
from ._objective import (
    Duplicate,
    Failed,
    Infeasible,
    Outcome,
    Proposal,
    Pruned,
    Trained,
    Trainer,
    TrialContext,
    budget_violations,
    device_name,
    evaluate,
    propose,
)
from ._records import (
    ATTR,
    COUNTED_STATES,
    METRICS,
    TrialRecord,
    counted_trials,
    records,
    state_counts,
)
from ._sizing import size_for
from ._space import check_start_from
from ._storage import (
    StartLock,
    check_project_dir,
    check_storage,
    open_storage,
    process_gone,
    safe_url,
    same_database,
    worker_id,
)
from ._tracking import Tracker, check_tracking
from .errors import ConfigError, StudyFailing, StudyMismatch

__all__ = [
    "StudyRun",
    "data_identity",
    "deferred_interrupts",
    "make_pruner",
    "make_sampler",
    "objective_names",
    "prepare",
    "record",
    "replace_cfg",
    "run_study",
    "run_trial",
    "search_timeout",
]

# Datasets whose images change meaning when mirrored.
NO_FLIP = {
    "digits": "a mirrored 2 or 7 is no digit",
    "mnist": "a mirrored 2 or 7 is no digit",
    "kmnist": "a mirrored character is another shape",
    **{
        f"emnist-{split}": "a mirrored letter or digit is no letter or digit"
        for split in ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")
    },
}
PARENT_RUN_ATTR = "mlflow_parent_run_id"
_INTERRUPTED = "KeyboardInterrupt: stopped by the user"

EpochFn = Callable[[int, dict[str, float]], None]
TrialFn = Callable[["StudyRun", FrozenTrial], None]


def objective_names(complexity: str, objective: str = "pareto") -> tuple[str, ...]:
    """The study's metric names: validation accuracy (maximised), then complexity (minimised)
    unless the study optimises accuracy alone."""
    return ("val_acc",) if objective == "accuracy" else ("val_acc", complexity)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner for a single-objective study; the pareto rule is a Lightning callback."""
    p = cfg.pruning
    if p.method == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        )
    if p.method == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=cfg.train.epochs, reduction_factor=p.reduction_factor
        )
    if p.method == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.NopPruner()


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate TPE models the joint distribution of the parameters, which matters here:
        # filters, kernel and pooling trade off against each other in both objectives. group
        # splits the space by which parameters a trial used (conditional parameters).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, n_startup_trials=10
            )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; known: tpe, nsga2, random")


# The study attribute that holds its dataset's identity (``data_identity``).
DATA_ATTR = "data_identity"
# The final metrics a trial's run ends with, as the trial's attributes hold them.
METRIC_KEYS = ("params", "macs", "ratio", "seconds", "epochs")


def data_identity(data: ImageData) -> dict[str, Any]:
    """What makes two datasets the same for a study: name, image shape, classes, split sizes,
    and a fingerprint of every image and label (of train, validation and test)."""
    digest = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(memoryview(t.contiguous().numpy()).cast("B"))
    return {
        "name": data.name,
        "input_shape": list(data.input_shape),
        "classes": list(data.classes),
        "split": [len(data.train_y), len(data.val_y), len(data.test_y)],
        "fingerprint": digest.hexdigest()[:16],
    }


def _describe_data(identity: dict[str, Any]) -> str:
    classes = identity.get("classes") or []
    shown = ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")
    split = "/".join(map(str, identity.get("split") or []))
    return (
        f"{identity.get('name')} {tuple(identity.get('input_shape') or ())}, "
        f"{len(classes)} classes ({shown}), {split} train/val/test images, fingerprint "
        f"{identity.get('fingerprint')}"
    )


def _left_run_status(trial: FrozenTrial | None, run_id: str, storage: str | None) -> str | None:
    """The status a RUNNING trial run left behind gets, or None to leave it open."""
    if trial is None:
        return "KILLED"  # a run of no trial
    if trial.state == TrialState.RUNNING:
        worker = trial.user_attrs.get(ATTR.worker, "")
        mine = trial.user_attrs.get(ATTR.run_id) == run_id
        # Its own run is closed with the trial (fail_dead_local_trials, the heartbeat); an
        # extra run of a local trial whose process is gone is closed here.
        return "KILLED" if not mine and not storage and worker and process_gone(worker) else None
    if trial.user_attrs.get(ATTR.run_id) != run_id:
        return "KILLED"  # an extra run: the trial recorded another one
    if trial.state == TrialState.COMPLETE:
        return "FINISHED"
    if trial.state == TrialState.FAIL and not trial.user_attrs.get(ATTR.interrupted):
        return "FAILED" if "died" not in str(trial.user_attrs.get(ATTR.failure, "")) else "KILLED"
    return "KILLED"  # pruned, interrupted, or a trial still waiting


def sampler_seed(study_seed: int, started: int = 0, worker: str = "") -> int:
    """The seed of one process's sampler.

    A new study's first process uses ``study.seed`` itself, so a study is reproducible. A
    resumed study (``started`` trials already there) or another worker (``worker`` names it)
    draws from a seed of its own: the same seed would propose the same first architectures
    again, and those would only be recognised as repeats of trials already run.
    """
    if not started and not worker:
        return study_seed
    return zlib.crc32(f"{study_seed}:{started}:{worker}".encode()) % (2**31 - 1)


@dataclass
class StudyRun:
    """Everything a running study needs, built by :func:`prepare` once the input is checked.

    ``trainer`` scores one architecture (``cnnas.objectives.fit`` unless a caller hands in
    another with its signature, as the tests do).
    """

    cfg: StudyConfig
    mlflow_cfg: MlflowConfig
    data: ImageData
    trainer: Trainer = fit
    study: optuna.Study | None = None
    tracker: Tracker | None = None
    parent_run_id: str | None = None
    # Set by open(): the storage the study lives in (the journal or a database).
    storage: Any = field(default=None, repr=False)
    # Names this process among the study's workers ("" for the one that started the study);
    # it gives the process a sampler seed of its own.
    worker: str = ""
    # What prepare() derived from a small dataset's size, in words (None: nothing).
    sizing: str | None = None
    _input_stats: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def project_dir(self) -> Path:
        return Path(self.cfg.study.project_dir)

    def records(self) -> list[TrialRecord]:
        return records(self.study.get_trials(deepcopy=False))

    def finished_count(self) -> int:
        """Trials that count towards the total (see ``_records.counted_trials``)."""
        return counted_trials(self.records(), COUNTED_STATES)

    def open(self, *, reopen_parent: bool = True) -> None:
        """Creates (or loads) the study and the MLflow parent run. The first write to disk.

        ``reopen_parent=False`` (for commands that only read a finished study) leaves an
        existing parent run's status alone.

        Under the study's start lock, so that two processes starting the same new study at
        the same moment make one study and one parent run. A study remembers its dataset and
        refuses another (StudyMismatch); runs left RUNNING by a process that died are closed.
        """
        cfg = self.cfg
        self.project_dir.mkdir(parents=True, exist_ok=True)
        # The MLflow store first: it appears whole or not at all, so a failure here (a full
        # disk) leaves no study without its parent run behind.
        self.tracker = Tracker(self.mlflow_cfg, self.project_dir)
        self.storage = open_storage(cfg, on_stale=self.stale_trial)
        lock = StartLock(cfg)
        lock.acquire()
        try:
            self._load_study()
            self._check_dataset()
            if cfg.study.start_from and not self.study.get_trials(deepcopy=False):
                # A new study only (under the start lock, so two workers do not both queue
                # them): a resumed one has run or queued them already.
                for i, point in enumerate(cfg.study.start_from):
                    self.study.enqueue_trial(dict(point), user_attrs={ATTR.start_point: i})
            if "config" not in self.study.user_attrs:
                # Later commands (pareto, register) rebuild the study's data and settings
                # from this.
                self.study.set_user_attr("config", cfg.to_json_dict())
            self.study.set_user_attr("dataset", cfg.data.dataset)
            self._fail_unstarted_trials()
            self._close_left_runs()
            existing = self.study.user_attrs.get(PARENT_RUN_ATTR)
            if existing and not reopen_parent:
                self.parent_run_id = existing
                return
            self.parent_run_id = self.tracker.parent_run(cfg.study.name, existing, cfg.to_dict())
            if self.parent_run_id != existing:
                self.study.set_user_attr(PARENT_RUN_ATTR, self.parent_run_id)
        finally:
            lock.close()

    def _load_study(self) -> None:
        """The Optuna study, created if new, with a sampler of this process's own seed."""
        cfg = self.cfg
        names = list(objective_names(cfg.study.complexity, cfg.study.objective))
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=cfg.study.name,
            sampler=make_sampler(cfg.study.sampler, cfg.study.seed),
            pruner=make_pruner(cfg),
            directions=["maximize", "minimize"][: len(names)],
            load_if_exists=True,
        )
        started = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = make_sampler(
            cfg.study.sampler, sampler_seed(cfg.study.seed, started, self.worker)
        )
        stored = self.study.metric_names
        if stored is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(names)
        elif list(stored) != names:
            raise StudyMismatch(
                f"study {cfg.study.name!r} optimises {stored}, but the config asks for {names} "
                "(study.objective, study.complexity); use another study.name"
            )

    def _check_dataset(self) -> None:
        """Records the dataset's identity in a new study; refuses to go on with other data
        (its front and registry would mix two datasets)."""
        mine = data_identity(self.data)
        stored = self.study.user_attrs.get(DATA_ATTR)
        if stored is None:
            self.study.set_user_attr(DATA_ATTR, mine)
            return
        differ = [k for k in mine if stored.get(k) != mine[k]]
        if differ:
            raise StudyMismatch(
                f"study {self.cfg.study.name!r} was run on {_describe_data(stored)}, but this "
                f"config's data is {_describe_data(mine)} (differs in {', '.join(differ)}); "
                "its front and registry would mix two datasets: use the data it was started "
                "with (data.*), or another study.name"
            )

    def _fail_unstarted_trials(self) -> None:
        """Fails the RUNNING trials that never recorded their worker: their process died between
        ``study.ask()`` and its next write. Both happen under the start lock, which this process
        holds now, so no live process is in between. Nothing was sampled or trained for them, so
        they are marked ``interrupted`` and do not use up a slot of ``study.trials``."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ATTR.worker in t.user_attrs:
                continue
            # FrozenTrial has no public id; the storage's own API takes the private one.
            trial_id = t._trial_id  # noqa: SLF001
            self.storage.set_trial_user_attr(trial_id, ATTR.interrupted, True)
            self.storage.set_trial_user_attr(
                trial_id, ATTR.failure, "its process died before the trial started"
            )
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)

    def _close_left_runs(self) -> list[str]:
        """Closes the trial runs of this study that a process which died left RUNNING: the run
        of a trial Optuna has finished (the process died between ``study.tell`` and closing the
        run), and a run its trial never recorded (it died right after creating the run). A run
        of a trial that is still running is left to its worker, or to the stale-trial rules."""
        parent = self.study.user_attrs.get(PARENT_RUN_ATTR)
        if not parent:
            return []
        client = self.tracker.client
        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        closed = []
        runs = client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'",
            max_results=5000,
        )
        for r in runs:
            number = r.data.tags.get("cnnas.trial", "")
            trial = by_number.get(int(number)) if number.isdigit() else None
            status = _left_run_status(trial, r.info.run_id, self.cfg.study.storage)
            if status is None:
                continue
            metrics = {}
            if trial is not None and trial.state == TrialState.COMPLETE:
                metrics = {
                    k: float(trial.user_attrs[k]) for k in METRIC_KEYS if k in trial.user_attrs
                }
            self.tracker.end_trial(
                r.info.run_id,
                status,
                metrics=metrics,
                tags={"cnnas.closed": "left RUNNING by a process that stopped; closed on reopen"},
            )
            closed.append(r.info.run_id)
        return closed

    def end_parent(self, status: str, seconds: float) -> None:
        """Closes the study's parent run with the trial counts and the wall time it ran."""
        with deferred_interrupts():
            counts = state_counts(self.records())
            counts["wall_seconds"] = seconds
            self.tracker.end_parent(self.parent_run_id, counts, status)

    def input_stats(self) -> dict[str, Any]:
        if self._input_stats is None:
            self._input_stats = input_statistics(self.data.train_x)
        return self._input_stats

    def model_extra(self, number: int, refit_epochs: int | None = None) -> dict[str, Any]:
        """What a saved network needs besides its weights: preprocessing and provenance."""
        data = self.data
        extra: dict[str, Any] = {
            "dataset": data.name,
            "classes": list(data.classes),
            "mean": list(data.mean),
            "std": list(data.std),
            "study": self.cfg.study.name,
            "trial": number,
            # How to read the same data again (file or folder, image size, test split).
            "data": self.cfg.to_json_dict()["data"],
            # What the training images look like, for predict's "unlike the training data".
            "input_stats": self.input_stats(),
        }
        if refit_epochs:
            extra["refit_epochs"] = refit_epochs
        return extra

    def stale_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial whose worker died: its MLflow run ends KILLED, and it is queued once more
        (same parameters, so the same architecture) up to ``study.retries`` times."""
        r = TrialRecord.from_trial(trial)
        reason = r.failure or (
            f"worker {r.worker or '?'} stopped sending heartbeats "
            f"(study.grace_period {self.cfg.study.grace_period}s): killed or lost"
        )
        if r.run_id and self.tracker is not None:
            try:
                self.tracker.end_trial(r.run_id, "KILLED", tags={"cnnas.failure": reason})
            except Exception as e:  # the retry matters more than the run's status
                warnings.warn(f"could not close MLflow run {r.run_id}: {e}", stacklevel=1)
        history = [*r.attrs.get(ATTR.retry_history, []), trial.number]
        if len(history) > self.cfg.study.retries:
            return
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={ATTR.retry_of: trial.number, ATTR.retry_history: history},
            )
        )

    def fail_dead_local_trials(self) -> list[int]:
        """With the journal file (no heartbeat), fails the RUNNING trials whose worker process on
        this machine is gone, and hands each to :meth:`stale_trial`; returns their numbers."""
        if self.cfg.study.storage:
            return []  # database storages have the heartbeat
        failed = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get(ATTR.worker)
            if not worker or not process_gone(worker):
                continue
            reason = f"worker {worker} died while the trial was running"
            # FrozenTrial has no public id; the storage's own API takes the private one.
            trial_id = t._trial_id  # noqa: SLF001
            self.storage.set_trial_user_attr(trial_id, ATTR.failure, reason)
            try:
                if not self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            failed.append(t.number)
            self.stale_trial(self.study, self.storage.get_trial(trial_id))
        return failed

    def context(self, trial: optuna.Trial, run_id: str) -> TrialContext:
        def save_model(model: Any) -> None:
            self.tracker.log_model(run_id, model, self.model_extra(trial.number))

        return TrialContext(self.cfg, self.data, self.trainer, self.records, save_model)


def prepare(cfg: StudyConfig, *, trainer: Trainer = fit) -> StudyRun:
    """Checks everything the study needs; raises before anything is written."""
    mlflow_cfg = cfg.mlflow_config()
    check_project_dir(cfg)
    check_storage(cfg)
    # Before any study exists: an unreachable tracking server would otherwise be found only
    # after the study was created, and MLflow's client retries it for minutes.
    uri = check_tracking(mlflow_cfg, cfg.study.project_dir)
    if cfg.study.storage and same_database(cfg.study.storage, uri):
        raise ConfigError(
            f"study.storage and the MLflow tracking_uri name the same database "
            f"({safe_url(uri)}); Optuna and MLflow each keep their schema in a table named "
            "alembic_version, so each needs a database of its own (createdb optuna; createdb "
            "mlflow)"
        )
    if cfg.pruning.method in SINGLE_OBJECTIVE_PRUNERS and cfg.study.objective != "accuracy":
        raise ConfigError(
            f"pruning.method: Optuna's {cfg.pruning.method} pruner needs a single-objective "
            "study, and study.objective 'pareto' has two (validation accuracy and "
            f"{cfg.study.complexity}); use pruning.method 'pareto', which compares trials of no "
            "larger size, or set study.objective: accuracy"
        )
    if cfg.train.augment.flip and True in cfg.space.augment and cfg.data.dataset in NO_FLIP:
        raise ConfigError(
            f"train.augment.flip: {cfg.data.dataset} must not be mirrored "
            f"({NO_FLIP[cfg.data.dataset]}); set it to false"
        )
    data = load_dataset(cfg.data.dataset, **cfg.data.load_kwargs(), seed=cfg.study.seed)
    sizing = size_for(cfg, len(data.train_y), len(data.train_y) + len(data.val_y))
    if sizing.cfg.data.val_fraction != cfg.data.val_fraction:
        # Split again with the derived validation share (a small dataset loads in moments).
        data = load_dataset(cfg.data.dataset, **sizing.cfg.data.load_kwargs(), seed=cfg.study.seed)
    if cfg.study.start_from:
        check_start_from(
            cfg.study.start_from,
            sizing.cfg.space,
            data.input_shape,
            data.num_classes,
            max_params=cfg.study.max_params,
            max_macs=cfg.study.max_macs,
        )
    run = StudyRun(cfg=sizing.cfg, mlflow_cfg=mlflow_cfg, data=data, trainer=trainer)
    run.sizing = sizing.line(len(data.train_y))
    return run


# --- one trial ------------------------------------------------------------------------------------


def _start(run: StudyRun, trial: optuna.Trial, proposal: Proposal) -> str:
    """Writes what is known before training (the trial's architecture and budgets) and opens
    the trial's MLflow run; returns its id."""
    cfg = run.cfg
    train_cfg = cfg.train.to_train_config(cfg.study.seed, augment=proposal.augment)
    violations = budget_violations(proposal, cfg)
    for key, value in (
        (ATTR.spec, proposal.spec.to_dict()),
        (ATTR.spec_hash, proposal.spec.spec_hash()),
        (ATTR.identity, proposal.identity),
        (ATTR.augment, proposal.augment),
        (ATTR.params, proposal.params),
        (ATTR.macs, proposal.macs),
        *(
            (
                (ATTR.latency_ms, proposal.latency.single_ms),
                (ATTR.latency_batch_ms, proposal.latency.batch_ms),
            )
            if proposal.latency is not None
            else ()
        ),
        (ATTR.device, device_name(train_cfg)),
        (ATTR.constraints, list(violations.values())),
    ):
        trial.set_user_attr(key, value)
    # Samplers learn feasibility from these (> 0: over budget), before any training.
    for key, value in violations.items():
        trial.set_constraint(key, value)
    # optuna-dashboard (0.21) flags a trial infeasible only from the system attribute
    # "constraints", a list: the form of Optuna's deprecated constraints_func, which
    # set_constraint above does not write, so an over-budget trial looked feasible there. The
    # storage's own set_trial_system_attr writes the list too; no deprecated API is involved, and
    # Optuna 5 reads both forms with the same signs, so the samplers' judgement is unchanged.
    # What an over-budget trial records as its accuracy: see _objective.edge_accuracy.
    trial.storage.set_trial_system_attr(
        trial._trial_id,  # noqa: SLF001 -- the storage API names a trial by its storage id
        "constraints",
        list(violations.values()),
    )
    run_id = run.tracker.start_trial(run.parent_run_id, cfg.study.name, trial.number, proposal.spec)
    trial.set_user_attr(ATTR.run_id, run_id)
    return run_id


def _values(run: StudyRun, accuracy: float, complexity: float) -> list[float]:
    return [accuracy] if run.cfg.study.objective == "accuracy" else [accuracy, complexity]


def _result_attrs(metrics: dict[str, float], curves: dict[str, list[float]]) -> dict[str, Any]:
    return {**metrics, ATTR.curves: curves}


def _last(curves: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(v[-1]) for k, v in curves.items() if v}


def record(
    run: StudyRun,
    trial: optuna.Trial,
    proposal: Proposal | None,
    run_id: str | None,
    outcome: Outcome,
) -> None:
    """Writes a decided outcome to the trial (``study.tell``) and closes its MLflow run: the one
    place where either happens. ``proposal`` and ``run_id`` are None only for a trial that
    failed before its architecture or its run existed."""
    axis = run.cfg.study.complexity
    complexity = proposal.complexity(axis) if proposal is not None else 0.0
    tags: dict[str, str] = {}
    attrs: dict[str, Any]
    curves: dict[str, list[float]] | None = None
    if isinstance(outcome, Trained):
        r = outcome.result
        attrs = {**_result_attrs(r.metrics(), r.curves), **outcome.notes}
        if axis == "macs" and proposal.spec.adaptive_depth:
            # An adaptive-depth network costs what its images actually ran, measured on the
            # validation set; budgets above still used the full count, before training.
            complexity = float(r.executed_macs)
        state, values, status = TrialState.COMPLETE, _values(run, r.val_acc, complexity), "FINISHED"
        metrics = {k: r.metrics()[k] for k in ("params", "macs", "ratio", "seconds", "epochs")}
    elif isinstance(outcome, Duplicate):
        twin = outcome.twin
        attrs = {
            **_result_attrs({k: v for k, v in twin.attrs.items() if k in METRICS}, twin.curves),
            ATTR.duplicate_of: twin.number,
        }
        if axis == "macs" and twin.executed_macs is not None:
            complexity = float(twin.executed_macs)
        state, values, status = (
            TrialState.COMPLETE,
            _values(run, twin.val_acc, complexity),
            "FINISHED",
        )
        metrics = {
            k: float(twin.attrs[k]) for k in ("params", "macs", "ratio", "seconds", "epochs")
        }
        curves = twin.curves  # not trained: the twin's history, logged in one batch
        tags["cnnas.duplicate_of"] = str(twin.number)
    elif isinstance(outcome, Infeasible):
        attrs = {ATTR.infeasible: outcome.reason, **outcome.notes}
        # Not measured: the lower edge of the study's accuracies (edge_accuracy), never better
        # than a trained network, and no marker of 0 that stretches every plot's axis.
        state, status = TrialState.COMPLETE, "FINISHED"
        values = _values(run, outcome.accuracy, complexity)
        metrics = {"params": float(proposal.params), "macs": float(proposal.macs)}
        tags["cnnas.infeasible"] = outcome.reason
    elif isinstance(outcome, Pruned):
        attrs = {
            ATTR.pruned: outcome.reason,
            ATTR.pruned_epoch: outcome.epoch,
            ATTR.curves: outcome.curves,
            **{k: v for k, v in _last(outcome.curves).items() if k in METRICS},
        }
        state, values, status = TrialState.PRUNED, None, "KILLED"
        metrics = {}
        tags["cnnas.pruned"] = outcome.reason
    else:
        attrs = {ATTR.failure: outcome.reason, ATTR.curves: outcome.curves}
        if outcome.interrupted:
            attrs[ATTR.interrupted] = True
        state, values = TrialState.FAIL, None
        status = "KILLED" if outcome.interrupted else "FAILED"
        metrics = {}
        tags["cnnas.failure"] = outcome.reason
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    # Optuna first: the study is the source of truth, and a run left RUNNING by a crash between
    # the two is closed when the study is next opened.
    # skip_if_finished: another worker may have failed this trial as stale meanwhile.
    run.study.tell(trial, values=values, state=state, skip_if_finished=True)
    if run_id is not None:
        run.tracker.end_trial(run_id, status, metrics=metrics, curves=curves, tags=tags)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Holds back Ctrl-C while a block writes to both stores, then raises it.

    A second Ctrl-C while an interrupted trial is being recorded would otherwise leave the trial
    RUNNING in Optuna or its run RUNNING in MLflow. Only the main thread can handle signals;
    elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextmanager
def _heartbeat(run: StudyRun, trial: optuna.Trial) -> Iterator[None]:
    """While the trial trains, a database storage hears from it every heartbeat interval, so a
    worker that dies is noticed (Optuna's optimize() does the same; ask() leaves it to us)."""
    storage = run.storage
    interval = run.cfg.study.heartbeat_interval
    if not run.cfg.study.storage or not hasattr(storage, "record_heartbeat"):
        yield
        return
    trial_id = trial._trial_id  # noqa: SLF001 -- Optuna's heartbeat API takes the storage id
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(trial_id)

    # At once, not after the first interval: a trial that never beat is never found stale.
    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name=f"cnnas-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(
    run: StudyRun, lock: StartLock, on_epoch: EpochFn | None = None
) -> tuple[FrozenTrial, Outcome] | None:
    """Runs the study's next trial, or returns None when the study has its total.

    Counting the trials and creating the next one happen under the study-wide start lock, so two
    workers that both see one trial missing never both start one.
    """
    if run.cfg.study.storage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(run.study)
    with lock:
        recs = run.records()
        # Running and queued (retried) trials count: each is some worker's to finish.
        wanted = run.cfg.study.trials - counted_trials(
            recs, (*COUNTED_STATES, TrialState.RUNNING, TrialState.WAITING)
        )
        if wanted <= 0 and not any(r.state == TrialState.WAITING for r in recs):
            return None
        with warnings.catch_warnings():
            # Optuna warns that its heartbeat is meant for optimize(); _heartbeat sends it here.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = run.study.ask()
        trial.set_user_attr(ATTR.worker, worker_id())
    proposal: Proposal | None = None
    run_id: str | None = None
    outcome: Outcome | None = None
    with _heartbeat(run, trial):
        try:
            proposal = propose(trial, run.cfg, run.data)
            run_id = _start(run, trial, proposal)
        except Exception as e:  # a space that no longer fits the stored study, a tracking error
            outcome = Failed(f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            outcome = Failed(_INTERRUPTED, interrupted=True)
        if outcome is None:
            on_epoch_live = _live(run, run_id, on_epoch)
            outcome = evaluate(run.context(trial, run_id), trial, proposal, on_epoch_live)
    with deferred_interrupts():
        record(run, trial, proposal, run_id, outcome)
    return run.study.get_trials(deepcopy=False)[trial.number], outcome


def _live(run: StudyRun, run_id: str, on_epoch: EpochFn | None) -> EpochFn:
    """Each finished epoch goes to the trial's MLflow run at once (the UI draws a running trial's
    curves), then to the caller's progress function."""

    def epoch(index: int, values: dict[str, float]) -> None:
        run.tracker.log_epoch(run_id, index, values)
        if on_epoch is not None:
            on_epoch(index, values)

    return epoch


def run_study(
    run: StudyRun,
    *,
    on_trial: TrialFn | None = None,
    on_epoch: EpochFn | None = None,
    timeout: float | None = None,
    shared: bool = False,
) -> optuna.Study:
    """Runs trials until the study has ``cfg.study.trials`` counted ones (or ``timeout``).

    Queued retries are always run. ``shared``: this is one of several workers, so the parent
    run is left to the process that started the study.
    """
    if run.study is None:
        run.open()
    cfg = run.cfg
    limit = timeout if timeout is not None else search_timeout(cfg)
    failures: list[str] = []
    start = time.perf_counter()
    status = "FINISHED"
    lock = StartLock(cfg)
    try:
        run.fail_dead_local_trials()
        while len(failures) < cfg.study.max_failures and (
            limit is None or time.perf_counter() - start < limit
        ):
            done = run_trial(run, lock, on_epoch)
            if done is None:
                break
            trial, outcome = done
            if isinstance(outcome, Failed):
                failures.append(outcome.reason)
            else:
                failures.clear()
            if on_trial is not None:
                on_trial(run, trial)
            if isinstance(outcome, Failed) and outcome.interrupted:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        lock.close()
        if not shared:
            run.end_parent(status, time.perf_counter() - start)
    if len(failures) >= cfg.study.max_failures:
        raise StudyFailing(
            f"{len(failures)} trials failed in a row (study.max_failures = "
            f"{cfg.study.max_failures}); last error: {failures[-1]}"
        )
    return run.study


def search_timeout(cfg: StudyConfig) -> float | None:
    """The search's share of ``study.timeout``: the rest is the final phase's (``final.share``)."""
    if cfg.study.timeout is None:
        return None
    return cfg.study.timeout * (1.0 - cfg.final.share)


def replace_cfg(cfg: StudyConfig, **study_changes: Any) -> StudyConfig:
    """``cfg`` with keys of its ``study`` section overridden (None leaves a key as it is)."""
    changes = {k: v for k, v in study_changes.items() if v is not None}
    return cfg.replace("study", **changes) if changes else cfg
