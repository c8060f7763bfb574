"""One trial, from its sampled architecture to a decided outcome.

The study asks Optuna for a trial, :func:`propose` turns it into an architecture, and
:func:`evaluate` decides what became of it: trained, pruned, infeasible (over budget, or out of
memory), a repeat of an earlier trial, or failed. Nothing here writes the outcome to Optuna or
closes the trial's MLflow run: the study records each outcome once (``_study.record``), so every
trial takes the same path whatever happened to it.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import pytorch_lightning as pl
import torch

from cnnas.models import ArchSpec, count_macs, count_params
from cnnas.objectives import ImageData, Latency, TrainConfig, TrialResult

from ._config import SINGLE_OBJECTIVE_PRUNERS, StudyConfig
from ._latency import latency_of
from ._pruning import OptunaPruning, ParetoPruner, PruneRule, references
from ._records import TrialRecord
from ._space import suggest_augment, suggest_spec

__all__ = [
    "Duplicate",
    "Failed",
    "Infeasible",
    "Outcome",
    "Proposal",
    "Pruned",
    "Trained",
    "Trainer",
    "edge_accuracy",
    "evaluate",
    "over_budget",
    "propose",
]


class Trainer(Protocol):
    """What scores one architecture: ``cnnas.objectives.fit`` or a stand-in with its signature."""

    def __call__(
        self,
        spec: ArchSpec,
        data: ImageData,
        cfg: TrainConfig,
        *,
        seed: int | None = None,
        callbacks: Sequence[pl.Callback] = (),
    ) -> TrialResult: ...


@dataclass(frozen=True)
class Proposal:
    """The architecture a trial will train, with its size known before any training."""

    spec: ArchSpec
    augment: bool
    params: int
    macs: int
    # Median milliseconds of one image and of a batch on this machine (the latency section).
    latency: Latency | None = None

    @property
    def identity(self) -> str:
        """Same identity, same training: the network's hash, plus whether it is augmented."""
        return self.spec.spec_hash() + ("+aug" if self.augment else "")

    def complexity(self, axis: str) -> float:
        if axis == "latency":
            return float(self.latency.single_ms if self.latency else 0.0)
        return float(self.params if axis == "params" else self.macs)


def propose(trial: optuna.Trial, cfg: StudyConfig, data: ImageData) -> Proposal:
    """Samples the trial's architecture from the config's space, for the dataset's images, and
    times it (every trial records its latency, whatever the complexity axis)."""
    spec = suggest_spec(trial, cfg.space, data.input_shape, data.num_classes)
    latency = latency_of(spec, cfg.latency, Path(cfg.study.project_dir))
    return Proposal(
        spec, suggest_augment(trial, cfg.space), count_params(spec), count_macs(spec), latency
    )


def budget_violations(p: Proposal, cfg: StudyConfig) -> dict[str, float]:
    """How far the architecture is over each budget (> 0: over), from the spec alone."""
    s = cfg.study
    return {
        "max_params": float(p.params - s.max_params) if s.max_params else 0.0,
        "max_macs": float(p.macs - s.max_macs) if s.max_macs else 0.0,
    }


def over_budget(p: Proposal, cfg: StudyConfig) -> str | None:
    """Why the architecture is over budget, or None when it is within every budget."""
    s, parts = cfg.study, []
    if s.max_params and p.params > s.max_params:
        parts.append(f"{p.params:,} parameters > study.max_params {s.max_params:,}")
    if s.max_macs and p.macs > s.max_macs:
        parts.append(f"{p.macs:,} MACs > study.max_macs {s.max_macs:,}")
    return "over budget: " + "; ".join(parts) if parts else None


# --- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """Trained to the end; ``result`` holds the network and its scores."""

    result: TrialResult
    # Extra facts for the trial's record (a batch size halved after running out of memory).
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Duplicate:
    """The same network and training as an earlier trained trial: its result, not trained again."""

    twin: TrialRecord


@dataclass(frozen=True)
class Infeasible:
    """Not trained (over budget), or could not be (out of memory even at half the batch)."""

    reason: str
    notes: dict[str, Any] = field(default_factory=dict)
    # The accuracy to record as the trial's objective value, which nothing measured: the lowest
    # of the study's trained trials so far (see edge_accuracy).
    accuracy: float = 0.0


def edge_accuracy(trials: Sequence[TrialRecord], num_classes: int) -> float:
    """The objective value for a trial that trained nothing: the lowest validation accuracy of
    the study's trained trials so far, or chance (1 / classes) before any.

    Optuna's constrained samplers judge an infeasible trial by its constraints alone (TPE puts
    it in its "bad" group, NSGA-II ranks it below every feasible one), so the value need only
    not mislead: at the lower edge of the accuracies the plots already show, it neither looks
    better than a trained network nor stretches every accuracy axis down to 0 as a marker of
    0 would (optuna-dashboard draws it grey, from its constraints). ``-inf`` would say "no
    value" best, but turns the dashboard's Pareto-front axis into categories.
    """
    measured = [r.val_acc for r in trials if r.trained and math.isfinite(r.val_acc or math.nan)]
    return float(min(measured)) if measured else 1.0 / max(num_classes, 1)


@dataclass(frozen=True)
class Pruned:
    """Stopped early because other trials already beat it; ``curves`` up to that epoch."""

    reason: str
    epoch: int
    curves: dict[str, list[float]]


