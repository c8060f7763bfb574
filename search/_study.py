"""Studies: storage, samplers, the objective, and running a study to its trial count.

The order of :func:`prepare` matters: everything that can be wrong with the user's input (the
config, mlflow.yml, the dataset) is checked before the first file, study or run is created, so a
mistake leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
import socket
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
import torch
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from models import ArchSpec, count_macs, count_params
from objectives import ImageData, TrainConfig, TrialResult, fit, load_dataset

from ._config import (
    SINGLE_OBJECTIVE_PRUNERS,
    ConfigError,
    MlflowConfig,
    StudyConfig,
    load_mlflow_config,
)
from ._pruning import OptunaPruning, ParetoPruner, PruneRule
from ._space import suggest_augment, suggest_spec
from ._tracking import Tracker

__all__ = [
    "FINISHED",
    "StudyFailing",
    "StudyMismatch",
    "StudyRun",
    "check_storage",
    "front_point",
    "make_pruner",
    "make_sampler",
    "objective_names",
    "open_storage",
    "pareto_front",
    "prepare",
    "replace_cfg",
    "run_study",
    "state_counts",
    "storage_location",
    "trial_spec",
    "worker_id",
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

# States that count towards a study's trial total; a RUNNING trial does not.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PARENT_RUN_ATTR = "mlflow_parent_run_id"


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


def front_point(trial: FrozenTrial, complexity: str) -> tuple[float, float]:
    """(validation accuracy, complexity) of a complete trial, for either kind of study."""
    if len(trial.values) == 2:
        return float(trial.values[0]), float(trial.values[1])
    return float(trial.values[0]), float(trial.user_attrs[complexity])


def storage_location(cfg: StudyConfig) -> str:
    """The storage as a user would name it: a URL, or the journal file's path."""
    if cfg.study.storage:
        return cfg.study.storage
    return str(Path(cfg.study.project_dir) / "optuna.journal")


def open_storage(
    cfg: StudyConfig, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> BaseStorage:
    """The Optuna storage: the configured database URL, or a journal file in the project folder.

    The journal file is the local default because it takes concurrent writers (several workers,
    optuna-dashboard reading) with file locks and appends a few bytes per change: 6.5 ms per trial
    against 124 ms for SQLite, measured here. A database storage gets Optuna's heartbeat: a
    running trial that stays silent for ``study.grace_period`` seconds (its worker was killed) is
    failed by the next worker that starts a trial, and ``on_stale`` is called with it.
    """
    if cfg.study.storage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                cfg.study.storage,
                engine_kwargs=_engine_kwargs(cfg.study.storage),
                heartbeat_interval=cfg.study.heartbeat_interval,
                grace_period=cfg.study.grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
    path = Path(storage_location(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _engine_kwargs(url: str) -> dict[str, Any]:
    # pool_pre_ping: a worker that waited through a database restart reconnects instead of
    # failing its next trial on a dead connection.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        # An unreachable server should fail in seconds, not after the OS's TCP timeout.
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def check_storage(cfg: StudyConfig) -> None:
    """Raises ConfigError when the configured database cannot be reached; writes nothing."""
    url = cfg.study.storage
    if not url:
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    except Exception as e:  # a malformed URL or a missing driver
        raise ConfigError(f"study.storage: cannot use {_safe_url(url)!r}: {e}") from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"study.storage: cannot reach the database {_safe_url(url)!r}: {first}"
        ) from None
    finally:
        engine.dispose()


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def worker_id() -> str:
    """This process as trials record it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(worker: str) -> bool:
    """The worker ran on this host and its process no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker: only a heartbeat could tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


# Optuna 5 reads constraints that the objective sets on the trial and deprecates the samplers'
# constraints_func; older releases have only the latter.
_TRIAL_CONSTRAINTS = hasattr(optuna.Trial, "set_constraint")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    kwargs = {} if _TRIAL_CONSTRAINTS else {"constraints_func": constraints}
    if name == "tpe":
        # multivariate TPE models the joint distribution of the parameters, which matters here:
        # filters, kernel and pooling trade off against each other in both objectives. group
        # splits the space by which parameters a trial used (conditional parameters).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                n_startup_trials=10,
                **kwargs,
            )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20, **kwargs)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; known: tpe, nsga2, random")


