"""The study configuration: a YAML file read strictly into frozen dataclasses.

Every key is known, typed and range-checked before anything is created; a mistake is a
:class:`ConfigError` that names the key (``train.epochs``), what was given and what is allowed.
YAML is read with ``yaml.safe_load``, so no tag can build a Python object.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnas.models import AGGREGATIONS, HEADS, POOLS, PREDICTIONS
from cnnas.objectives import (
    ACCELERATORS,
    DATASETS,
    MEMORY_FORMATS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    Augment,
    TrainConfig,
)
from cnnas.objectives import (
    BACKENDS as LATENCY_BACKENDS,
)

from ._aliases import CHAMPION_RULES, ChampionRule
from .errors import ConfigError

__all__ = [
    "COMPLEXITY",
    "OBJECTIVES",
    "SAMPLERS",
    "ConfigError",
    "DataConfig",
    "FinalSection",
    "LatencySection",
    "MlflowConfig",
    "SpaceConfig",
    "StudyConfig",
    "StudySection",
    "describe_presets",
    "load_config",
    "load_mlflow_config",
    "load_preset",
    "preset_names",
    "to_yaml",
]

SAMPLERS = ("tpe", "nsga2", "random")
# pareto: maximise validation accuracy and minimise complexity (two objectives); accuracy:
# maximise validation accuracy alone (complexity is still recorded and its front still drawn).
OBJECTIVES = ("pareto", "accuracy")
# The complexity objective minimised next to validation accuracy.
COMPLEXITY = ("params", "macs", "latency")
GROWTH = ("constant", "doubling")
SPACE_PRESETS = ("default", "seed003", "seed002", "seed000")


def _opt(default: Any, doc: str, **rules: Any) -> Any:
    """A config field: its default, one line of documentation, and its checks."""
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata={"doc": doc, **rules})
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class StudySection:
    name: str = _opt(
        "cnnas",
        "Study name; up to 64 letters, digits, '.', '_' and '-', starting with a letter, digit "
        "or '_' (it names folders: '..' must not).",
        pattern=r"\w[\w.-]{0,63}",
        allowed="up to 64 letters, digits, '.', '_' and '-', starting with a letter, digit or '_'",
    )
    trials: int = _opt(
        20,
        "Trials the study should have in total; a resumed study runs the rest.",
        lo=1,
        hi=1_000_000,
    )
    timeout: float | None = _opt(
        None, "Stop starting trials after this many seconds (null: no limit).", lo=1
    )
    workers: int = _opt(
        1,
        "Worker processes on the CPU that search side by side, the cores shared between them "
        "(cnnas study start --workers overrides it; --devices starts one per GPU instead).",
        lo=1,
        hi=1024,
    )
    sampler: str = _opt("tpe", "Optuna sampler.", choices=SAMPLERS)
    seed: int = _opt(0, "Seed of the sampler, the data split and the training.", lo=0, hi=2**31 - 1)
    objective: str = _opt(
        "pareto",
        "pareto: two objectives, validation accuracy up and complexity down; accuracy: one "
        "objective, validation accuracy (for Optuna's median/hyperband pruners).",
        choices=OBJECTIVES,
    )
    complexity: str = _opt(
        "params",
        "Complexity objective minimised next to validation accuracy: parameters, MACs per image, "
        "or latency (median ms of one image on this machine, see the latency section).",
        choices=COMPLEXITY,
    )
    project_dir: str = _opt(
        "cnnas-runs",
        "Folder of the local stores (Optuna journal, MLflow database and artifacts), "
        "relative to the working directory.",
    )
    storage: str | None = _opt(
        None,
        "Optuna storage URL (sqlite:///..., postgresql://...); "
        "null: a journal file in project_dir.",
    )
    max_params: int | None = _opt(
        None,
        "Budget: architectures with more parameters are rejected before training (infeasible).",
        lo=1,
    )
    max_macs: int | None = _opt(
        None,
        "Budget: architectures with more MACs per image are rejected before training.",
        lo=1,
    )
    start_from: tuple[dict[str, Any], ...] | None = _opt(
        None,
        "Architectures a new study tries first, before the sampler proposes: a list of mappings "
        "of trial parameters, named as the dashboard and cnnas pareto name them ({blocks: 3, "
        "base_filters: 16, ...}); a parameter left out is sampled. null: none.",
    )
    max_failures: int = _opt(
        3, "Stop the study after this many failed trials in a row.", lo=1, hi=1000
    )
    heartbeat_interval: int = _opt(
        60,
        "Database storages: seconds between a running trial's heartbeats; a trial silent for "
        "grace_period is failed (its worker died) and retried.",
        lo=1,
        hi=86400,
    )
    grace_period: int = _opt(
        180, "Seconds without a heartbeat after which a running trial is failed.", lo=2, hi=604800
    )
    retries: int = _opt(
        1,
        "Times a trial whose worker died is run again, same architecture (0: never).",
        lo=0,
        hi=10,
    )


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _opt(
        "fashion-mnist", "Dataset name (see 'Datasets' for each format).", choices=DATASETS
    )
    data_dir: str | None = _opt(
        None,
        "Folder that holds the public datasets (itself or a sub-folder named after the dataset, "
        "as `cnnas data fetch` writes it); null: $CNNAS_DATA_DIR, then ~/.cache/cnnas/datasets "
        "(Fashion-MNIST: first the Debian package's folder).",
    )
    path: str | None = _opt(
        None,
        "The dataset's own file or folder: the image folder, the .npz file, a CIFAR tarball or "
        "folder, a folder of IDX files; required for image-folder and npz.",
    )
    height: int | None = _opt(
        None,
        "Resize every image to this height in pixels (with data.width); null: keep the source "
        "size (an image folder's images must then share one size).",
        lo=1,
        hi=4096,
    )
    width: int | None = _opt(
        None, "Resize every image to this width in pixels (with data.height).", lo=1, hi=4096
    )
    val_fraction: float = _opt(
        0.1, "Fraction of the training set held out (stratified) for validation.", lo=0.01, hi=0.5
    )
    test_fraction: float = _opt(
        0.2,
        "Image folders and npz files without a test split: fraction held out (stratified, "
        "seed 0, the same in every study) as the test set.",
        lo=0.01,
        hi=0.5,
    )
    subset: int | None = _opt(
        None, "Use only this many training images (stratified) for quick runs; null: all.", lo=20
    )
    cache_dir: str | None = _opt(
        None,
        "Image folders: folder of the decoded-image cache; null: ~/.cache/cnnas/image-folders.",
    )
    max_unreadable: float = _opt(
        0.01,
        "Image folders: largest fraction of unreadable image files that are skipped (with a "
        "warning) before the dataset is refused.",
        lo=0.0,
        hi=1.0,
    )

    def __post_init__(self) -> None:
        if (self.height is None) != (self.width is None):
            given, other = ("height", "width") if self.width is None else ("width", "height")
            raise ConfigError(
                f"data.{other}: data.{given} is set, so data.{other} must be too "
                "(or leave both null to keep the source size)"
            )

    def image_size(self) -> tuple[int, int] | None:
        """(height, width) to resize to, or None."""
        return None if self.height is None else (self.height, self.width)

    def load_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``objectives.load_dataset`` this section describes."""
        return {
            "data_dir": self.data_dir,
            "path": self.path,
            "image_size": self.image_size(),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "subset": self.subset,
            "cache_dir": self.cache_dir,
            "max_unreadable": self.max_unreadable,
        }


