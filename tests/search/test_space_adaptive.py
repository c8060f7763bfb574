"""Adaptive depth in the search space: asked only when offered, and its options only when chosen."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.trial import FixedTrial

from cnnas.models import ArchSpec, ConvBlock, DenseLayer, infer_shapes
from cnnas.search._config import FloatRange, IntRange, SpaceConfig
from cnnas.search._space import suggest_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The default space without the efficient blocks (whether or not the default offers them), with
# adaptive depth offered.
PLAIN = dataclasses.replace(
    SpaceConfig(), block_types=("plain",), se_ratio=(0.0,), pools=("max", "avg", "conv", "none")
)
OFFERED = dataclasses.replace(PLAIN, adaptive_depth=(False, True))

ADAPTIVE = {
    "blocks": 3,
    "adaptive_depth": True,
    "base_filters": 16,
    "kernel": 3,
    "convs": 1,
    "batch_norm": True,
    "block_dropout": 0.1,
    "pool_0": "max",
    "exit_threshold": 0.87,
    "dense_layers": 0,
}


def test_fixed_trial_gives_the_exact_adaptive_spec() -> None:
    trial = FixedTrial(ADAPTIVE)
    spec = suggest_spec(trial, OFFERED, (1, 28, 28), 10)
    stem = ConvBlock(16, batch_norm=True, pool="max", dropout=0.1)
    stage = dataclasses.replace(stem, pool="none")
    assert spec == ArchSpec(
        (1, 28, 28),
        10,
        (stem, stage, stage),
        "gap",
        adaptive_depth=True,
        exit_threshold=0.87,
    )
    # Exactly these were asked: no growth, no pool after block 0, no aggregation, no heads.
    assert trial.params == ADAPTIVE


def test_not_chosen_asks_no_threshold_and_keeps_the_usual_options() -> None:
    params = {
        "blocks": 2,
        "adaptive_depth": False,
        "base_filters": 8,
        "growth": "doubling",
        "kernel": 3,
        "convs": 1,
        "batch_norm": False,
        "block_dropout": 0.0,
        "pool_0": "max",
        "pool_1": "avg",
        "aggregation": "flatten",
        "dense_layers": 1,
        "dense_dropout": 0.0,
        "dense_width_0": 32,
    }
    trial = FixedTrial(params)
    spec = suggest_spec(trial, OFFERED, (1, 28, 28), 10)
    assert not spec.adaptive_depth and spec.blocks[1].filters == 16
    assert spec.dense == (DenseLayer(32),)
    assert trial.params == params


def test_one_block_or_not_offered_never_asks() -> None:
    one = {k: v for k, v in ADAPTIVE.items() if k not in ("adaptive_depth", "exit_threshold")}
    one |= {"blocks": 1, "aggregation": "gap"}
    trial = FixedTrial(one)
    spec = suggest_spec(trial, OFFERED, (1, 28, 28), 10)
    assert not spec.adaptive_depth and trial.params == one
    # The default space does not offer it: the key is never asked, whatever the trial holds.
    trial_params = {**one, "blocks": 3, "growth": "constant", "pool_1": "none", "pool_2": "none"}
    trial = FixedTrial(trial_params)
    spec = suggest_spec(trial, PLAIN, (1, 28, 28), 10)
    assert not spec.adaptive_depth and "adaptive_depth" not in trial.params


def test_a_fixed_threshold_is_not_sampled() -> None:
    space = dataclasses.replace(OFFERED, exit_threshold=(0.95,), adaptive_depth=(True,))
    params = {k: v for k, v in ADAPTIVE.items() if k not in ("adaptive_depth", "exit_threshold")}
    trial = FixedTrial(params)
    spec = suggest_spec(trial, space, (1, 28, 28), 10)
    assert spec.adaptive_depth and spec.exit_threshold == 0.95
    assert trial.params == params


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (1, 3, 3)])
def test_sampled_adaptive_specs_are_valid_and_equal_size(shape) -> None:
    space = dataclasses.replace(
        OFFERED,
        blocks=IntRange(1, 5),
        pool_scope="block",
        exit_threshold=FloatRange(0.6, 0.99),
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    chosen = 0
    for _ in range(40):
        trial = study.ask()
        spec = suggest_spec(trial, space, shape, 10)
        assert ("exit_threshold" in trial.params) == spec.adaptive_depth
        if spec.adaptive_depth:
            chosen += 1
            assert spec.aggregation == "gap" and spec.heads == "single"
            assert 0.6 <= spec.exit_threshold <= 0.99
            walk = infer_shapes(spec)
            first = next(la for la in walk if la.name.startswith("features.1.")).in_shape
            assert all(la.out_shape == first for la in walk if la.name.startswith("features.2."))
            assert not any(k in trial.params for k in ("growth", "aggregation", "pool_1"))
        study.tell(trial, 0.0)
    assert chosen > 5


def test_fixed_trial_adaptive_with_efficient_blocks() -> None:
    # Residual and inverted blocks keep channels and size with constant filters and no pool, so
    # they are adaptive stages like plain blocks; SE and the stem's stride are allowed too.
    space = dataclasses.replace(OFFERED, **SpaceConfig.EFFICIENT)
    for block_type in ("residual", "inverted"):
        params = {**ADAPTIVE, "block_type": block_type, "se_ratio": 0.25, "pool_0": "stride"}
        if block_type == "inverted":
            params["expansion"] = 4
        trial = FixedTrial(params)
        spec = suggest_spec(trial, space, (1, 28, 28), 10)
        assert spec.adaptive_depth and trial.params == params
        kind = {"block_type": block_type, "se_ratio": 0.25}
        if block_type == "inverted":
            kind["expansion"] = 4
        stem = ConvBlock(16, batch_norm=True, dropout=0.1, stride=2, **kind)
        stage = dataclasses.replace(stem, stride=1)
        assert spec.blocks == (stem, stage, stage)
        walk = infer_shapes(spec)
        assert next(la for la in walk if la.kind == "aggregate").in_shape == (16, 14, 14)
