"""The study configuration: a YAML file read strictly into frozen dataclasses.

Every key is known, typed and range-checked before anything is created; a mistake is a
:class:`ConfigError` that names the key (``train.epochs``), what was given and what is allowed.
YAML is read with ``yaml.safe_load``, so no tag can build a Python object.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from objectives import DATASETS, TrainConfig
from objectives._train import ACCELERATORS, PRECISIONS

__all__ = [
    "COMPLEXITY",
    "SAMPLERS",
    "ConfigError",
    "DataConfig",
    "MlflowConfig",
    "SpaceConfig",
    "StudyConfig",
    "StudySection",
    "load_config",
    "load_mlflow_config",
]

SAMPLERS = ("tpe", "nsga2", "random")
# The complexity objective minimised next to validation accuracy.
COMPLEXITY = ("params", "macs")
GROWTH = ("constant", "doubling")
SPACE_PRESETS = ("default",)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


def _opt(default: Any, doc: str, **rules: Any) -> Any:
    """A config field: its default, one line of documentation, and its checks."""
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata={"doc": doc, **rules})
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class StudySection:
    name: str = _opt(
        "cnnas", "Study name; letters, digits, '.', '_' and '-'.", pattern=r"[\w.-]{1,64}"
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
    sampler: str = _opt("tpe", "Optuna sampler.", choices=SAMPLERS)
    seed: int = _opt(0, "Seed of the sampler, the data split and the training.", lo=0, hi=2**31 - 1)
    complexity: str = _opt(
        "params", "Complexity objective minimised next to validation accuracy.", choices=COMPLEXITY
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
    max_failures: int = _opt(
        3, "Stop the study after this many failed trials in a row.", lo=1, hi=1000
    )


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _opt("fashion-mnist", "Dataset name.", choices=DATASETS)
    data_dir: str | None = _opt(
        None,
        "Folder of the dataset files; null: $CNNAS_DATA_DIR, then the Debian package's folder.",
    )
    val_fraction: float = _opt(
        0.1, "Fraction of the training set held out (stratified) for validation.", lo=0.01, hi=0.5
    )
    subset: int | None = _opt(
        None, "Use only this many training images (stratified) for quick runs; null: all.", lo=20
    )


@dataclass(frozen=True)
class TrainSection:
    epochs: int = _opt(3, "Training epochs per trial.", lo=1, hi=10000)
    batch_size: int = _opt(128, "Images per step.", lo=1, hi=1 << 16)
    lr: float = _opt(1e-3, "Adam learning rate.", lo=1e-7, hi=1.0)
    weight_decay: float = _opt(0.0, "Adam weight decay.", lo=0.0, hi=1.0)
    lr_factor: float = _opt(
        0.5, "Learning-rate decay factor on a validation-accuracy plateau.", lo=0.01, hi=0.99
    )
    lr_patience: int = _opt(
        1, "Epochs without improvement before the learning rate decays.", lo=0, hi=1000
    )
    accelerator: str = _opt(
        "auto", "Where to train; auto takes a GPU when there is one.", choices=ACCELERATORS
    )
    precision: str = _opt(
        "auto",
        "Numeric precision; auto is bf16-mixed on a GPU, 32-true on the CPU.",
        choices=PRECISIONS,
    )
    deterministic: bool = _opt(True, "Deterministic kernels (the same seed gives the same result).")

    def to_train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(**dataclasses.asdict(self), seed=seed)


@dataclass(frozen=True)
class SpaceConfig:
    preset: str = _opt("default", "Named search space.", choices=SPACE_PRESETS)
    blocks: tuple[int, int] = _opt((1, 6), "Conv blocks, [min, max].", lo=1, hi=12, pair=True)
    convs: tuple[int, int] = _opt(
        (1, 1), "Convolutions per block, [min, max].", lo=1, hi=4, pair=True
    )
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
    batch_norm: tuple[bool, ...] = _opt((True, False), "BatchNorm after each conv (choices).")
    pools: tuple[str, ...] = _opt(
        ("max", "none"), "Downsampling after each block (choices).", choices=("max", "avg", "none")
    )
    block_dropout: tuple[float, float] = _opt(
        (0.0, 0.5), "Dropout after each block, [min, max].", lo=0.0, hi=0.9, pair=True
    )
    aggregations: tuple[str, ...] = _opt(
        ("flatten", "gap"), "Feature aggregation (choices).", choices=("flatten", "gap")
    )
    dense_layers: tuple[int, int] = _opt(
        (0, 3), "Hidden dense layers, [min, max].", lo=0, hi=8, pair=True
    )
    dense_width: tuple[int, int] = _opt(
        (16, 1024), "Width of each dense layer, [min, max] (log scale).", lo=1, hi=65536, pair=True
    )
    dense_dropout: tuple[float, float] = _opt(
        (0.0, 0.5), "Dropout after each dense layer, [min, max].", lo=0.0, hi=0.9, pair=True
    )


@dataclass(frozen=True)
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    mlflow: str | None = _opt(
        None,
        "Path of mlflow.yml (relative to this file); "
        "null: ./mlflow.yml if present, else the built-in defaults.",
    )

    def replace(self, section: str, **changes: Any) -> StudyConfig:
        """A copy with some keys of one section changed, checked like the file's keys."""
        current = dataclasses.asdict(getattr(self, section))
        current.update({k: v for k, v in changes.items() if v is not None})
        new = _build(type(getattr(self, section)), current, section)
        return dataclasses.replace(self, **{section: new})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = _opt(
        None, "MLflow tracking URI; null: sqlite:///<project_dir>/mlflow.db."
    )
    experiment: str = _opt("cnnas", "MLflow experiment that holds the study runs.")
    registered_model: str = _opt("cnnas", "Registered model that receives the Pareto models.")
    artifact_location: str | None = _opt(
        None, "Artifact root of a new experiment; null: <project_dir>/mlartifacts."
    )