@dataclass(frozen=True)
class AugmentSection:
    translate: float = _opt(2.0, "Largest random shift in pixels.", lo=0.0, hi=64.0)
    rotate: float = _opt(0.0, "Largest random rotation in degrees.", lo=0.0, hi=180.0)
    flip: bool = _opt(False, "Mirror half the images left-right (not for digits).")


# The trainer's own defaults are the section's: one place says what a trial trains with.
_TRAINER = TrainConfig()


@dataclass(frozen=True)
class TrainSection:
    epochs: int = _opt(_TRAINER.epochs, "Training epochs per trial.", lo=1, hi=10000)
    batch_size: int = _opt(_TRAINER.batch_size, "Images per step.", lo=1, hi=1 << 16)
    optimizer: str = _opt(
        _TRAINER.optimizer,
        "adam, adamw (decoupled weight decay) or sgd (Nesterov momentum 0.9).",
        choices=OPTIMIZERS,
    )
    lr: float = _opt(
        _TRAINER.lr, "Learning rate (the peak one for cosine and onecycle).", lo=1e-7, hi=10.0
    )
    weight_decay: float = _opt(
        _TRAINER.weight_decay,
        "Weight decay (L2 for adam and sgd, decoupled for adamw).",
        lo=0.0,
        hi=1.0,
    )
    schedule: str = _opt(
        _TRAINER.schedule,
        "plateau (decay when validation accuracy stalls), cosine (warm-up, then cosine to 0), "
        "onecycle, or constant.",
        choices=SCHEDULES,
    )
    warmup: float = _opt(
        _TRAINER.warmup, "cosine, onecycle: share of the steps spent warming up.", lo=0.0, hi=0.5
    )
    label_smoothing: float = _opt(
        _TRAINER.label_smoothing,
        "Label smoothing of the training loss (0: none).",
        lo=0.0,
        hi=0.49,
    )
    lr_factor: float = _opt(
        _TRAINER.lr_factor,
        "Learning-rate decay factor on a validation-accuracy plateau.",
        lo=0.01,
        hi=0.99,
    )
    lr_patience: int = _opt(
        _TRAINER.lr_patience,
        "Epochs without improvement before the learning rate decays.",
        lo=0,
        hi=1000,
    )
    accelerator: str = _opt(
        _TRAINER.accelerator,
        "Where to train; auto takes a GPU when there is one.",
        choices=ACCELERATORS,
    )
    precision: str = _opt(
        _TRAINER.precision,
        "Numeric precision of training; auto is bf16-mixed on a GPU, and on a CPU with native "
        "bf16 (AVX512-BF16 or AMX) for networks without depthwise convolutions; 32-true "
        "otherwise. Validation is scored in fp32 whatever this says.",
        choices=PRECISIONS,
    )
    memory_format: str = _opt(
        _TRAINER.memory_format,
        "Tensor layout in training; auto is channels_last (NHWC) on a GPU and on an x86 CPU "
        "(oneDNN), where it is faster, contiguous (NCHW) elsewhere.",
        choices=MEMORY_FORMATS,
    )
    deterministic: bool = _opt(
        _TRAINER.deterministic, "Deterministic kernels (the same seed gives the same result)."
    )
    oom_retry: bool = _opt(
        True,
        "On a GPU out-of-memory error, train the trial once more at half the batch size before "
        "recording the architecture as infeasible.",
    )
    augment: AugmentSection = field(default_factory=AugmentSection)

    def to_train_config(self, seed: int, augment: bool = False) -> TrainConfig:
        """The trainer's config; ``augment`` turns on the augmentation this section describes."""
        # oom_retry is the study's business (search._objective), not the trainer's.
        values = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "oom_retry"
        }
        aug = Augment(**dataclasses.asdict(self.augment)) if augment else Augment()
        return TrainConfig(**{**values, "augment": aug}, seed=seed)