def trial_spec(trial: FrozenTrial) -> ArchSpec | None:
    """The architecture a trial trained, rebuilt from its stored spec (not from the space)."""
    data = trial.user_attrs.get("spec")
    return ArchSpec.from_dict(data) if data else None


def pareto_front(study: optuna.Study, complexity: str | None = None) -> list[FrozenTrial]:
    """Feasible complete trials no other such trial beats on accuracy and size, smallest first.

    A repeated architecture (a trial that took an earlier trial's result) is left out: its
    original stands for it. In a single-objective study the size is the recorded complexity
    (``complexity``, default: the one the study's config names), so its front is drawn too.
    """
    if complexity is None:
        config = study.user_attrs.get("config", {})
        complexity = config.get("study", {}).get("complexity", "params")
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t)
        and "duplicate_of" not in t.user_attrs
        and "infeasible" not in t.user_attrs
    ]
    points = {t.number: front_point(t, complexity) for t in done}
    front = [
        t
        for t in done
        if not any(_dominates(points[o.number], points[t.number]) for o in done if o is not t)
    ]
    return sorted(front, key=lambda t: (points[t.number][1], -points[t.number][0], t.number))


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` is at least as accurate and as small as ``b``, and better in one of the two."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


@dataclass
class StudyRun:
    """Everything a running study needs, built by :func:`prepare` once the input is checked."""

    cfg: StudyConfig
    mlflow_cfg: MlflowConfig
    data: ImageData
    study: optuna.Study | None = None
    tracker: Tracker | None = None
    parent_run_id: str | None = None
    # Held by run_study from counting the trials until the next trial exists.
    start_lock: StartLock | None = None

    @property
    def project_dir(self) -> Path:
        return Path(self.cfg.study.project_dir)

    def open(self, *, reopen_parent: bool = True) -> None:
        """Creates (or loads) the study and the MLflow parent run. The first write to disk.

        ``reopen_parent=False`` (for commands that only read a finished study) leaves an
        existing parent run's status alone.
        """
        cfg = self.cfg
        names = list(objective_names(cfg.study.complexity, cfg.study.objective))
        directions = ["maximize", "minimize"][: len(names)]
        self.study = optuna.create_study(
            storage=open_storage(cfg, on_stale=self.stale_trial),
            study_name=cfg.study.name,
            sampler=make_sampler(cfg.study.sampler, cfg.study.seed),
            pruner=make_pruner(cfg),
            directions=directions,
            load_if_exists=True,
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
        if "config" not in self.study.user_attrs:
            # Later commands (pareto, register) rebuild the study's data and settings from this.
            self.study.set_user_attr("config", jsonable(cfg.to_dict()))
        self.study.set_user_attr("dataset", cfg.data.dataset)
        self.project_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(self.mlflow_cfg, self.project_dir)
        existing = self.study.user_attrs.get(PARENT_RUN_ATTR)
        if existing and not reopen_parent:
            self.parent_run_id = existing
            return
        self.parent_run_id = self.tracker.parent_run(cfg.study.name, existing, cfg.to_dict())
        if self.parent_run_id != existing:
            self.study.set_user_attr(PARENT_RUN_ATTR, self.parent_run_id)

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
            "data": jsonable(dataclasses.asdict(self.cfg.data)),
        }
        if refit_epochs:
            extra["refit_epochs"] = refit_epochs
        return extra

    def finished_count(self) -> int:
        """Trials that count towards the total: finished ones, except failures being retried."""
        return counted_trials(self.study, FINISHED)

    def stale_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial whose worker died: its MLflow run ends KILLED, and it is queued once more
        (same parameters, so the same architecture) up to ``study.retries`` times."""
        reason = trial.user_attrs.get("fail_reason") or (
            f"worker {trial.user_attrs.get('worker', '?')} stopped sending heartbeats "
            f"(study.grace_period {self.cfg.study.grace_period}s): killed or lost"
        )
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.tracker is not None:
            try:
                self.tracker.fail_trial(run_id, reason, killed=True)
            except Exception as e:  # the retry matters more than the run's status
                warnings.warn(f"could not close MLflow run {run_id}: {e}", stacklevel=1)
        history = [*trial.user_attrs.get("retry_history", []), trial.number]
        if len(history) > self.cfg.study.retries:
            return
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={"retry_of": trial.number, "retry_history": history},
            )
        )

    def fail_dead_local_trials(self) -> list[int]:
        """With the journal file (no heartbeat), fails the RUNNING trials whose worker process on
        this machine is gone, and hands each to :meth:`stale_trial`; returns their numbers."""
        if self.cfg.study.storage:
            return []  # database storages have the heartbeat
        storage = self.study._storage
        failed = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker")
            if not worker or not _process_gone(worker):
                continue
            reason = f"worker {worker} died while the trial was running"
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            failed.append(t.number)
            self.stale_trial(self.study, storage.get_trial(t._trial_id))
        return failed

    def objective(
        self, trial: optuna.Trial, on_epoch: Callable[[int, dict[str, float]], None] | None = None
    ) -> tuple[float, float] | float:
        if self.start_lock is not None:
            self.start_lock.release()  # this trial exists now: the next may be counted
        cfg, data = self.cfg, self.data
        spec = suggest_spec(trial, cfg.space, data.input_shape, data.num_classes)
        augment = suggest_augment(trial, cfg.space)
        params, macs = count_params(spec), count_macs(spec)
        complexity = float(params if cfg.study.complexity == "params" else macs)
        identity = spec.spec_hash() + ("+aug" if augment else "")
        for key, value in (
            ("worker", worker_id()),
            ("spec", spec.to_dict()),
            ("spec_hash", spec.spec_hash()),
            ("identity", identity),
            ("augment", augment),
            ("params", params),
            ("macs", macs),
            ("device", _device_name(cfg.train.to_train_config(cfg.study.seed, augment=augment))),
        ):
            trial.set_user_attr(key, value)

        # Budgets are checked from the spec alone, before any training. The violations are
        # stored for constraints_func (> 0 is infeasible), from which TPE and NSGA-II learn.
        violations = [
            float(params - cfg.study.max_params) if cfg.study.max_params else 0.0,
            float(macs - cfg.study.max_macs) if cfg.study.max_macs else 0.0,
        ]
        trial.set_user_attr(CONSTRAINTS_ATTR, violations)
        if _TRIAL_CONSTRAINTS:
            for key, value in zip(("max_params", "max_macs"), violations, strict=True):
                trial.set_constraint(key, value)
        run_id = self.tracker.start_trial(self.parent_run_id, cfg.study.name, trial.number, spec)
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            values = self._evaluate(trial, spec, augment, violations, complexity, run_id, on_epoch)
            return values[0] if cfg.study.objective == "accuracy" else values
        except optuna.TrialPruned as e:
            self.tracker.finish_pruned(run_id, trial_curves(trial), str(e))
            raise
        except BaseException as e:
            # Whatever failed (training, saving the weights, logging), the trial and its run
            # both say why; no run is left RUNNING.
            reason = f"{type(e).__name__}: {e}"
            trial.set_user_attr("fail_reason", reason)
            self.tracker.fail_trial(run_id, reason, killed=isinstance(e, KeyboardInterrupt))
            raise

    def _fit_within_memory(
        self,
        trial: optuna.Trial,
        spec: ArchSpec,
        train_cfg: TrainConfig,
        callbacks: list[pl.Callback],
    ) -> TrialResult | None:
        """Trains; on a GPU out-of-memory error retries once at half the batch size
        (``train.oom_retry``), and otherwise marks the trial infeasible and returns None."""
        seed = self.cfg.study.seed + trial.number
        first_batch = train_cfg.batch_size
        while True:
            try:
                return fit(spec, self.data, train_cfg, seed=seed, callbacks=callbacks)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _out_of_memory(e):
                    raise
            # Out of the except block, the traceback (and the failed step's tensors it holds)
            # is gone, so the memory can really be released.
            _release_memory()
            batch = train_cfg.batch_size
            if self.cfg.train.oom_retry and batch > 1 and batch == first_batch:
                train_cfg = dataclasses.replace(train_cfg, batch_size=batch // 2)
                trial.set_user_attr("oom_batch_size", batch // 2)
                continue
            reason = f"out of memory at batch size {batch} on {_device_name(train_cfg)}"
            trial.set_user_attr("infeasible", reason)
            return None

    def _evaluate(
        self,
        trial: optuna.Trial,
        spec: ArchSpec,
        augment: bool,
        violations: list[float],
        complexity: float,
        run_id: str,
        on_epoch: Callable[[int, dict[str, float]], None] | None,
    ) -> tuple[float, float]:
        cfg = self.cfg
        if any(v > 0 for v in violations):
            reason = _over_budget(
                int(trial.user_attrs["params"]), int(trial.user_attrs["macs"]), cfg
            )
            trial.set_user_attr("infeasible", reason)
            self.tracker.finish_infeasible(
                run_id, reason, trial.user_attrs["params"], trial.user_attrs["macs"]
            )
            # Accuracy 0: an infeasible architecture must never look better than a feasible one,
            # also to samplers that ignore constraints (random).
            return 0.0, complexity

        twin = _evaluated_twin(trial, trial.user_attrs["identity"])
        if twin is not None:
            result = _result_of(twin)
            trial.set_user_attr("duplicate_of", twin.number)
        else:
            callbacks: list[pl.Callback] = [_EpochCallback(on_epoch)] if on_epoch else []
            if cfg.pruning.method == "pareto":
                rule = PruneRule(
                    cfg.pruning.margin, cfg.pruning.min_better, cfg.pruning.warmup_epochs
                )
                callbacks.append(ParetoPruner(trial, cfg.study.complexity, complexity, rule))
            elif cfg.pruning.method in SINGLE_OBJECTIVE_PRUNERS:
                callbacks.append(OptunaPruning(trial))
            train_cfg = cfg.train.to_train_config(cfg.study.seed, augment=augment)
            result = self._fit_within_memory(trial, spec, train_cfg, callbacks)
            if result is None:
                reason = trial.user_attrs["infeasible"]
                self.tracker.finish_infeasible(
                    run_id, reason, trial.user_attrs["params"], trial.user_attrs["macs"]
                )
                return 0.0, complexity
            _check_finite(result)
        for key, value in result.metrics().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("curves", result.curves)
        if twin is None:
            # The weights go with the run, so the front can be registered without retraining.
            self.tracker.log_model(run_id, result.model, self.model_extra(trial.number))
        self.tracker.finish_trial(
            run_id, result, duplicate_of=twin.number if twin is not None else None
        )
        if cfg.study.complexity == "macs" and spec.adaptive_depth:
            # An adaptive-depth network costs what its images actually ran, measured on the
            # validation set; budgets above still used the full count, before training.
            complexity = float(result.executed_macs)
        return result.val_acc, complexity


CONSTRAINTS_ATTR = "constraints"


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _release_memory() -> None:
    """Frees what a failed trial held on the GPU before the next trial allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def constraints(trial: FrozenTrial) -> list[float]:
    """Optuna's constraints_func: the budget violations stored by the objective (> 0: over)."""
    return list(trial.user_attrs.get(CONSTRAINTS_ATTR, [0.0, 0.0]))


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in constraints(trial))


def trial_curves(trial: optuna.Trial | FrozenTrial) -> dict[str, list[float]]:
    return dict(trial.user_attrs.get("curves", {}))


def _over_budget(params: int, macs: int, cfg: StudyConfig) -> str:
    parts = []
    if cfg.study.max_params and params > cfg.study.max_params:
        parts.append(f"{params:,} parameters > study.max_params {cfg.study.max_params:,}")
    if cfg.study.max_macs and macs > cfg.study.max_macs:
        parts.append(f"{macs:,} MACs > study.max_macs {cfg.study.max_macs:,}")
    return "over budget: " + "; ".join(parts)


def _evaluated_twin(trial: optuna.Trial, identity: str) -> FrozenTrial | None:
    """A complete, trained trial of this study with the same network and augmentation."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = other.user_attrs
        if a.get("identity") == identity and "val_acc" in a and "infeasible" not in a:
            return other
    return None


def _result_of(trial: FrozenTrial) -> TrialResult:
    """The recorded result of a trained trial, as the trainer returned it."""
    a = trial.user_attrs
    names = ("val_acc", "val_loss", "train_acc", "train_loss", "ratio", "seconds")
    return TrialResult(
        **{n: float(a[n]) for n in names},
        params=int(a["params"]),
        macs=int(a["macs"]),
        executed_macs=float(a.get("executed_macs", a["macs"])),
        epochs=int(a["epochs"]),
        curves={k: list(v) for k, v in a.get("curves", {}).items()},
    )


class StudyMismatch(ValueError):
    """An existing study cannot be resumed with this config."""


def jsonable(value: Any) -> Any:
    """Tuples become lists, recursively (a config as JSON and YAML write it)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _device_name(train_cfg: TrainConfig) -> str:
    if train_cfg.accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def _check_finite(result: TrialResult) -> None:
    bad = [k for k, v in result.metrics().items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"training diverged: {', '.join(bad)} not finite")


class _EpochCallback(pl.Callback):
    """Passes each finished epoch's metrics to a progress function."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]) -> None:
        self.fn = fn

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        self.fn(trainer.current_epoch, {k: v[-1] for k, v in module.curves.items() if v})


def prepare(cfg: StudyConfig, *, data_dir: str | None = None) -> StudyRun:
    """Checks everything the study needs; raises before anything is written."""
    if data_dir is not None:
        cfg = cfg.replace("data", data_dir=data_dir)
    mlflow_cfg = load_mlflow_config(cfg.mlflow)
    check_storage(cfg)
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
    return StudyRun(cfg=cfg, mlflow_cfg=mlflow_cfg, data=data)


class StartLock:
    """Serialises "count the trials, then create the next one" among all workers of a study.

    A PostgreSQL session advisory lock for a database storage (released by the server if the
    worker dies), an exclusive ``flock`` on a file beside a local storage (released by the
    kernel if the worker dies). Re-entrant release: releasing an unheld lock does nothing.
    """

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        self._held = False
        self._conn: Any = None
        self._engine: Any = None
        self._file: Any = None
        url = cfg.study.storage
        self._pg = bool(url) and url.startswith("postgresql")
        # Advisory locks take a 64-bit key: the study's name, hashed.
        self._key = zlib.crc32(f"cnnas:{cfg.study.name}".encode())

    def _lock_path(self) -> Path:
        url = self.cfg.study.storage
        if url and url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///") + f".{self.cfg.study.name}.lock")
        if url:
            # Another database without advisory locks: a lock file serves one machine only.
            return Path(self.cfg.study.project_dir) / f".{self.cfg.study.name}.lock"
        return Path(storage_location(self.cfg) + f".{self.cfg.study.name}.lock")

    def acquire(self) -> None:
        if self._held:
            return
        if self._pg:
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(
                    self.cfg.study.storage,
                    poolclass=sqlalchemy.pool.NullPool,
                    **_engine_kwargs(self.cfg.study.storage),
                )
                self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({self._key})"))
            self._conn.commit()
        else:
            import fcntl

            if self._file is None:
                path = self._lock_path()
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a+")  # noqa: SIM115 -- held across calls
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._pg:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({self._key})"))
            self._conn.commit()
        else:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self.release()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._engine.dispose()
                self._conn = self._engine = None
            if self._file is not None:
                self._file.close()
                self._file = None


class StudyFailing(RuntimeError):
    """Too many trials in a row failed; going on would burn the budget."""


def run_study(
    run: StudyRun,
    *,
    on_trial: Callable[[StudyRun, FrozenTrial], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    timeout: float | None = None,
    shared: bool = False,
) -> optuna.Study:
    """Runs trials until the study has ``cfg.study.trials`` finished ones (or ``timeout``).

    Trials are started one at a time, under the study's :class:`StartLock`, while finished,
    running and queued trials fall short of the total, so workers on other machines or
    processes never overshoot it; queued retries are always run. ``shared``: this is one of
    several workers, so the parent run is left to the process that started the study.
    """
    if run.study is None:
        run.open()
    cfg = run.cfg
    failures: list[str] = []
    limit = timeout if timeout is not None else cfg.study.timeout

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            failures.append(trial.user_attrs.get("fail_reason", "unknown error"))
            if len(failures) >= cfg.study.max_failures:
                study.stop()
        else:
            failures.clear()
        if on_trial is not None:
            on_trial(run, trial)

    start = time.perf_counter()
    status = "FINISHED"

    def left() -> float | None:
        return None if limit is None else max(limit - (time.perf_counter() - start), 0.0)

    def wanted() -> int:
        # Running and queued (retried) trials count: each is some worker's to finish.
        states = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
        return cfg.study.trials - counted_trials(run.study, states)

    def queued() -> bool:
        return bool(run.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    lock = StartLock(run.cfg)
    try:
        run.fail_dead_local_trials()
        # One trial at a time, each started under the study's start lock: counting the trials
        # and creating the next one must be one step, or two workers that both see one trial
        # missing would both start one. The objective releases the lock once its trial exists.
        while len(failures) < cfg.study.max_failures and (limit is None or left() > 0):
            lock.acquire()
            if wanted() <= 0 and not queued():
                lock.release()
                break
            run.start_lock = lock
            try:
                run.study.optimize(
                    lambda t: run.objective(t, on_epoch),
                    n_trials=1,
                    timeout=left(),
                    catch=(Exception,),
                    callbacks=[after],
                )
            finally:
                run.start_lock = None
                lock.release()
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        lock.close()
        if not shared:
            counts = state_counts(run.study)
            counts["wall_seconds"] = time.perf_counter() - start
            run.tracker.end_parent(run.parent_run_id, counts, status)
    if len(failures) >= cfg.study.max_failures:
        raise StudyFailing(
            f"{len(failures)} trials failed in a row (study.max_failures = "
            f"{cfg.study.max_failures}); last error: {failures[-1]}"
        )
    return run.study


def counted_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    """Trials in ``states``, leaving out failures that were queued again (the retry counts)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(
        t.state in states and not (t.state == TrialState.FAIL and t.number in retried)
        for t in trials
    )


def state_counts(study: optuna.Study) -> dict[str, float]:
    """Trials by state, and how many complete ones were infeasible or repeats."""
    counts = {f"trials_{s.name.lower()}": 0.0 for s in (*FINISHED, TrialState.RUNNING)}
    counts["trials_infeasible"] = counts["trials_duplicate"] = 0.0
    for t in study.get_trials(deepcopy=False):
        key = f"trials_{t.state.name.lower()}"
        if key in counts:
            counts[key] += 1
        counts["trials_infeasible"] += "infeasible" in t.user_attrs
        counts["trials_duplicate"] += "duplicate_of" in t.user_attrs
    return counts


def replace_cfg(cfg: StudyConfig, **study_changes: Any) -> StudyConfig:
    """``cfg`` with keys of its ``study`` section overridden (None leaves a key as it is)."""
    changes = {k: v for k, v in study_changes.items() if v is not None}
    return cfg.replace("study", **changes) if changes else cfg
