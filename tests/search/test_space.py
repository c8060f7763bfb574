"""Tests for search._space: the search space replayed with fixed and recording trials."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.trial import FixedTrial

from models import ArchSpec, ConvBlock, DenseLayer, infer_shapes
from search._config import SpaceConfig
from search._space import DROPOUT_STEP, MIN_POOL_SIZE, max_pools, suggest_spec
from search._study import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 64, 64), (1, 5, 5)]

# Every option the config allows, so that every code path of the space is exercised.
WIDE = SpaceConfig(
    blocks=(1, 12),
    convs=(1, 3),
    base_filters=(1, 8, 64),
    max_filters=128,
    kernels=(1, 3, 7, 15),
    pools=("max", "avg", "none"),
    block_dropout=(0.0, 0.9),
    dense_layers=(0, 4),
    dense_width=(1, 512),
    dense_dropout=(0.0, 0.9),
)


def sample(
    space: SpaceConfig,
    input_shape: tuple[int, int, int],
    n: int,
    seed: int = 0,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> list[tuple[dict, ArchSpec]]:
    """(params asked for, spec) of ``n`` trials of an in-memory study."""
    study = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=sampler or optuna.samplers.RandomSampler(seed=seed),
    )
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for _ in range(n):
            trial = study.ask()
            spec = suggest_spec(trial, space, input_shape, 10)
            study.tell(trial, [0.5, 1.0])
            out.append((dict(trial.params), spec))
    return out


@pytest.fixture(scope="module")
def default_samples() -> list[tuple[dict, ArchSpec]]:
    return sample(SpaceConfig(), (1, 28, 28), 300, seed=1)


# --- a fixed trial replays to an exact spec -----------------------------------------------------

FIXED = {
    "blocks": 2,
    "base_filters": 16,
    "growth": "doubling",
    "kernel": 5,
    "batch_norm": True,
    "block_dropout": 0.1,
    "pool_0": "max",
    "pool_1": "none",
    "aggregation": "gap",
    "dense_layers": 1,
    "dense_dropout": 0.2,
    "dense_width_0": 64,
}


def test_fixed_trial_gives_the_exact_spec():
    trial = FixedTrial(FIXED)
    spec = suggest_spec(trial, SpaceConfig(), (1, 28, 28), 10)
    expected = ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=(
            ConvBlock(
                filters=16,
                kernel=5,
                convs=1,
                padding="same",
                batch_norm=True,
                activation="relu",
                pool="max",
                dropout=0.1,
            ),
            ConvBlock(
                filters=32,
                kernel=5,
                convs=1,
                padding="same",
                batch_norm=True,
                activation="relu",
                pool="none",
                dropout=0.1,
            ),
        ),
        aggregation="gap",
        dense=(DenseLayer(width=64, activation="relu", dropout=0.2),),
    )
    assert spec == expected
    assert spec.spec_hash() == expected.spec_hash()
    # Every parameter given was asked for, and nothing else: convs is fixed at [1, 1].
    assert trial.params == FIXED


def test_fixed_trial_constant_growth_and_no_dense():
    params = {
        "blocks": 3,
        "base_filters": 8,
        "growth": "constant",
        "kernel": 3,
        "batch_norm": False,
        "block_dropout": 0.0,
        "pool_0": "max",
        "pool_1": "max",
        "pool_2": "max",
        "aggregation": "flatten",
        "dense_layers": 0,
    }
    trial = FixedTrial(params)
    spec = suggest_spec(trial, SpaceConfig(), (1, 28, 28), 10)
    assert spec == ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=tuple(ConvBlock(filters=8, kernel=3, pool="max") for _ in range(3)),
        aggregation="flatten",
        dense=(),
    )
    assert trial.params == params
    assert infer_shapes(spec)[-1].in_shape == (8 * 3 * 3,)


def test_fixed_trial_missing_a_parameter_fails():
    params = dict(FIXED)
    del params["kernel"]
    with pytest.raises(ValueError, match="kernel"):
        suggest_spec(FixedTrial(params), SpaceConfig(), (1, 28, 28), 10)


def test_pool_not_asked_below_min_pool_size():
    # On 5x5 the first pool takes the map to 2x2; the second block is not offered a pool.
    params = {k: v for k, v in FIXED.items() if k != "pool_1"}
    params["pool_0"] = "max"
    trial = FixedTrial(params)
    spec = suggest_spec(trial, SpaceConfig(), (1, 5, 5), 10)
    assert [b.pool for b in spec.blocks] == ["max", "none"]
    assert "pool_1" not in trial.params


# --- inactive parameters are never sampled -----------------------------------------------------


def test_growth_only_with_several_blocks(default_samples):
    seen_one = seen_many = False
    for params, spec in default_samples:
        if len(spec.blocks) == 1:
            seen_one = True
            assert "growth" not in params
        else:
            seen_many = True
            assert "growth" in params
    assert seen_one and seen_many


def test_dense_parameters_only_for_dense_layers(default_samples):
    counts = set()
    for params, spec in default_samples:
        n = params["dense_layers"]
        counts.add(n)
        assert len(spec.dense) == n
        widths = sorted(k for k in params if k.startswith("dense_width_"))
        assert widths == [f"dense_width_{i}" for i in range(n)]
        assert ("dense_dropout" in params) == (n > 0)
    assert counts == {0, 1, 2, 3}


def test_pool_parameters_follow_blocks_and_map_size(default_samples):
    h = w = 28
    for params, spec in default_samples:
        pools = sorted(k for k in params if k.startswith("pool_"))
        # Never a pool parameter for a block that does not exist.
        assert all(int(k.split("_")[1]) < len(spec.blocks) for k in pools)
        size = min(h, w)
        for i, block in enumerate(spec.blocks):
            # Offered exactly while the map is at least MIN_POOL_SIZE on its short side.
            assert (f"pool_{i}" in params) == (size >= MIN_POOL_SIZE)
            if block.pool != "none":
                size //= 2
        assert sum(b.pool != "none" for b in spec.blocks) <= max_pools(h, w)


def test_single_valued_choices_are_not_parameters():
    space = SpaceConfig(
        kernels=(3,),
        base_filters=(16,),
        growth=("doubling",),
        batch_norm=(False,),
        pools=("max",),
        aggregations=("gap",),
        blocks=(2, 2),
        dense_layers=(1, 1),
        dense_width=(32, 32),
        block_dropout=(0.2, 0.2),
        dense_dropout=(0.0, 0.04),
    )
    for params, spec in sample(space, (1, 28, 28), 5):
        assert params == {}
        assert spec == ArchSpec(
            input_shape=(1, 28, 28),
            num_classes=10,
            blocks=(
                ConvBlock(filters=16, kernel=3, pool="max", dropout=0.2),
                ConvBlock(filters=32, kernel=3, pool="max", dropout=0.2),
            ),
            aggregation="gap",
            dense=(DenseLayer(width=32, dropout=0.0),),
        )


def test_a_ranged_convs_is_a_parameter():
    for params, spec in sample(SpaceConfig(convs=(1, 3)), (1, 28, 28), 30):
        assert params["convs"] in (1, 2, 3)
        assert all(b.convs == params["convs"] for b in spec.blocks)
    for params, _ in sample(SpaceConfig(), (1, 28, 28), 5):
        assert "convs" not in params


def test_only_none_pool_never_asks():
    for params, spec in sample(SpaceConfig(pools=("none",)), (1, 28, 28), 20):
        assert not any(k.startswith("pool_") for k in params)
        assert all(b.pool == "none" for b in spec.blocks)


# --- no sampled spec collapses ---------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_no_sampled_spec_collapses(shape):
    _, h, w = shape
    for params, spec in sample(WIDE, shape, 200, seed=sum(shape)):
        assert isinstance(spec, ArchSpec)  # construction ran shape inference
        assert spec.input_shape == shape
        walk = infer_shapes(spec)
        feature_map = next(x.in_shape for x in walk if x.kind == "aggregate")
        assert feature_map[1] >= 1 and feature_map[2] >= 1, params
        assert sum(b.pool != "none" for b in spec.blocks) <= max_pools(h, w)


def test_all_max_pools_on_every_block_stop_in_time():
    space = SpaceConfig(blocks=(12, 12), pools=("max",))
    for shape in SHAPES:
        (params, spec), *_ = sample(space, shape, 1)
        assert sum(b.pool == "max" for b in spec.blocks) == max_pools(*shape[1:])
        assert not any(k.startswith("pool_") for k in params)


def test_non_square_input_pools_by_the_short_side():
    space = SpaceConfig(blocks=(6, 6), pools=("max",))
    (_, spec), *_ = sample(space, (1, 8, 64), 1)
    assert sum(b.pool == "max" for b in spec.blocks) == 2
    feature_map = next(x.in_shape for x in infer_shapes(spec) if x.kind == "aggregate")
    assert feature_map[1:] == (2, 16)


# --- max_pools -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "n"),
    [
        (28, 28, 3),
        (8, 8, 2),
        (64, 64, 5),
        (32, 32, 4),
        (5, 5, 1),
        (4, 4, 1),
        (3, 3, 0),
        (1, 1, 0),
        (28, 64, 3),
        (64, 8, 2),
        (3, 1000, 0),
    ],
)
def test_max_pools(h, w, n):
    assert max_pools(h, w) == n


def test_max_pools_leaves_at_least_one_pixel():
    for size in range(1, 300):
        left = size
        for _ in range(max_pools(size, size)):
            left //= 2
        assert left >= 1
        assert left < MIN_POOL_SIZE  # and no further pool would have been offered


# --- filters and dropout values ---------------------------------------------------------------


def test_filters_follow_growth_and_the_cap():
    space = SpaceConfig(blocks=(1, 8), base_filters=(8, 16, 64), max_filters=128)
    seen = set()
    for params, spec in sample(space, (3, 64, 64), 200, seed=3):
        growth = params.get("growth", "constant")
        base = params["base_filters"]
        seen.add(growth)
        for i, block in enumerate(spec.blocks):
            want = base if growth == "constant" else base * 2**i
            assert block.filters == min(want, 128)
            assert block.filters <= 128
    assert seen == {"constant", "doubling"}


def test_default_filters_never_exceed_max_filters(default_samples):
    for _, spec in default_samples:
        assert all(b.filters <= SpaceConfig().max_filters for b in spec.blocks)


def on_grid(x: float) -> bool:
    return math.isclose(x / DROPOUT_STEP, round(x / DROPOUT_STEP), abs_tol=1e-9)


def test_dropout_values_on_the_grid(default_samples):
    values = set()
    for _, spec in default_samples:
        for d in [b.dropout for b in spec.blocks] + [d.dropout for d in spec.dense]:
            values.add(d)
            assert on_grid(d), d
            assert 0.0 <= d <= 0.5
            assert d == round(d, 4)
    assert len(values) > 5


def test_dropout_is_shared_within_blocks_and_within_dense(default_samples):
    for _, spec in default_samples:
        assert len({b.dropout for b in spec.blocks}) == 1
        assert len({d.dropout for d in spec.dense}) <= 1


def test_dense_widths_within_bounds(default_samples):
    for _, spec in default_samples:
        assert all(16 <= d.width <= 1024 for d in spec.dense)


def test_dropout_never_exceeds_the_configured_max():
    space = SpaceConfig(block_dropout=(0.1, 0.33))
    for _, spec in sample(space, (1, 28, 28), 200):
        assert all(0.1 <= b.dropout <= 0.33 for b in spec.blocks)


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_specs():
    a = sample(SpaceConfig(), (1, 28, 28), 50, seed=42)
    b = sample(SpaceConfig(), (1, 28, 28), 50, seed=42)
    c = sample(SpaceConfig(), (1, 28, 28), 50, seed=43)
    assert [s for _, s in a] == [s for _, s in b]
    assert [p for p, _ in a] == [p for p, _ in b]
    assert [s for _, s in a] != [s for _, s in c]


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random"])
def test_project_samplers_are_deterministic(name):
    runs = [
        [
            s.spec_hash()
            for _, s in sample(SpaceConfig(), (1, 28, 28), 15, sampler=make_sampler(name, 5))
        ]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