@dataclass(frozen=True)
class IntRange:
    """An integer dimension sampled uniformly from min..max (YAML: ``{min: 1, max: 6}``)."""

    min: int
    max: int


@dataclass(frozen=True)
class FloatRange:
    """A real dimension sampled from [min, max] (YAML: ``{min: 0.0, max: 0.5}``)."""

    min: float
    max: float


# A numeric dimension of the space: a list of choices, or a range.
IntDim = tuple[int, ...] | IntRange
FloatDim = tuple[float, ...] | FloatRange
POOL_SCOPES = ("block", "network")


@dataclass(frozen=True)
class SpaceConfig:
    # The efficient blocks' dimensions with all their values (what the default space offers with
    # them in): dataclasses.replace(SpaceConfig(), **SpaceConfig.EFFICIENT), or these keys in a
    # config file, searches them.
    EFFICIENT: typing.ClassVar[dict[str, tuple[Any, ...]]] = {
        "block_types": ("plain", "separable", "residual", "inverted"),
        "se_ratio": (0.0, 0.25),
        "pools": ("max", "avg", "conv", "stride", "none"),
    }
    # Whether the default space includes them. Measured off: in bench/search_budget.py's
    # `blocks` variant (2026-12-02, CPU preset, 600 s) they cost the search 42 of its 59 trials
    # and the best registered network 2.6 points (docs/benchmarks.md). This is the one line to
    # change: it is read when the class is defined (the defaults below), not at run time.
    _OFFER_EFFICIENT = False

    preset: str = _opt(
        "default",
        "Named search space; the other space keys start from its values (see 'Named spaces').",
        choices=SPACE_PRESETS,
    )
    blocks: IntDim = _opt(IntRange(1, 6), "Conv blocks.", lo=1, hi=12)
    convs: IntDim = _opt((1, 2), "Convolutions per block.", lo=1, hi=4)
    base_filters: tuple[int, ...] = _opt(
        (8, 16, 32, 64), "Filters of the first block (choices).", lo=1, hi=4096
    )
    growth: tuple[str, ...] = _opt(
        GROWTH, "How filters grow from block to block (choices).", choices=GROWTH
    )
    max_filters: int = _opt(256, "Cap on any block's filters.", lo=1, hi=4096)
    kernels: tuple[int, ...] = _opt(
        (3, 5, 7), "Kernel sizes (choices, odd).", lo=1, hi=15, odd=True
    )
    factorize: tuple[bool, ...] = _opt(
        (False, True), "Factorise kxk convs into 3x3 stacks (choices; asked only for k > 3)."
    )
    batch_norm: tuple[bool, ...] = _opt((True, False), "BatchNorm after each conv (choices).")
    block_types: tuple[str, ...] = _opt(
        EFFICIENT["block_types"] if _OFFER_EFFICIENT else ("plain",),
        "Conv block type, one for the network (choices): plain (kxk convs), separable (depthwise "
        "kxk + pointwise 1x1), residual (a shortcut around the block's convs, a 1x1 projection "
        "where the shape changes), inverted (MobileNetV2 inverted bottlenecks, one per conv).",
        # models.BLOCK_TYPES; tests/search/test_space.py keeps the two equal.
        choices=("plain", "separable", "residual", "inverted"),
    )
    expansions: IntDim = _opt(
        (2, 4, 6),
        "Expansion ratio of inverted blocks (choices or a range; asked only for inverted).",
        lo=1,
        hi=16,
    )
    se_ratio: FloatDim = _opt(
        EFFICIENT["se_ratio"] if _OFFER_EFFICIENT else (0.0,),
        "Squeeze-and-excitation in every block: its hidden width as a fraction of the channels, "
        "0 for none (choices, or a range in steps of 1/16).",
        lo=0.0,
        hi=1.0,
    )
    pools: tuple[str, ...] = _opt(
        EFFICIENT["pools"] if _OFFER_EFFICIENT else ("max", "avg", "conv", "none"),
        "Downsampling after a block (choices; conv = learnable stride-2 conv; stride = the "
        "block's first conv has stride 2, no pool).",
        choices=(*POOLS, "stride"),
    )
    pool_scope: str = _opt(
        "block",
        "'block': each block chooses its downsampling; 'network': one choice for every block.",
        choices=POOL_SCOPES,
    )
    block_dropout: FloatDim = _opt(
        FloatRange(0.0, 0.5), "Dropout after each block.", lo=0.0, hi=0.9
    )
    aggregations: tuple[str, ...] = _opt(
        ("flatten", "gap", "multiscale"), "Feature aggregation (choices).", choices=AGGREGATIONS
    )
    heads: tuple[str, ...] = _opt(
        ("single", "multi"), "Output heads (choices; multi only with multiscale).", choices=HEADS
    )
    predict: tuple[str, ...] = _opt(
        ("main", "mean"), "Prediction rule of multi-head networks (choices).", choices=PREDICTIONS
    )
    aux_weight: FloatDim = _opt(
        (1.0,), "Loss weight of each extra head (multi-head networks).", lo=0.0, hi=100.0
    )
    dense_layers: IntDim = _opt(IntRange(0, 3), "Hidden dense layers.", lo=0, hi=8)
    dense_width: IntDim = _opt(
        IntRange(16, 1024),
        "Width of each dense layer (a range is sampled on a log scale).",
        lo=1,
        hi=65536,
    )
    dense_dropout: FloatDim = _opt(
        FloatRange(0.0, 0.5), "Dropout after each dense layer.", lo=0.0, hi=0.9
    )
    augment: tuple[bool, ...] = _opt(
        (False,), "Train with the augmentation of train.augment (choices)."
    )
    adaptive_depth: tuple[bool, ...] = _opt(
        (False,),
        "Adaptive depth (choices): equal-size stages after the first block, an exit classifier "
        "after each, and each image stops at its first confident exit (implies gap, single "
        "head, no downsampling after the first block).",
    )
    exit_threshold: FloatDim = _opt(
        FloatRange(0.6, 0.99),
        "Adaptive depth: softmax confidence at which an image stops (1.0: never early).",
        lo=0.01,
        hi=1.0,
    )