# --- checking ---------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_scalar(value: Any, tp: Any, key: str, meta: dict[str, Any]) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        # NaN compares false with every bound, so it would slip through the range check.
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        value = float(value)
    elif tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{key}: must be {bounds}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, choices))}"
        )
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ConfigError(f"{key}: {value!r} does not match {pattern}")
    if meta.get("odd") and value % 2 == 0:
        raise ConfigError(f"{key}: must be odd, got {value}")
    return value


def _check(value: Any, tp: Any, key: str, meta: dict[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, key, meta)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if meta.get("pair"):
            if len(value) != 2:
                raise ConfigError(f"{key}: expected [min, max], got {value!r}")
            out = tuple(_check(v, args[0], f"{key}[{i}]", meta) for i, v in enumerate(value))
            if out[0] > out[1]:
                raise ConfigError(f"{key}: min {out[0]} is above max {out[1]}")
            return out
        if not value:
            raise ConfigError(f"{key}: needs at least one value")
        out = tuple(_check(v, args[0], f"{key}[{i}]", meta) for i, v in enumerate(value))
        if len(set(out)) != len(out):
            raise ConfigError(f"{key}: repeated values in {list(value)}")
        return out
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return _check_scalar(value, tp, key, meta)


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
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{key}: unknown key; allowed here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _check(value, hints[name], key, dict(fields[name].metadata))
    return cls(**values)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {_yaml_problem(e)}") from None


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
        cfg = dataclasses.replace(cfg, mlflow=str(path.parent / cfg.mlflow))
    return cfg


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
            else yaml.safe_dump(
                list(default) if isinstance(default, tuple) else default, default_flow_style=True
            )
            .strip()
            .removesuffix("...")
            .strip()
        )
        rows.append((key, shown, f.metadata.get("doc", "")))
    return rows
