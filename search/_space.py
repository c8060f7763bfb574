"""trial -> ArchSpec: the only code in cnnas that calls ``trial.suggest_*``.

The space adapts to the dataset: downsampling is offered only while the feature map is at least
``MIN_POOL_SIZE`` pixels on its short side (seed 002: 28x28 allows about three conv-pool pairs,
64x64 four or five), so no sampled architecture collapses. A parameter is sampled only when it is
active (no factorisation for 3x3 kernels or inverted blocks, no expansion ratio for other block
types, no head options without multi-scale aggregation, no growth rule for one block, no exit
threshold without adaptive depth), and a dimension with a single allowed value is fixed rather
than sampled, so the sampler never models a parameter that cannot matter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from cnnas.models import ArchSpec, ConvBlock, DenseLayer, count_macs, count_params

from ._config import FloatDim, FloatRange, IntDim, IntRange, SpaceConfig
from .errors import ConfigError

__all__ = [
    "DROPOUT_STEP",
    "MIN_POOL_SIZE",
    "SE_STEP",
    "THRESHOLD_STEP",
    "check_start_from",
    "max_pools",
    "suggest_augment",
    "suggest_spec",
]

# Downsampling is offered only on maps at least this large: 28 -> 14 -> 7 -> 3 stops after three.
MIN_POOL_SIZE = 4
# Dropout 0.3 and 0.3004 train alike; a coarse grid lets an identical architecture be recognised.
DROPOUT_STEP = 0.05
# Exit thresholds matter near 1 (0.95 and 0.99 stop very different numbers of images), so their
# grid is finer than dropout's.
THRESHOLD_STEP = 0.01
# A range of SE ratios is sampled on a grid of 1/16: SE-ResNet's 1/16 and MobileNetV3's 1/4 lie on
# it, and nearby ratios give the same hidden width on the small layers searched here.
SE_STEP = 0.0625
# The expansion ratio of a block that is not inverted: the spec's default (inactive there, so it
# never changes a spec's identity).
_SPEC_EXPANSION: int = ConvBlock.expansion


def max_pools(height: int, width: int) -> int:
    """How many 2x2 downsampling stages an input of this size allows."""
    n, size = 0, min(height, width)
    while size >= MIN_POOL_SIZE:
        size //= 2
        n += 1
    return n


def _cat(trial: optuna.Trial, name: str, choices: tuple[Any, ...]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def _int(trial: optuna.Trial, name: str, dim: IntDim, log: bool = False) -> int:
    if isinstance(dim, IntRange):
        if dim.min == dim.max:
            return dim.min
        return trial.suggest_int(name, dim.min, dim.max, log=log)
    return _cat(trial, name, dim)


def _float(trial: optuna.Trial, name: str, dim: FloatDim, step: float = DROPOUT_STEP) -> float:
    if not isinstance(dim, FloatRange):
        return float(_cat(trial, name, dim))
    lo, hi = dim.min, dim.max
    if hi - lo < step:
        return lo
    hi = round(lo + step * math.floor((hi - lo) / step + 1e-9), 6)
    return round(trial.suggest_float(name, lo, hi, step=step), 4)


@dataclass(frozen=True)
class _Conv:
    """What every block of a sampled network shares."""

    block_type: str
    kernel: int
    factorize: bool
    expansion: int
    convs: int
    batch_norm: bool
    se_ratio: float
    dropout: float


def _suggest_conv(trial: optuna.Trial, space: SpaceConfig) -> _Conv:
    block_type = _cat(trial, "block_type", space.block_types)
    kernel = _cat(trial, "kernel", space.kernels)
    factorize = False
    if kernel > 3 and block_type != "inverted":  # an inverted block never factorises
        factorize = _cat(trial, "factorize", space.factorize)
    expansion = _SPEC_EXPANSION
    if block_type == "inverted":
        expansion = _int(trial, "expansion", space.expansions)
    return _Conv(
        block_type=block_type,
        kernel=kernel,
        factorize=factorize,
        expansion=expansion,
        convs=_int(trial, "convs", space.convs),
        batch_norm=_cat(trial, "batch_norm", space.batch_norm),
        se_ratio=_float(trial, "se_ratio", space.se_ratio, SE_STEP),
        dropout=_float(trial, "block_dropout", space.block_dropout),
    )


def _suggest_blocks(
    trial: optuna.Trial, space: SpaceConfig, size: int, n_blocks: int, adaptive: bool
) -> list[ConvBlock]:
    """The conv blocks; downsampling is offered while the map's short side ``size`` allows."""
    base = _cat(trial, "base_filters", space.base_filters)
    growth = "constant"
    if n_blocks > 1 and not adaptive:
        growth = _cat(trial, "growth", space.growth)
    conv = _suggest_conv(trial, space)
    network_pool = None
    if space.pool_scope == "network" and size >= MIN_POOL_SIZE:
        network_pool = _cat(trial, "pool", space.pools)
    blocks = []
    for i in range(n_blocks):
        filters = base if growth == "constant" else base * 2**i
        pool = "none"
        if size >= MIN_POOL_SIZE and not (adaptive and i > 0):
            pool = network_pool if network_pool else _cat(trial, f"pool_{i}", space.pools)
        # 'stride': the block's first conv halves the map, rounding up as a strided conv does.
        pool, stride = ("none", 2) if pool == "stride" else (pool, 1)
        if pool != "none" or stride > 1:
            size = size // 2 if pool in ("max", "avg") else (size + 1) // 2
        blocks.append(
            ConvBlock(
                filters=min(filters, space.max_filters),
                kernel=conv.kernel,
                convs=conv.convs,
                factorize=conv.factorize,
                batch_norm=conv.batch_norm,
                pool=pool,
                dropout=conv.dropout,
                block_type=conv.block_type,
                expansion=conv.expansion,
                se_ratio=conv.se_ratio,
                stride=stride,
            )
        )
    return blocks