# The named spaces, each from a source document; a config's own space keys override them. The
# seeds' spaces name their plain blocks, so they stay as their documents describe them whatever
# the default space offers.
SPACE_PRESETS_VALUES: dict[str, dict[str, Any]] = {
    "default": {},
    # Seed 003's manual search: N conv layers -> GAP -> M dense layers of 1024, kernel and filter
    # ablations, MaxPool / BatchNorm / Dropout(0.2) on the dense layers, on or off for the network.
    "seed003": {
        "blocks": (1, 2, 4, 8),
        "convs": (1,),
        "base_filters": (32, 64, 128, 256),
        "growth": ("constant",),
        "max_filters": 256,
        "kernels": (3, 5, 7, 9),
        "factorize": (False,),
        "batch_norm": (False, True),
        "block_types": ("plain",),
        "se_ratio": (0.0,),
        "pools": ("max", "none"),
        "pool_scope": "network",
        "block_dropout": (0.0,),
        "aggregations": ("gap",),
        "heads": ("single",),
        "dense_layers": (1, 2, 4),
        "dense_width": (1024,),
        "dense_dropout": (0.0, 0.2),
        "augment": (False,),
    },
    # Seed 002's rules of thumb: 1-3 conv-pool pairs, filters doubling from 8 up to 128, a dense
    # layer of up to 2048 (or none), dropout up to 70%, 32C5 against 32C3-32C3, max pool against
    # a learnable stride-2 conv, BatchNorm, augmentation on or off.
    "seed002": {
        "blocks": IntRange(1, 3),
        "convs": (1, 2),
        "base_filters": (8, 16, 32),
        "growth": ("doubling",),
        "max_filters": 128,
        "kernels": (3, 5),
        "factorize": (False, True),
        "batch_norm": (False, True),
        "block_types": ("plain",),
        "se_ratio": (0.0,),
        "pools": ("max", "conv"),
        "pool_scope": "block",
        "block_dropout": FloatRange(0.0, 0.7),
        "aggregations": ("flatten",),
        "heads": ("single",),
        "dense_layers": IntRange(0, 1),
        "dense_width": IntRange(16, 2048),
        "dense_dropout": FloatRange(0.0, 0.7),
        "augment": (False, True),
    },
    # Seed 000's road-sign network and its three variants: the multi-scale flatten, the plain
    # flatten without the pooled sections, and the three-headed model.
    "seed000": {
        "blocks": IntRange(2, 3),
        "convs": (1,),
        "base_filters": (16, 32),
        "growth": ("doubling",),
        "max_filters": 128,
        "kernels": (3, 5),
        "factorize": (False,),
        "batch_norm": (False, True),
        "block_types": ("plain",),
        "se_ratio": (0.0,),
        "pools": ("max",),
        "pool_scope": "block",
        "block_dropout": FloatRange(0.0, 0.3),
        "aggregations": ("flatten", "multiscale"),
        "heads": ("single", "multi"),
        "predict": ("main", "mean"),
        "aux_weight": (0.5, 1.0),
        "dense_layers": IntRange(0, 1),
        "dense_width": IntRange(32, 512),
        "dense_dropout": FloatRange(0.0, 0.5),
        "augment": (False,),
    },
}