@dataclass(frozen=True)
class Failed:
    """Training or logging raised; ``interrupted`` when that was the user's Ctrl-C."""

    reason: str
    interrupted: bool = False
    curves: dict[str, list[float]] = field(default_factory=dict)


Outcome = Trained | Duplicate | Infeasible | Pruned | Failed


# --- evaluation -----------------------------------------------------------------------------------


class EpochWatcher(pl.Callback):
    """Keeps the curves of the running fit and hands each finished epoch on.

    ``on_epoch(epoch, values)`` receives the epoch's last values (live MLflow metrics, progress
    lines). It is the first callback of a trial, so an epoch that a pruner stops is still seen.
    """

    def __init__(self, on_epoch: Callable[[int, dict[str, float]], None] | None) -> None:
        self.on_epoch = on_epoch
        self.curves: dict[str, list[float]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        self.curves = {k: list(v) for k, v in module.curves.items()}
        if self.on_epoch is not None and self.curves.get("val_acc"):
            epoch = len(self.curves["val_acc"]) - 1
            self.on_epoch(epoch, {k: v[-1] for k, v in self.curves.items() if v})


@dataclass
class TrialContext:
    """What :func:`evaluate` needs of the running study."""

    cfg: StudyConfig
    data: ImageData
    trainer: Trainer
    # The study's trials as records (for repeats and pruning references), read when needed.
    trials: Callable[[], list[TrialRecord]]
    # Stores the trained network with the trial's run; returns nothing.
    save_model: Callable[[torch.nn.Module], None]


def _twin(trials: Sequence[TrialRecord], identity: str) -> TrialRecord | None:
    """A trained trial of this study with the same network and augmentation."""
    for r in trials:
        if r.identity == identity and r.trained and r.duplicate_of is None:
            return r
    return None


def _judges(ctx: TrialContext, trial: optuna.Trial, complexity: float) -> list[pl.Callback]:
    cfg = ctx.cfg
    if cfg.pruning.method == "pareto":
        p = cfg.pruning
        rule = PruneRule(p.margin, p.min_better, p.warmup_epochs)

        def refs() -> list:
            return references(ctx.trials(), cfg.study.complexity)

        return [ParetoPruner(refs, complexity, rule)]
    if cfg.pruning.method in SINGLE_OBJECTIVE_PRUNERS:
        return [OptunaPruning(trial)]
    return []


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _release_memory() -> None:
    """Frees what a failed fit held on the GPU before the next fit allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_name(train_cfg: TrainConfig) -> str:
    if train_cfg.accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def _fit_within_memory(
    ctx: TrialContext,
    spec: ArchSpec,
    train_cfg: TrainConfig,
    seed: int,
    callbacks: list[pl.Callback],
) -> Trained | Infeasible:
    """Trains; on a GPU out-of-memory error retries once at half the batch size
    (``train.oom_retry``), and otherwise the architecture is infeasible on this device."""
    first_batch = train_cfg.batch_size
    notes: dict[str, Any] = {}
    while True:
        try:
            return Trained(
                ctx.trainer(spec, ctx.data, train_cfg, seed=seed, callbacks=callbacks), notes
            )
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
        # Out of the except block, the traceback (and the failed step's tensors it holds) is
        # gone, so the memory can really be released.
        _release_memory()
        batch = train_cfg.batch_size
        if ctx.cfg.train.oom_retry and batch > 1 and batch == first_batch:
            train_cfg = dataclasses.replace(train_cfg, batch_size=batch // 2)
            notes["oom_batch_size"] = batch // 2
            continue
        reason = f"out of memory at batch size {batch} on {device_name(train_cfg)}"
        return Infeasible(reason, notes, edge_accuracy(ctx.trials(), ctx.data.num_classes))


def _check_finite(result: TrialResult) -> None:
    bad = [k for k, v in result.metrics().items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"training diverged: {', '.join(bad)} not finite")


def evaluate(
    ctx: TrialContext,
    trial: optuna.Trial,
    proposal: Proposal,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Outcome:
    """Decides what becomes of the trial; never raises, a Ctrl-C included (see Failed)."""
    cfg = ctx.cfg
    watcher = EpochWatcher(on_epoch)
    try:
        reason = over_budget(proposal, cfg)
        if reason is not None:
            return Infeasible(reason, accuracy=edge_accuracy(ctx.trials(), ctx.data.num_classes))
        twin = _twin(ctx.trials(), proposal.identity)
        if twin is not None:
            return Duplicate(twin)
        complexity = proposal.complexity(cfg.study.complexity)
        callbacks = [watcher, *_judges(ctx, trial, complexity)]
        train_cfg = cfg.train.to_train_config(cfg.study.seed, augment=proposal.augment)
        outcome = _fit_within_memory(
            ctx, proposal.spec, train_cfg, cfg.study.seed + trial.number, callbacks
        )
        if isinstance(outcome, Trained):
            _check_finite(outcome.result)
            # The weights go with the run, so the front can be registered without retraining.
            ctx.save_model(outcome.result.model)
        return outcome
    except optuna.TrialPruned as e:
        return Pruned(str(e), len(watcher.curves.get("val_acc", [])), watcher.curves)
    except KeyboardInterrupt:
        return Failed("KeyboardInterrupt: stopped by the user", True, watcher.curves)
    except Exception as e:
        # Whatever failed (training, saving the weights, logging), the trial and its run both
        # say why.
        return Failed(f"{type(e).__name__}: {e}", False, watcher.curves)