def suggest_spec(
    trial: optuna.Trial,
    space: SpaceConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> ArchSpec:
    """Samples one architecture for images of ``input_shape`` from ``space``."""
    _, height, width = input_shape
    n_blocks = _int(trial, "blocks", space.blocks)
    # Adaptive depth needs a block to skip; its stages after the first keep the first's shape, so
    # it fixes growth, downsampling after block 0, the aggregation and the heads.
    adaptive = bool(_cat(trial, "adaptive_depth", space.adaptive_depth)) if n_blocks > 1 else False
    blocks = _suggest_blocks(trial, space, min(height, width), n_blocks, adaptive)

    aggregation = "gap" if adaptive else _cat(trial, "aggregation", space.aggregations)
    heads, predict, aux_weight = "single", "main", 1.0
    exit_threshold = 0.9  # the spec's default, inactive without adaptive depth
    if adaptive:
        exit_threshold = _float(trial, "exit_threshold", space.exit_threshold, THRESHOLD_STEP)
    if aggregation == "multiscale":
        heads = _cat(trial, "heads", space.heads)
        if heads == "multi":
            predict = _cat(trial, "predict", space.predict)
            aux_weight = _float(trial, "aux_weight", space.aux_weight)

    n_dense = _int(trial, "dense_layers", space.dense_layers)
    dense = []
    if n_dense:
        dense_dropout = _float(trial, "dense_dropout", space.dense_dropout)
        for i in range(n_dense):
            w = _int(trial, f"dense_width_{i}", space.dense_width, log=True)
            dense.append(DenseLayer(width=w, dropout=dense_dropout))

    return ArchSpec(
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        blocks=tuple(blocks),
        aggregation=aggregation,
        dense=tuple(dense),
        heads=heads,
        aux_weight=aux_weight,
        predict=predict,
        adaptive_depth=adaptive,
        exit_threshold=exit_threshold,
    )


def suggest_augment(trial: optuna.Trial, space: SpaceConfig) -> bool:
    """Whether this trial trains with augmentation (seed 002: "augmentation on/off")."""
    return bool(_cat(trial, "augment", space.augment))


# --- architectures a study starts from ------------------------------------------------------------


def _offered(dist: BaseDistribution, value: Any) -> bool:
    """Whether the space can propose ``value`` for a parameter of ``dist`` (Optuna itself would
    take an enqueued value it does not offer, with only a warning)."""
    if isinstance(dist, CategoricalDistribution):
        # type() as well: True == 1, but `convs: true` is a mistake, not one conv.
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    low, high, step = dist.low, dist.high, dist.step  # type: ignore[attr-defined]
    if isinstance(dist, IntDistribution) and not isinstance(value, int):
        return False
    if not low <= value <= high:
        return False
    return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-6


def _value_text(value: Any) -> str:
    """A value as the YAML file spells it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _allowed_text(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(
            _value_text(c) if isinstance(c, bool) else str(c) for c in dist.choices
        )
    step = dist.step  # type: ignore[attr-defined]
    grid = f" in steps of {step}" if step not in (None, 1) else ""
    return f"from {dist.low} to {dist.high}{grid}"  # type: ignore[attr-defined]


class _Checked:
    """A trial that checks a point's values as the space asks for them: Optuna would take an
    enqueued number it does not offer (with only a warning) and fail on a category with a bare
    ValueError, neither of which names the option."""

    def __init__(self, trial: optuna.Trial, point: Mapping[str, Any], key: str) -> None:
        self._trial, self._point, self._key = trial, point, key

    def _check(self, name: str, dist: BaseDistribution) -> None:
        if name in self._point and not _offered(dist, self._point[name]):
            raise ConfigError(
                f"{self._key}.{name}: {_value_text(self._point[name])} is not offered by the "
                f"space; allowed: {_allowed_text(dist)}"
            )

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self._check(name, CategoricalDistribution(list(choices)))
        return self._trial.suggest_categorical(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        self._check(name, IntDistribution(low, high, step=step, log=log))
        return self._trial.suggest_int(name, low, high, step=step, log=log)

    def suggest_float(self, name: str, low: float, high: float, *, step=None, log: bool = False):
        self._check(name, FloatDistribution(low, high, step=step, log=log))
        return self._trial.suggest_float(name, low, high, step=step, log=log)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return self._trial.distributions


def check_start_from(
    points: Sequence[Mapping[str, Any]],
    space: SpaceConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    max_params: int | None = None,
    max_macs: int | None = None,
) -> None:
    """Checks ``study.start_from`` against the space on this dataset: every parameter a point
    names must be one this architecture samples, with a value the space offers, and a point
    that fixes the whole architecture must fit the study's budgets. Raises ConfigError."""
    for i, point in enumerate(points):
        key = f"study.start_from[{i}]"
        # Replayed as the study will: enqueued in a throwaway study, the rest drawn at random.
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=i))
        study.enqueue_trial(dict(point))
        trial = _Checked(study.ask(), point, key)
        with warnings.catch_warnings():
            # Optuna warns of a value outside the space; _Checked has refused it already.
            warnings.simplefilter("ignore", UserWarning)
            try:
                spec = suggest_spec(trial, space, input_shape, num_classes)  # type: ignore[arg-type]
                suggest_augment(trial, space)  # type: ignore[arg-type]
            except ConfigError:
                raise
            except (ValueError, TypeError) as e:  # a spec the models refuse
                raise ConfigError(f"{key}: {e}") from e
        sampled = trial.distributions
        unknown = sorted(set(point) - set(sampled))
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}: not a parameter this architecture samples (a dimension "
                "with one allowed value is fixed, and some apply only to others: pool_2 "
                f"to 3 blocks or more); it samples: {', '.join(sorted(sampled))}"
            )
        if set(sampled) - set(point):
            continue  # a partial point: the sampler completes it, and the budgets judge that
        for what, limit, have in (
            ("max_params", max_params, count_params(spec)),
            ("max_macs", max_macs, count_macs(spec)),
        ):
            if limit and have > limit:
                raise ConfigError(
                    f"{key}: {spec.summary()} has {have:,} "
                    f"{'parameters' if what == 'max_params' else 'MACs'}, over study.{what} "
                    f"{limit:,}; it would be rejected untrained"
                )