PRUNING_METHODS = ("none", "pareto", "median", "hyperband", "successive_halving")
# Optuna's pruners judge one reported value per epoch: they need study.objective 'accuracy'.
SINGLE_OBJECTIVE_PRUNERS = ("median", "hyperband", "successive_halving")


@dataclass(frozen=True)
class PruningSection:
    method: str = _opt(
        "none",
        "Early stopping: none; pareto (stop a trial that completed, no larger trials beat at the "
        "same epoch; any objective); Optuna's median, hyperband or successive_halving "
        "(study.objective 'accuracy' only).",
        choices=PRUNING_METHODS,
    )
    # The defaults are the measured setting of bench/pruning.py (README: Early stopping).
    margin: float = _opt(
        0.01, "pareto: accuracy lead (fraction) that counts as clearly better.", lo=0.0, hi=1.0
    )
    min_better: int = _opt(
        1, "pareto: clearly better, no larger completed trials needed to stop a trial.", lo=1
    )
    warmup_epochs: int = _opt(
        0, "pareto, median: epochs never judged at the start of a trial.", lo=0
    )
    startup_trials: int = _opt(5, "median: trials that finish before any trial is judged.", lo=0)
    reduction_factor: int = _opt(
        3, "hyperband, successive_halving: 1/reduction_factor of the trials go on at a rung.", lo=2
    )


@dataclass(frozen=True)
class RegistrySection:
    register: bool = _opt(
        True, "Register the Pareto front in the MLflow model registry at the end of study start."
    )
    champion: str = _opt(
        "most_accurate",
        "Rule of the 'champion' alias: most_accurate (within the limits below), smallest_within, "
        "knee, best_ratio.",
        choices=CHAMPION_RULES,
    )
    champion_max_params: int | None = _opt(
        None, "most_accurate: only members with at most this many parameters.", lo=1
    )
    champion_max_macs: int | None = _opt(
        None, "most_accurate: only members with at most this many MACs.", lo=1
    )
    champion_within: float = _opt(
        0.005,
        "smallest_within: accuracy within this of the most accurate (0.005 = 0.5 points).",
        lo=0.0,
        hi=1.0,
    )
    refit_epochs: int | None = _opt(
        None, "Epochs of a --refit on train + validation (null: twice train.epochs).", lo=1
    )

    def rule(self) -> ChampionRule:
        return ChampionRule(
            rule=self.champion,
            max_params=self.champion_max_params,
            max_macs=self.champion_max_macs,
            within=self.champion_within,
        )


@dataclass(frozen=True)
class LatencySection:
    backend: str = _opt(
        "torch",
        "What runs the network when it is timed: torch (eager PyTorch) or onnxruntime (the "
        "exported ONNX graph; needs onnxruntime, onnx and onnxscript).",
        choices=LATENCY_BACKENDS,
    )
    threads: int = _opt(1, "CPU threads the network is timed with.", lo=1, hi=1024)
    batch_size: int = _opt(32, "Images of the batch timing (the other is one image).", lo=1)
    budget: float = _opt(
        0.1,
        "Seconds each of the two timings may take (at least 3 runs each); every trial is timed "
        "once, cached by its spec hash.",
        lo=0.01,
        hi=60.0,
    )


FINAL_MEMBERS = ("aliases", "champion", "front")
FINAL_DATA = ("train+val", "train")


@dataclass(frozen=True)
class FinalSection:
    share: float = _opt(
        0.5,
        "Share of study.timeout kept for training the handed-over networks at full fidelity "
        "after the search (without a timeout: share / (1 - share) x the search's time); 0: "
        "no final training, the search-fidelity networks are registered.",
        lo=0.0,
        hi=0.9,
    )
    members: str = _opt(
        "aliases",
        "Which networks the final phase trains, the champion first: the registry aliases' "
        "members, the champion alone, or the whole front.",
        choices=FINAL_MEMBERS,
    )
    data: str = _opt(
        "train+val",
        "What they train on: the whole training pool (train+val; no data.subset), or the "
        "training split alone.",
        choices=FINAL_DATA,
    )
    schedule: str = _opt(
        "onecycle",
        "Learning-rate schedule of the final training (train.schedule's choices). onecycle and "
        "cosine plan for the epochs the budget allows and need no validation split.",
        choices=SCHEDULES,
    )
    contenders: int = _opt(
        0,
        "With members champion or aliases: also this many more front members within the "
        "champion's limits (registry.champion_max_params / champion_max_macs), the most "
        "accurate in the search first, trained and registered beside the champion: a few-epoch "
        "score can misrank networks that are close (the aliases stay on the search's scores).",
        lo=0,
    )
    max_epochs: int = _opt(
        200,
        "Most epochs a network the search found trains in the final phase (a reference alone "
        "on its lane trains for the whole phase).",
        lo=1,
    )
    references: bool = _opt(
        True,
        "Also train the networks of study.start_from (the ones you knew) in the final phase, "
        "as the search's finds are, and register them (alias start, start-2, ...): the "
        "yardstick the search is measured against. With study.workers > 1 on a CPU each gets "
        "a lane of its own for the whole phase while another lane trains the others, as you "
        "would have trained it alone.",
    )
    head_start: bool = _opt(
        False,
        "With final.references, study.workers > 1 on a CPU and a study.timeout: each "
        "reference starts training at the study's start, in a lane of its own, instead of in "
        "the final phase, and trains until the study's end; one worker fewer searches.",
    )
    champion_share: float = _opt(
        0.0,
        "Share of the final phase's time the champion trains for at least when other networks "
        "train too (they share the rest, equal epochs each, never more than the champion's); "
        "0 (the default; 0.75 measured no better for the champion, worse for the rest): every "
        "network trains the same epochs.",
        lo=0.0,
        hi=0.95,
    )


