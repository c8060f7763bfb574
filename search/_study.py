"""Studies: storage, samplers, the objective, and running a study to its trial count.

The order of :func:`prepare` matters: everything that can be wrong with the user's input (the
config, mlflow.yml, the dataset) is checked before the first file, study or run is created, so a
mistake leaves nothing behind.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from models import ArchSpec, count_macs, count_params
from objectives import ImageData, TrialResult, fit, load_dataset

from ._config import ConfigError, MlflowConfig, StudyConfig, load_mlflow_config
from ._pruning import ParetoPruner, PruneRule
from ._space import suggest_augment, suggest_spec
from ._tracking import Tracker

__all__ = [
    "FINISHED",
    "StudyFailing",
    "StudyMismatch",
    "StudyRun",
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
]

# Datasets whose images change meaning when mirrored.
NO_FLIP = {"digits": "a mirrored 2 or 7 is no digit"}

# States that count towards a study's trial total; a RUNNING trial does not.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PARENT_RUN_ATTR = "mlflow_parent_run_id"


def objective_names(complexity: str) -> tuple[str, str]:
    """The study's metric names: validation accuracy (maximised), then complexity (minimised)."""
    return ("val_acc", complexity)


def storage_location(cfg: StudyConfig) -> str:
    """The storage as a user would name it: a URL, or the journal file's path."""
    if cfg.study.storage:
        return cfg.study.storage
    return str(Path(cfg.study.project_dir) / "optuna.journal")


def open_storage(cfg: StudyConfig) -> str | BaseStorage:
    """The Optuna storage: the configured URL, or a journal file in the project folder.

    The journal file is the local default because it takes concurrent writers (several workers,
    optuna-dashboard reading) with file locks and appends a few bytes per change: 6.5 ms per trial
    against 124 ms for SQLite, measured here.
    """
    if cfg.study.storage:
        return cfg.study.storage
    path = Path(storage_location(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


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


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible complete trials no other such trial beats on both objectives, smallest first.

    A repeated architecture (a trial that took an earlier trial's result) is left out: its
    original stands for it.
    """
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t) and "duplicate_of" not in t.user_attrs
    ]
    front = [
        t
        for t in done
        if not any(
            o.values[0] >= t.values[0]
            and o.values[1] <= t.values[1]
            and (o.values[0] > t.values[0] or o.values[1] < t.values[1])
            for o in done
        )
    ]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number))


@dataclass
class StudyRun:
    """Everything a running study needs, built by :func:`prepare` once the input is checked."""

    cfg: StudyConfig
    mlflow_cfg: MlflowConfig
    data: ImageData
    study: optuna.Study | None = None
    tracker: Tracker | None = None
    parent_run_id: str | None = None

    @property
    def project_dir(self) -> Path:
        return Path(self.cfg.study.project_dir)

    def open(self, *, reopen_parent: bool = True) -> None:
        """Creates (or loads) the study and the MLflow parent run. The first write to disk.

        ``reopen_parent=False`` (for commands that only read a finished study) leaves an
        existing parent run's status alone.
        """
        cfg = self.cfg
        directions = ["maximize", "minimize"]
        self.study = optuna.create_study(
            storage=open_storage(cfg),
            study_name=cfg.study.name,
            sampler=make_sampler(cfg.study.sampler, cfg.study.seed),
            directions=directions,
            load_if_exists=True,
        )
        names = list(objective_names(cfg.study.complexity))
        stored = self.study.metric_names
        if stored is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(names)
        elif list(stored) != names:
            raise StudyMismatch(
                f"study {cfg.study.name!r} optimises {stored}, but the config asks for {names} "
                "(study.complexity); use another study.name"
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
        }
        if refit_epochs:
            extra["refit_epochs"] = refit_epochs
        return extra

    def finished_count(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def objective(
        self, trial: optuna.Trial, on_epoch: Callable[[int, dict[str, float]], None] | None = None
    ) -> tuple[float, float]:
        cfg, data = self.cfg, self.data
        spec = suggest_spec(trial, cfg.space, data.input_shape, data.num_classes)
        augment = suggest_augment(trial, cfg.space)
        params, macs = count_params(spec), count_macs(spec)
        complexity = float(params if cfg.study.complexity == "params" else macs)
        identity = spec.spec_hash() + ("+aug" if augment else "")
        for key, value in (
            ("spec", spec.to_dict()),
            ("spec_hash", spec.spec_hash()),
            ("identity", identity),
            ("augment", augment),
            ("params", params),
            ("macs", macs),
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
            return self._evaluate(trial, spec, augment, violations, complexity, run_id, on_epoch)
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
            result = fit(
                spec,
                self.data,
                cfg.train.to_train_config(cfg.study.seed, augment=augment),
                seed=cfg.study.seed + trial.number,
                callbacks=callbacks,
            )
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
        return result.val_acc, complexity


CONSTRAINTS_ATTR = "constraints"


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
    if cfg.pruning.method in ("median", "hyperband"):
        raise ConfigError(
            f"pruning.method: Optuna's {cfg.pruning.method} pruner needs a single-objective "
            "study, and a cnnas study has two objectives (validation accuracy and "
            f"{cfg.study.complexity}); use 'pareto', which compares trials of no larger size"
        )
    if cfg.train.augment.flip and True in cfg.space.augment and cfg.data.dataset in NO_FLIP:
        raise ConfigError(
            f"train.augment.flip: {cfg.data.dataset} must not be mirrored "
            f"({NO_FLIP[cfg.data.dataset]}); set it to false"
        )
    data = load_dataset(
        cfg.data.dataset,
        data_dir=cfg.data.data_dir,
        val_fraction=cfg.data.val_fraction,
        subset=cfg.data.subset,
        seed=cfg.study.seed,
    )
    return StudyRun(cfg=cfg, mlflow_cfg=mlflow_cfg, data=data)


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

    ``shared``: other workers run trials of the same study at the same time. Trials are then
    started one at a time while finished plus running trials fall short of the total, and the
    parent run is left to the process that started the workers.
    """
    if run.study is None:
        run.open()
    cfg = run.cfg
    remaining = cfg.study.trials - run.finished_count()
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

    def optimize(n: int) -> None:
        left = None if limit is None else max(limit - (time.perf_counter() - start), 0.0)
        run.study.optimize(
            lambda t: run.objective(t, on_epoch),
            n_trials=n,
            timeout=left,
            catch=(Exception,),
            callbacks=[after],
        )

    try:
        if shared:
            while (
                len(run.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))
                < cfg.study.trials
                and len(failures) < cfg.study.max_failures
                and (limit is None or time.perf_counter() - start < limit)
            ):
                optimize(1)
        elif remaining > 0:
            optimize(remaining)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
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