@dataclass(frozen=True)
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    registry: RegistrySection = field(default_factory=RegistrySection)
    pruning: PruningSection = field(default_factory=PruningSection)
    final: FinalSection = field(default_factory=FinalSection)
    latency: LatencySection = field(default_factory=LatencySection)
    mlflow: str | None = _opt(
        None,
        "Path of mlflow.yml (relative to this file); "
        "null: ./mlflow.yml if present, else the built-in defaults.",
    )

    def replace(self, section: str, **changes: Any) -> StudyConfig:
        """A copy with some keys of one section changed, checked like the file's keys."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if section == "space" and "preset" in changes:
            # A new preset supplies every key the caller does not name, as in a file.
            current = dict(changes)
        else:
            current = {**dataclasses.asdict(getattr(self, section)), **changes}
        new = _build(type(getattr(self, section)), current, section)
        given = self.given() | {f"{section}.{k}" for k in changes}
        return _with_given(dataclasses.replace(self, **{section: new}), given)

    def given(self) -> frozenset[str]:
        """The keys the config's source named (``train.epochs``), as opposed to defaults: a
        default that depends on the dataset is derived only where nobody chose a value."""
        return getattr(self, "_given", frozenset())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def mlflow_config(self) -> MlflowConfig:
        """The mlflow.yml this config names (``mlflow``), else ./mlflow.yml, else defaults."""
        return load_mlflow_config(self.mlflow)

    def to_json_dict(self) -> dict[str, Any]:
        """``to_dict()`` with tuples as lists: what a study stores and a YAML file would say."""
        return json.loads(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """The config a study stored (``to_dict()``), checked like a file."""
        return _build(cls, data, "")


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = _opt(
        None, "MLflow tracking URI; null: sqlite:///<project_dir>/mlflow.db."
    )
    experiment: str = _opt("cnnas", "MLflow experiment that holds the study runs.")
    registered_model: str = _opt(
        "cnnas-{study}",
        "Registered model that receives the Pareto models; {study} becomes the study's name.",
    )
    artifact_location: str | None = _opt(
        None, "Artifact root of a new experiment; null: <project_dir>/mlartifacts."
    )


# --- checking ---------------------------------------------------------------------------------


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """``value`` as a ``tp``, or a ConfigError that names the key and what was given."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_shown(value)}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_shown(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_shown(value)}")
        # NaN compares false with every bound, so it would slip through the range check.
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        value = float(value)
    elif tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {_shown(value)}")
    elif tp is str and "\0" in value:
        # Every string here names something (a path, a URL, a name); none can hold a NUL.
        raise ConfigError(f"{key}: holds a NUL character (\\0), got {_shown(value)}")
    return value


def _check_scalar(value: Any, tp: Any, key: str, meta: dict[str, Any]) -> Any:
    value = _check_type(value, tp, key)
    if tp is bool:
        return value
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{key}: must be {bounds}, got {_shown(value)}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{key}: unknown value {_shown(value)}; allowed: {', '.join(map(str, choices))}"
        )
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        rule = meta.get("allowed", pattern)
        raise ConfigError(f"{key}: {_shown(value)} does not match the rule: {rule}")
    if meta.get("odd") and value % 2 == 0:
        raise ConfigError(f"{key}: must be odd, got {value}")
    return value


def _shown(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: its repr, cut short. A YAML alias can expand to
    megabytes under a valid key, and a message must stay a line a person reads; repr escapes
    newlines and terminal control characters, so a value cannot fake a second line either."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"<{type(value).__name__} too long to show>"
    text = text if text.isprintable() else ascii(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({type(value).__name__})"


def _key_shown(key: Any, limit: int = 80) -> str:
    """A key as a message names it: as written when it is a short, printable name, else
    escaped and cut like a value."""
    text = str(key)
    if text.isprintable() and text.isascii() and len(text) <= limit:
        return text
    return _shown(key, limit)


def _check(value: Any, tp: Any, key: str, meta: dict[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if isinstance(value, (IntRange, FloatRange)):
            value = {"min": value.min, "max": value.max}
        if len(options) > 1:  # a space dimension: a list of choices, or a {min, max} range
            ranges = [a for a in options if a in (IntRange, FloatRange)]
            lists = [a for a in options if typing.get_origin(a) is tuple]
            if isinstance(value, dict) and ranges:
                return _check_range(value, ranges[0], key, meta)
            if isinstance(value, (list, tuple)) and lists:
                return _check(value, lists[0], key, meta)
            raise ConfigError(
                f"{key}: expected a list of choices or {{min: ..., max: ...}}, got {_shown(value)}"
            )
        return _check(value, options[0], key, meta)
    if origin is tuple:
        return _check_list(value, args[0], key, meta)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is dict:
        return _check_params(value, key)
    return _check_scalar(value, tp, key, meta)


def _check_list(value: Any, tp: Any, key: str, meta: dict[str, Any]) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {_shown(value)}")
    if not value:
        raise ConfigError(f"{key}: needs at least one value")
    out = tuple(_check(v, tp, f"{key}[{i}]", meta) for i, v in enumerate(value))
    # Mappings are not hashable: two are the same when their JSON is.
    seen = [json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in out]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"{key}: repeated values in {_shown(list(value))}")
    return out


def _check_params(value: Any, key: str) -> dict[str, Any]:
    """A mapping of trial parameters: names to plain values (whether the space offers them is
    checked once the dataset is known, see ``_space.check_start_from``)."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{key}: expected a mapping of trial parameters ({{name: value}}), got {_shown(value)}"
        )
    if not value:
        raise ConfigError(f"{key}: needs at least one parameter")
    out = {}
    for name, v in value.items():
        if not isinstance(name, str):
            raise ConfigError(f"{key}: a parameter name must be a string, got {_shown(name)}")
        where = f"{key}.{_key_shown(name)}"
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: expected a finite number, got {v!r}")
        if not isinstance(v, (bool, int, float, str)):
            raise ConfigError(
                f"{where}: expected a number, a string or true/false, got {_shown(v)}"
            )
        out[name] = v
    return out


def _check_range(value: dict, cls: type, key: str, meta: dict[str, Any]) -> Any:
    unknown = sorted(set(value) - {"min", "max"}, key=str)
    if unknown or set(value) != {"min", "max"}:
        raise ConfigError(f"{key}: a range is {{min: ..., max: ...}}, got {_shown(value)}")
    kind = int if cls is IntRange else float
    lo = _check_scalar(value["min"], kind, f"{key}.min", meta)
    hi = _check_scalar(value["max"], kind, f"{key}.max", meta)
    if lo > hi:
        raise ConfigError(f"{key}: min {lo} is above max {hi}")
    return cls(lo, hi)


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = f"{prefix}: " if prefix else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # str(): YAML reads a bare `yes` as True, and mixed key types do not sort.
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        key = f"{prefix}.{_key_shown(unknown[0])}" if prefix else _key_shown(unknown[0])
        raise ConfigError(f"{key}: unknown key; allowed here: {', '.join(fields)}")
    if cls is SpaceConfig:  # a named space supplies the keys the file leaves out
        preset = _check_scalar(
            data.get("preset", "default"),
            str,
            f"{prefix}.preset",
            dict(fields["preset"].metadata),
        )
        base = {k: _plain(v) for k, v in SPACE_PRESETS_VALUES[preset].items()}
        data = {**base, **data}
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _check(value, hints[name], key, dict(fields[name].metadata))
    built = cls(**values)
    if cls is StudyConfig:
        named = {
            f"{section}.{key}"
            for section, keys in data.items()
            if isinstance(keys, dict)
            for key in keys
        }
        built = _with_given(built, frozenset(named | {k for k in data if k in ("mlflow",)}))
    return built


def _with_given(cfg: StudyConfig, given: frozenset[str]) -> StudyConfig:
    # Not a field: it says where values came from, not what the study is, so it stays out of
    # equality, to_dict() and the stored config.
    object.__setattr__(cfg, "_given", frozenset(given))
    return cfg


def _plain(value: Any) -> Any:
    """A preset value in the form a YAML file gives it (ranges as mappings, tuples as lists)."""
    if isinstance(value, (IntRange, FloatRange)):
        return {"min": value.min, "max": value.max}
    if isinstance(value, tuple):
        return list(value)
    return value


# A config file is a few kilobytes and a few hundred values; anything far larger is a mistake or
# an attack (a "billion laughs": aliases of aliases that expand to gigabytes).
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_VALUES = 10_000
# YAML's 1.1 merge key (``<<: *base``): its keys are meant to be overridden, so never duplicates.
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _read_yaml(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a study "
            "config is a few kilobytes"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    return _parse_yaml(text, str(path))


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load``, stricter: a key given twice in one mapping, aliases that expand
    beyond ``MAX_YAML_VALUES`` values, and a recursive alias are errors (with their lines)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: malformed YAML: {_yaml_problem(e)}") from None
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{where}: malformed YAML: nested too deeply") from None
    except ValueError as e:  # int('9' * 5000), a date like 2001-13-45
        raise ConfigError(f"{where}: malformed YAML: a value cannot be read ({e})") from None
    finally:
        loader.dispose()


def _node_path(path: str, key: yaml.Node) -> str:
    name = key.value if isinstance(key, yaml.ScalarNode) else "?"
    return f"{path}.{_key_shown(name)}" if path else _key_shown(name)


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Walks the composed document once (each node once, however many aliases point at it):
    refuses duplicate keys, recursive aliases, and a document whose aliases would expand to
    more than ``MAX_YAML_VALUES`` values. Iterative, so deep nesting cannot overflow."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    aliased = False
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, done = stack.pop()
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
            if size[id(node)] > MAX_YAML_VALUES:
                how = "expands (through YAML aliases) to" if aliased else "holds"
                raise ConfigError(
                    f"{where}: {path or 'the document'} {how} more than {MAX_YAML_VALUES} "
                    "values; a study config needs a few hundred"
                )
            continue
        if id(node) in size:
            aliased = True  # a node reached twice: an alias
            continue
        if id(node) in open_:
            raise ConfigError(
                f"{where}: {path or 'the document'} (line {node.start_mark.line + 1}): a YAML "
                "alias refers to the value that contains it; a config cannot be recursive"
            )
        open_.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, path, where)
            for key, value in node.value:
                stack.append((value, _node_path(path, key), False))
                stack.append((key, path, False))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((c, f"{path}[{i}]", False) for i, c in enumerate(node.value))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_keys(node: yaml.MappingNode, path: str, where: str) -> None:
    """A key given twice in one mapping (the last would silently win): both lines named."""
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        first = seen.get((key.tag, key.value))
        seen.setdefault((key.tag, key.value), line)
        if first is not None:
            raise ConfigError(
                f"{where}: {_node_path(path, key)} is given twice, on line {first} and line "
                f"{line}; YAML would keep only the last, so remove one"
            )


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's complaint with line numbers: where the construct began and where it broke."""

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    problem, problem_mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    parts = []
    if context and context_mark:
        parts.append(f"{context} at {at(context_mark)}")
    if problem:
        parts.append(f"{problem}" + (f" at {at(problem_mark)}" if problem_mark else ""))
    return "; ".join(parts) or str(e)


def load_config(path: str | os.PathLike | None) -> StudyConfig:
    """Reads and checks a study config; ``None`` gives the defaults."""
    if path is None:
        return StudyConfig()
    path = Path(path)
    data = _read_yaml(path)
    cfg = _build(StudyConfig, data, "")
    if cfg.mlflow is not None and not Path(cfg.mlflow).is_absolute():
        cfg = _with_given(
            dataclasses.replace(cfg, mlflow=str(path.parent / cfg.mlflow)), cfg.given()
        )
    return cfg


# The presets ship inside the package (cnnas/search/presets/*.yaml), so an installed wheel
# has them; `cnnas config show --preset NAME` writes one out to edit.
_PRESETS = importlib.resources.files("cnnas.search") / "presets"


def preset_names() -> tuple[str, ...]:
    """The presets shipped with cnnas, by name."""
    return tuple(
        sorted(p.name.removesuffix(".yaml") for p in _PRESETS.iterdir() if p.name.endswith(".yaml"))
    )


def _preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(
            f"--preset: unknown preset {name!r}; known: {', '.join(preset_names())} "
            "(or pass --config FILE)"
        )
    return (_PRESETS / f"{name}.yaml").read_text(encoding="utf-8")


def load_preset(name: str) -> StudyConfig:
    """A preset shipped with cnnas, checked like a file."""
    return _build(StudyConfig, _parse_yaml(_preset_text(name), f"preset {name}"), "")


def describe_presets() -> dict[str, str]:
    """Preset name -> its first comment line (what it is for)."""
    out = {}
    for name in preset_names():
        first = next((ln for ln in _preset_text(name).splitlines() if ln.startswith("#")), "#")
        out[name] = first.lstrip("# ").strip()
    return out


def _yaml_value(value: Any) -> str:
    return (
        yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _yaml_lines(obj: Any, indent: int) -> list[str]:
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, (IntRange, FloatRange)):
            lines.append(f"{pad}{f.name}:")
            lines += _yaml_lines(value, indent + 1)
            continue
        shown = "null" if value is None else _yaml_value(value)
        doc = f.metadata.get("doc", "")
        lines.append(f"{pad}{f.name}: {shown}" + (f"  # {doc}" if doc else ""))
    return lines


def to_yaml(cfg: StudyConfig, header: str = "") -> str:
    """``cfg`` as a YAML config file with every key, each with its one-line documentation; it
    reads back as the same config."""
    head = [f"# {header}"] if header else []
    return "\n".join([*head, *_yaml_lines(cfg, 0)]) + "\n"


def load_mlflow_config(path: str | os.PathLike | None) -> MlflowConfig:
    """Reads mlflow.yml: the given path, else ./mlflow.yml if present, else the defaults."""
    if path is None:
        if not Path("mlflow.yml").is_file():
            return MlflowConfig()
        path = "mlflow.yml"
    return _build(MlflowConfig, _read_yaml(Path(path)), "mlflow.yml")


def describe(cls: type = StudyConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every key, for the README's configuration reference."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.default_factory is not dataclasses.MISSING:  # a section
            rows += describe(type(f.default_factory()), key)
            continue
        default = f.default
        shown = (
            "null"
            if default is None
            else yaml.safe_dump(_plain(default), default_flow_style=True, sort_keys=False)
            .strip()
            .removesuffix("...")
            .strip()
        )
        rows.append((key, shown, f.metadata.get("doc", "")))
    return rows
