"""Tests for search._space: the search space replayed with fixed and recording trials."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FixedTrial

from cnnas.models import (
    BLOCK_TYPES,
    POOLS,
    ArchSpec,
    ConvBlock,
    DenseLayer,
    infer_shapes,
    multiscale_sections,
    shortcut,
)
from cnnas.search._config import (
    SPACE_PRESETS,
    SPACE_PRESETS_VALUES,
    ConfigError,
    FloatRange,
    IntRange,
    SpaceConfig,
    load_config,
)
from cnnas.search._space import (
    DROPOUT_STEP,
    MIN_POOL_SIZE,
    SE_STEP,
    max_pools,
    suggest_augment,
    suggest_spec,
)
from cnnas.search._study import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 64, 64), (1, 5, 5), (1, 3, 3), (1, 8, 64)]
PRESET_SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 8, 8)]

# The default space without the efficient blocks. The tests of the other dimensions replay and
# sample this space, so they hold whether or not the default space offers the efficient blocks
# (SpaceConfig._OFFER_EFFICIENT, the one line that decides).
PLAIN_BLOCKS: dict[str, Any] = {
    "block_types": ("plain",),
    "se_ratio": (0.0,),
    "pools": ("max", "avg", "conv", "none"),
}


def plain_space(**changes: Any) -> SpaceConfig:
    return SpaceConfig(**{**PLAIN_BLOCKS, **changes})


PLAIN = plain_space()

# Every option the config allows, so that every code path of the space is exercised.
WIDE = SpaceConfig(
    blocks=IntRange(1, 12),
    convs=IntRange(1, 4),
    base_filters=(1, 8, 64),
    max_filters=128,
    kernels=(1, 3, 7, 15),
    factorize=(False, True),
    block_types=BLOCK_TYPES,
    expansions=IntRange(1, 6),
    se_ratio=FloatRange(0.0, 0.5),
    pools=("max", "avg", "conv", "stride", "none"),
    block_dropout=FloatRange(0.0, 0.9),
    aggregations=("flatten", "gap", "multiscale"),
    heads=("single", "multi"),
    predict=("main", "mean"),
    aux_weight=FloatRange(0.0, 2.0),
    dense_layers=IntRange(0, 4),
    dense_width=IntRange(1, 512),
    dense_dropout=FloatRange(0.0, 0.9),
    augment=(False, True),
)
WIDE_NETWORK = dataclasses.replace(WIDE, pool_scope="network")


def preset(name: str, **changes: Any) -> SpaceConfig:
    """The named space as ``space: {preset: name}`` loads it (test_config checks that)."""
    return SpaceConfig(preset=name, **{**SPACE_PRESETS_VALUES[name], **changes})


@dataclasses.dataclass
class Sampled:
    params: dict[str, Any]
    spec: ArchSpec
    augment: bool
    distributions: dict[str, Any]


def sample(
    space: SpaceConfig,
    input_shape: tuple[int, int, int],
    n: int,
    seed: int = 0,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> list[Sampled]:
    """What ``n`` trials of an in-memory study asked for and built."""
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
            augment = suggest_augment(trial, space)
            study.tell(trial, [0.5, 1.0])
            out.append(Sampled(dict(trial.params), spec, augment, dict(trial.distributions)))
    return out


@pytest.fixture(scope="module")
def default_samples() -> list[Sampled]:
    return sample(PLAIN, (1, 28, 28), 300, seed=1)


# --- what a dimension may hold and whether it is a parameter -----------------------------------


def single(dim: Any, step: float = DROPOUT_STEP) -> bool:
    """A dimension with one possible value, which the space fixes rather than samples."""
    if isinstance(dim, IntRange):
        return dim.min == dim.max
    if isinstance(dim, FloatRange):
        return dim.max - dim.min < step
    return len(dim) == 1


def within(value: Any, dim: Any) -> bool:
    if isinstance(dim, (IntRange, FloatRange)):
        return dim.min <= value <= dim.max
    return value in dim


def downsample(size: int, pool: str) -> int:
    """The short side after a block's downsampling (a stride-2 conv rounds up)."""
    if pool == "none":
        return size
    return (size + 1) // 2 if pool in ("conv", "stride") else size // 2


def pool_choice(block: ConvBlock) -> str:
    """The space's downsampling choice a block was built from ('stride': no pool, stride 2)."""
    return "stride" if block.stride == 2 else block.pool


def pool_offered(spec: ArchSpec) -> list[bool]:
    """Per block: was the map at least MIN_POOL_SIZE on its short side when it was built."""
    size, offered = min(spec.input_shape[1:]), []
    for block in spec.blocks:
        offered.append(size >= MIN_POOL_SIZE)
        size = downsample(size, pool_choice(block))
    return offered


def conv_params(space: SpaceConfig, block: ConvBlock) -> set[str]:
    """The block options asked once for the network that depend on the block type."""
    names = set()
    if not single(space.block_types):
        names.add("block_type")
    if block.block_type == "inverted" and not single(space.expansions):
        names.add("expansion")
    if not single(space.se_ratio, SE_STEP):
        names.add("se_ratio")
    # An inverted block has one depthwise kxk conv per bottleneck: nothing to factorise.
    if block.kernel > 3 and block.block_type != "inverted" and not single(space.factorize):
        names.add("factorize")
    return names


def expected_params(space: SpaceConfig, spec: ArchSpec) -> set[str]:
    """The names a trial must have been asked for: the active, non-fixed dimensions."""
    names = set()
    if not single(space.blocks):
        names.add("blocks")
    for name, dim in (
        ("base_filters", space.base_filters),
        ("kernel", space.kernels),
        ("convs", space.convs),
        ("batch_norm", space.batch_norm),
        ("block_dropout", space.block_dropout),
        ("aggregation", space.aggregations),
        ("dense_layers", space.dense_layers),
        ("augment", space.augment),
    ):
        if not single(dim):
            names.add(name)
    if len(spec.blocks) > 1 and not single(space.growth):
        names.add("growth")
    names |= conv_params(space, spec.blocks[0])
    offered = pool_offered(spec)
    if not single(space.pools):
        if space.pool_scope == "network":
            names |= {"pool"} if offered[0] else set()
        else:
            names |= {f"pool_{i}" for i, o in enumerate(offered) if o}
    if spec.aggregation == "multiscale" and not single(space.heads):
        names.add("heads")
    if spec.heads == "multi":
        names |= {"predict"} if not single(space.predict) else set()
        names |= {"aux_weight"} if not single(space.aux_weight) else set()
    if spec.dense:
        names |= {"dense_dropout"} if not single(space.dense_dropout) else set()
        if not single(space.dense_width):
            names |= {f"dense_width_{i}" for i in range(len(spec.dense))}
    return names


def check_sample(space: SpaceConfig, s: Sampled) -> None:
    """Everything every sampled trial must satisfy, for any space."""
    spec, params = s.spec, s.params
    assert isinstance(spec, ArchSpec)  # construction ran shape inference
    feature_map = next(x.in_shape for x in infer_shapes(spec) if x.kind == "aggregate")
    assert feature_map[1] >= 1 and feature_map[2] >= 1, params
    # Exactly the active parameters were asked for: nothing inactive, nothing fixed.
    assert set(params) == expected_params(space, spec), params
    # Every value is one the space allows.
    assert within(len(spec.blocks), space.blocks)
    base = spec.blocks[0].filters
    growth = params.get("growth", space.growth[0] if len(spec.blocks) > 1 else "constant")
    assert growth in space.growth or len(spec.blocks) == 1
    assert params.get("base_filters", space.base_filters[0]) in space.base_filters
    for i, block in enumerate(spec.blocks):
        want = params.get("base_filters", space.base_filters[0])
        want = want if growth == "constant" else want * 2**i
        assert block.filters == min(want, space.max_filters)
        assert block.kernel in space.kernels and block.kernel == spec.blocks[0].kernel
        factorizes = block.kernel > 3 and block.block_type != "inverted"
        assert block.factorize == (factorizes and params.get("factorize", space.factorize[0]))
        # One block type, SE ratio and expansion for the network.
        assert block.block_type in space.block_types
        assert block.block_type == spec.blocks[0].block_type
        assert within(block.se_ratio, space.se_ratio) and block.se_ratio == spec.blocks[0].se_ratio
        if block.block_type == "inverted":
            assert within(block.expansion, space.expansions)
            assert block.expansion == params.get("expansion", block.expansion)
        else:
            assert block.expansion == 6  # the spec's default, inactive
        assert block.stride in (1, 2)
        assert within(block.convs, space.convs) and block.convs == spec.blocks[0].convs
        assert block.batch_norm in space.batch_norm
        assert within(block.dropout, space.block_dropout)
        assert block.padding == "same" and block.activation == "relu"
    assert base <= space.max_filters
    offered = pool_offered(spec)
    for block, o in zip(spec.blocks, offered, strict=True):
        if o:
            assert pool_choice(block) in space.pools
        else:
            assert (block.pool, block.stride) == ("none", 1)
        assert block.stride == 1 or block.pool == "none"
    if space.pool_scope == "network":
        chosen = {pool_choice(b) for b, o in zip(spec.blocks, offered, strict=True) if o}
        assert len(chosen) <= 1
    assert spec.aggregation in space.aggregations
    if spec.aggregation == "multiscale":
        assert spec.heads in space.heads
    else:
        assert spec.heads == "single"
    if spec.heads == "multi":
        assert spec.predict in space.predict
        assert within(spec.aux_weight, space.aux_weight)
    else:
        assert (spec.predict, spec.aux_weight) == ("main", 1.0)
    assert within(len(spec.dense), space.dense_layers)
    assert all(within(d.width, space.dense_width) for d in spec.dense)
    assert all(within(d.dropout, space.dense_dropout) for d in spec.dense)
    assert len({d.dropout for d in spec.dense}) <= 1
    assert s.augment in space.augment
    assert params.get("augment", s.augment) == s.augment


# --- a fixed trial replays to an exact spec -----------------------------------------------------

FIXED = {
    "blocks": 2,
    "base_filters": 16,
    "growth": "doubling",
    "kernel": 5,
    "factorize": False,
    "convs": 1,
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
    spec = suggest_spec(trial, PLAIN, (1, 28, 28), 10)
    expected = ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=(
            ConvBlock(
                filters=16,
                kernel=5,
                convs=1,
                factorize=False,
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
                factorize=False,
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
    # Every parameter given was asked for, and nothing else (no head options for gap).
    assert trial.params == FIXED


def test_fixed_trial_multi_head_multiscale_factorised_conv_pools():
    space = dataclasses.replace(PLAIN, aux_weight=(0.5, 1.0))
    params = {
        "blocks": 2,
        "base_filters": 16,
        "growth": "doubling",
        "kernel": 5,
        "factorize": True,
        "convs": 2,
        "batch_norm": True,
        "block_dropout": 0.15,
        "pool_0": "conv",
        "pool_1": "conv",
        "aggregation": "multiscale",
        "heads": "multi",
        "predict": "mean",
        "aux_weight": 0.5,
        "dense_layers": 1,
        "dense_dropout": 0.25,
        "dense_width_0": 100,
    }
    trial = FixedTrial(params)
    spec = suggest_spec(trial, space, (1, 28, 28), 10)
    block = ConvBlock(
        filters=16, kernel=5, convs=2, factorize=True, batch_norm=True, pool="conv", dropout=0.15
    )
    expected = ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=(block, dataclasses.replace(block, filters=32)),
        aggregation="multiscale",
        dense=(DenseLayer(width=100, dropout=0.25),),
        heads="multi",
        aux_weight=0.5,
        predict="mean",
    )
    assert spec == expected
    assert spec.spec_hash() == expected.spec_hash()
    assert trial.params == params
    # 28 -> 14 -> 7 with two stride-2 convs; a factorised 5x5 runs two 3x3 per conv.
    assert spec.blocks[0].conv_kernels == (3, 3, 3, 3)
    walk = infer_shapes(spec)
    assert next(x.in_shape for x in walk if x.kind == "aggregate") == (32, 7, 7)
    # A 7x7 map has all three sections, so two extra heads next to the main one.
    assert multiscale_sections((32, 7, 7)) == (1, 2, 4)
    assert [x.name for x in walk if x.name.startswith("aux_heads.")] == [
        "aux_heads.0",
        "aux_heads.1",
    ]
    assert spec.inactive() == ()


def test_fixed_trial_constant_growth_and_no_dense():
    params = {
        "blocks": 3,
        "base_filters": 8,
        "growth": "constant",
        "kernel": 3,
        "convs": 1,
        "batch_norm": False,
        "block_dropout": 0.0,
        "pool_0": "max",
        "pool_1": "max",
        "pool_2": "max",
        "aggregation": "flatten",
        "dense_layers": 0,
    }
    trial = FixedTrial(params)
    spec = suggest_spec(trial, PLAIN, (1, 28, 28), 10)
    assert spec == ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=tuple(ConvBlock(filters=8, kernel=3, pool="max") for _ in range(3)),
        aggregation="flatten",
        dense=(),
    )
    assert trial.params == params
    assert infer_shapes(spec)[-1].in_shape == (8 * 3 * 3,)


# --- the efficient blocks: one FixedTrial replay per dimension -------------------------------

EFFICIENT = dataclasses.replace(PLAIN, **SpaceConfig.EFFICIENT)


def efficient_block(**changes: Any) -> ConvBlock:
    """FIXED's first block with the efficient-block fields ``changes``."""
    block = ConvBlock(16, kernel=5, batch_norm=True, pool="max", dropout=0.1)
    return dataclasses.replace(block, **changes)


@pytest.mark.parametrize("block_type", ["plain", "separable", "residual"])
def test_fixed_trial_block_type(block_type: str):
    params = {**FIXED, "block_type": block_type, "se_ratio": 0.0}
    trial = FixedTrial(params)
    spec = suggest_spec(trial, EFFICIENT, (1, 28, 28), 10)
    first = efficient_block(block_type=block_type)
    assert spec == ArchSpec(
        (1, 28, 28),
        10,
        (first, dataclasses.replace(first, filters=32, pool="none")),
        aggregation="gap",
        dense=(DenseLayer(64, dropout=0.2),),
    )
    assert trial.params == params
    # A residual block whose filters double has a projection shortcut.
    if block_type == "residual":
        assert shortcut(spec.blocks[1], 16) == "projection"


def test_fixed_trial_inverted_block_and_its_expansion():
    # An inverted block asks for its expansion and never for factorisation (kernel 5 here).
    params = {k: v for k, v in FIXED.items() if k != "factorize"}
    params |= {"block_type": "inverted", "expansion": 3, "se_ratio": 0.0, "convs": 2}
    space = dataclasses.replace(EFFICIENT, expansions=IntRange(1, 8))
    trial = FixedTrial(params)
    spec = suggest_spec(trial, space, (1, 28, 28), 10)
    first = efficient_block(block_type="inverted", expansion=3, convs=2)
    assert spec.blocks == (first, dataclasses.replace(first, filters=32, pool="none"))
    assert trial.params == params
    assert spec.blocks[0].conv_kernels == (5, 5)
    # The same trial in a space with one expansion: not asked, fixed.
    fixed = {k: v for k, v in params.items() if k != "expansion"}
    trial = FixedTrial(fixed)
    spec = suggest_spec(trial, dataclasses.replace(EFFICIENT, expansions=(6,)), (1, 28, 28), 10)
    assert {b.expansion for b in spec.blocks} == {6} and trial.params == fixed


@pytest.mark.parametrize("ratio", [0.25, 0.0625])
def test_fixed_trial_se_ratio(ratio: float):
    params = {**FIXED, "block_type": "residual", "se_ratio": ratio}
    space = dataclasses.replace(EFFICIENT, se_ratio=FloatRange(0.0, 0.5))
    trial = FixedTrial(params)
    spec = suggest_spec(trial, space, (1, 28, 28), 10)
    assert [b.se_ratio for b in spec.blocks] == [ratio, ratio]
    assert spec.blocks[0] == efficient_block(block_type="residual", se_ratio=ratio)
    assert trial.params == params
    # One allowed ratio: every block has it, and it is not a parameter.
    fixed = {k: v for k, v in params.items() if k != "se_ratio"}
    trial = FixedTrial(fixed)
    spec = suggest_spec(trial, dataclasses.replace(EFFICIENT, se_ratio=(0.125,)), (1, 28, 28), 10)
    assert {b.se_ratio for b in spec.blocks} == {0.125} and trial.params == fixed


def test_fixed_trial_stride_downsampling():
    # 'stride' halves the map in the block's first conv, rounding up: 28 -> 14 -> 7 -> 4 -> 2.
    params = {**FIXED, "blocks": 4, "block_type": "separable", "se_ratio": 0.0}
    params |= {f"pool_{i}": "stride" for i in range(4)}
    trial = FixedTrial(params)
    spec = suggest_spec(trial, EFFICIENT, (1, 28, 28), 10)
    assert [(b.pool, b.stride) for b in spec.blocks] == [("none", 2)] * 4
    assert next(x.in_shape for x in infer_shapes(spec) if x.kind == "aggregate") == (128, 2, 2)
    assert trial.params == params
    # Mixed with the pools, and asked once for the network with pool_scope 'network'.
    params = {**FIXED, "block_type": "plain", "se_ratio": 0.0, "pool_0": "stride", "pool_1": "max"}
    spec = suggest_spec(FixedTrial(params), EFFICIENT, (1, 28, 28), 10)
    assert [(b.pool, b.stride) for b in spec.blocks] == [("none", 2), ("max", 1)]
    network = dataclasses.replace(EFFICIENT, pool_scope="network")
    params = {k: v for k, v in params.items() if not k.startswith("pool_")} | {"pool": "stride"}
    trial = FixedTrial(params)
    spec = suggest_spec(trial, network, (1, 28, 28), 10)
    assert [b.stride for b in spec.blocks] == [2, 2] and trial.params == params


def test_efficient_space_asks_each_option_only_when_active():
    seen = set()
    for s in sample(EFFICIENT, (1, 28, 28), 200, seed=5):
        check_sample(EFFICIENT, s)
        kind = s.spec.blocks[0].block_type
        seen.add(kind)
        assert s.params["block_type"] == kind and "se_ratio" in s.params
        assert ("expansion" in s.params) == (kind == "inverted")
        if kind == "inverted":
            assert "factorize" not in s.params
    assert seen == set(BLOCK_TYPES)


def test_the_default_space_offers_the_efficient_blocks_only_when_switched_on():
    space = SpaceConfig()
    offered = SpaceConfig._OFFER_EFFICIENT  # noqa: SLF001
    want = SpaceConfig.EFFICIENT if offered else PLAIN_BLOCKS
    assert {name: getattr(space, name) for name in want} == want
    # Apart from the switch's keys, the default space is the plain one.
    assert dataclasses.replace(space, **PLAIN_BLOCKS) == PLAIN
    for s in sample(space, (1, 28, 28), 100, seed=1):
        check_sample(space, s)
        if not offered:
            assert not {"block_type", "expansion", "se_ratio"} & set(s.params)
            for b in s.spec.blocks:
                assert (b.block_type, b.se_ratio, b.stride, b.expansion) == ("plain", 0.0, 1, 6)


def test_offering_the_efficient_blocks_is_one_line():
    # SpaceConfig._OFFER_EFFICIENT = True makes EFFICIENT's values the defaults; each is a field.
    fields = {f.name: f for f in dataclasses.fields(SpaceConfig)}
    assert set(SpaceConfig.EFFICIENT) == set(PLAIN_BLOCKS)
    assert set(SpaceConfig.EFFICIENT) <= set(fields)
    assert "EFFICIENT" not in fields and "_OFFER_EFFICIENT" not in fields
    assert SpaceConfig.EFFICIENT["block_types"] == BLOCK_TYPES
    for name, values in SpaceConfig.EFFICIENT.items():
        choices = fields[name].metadata.get("choices")
        assert choices is None or set(values) <= set(choices), name
    # The config's choices are the models' block types, and the pools plus 'stride'.
    assert fields["block_types"].metadata["choices"] == BLOCK_TYPES
    assert fields["pools"].metadata["choices"] == (*POOLS, "stride")


def test_the_seeds_presets_keep_plain_blocks(preset_samples):
    for name in SPACE_PRESETS:
        if name == "default":
            continue
        values = SPACE_PRESETS_VALUES[name]
        assert (values["block_types"], values["se_ratio"]) == (("plain",), (0.0,))
        assert "stride" not in values["pools"]
        for shape in PRESET_SHAPES:
            for s in preset_samples[name, shape]:
                assert all(
                    (b.block_type, b.se_ratio, b.stride) == ("plain", 0.0, 1) for b in s.spec.blocks
                )


def test_new_dimensions_distributions():
    space = dataclasses.replace(
        EFFICIENT, expansions=IntRange(1, 6), se_ratio=FloatRange(0.0, 0.5), kernels=(3,)
    )
    ratios = set()
    for s in sample(space, (1, 28, 28), 80, seed=9):
        d = s.distributions
        assert d["block_type"] == CategoricalDistribution(list(BLOCK_TYPES))
        assert d["se_ratio"] == FloatDistribution(0.0, 0.5, step=SE_STEP)
        if "expansion" in d:
            assert d["expansion"] == IntDistribution(1, 6)
        ratios |= {b.se_ratio for b in s.spec.blocks}
    # On the grid of 1/16, and as the spec stores them.
    assert all(math.isclose(r * 16, round(r * 16)) for r in ratios) and len(ratios) > 4


def test_new_config_keys_load_and_errors_name_them(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "space:\n  block_types: [residual, inverted]\n  expansions: {min: 2, max: 4}\n"
        "  se_ratio: {min: 0.0, max: 0.25}\n  pools: [max, stride]\n"
    )
    space = load_config(path).space
    assert space.block_types == ("residual", "inverted")
    assert space.expansions == IntRange(2, 4) and space.se_ratio == FloatRange(0.0, 0.25)
    assert space.pools == ("max", "stride")
    for text, needles in (
        ("  block_types: [resnet]\n", ["space.block_types[0]", "'resnet'", "separable"]),
        ("  expansions: [0]\n", ["space.expansions[0]", "[1, 16]"]),
        ("  se_ratio: [1.5]\n", ["space.se_ratio[0]", "[0.0, 1.0]"]),
        ("  pools: [strided]\n", ["space.pools[0]", "stride"]),
    ):
        path.write_text("space:\n" + text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        for needle in needles:
            assert needle in str(info.value), (needle, str(info.value))


def test_fixed_trial_missing_a_parameter_fails():
    params = dict(FIXED)
    del params["kernel"]
    with pytest.raises(ValueError, match="kernel"):
        suggest_spec(FixedTrial(params), PLAIN, (1, 28, 28), 10)


def test_fixed_trial_missing_an_active_conditional_parameter_fails():
    params = {**FIXED, "aggregation": "multiscale"}  # heads is now active, and not given
    with pytest.raises(ValueError, match="heads"):
        suggest_spec(FixedTrial(params), PLAIN, (1, 28, 28), 10)


def test_pool_not_asked_below_min_pool_size():
    # On 5x5 the first pool takes the map to 2x2; the second block is not offered a pool.
    params = {k: v for k, v in FIXED.items() if k != "pool_1"}
    params["pool_0"] = "max"
    trial = FixedTrial(params)
    spec = suggest_spec(trial, PLAIN, (1, 5, 5), 10)
    assert [b.pool for b in spec.blocks] == ["max", "none"]
    assert "pool_1" not in trial.params


def test_a_conv_pool_rounds_up_and_may_pool_again():
    # 7 -> 4 with a stride-2 3x3 conv (padding 1), which is still large enough to pool again.
    params = {**FIXED, "blocks": 4, "pool_0": "conv", "pool_1": "conv", "pool_2": "conv"}
    params["pool_3"] = "conv"
    trial = FixedTrial(params)
    spec = suggest_spec(trial, PLAIN, (1, 28, 28), 10)
    assert [b.pool for b in spec.blocks] == ["conv"] * 4
    assert next(x.in_shape for x in infer_shapes(spec) if x.kind == "aggregate")[1:] == (2, 2)
    assert {f"pool_{i}" for i in range(4)} <= set(trial.params)


# --- inactive parameters are never sampled, and never change the identity ----------------------


def test_factorize_only_for_kernels_above_3(default_samples):
    seen = set()
    for s in default_samples:
        kernel = s.spec.blocks[0].kernel
        seen.add(kernel)
        assert ("factorize" in s.params) == (kernel > 3)
        if kernel == 3:
            assert not any(b.factorize for b in s.spec.blocks)
        else:
            assert all(b.factorize == s.params["factorize"] for b in s.spec.blocks)
    assert seen == {3, 5, 7}


def test_head_options_only_for_multiscale_and_multi(default_samples):
    seen = set()
    for s in default_samples:
        spec, params = s.spec, s.params
        seen.add((spec.aggregation, spec.heads))
        assert ("heads" in params) == (spec.aggregation == "multiscale")
        assert ("predict" in params) == (spec.heads == "multi")
        # aux_weight's default is the single choice 1.0: fixed, never asked.
        assert "aux_weight" not in params
    assert seen == {("flatten", "single"), ("gap", "single")} | {
        ("multiscale", h) for h in ("single", "multi")
    }


def test_aux_weight_asked_only_with_multi_heads():
    space = dataclasses.replace(PLAIN, aux_weight=FloatRange(0.2, 1.0))
    multi = 0
    for s in sample(space, (1, 28, 28), 150, seed=4):
        assert ("aux_weight" in s.params) == (s.spec.heads == "multi")
        if s.spec.heads == "multi":
            multi += 1
            assert 0.2 <= s.spec.aux_weight <= 1.0
            assert s.spec.aux_weight == pytest.approx(s.params["aux_weight"])
            assert on_grid(s.spec.aux_weight - 0.2)
    assert multi > 5


def test_growth_only_with_several_blocks(default_samples):
    seen_one = seen_many = False
    for s in default_samples:
        if len(s.spec.blocks) == 1:
            seen_one = True
            assert "growth" not in s.params
        else:
            seen_many = True
            assert "growth" in s.params
    assert seen_one and seen_many


def test_dense_parameters_only_for_dense_layers(default_samples):
    counts = set()
    for s in default_samples:
        n = s.params["dense_layers"]
        counts.add(n)
        assert len(s.spec.dense) == n
        widths = sorted(k for k in s.params if k.startswith("dense_width_"))
        assert widths == [f"dense_width_{i}" for i in range(n)]
        assert ("dense_dropout" in s.params) == (n > 0)
    assert counts == {0, 1, 2, 3}


def test_pool_parameters_follow_blocks_and_map_size(default_samples):
    kinds = set()
    for s in default_samples:
        params, spec = s.params, s.spec
        assert "pool" not in params  # pool_scope 'block'
        pools = sorted(k for k in params if k.startswith("pool_"))
        # Never a pool parameter for a block that does not exist.
        assert all(int(k.split("_")[1]) < len(spec.blocks) for k in pools)
        size = 28
        for i, block in enumerate(spec.blocks):
            # Offered exactly while the map is at least MIN_POOL_SIZE on its short side.
            assert (f"pool_{i}" in params) == (size >= MIN_POOL_SIZE)
            kinds.add(block.pool)
            size = downsample(size, block.pool)
        assert size >= 1
    assert kinds == {"max", "avg", "conv", "none"}


def test_network_pool_scope_asks_once():
    space = dataclasses.replace(PLAIN, pool_scope="network")
    kinds = set()
    for s in sample(space, (1, 28, 28), 150, seed=2):
        params, spec = s.params, s.spec
        assert "pool" in params
        assert not any(k.startswith("pool_") for k in params)
        offered = pool_offered(spec)
        # Every block takes the network's choice while the map allows it, then none.
        assert [b.pool for b in spec.blocks] == [params["pool"] if o else "none" for o in offered]
        kinds.add(params["pool"])
    assert kinds == {"max", "avg", "conv", "none"}


def test_network_pool_scope_on_a_map_too_small_to_pool():
    space = dataclasses.replace(PLAIN, pool_scope="network")
    for s in sample(space, (1, 3, 3), 20):
        assert "pool" not in s.params
        assert all(b.pool == "none" for b in s.spec.blocks)


@pytest.mark.parametrize(
    ("choices", "asked"),
    [((False,), False), ((True,), False), ((False, True), True)],
)
def test_augment_asked_only_with_a_choice(choices, asked):
    space = dataclasses.replace(PLAIN, augment=choices)
    seen = set()
    for s in sample(space, (1, 28, 28), 30):
        assert ("augment" in s.params) == asked
        assert s.augment in choices
        seen.add(s.augment)
    assert seen == set(choices)


def test_augment_is_not_part_of_the_spec():
    spec_params = {**FIXED}
    trial = FixedTrial({**spec_params, "augment": True})
    space = dataclasses.replace(PLAIN, augment=(False, True))
    plain = suggest_spec(FixedTrial(spec_params), space, (1, 28, 28), 10)
    assert suggest_spec(trial, space, (1, 28, 28), 10) == plain
    assert suggest_augment(trial, space) is True


def test_an_inactive_value_given_to_a_fixed_trial_is_not_asked():
    # FixedTrial ignores parameters that are not asked for: kernel 3 never asks for factorize,
    # gap never asks for heads, so the spec is the one without them.
    params = {**FIXED, "kernel": 3}
    del params["factorize"]
    plain = suggest_spec(FixedTrial(params), PLAIN, (1, 28, 28), 10)
    extra = {**params, "factorize": True, "heads": "multi", "predict": "mean"}
    trial = FixedTrial(extra)
    spec = suggest_spec(trial, PLAIN, (1, 28, 28), 10)
    assert spec == plain
    assert trial.params == params
    assert not any(b.factorize for b in spec.blocks) and spec.heads == "single"


def test_the_canonical_hash_ignores_inactive_fields():
    def spec_with(kernel: int = 3, factorize: bool = False, **changes: Any) -> ArchSpec:
        block = ConvBlock(filters=8, kernel=kernel, factorize=factorize, pool="max")
        changes.setdefault("aggregation", "gap")
        return ArchSpec(input_shape=(1, 28, 28), num_classes=10, blocks=(block,), **changes)

    # factorize does not change a 3x3 convolution ...
    assert spec_with(factorize=True) != spec_with(factorize=False)
    assert spec_with(factorize=True).spec_hash() == spec_with(factorize=False).spec_hash()
    # ... but does change a 5x5 one.
    assert (
        spec_with(kernel=5, factorize=True).spec_hash()
        != spec_with(kernel=5, factorize=False).spec_hash()
    )
    # The head options do not change a single-head network ...
    single = spec_with(aggregation="multiscale")
    assert (
        dataclasses.replace(single, aux_weight=0.5, predict="mean").spec_hash()
        == single.spec_hash()
    )
    # ... and do change a multi-head one.
    multi = dataclasses.replace(single, heads="multi")
    assert multi.spec_hash() != single.spec_hash()
    assert dataclasses.replace(multi, aux_weight=0.5).spec_hash() != multi.spec_hash()
    assert dataclasses.replace(multi, predict="mean").spec_hash() != multi.spec_hash()


def test_the_canonical_hash_ignores_a_multi_head_with_no_extra_section():
    # On a 1x1 map the multi-scale aggregation has only the map itself: no extra head is built,
    # so 'multi' and its options build the same network as 'single'.
    def spec_with(**changes: Any) -> ArchSpec:
        return ArchSpec(
            input_shape=(1, 1, 1),
            num_classes=10,
            blocks=(ConvBlock(filters=4),),
            aggregation="multiscale",
            **changes,
        )

    multi = spec_with(heads="multi", predict="mean", aux_weight=3.0)
    assert multi.spec_hash() == spec_with().spec_hash()


def test_single_valued_choices_are_not_parameters():
    space = plain_space(
        kernels=(3,),
        base_filters=(16,),
        growth=("doubling",),
        convs=(1,),
        batch_norm=(False,),
        pools=("max",),
        aggregations=("gap",),
        blocks=IntRange(2, 2),
        dense_layers=(1,),
        dense_width=IntRange(32, 32),
        block_dropout=(0.2,),
        dense_dropout=FloatRange(0.0, 0.04),
    )
    for s in sample(space, (1, 28, 28), 5):
        assert s.params == {}
        assert s.augment is False
        assert s.spec == ArchSpec(
            input_shape=(1, 28, 28),
            num_classes=10,
            blocks=(
                ConvBlock(filters=16, kernel=3, pool="max", dropout=0.2),
                ConvBlock(filters=32, kernel=3, pool="max", dropout=0.2),
            ),
            aggregation="gap",
            dense=(DenseLayer(width=32, dropout=0.0),),
        )


def test_a_list_is_categorical_and_a_range_is_numeric():
    space = plain_space(
        blocks=(1, 2, 4),
        convs=IntRange(1, 3),
        block_dropout=FloatRange(0.0, 0.5),
        dense_layers=IntRange(1, 2),
        dense_width=IntRange(16, 256),
        dense_dropout=(0.0, 0.3),
    )
    seen = set()
    for s in sample(space, (1, 28, 28), 40):
        d = s.distributions
        seen.add(len(s.spec.blocks))
        assert d["blocks"] == CategoricalDistribution([1, 2, 4])
        assert d["convs"] == IntDistribution(1, 3)
        assert d["block_dropout"] == FloatDistribution(0.0, 0.5, step=DROPOUT_STEP)
        assert d["dense_width_0"] == IntDistribution(16, 256, log=True)
        assert d["dense_dropout"] == CategoricalDistribution([0.0, 0.3])
    assert seen == {1, 2, 4}


def test_a_ranged_convs_is_a_parameter():
    for s in sample(dataclasses.replace(PLAIN, convs=IntRange(1, 3)), (1, 28, 28), 30):
        assert s.params["convs"] in (1, 2, 3)
        assert all(b.convs == s.params["convs"] for b in s.spec.blocks)
    for s in sample(dataclasses.replace(PLAIN, convs=(2,)), (1, 28, 28), 5):
        assert "convs" not in s.params
        assert all(b.convs == 2 for b in s.spec.blocks)


def test_only_none_pool_never_asks():
    for scope in ("block", "network"):
        space = dataclasses.replace(PLAIN, pools=("none",), pool_scope=scope)
        for s in sample(space, (1, 28, 28), 20):
            assert not any(k.startswith("pool") for k in s.params)
            assert all(b.pool == "none" for b in s.spec.blocks)


# --- no sampled spec collapses ---------------------------------------------------------------


@pytest.mark.parametrize("space", [WIDE, WIDE_NETWORK], ids=["block", "network"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_no_sampled_spec_collapses(shape, space):
    for s in sample(space, shape, 150, seed=sum(shape)):
        assert s.spec.input_shape == shape
        check_sample(space, s)


def test_all_max_pools_on_every_block_stop_in_time():
    space = dataclasses.replace(PLAIN, blocks=(12,), pools=("max",))
    for shape in SHAPES:
        (s, *_) = sample(space, shape, 1)
        assert sum(b.pool == "max" for b in s.spec.blocks) == max_pools(*shape[1:])
        assert not any(k.startswith("pool_") for k in s.params)


def test_all_conv_pools_stop_in_time():
    space = dataclasses.replace(PLAIN, blocks=(12,), pools=("conv",))
    # A conv pool rounds up (28 -> 14 -> 7 -> 4 -> 2), so it may downsample once more than
    # max_pools counts for 2x2 pools; the map still never falls below 2 pixels.
    for shape, stages in [((1, 28, 28), 4), ((1, 8, 8), 2), ((3, 64, 64), 5), ((1, 5, 5), 1)]:
        (s, *_) = sample(space, shape, 1)
        assert sum(b.pool == "conv" for b in s.spec.blocks) == stages, shape
        last = next(x.in_shape for x in infer_shapes(s.spec) if x.kind == "aggregate")
        assert 2 <= min(last[1:]) < MIN_POOL_SIZE


def test_non_square_input_pools_by_the_short_side():
    space = dataclasses.replace(PLAIN, blocks=(6,), pools=("max",))
    (s, *_) = sample(space, (1, 8, 64), 1)
    assert sum(b.pool == "max" for b in s.spec.blocks) == 2
    feature_map = next(x.in_shape for x in infer_shapes(s.spec) if x.kind == "aggregate")
    assert feature_map[1:] == (2, 16)


# --- the named spaces ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preset_samples() -> dict[tuple[str, tuple[int, int, int]], list[Sampled]]:
    return {
        (name, shape): sample(preset(name), shape, 100, seed=7 + sum(shape))
        for name in SPACE_PRESETS
        for shape in PRESET_SHAPES
    }


def shape_id(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


@pytest.mark.parametrize("shape", PRESET_SHAPES, ids=shape_id)
@pytest.mark.parametrize("name", SPACE_PRESETS)
def test_preset_specs_are_valid_and_use_only_the_presets_values(preset_samples, name, shape):
    space = preset(name)
    for s in preset_samples[name, shape]:
        check_sample(space, s)


@pytest.mark.parametrize("shape", PRESET_SHAPES, ids=shape_id)
def test_seed003_specs(preset_samples, shape):
    blocks_seen, pools_seen = set(), set()
    for s in preset_samples["seed003", shape]:
        spec, params = s.spec, s.params
        blocks_seen.add(len(spec.blocks))
        assert spec.aggregation == "gap" and spec.heads == "single"
        assert len(spec.blocks) in (1, 2, 4, 8)
        assert len({b.filters for b in spec.blocks}) == 1  # no growth
        assert spec.blocks[0].filters in (32, 64, 128, 256)
        assert {b.kernel for b in spec.blocks} <= {3, 5, 7, 9}
        assert not any(b.factorize for b in spec.blocks) and "factorize" not in params
        assert all(b.convs == 1 and b.dropout == 0.0 for b in spec.blocks)
        # One pooling choice for the whole network, asked once.
        kinds = {b.pool for b in spec.blocks} - {"none"}
        assert len(kinds) <= 1 and kinds <= {"max"}
        assert params["pool"] in ("max", "none")
        assert not any(k.startswith("pool_") for k in params)
        pools_seen.add(params["pool"])
        assert len(spec.dense) in (1, 2, 4)
        assert all(d.width == 1024 for d in spec.dense)
        assert {d.dropout for d in spec.dense} <= {0.0, 0.2}
        assert not s.augment and "augment" not in params
    assert blocks_seen == {1, 2, 4, 8}
    assert pools_seen == {"max", "none"}


@pytest.mark.parametrize("shape", PRESET_SHAPES, ids=shape_id)
def test_seed002_specs(preset_samples, shape):
    seen = {"pools": set(), "augment": set(), "factorize": set()}
    for s in preset_samples["seed002", shape]:
        spec, params = s.spec, s.params
        assert spec.aggregation == "flatten" and spec.heads == "single"
        assert 1 <= len(spec.blocks) <= 3
        base = spec.blocks[0].filters
        assert base in (8, 16, 32)
        assert [b.filters for b in spec.blocks] == [
            min(base * 2**i, 128) for i in range(len(spec.blocks))
        ]
        assert all(b.kernel in (3, 5) for b in spec.blocks)
        assert ("factorize" in params) == (spec.blocks[0].kernel == 5)
        if "factorize" in params:
            seen["factorize"].add(params["factorize"])
        for block, offered in zip(spec.blocks, pool_offered(spec), strict=True):
            assert block.pool in (("max", "conv") if offered else ("none",))
            seen["pools"].add(block.pool)
        assert all(0.0 <= b.dropout <= 0.7 for b in spec.blocks)
        assert len(spec.dense) <= 1
        assert all(16 <= d.width <= 2048 and d.dropout <= 0.7 for d in spec.dense)
        assert "augment" in params
        seen["augment"].add(s.augment)
    assert {"max", "conv"} <= seen["pools"]
    assert seen["augment"] == {False, True}
    assert seen["factorize"] == {False, True}


@pytest.mark.parametrize("shape", PRESET_SHAPES, ids=shape_id)
def test_seed000_specs(preset_samples, shape):
    seen = set()
    for s in preset_samples["seed000", shape]:
        spec, params = s.spec, s.params
        assert spec.aggregation in ("flatten", "multiscale")
        seen.add((spec.aggregation, spec.heads))
        if spec.heads == "multi":
            assert spec.aggregation == "multiscale"
            assert spec.aux_weight in (0.5, 1.0) and spec.predict in ("main", "mean")
            assert {"predict", "aux_weight"} <= set(params)
        assert len(spec.blocks) in (2, 3)
        assert spec.blocks[0].filters in (16, 32)
        assert [b.filters for b in spec.blocks] == [
            min(spec.blocks[0].filters * 2**i, 128) for i in range(len(spec.blocks))
        ]
        assert not any(b.factorize for b in spec.blocks) and "factorize" not in params
        # Max pooling is the only choice: every block pools while the map allows it.
        for block, offered in zip(spec.blocks, pool_offered(spec), strict=True):
            assert block.pool == ("max" if offered else "none")
        assert not any(k.startswith("pool") for k in params)
        assert all(b.dropout <= 0.3 for b in spec.blocks)
        assert len(spec.dense) <= 1 and all(32 <= d.width <= 512 for d in spec.dense)
        assert not s.augment
    assert seen == {("flatten", "single"), ("multiscale", "single"), ("multiscale", "multi")}


@pytest.mark.parametrize("shape", PRESET_SHAPES, ids=shape_id)
def test_default_preset_uses_the_whole_space(preset_samples, shape):
    samples = preset_samples["default", shape]
    assert {s.spec.aggregation for s in samples} == {"flatten", "gap", "multiscale"}
    assert {b.pool for s in samples for b in s.spec.blocks} == {"max", "avg", "conv", "none"}
    assert {s.spec.heads for s in samples} == {"single", "multi"}
    assert {len(s.spec.blocks) for s in samples} == set(range(1, 7))
    assert not any(s.augment for s in samples)


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
    space = plain_space(blocks=IntRange(1, 8), base_filters=(8, 16, 64), max_filters=128)
    seen = set()
    for s in sample(space, (3, 64, 64), 200, seed=3):
        growth = s.params.get("growth", "constant")
        base = s.params["base_filters"]
        seen.add(growth)
        for i, block in enumerate(s.spec.blocks):
            want = base if growth == "constant" else base * 2**i
            assert block.filters == min(want, 128)
            assert block.filters <= 128
    assert seen == {"constant", "doubling"}


def test_default_filters_never_exceed_max_filters(default_samples):
    for s in default_samples:
        assert all(b.filters <= SpaceConfig().max_filters for b in s.spec.blocks)


def on_grid(x: float) -> bool:
    return math.isclose(x / DROPOUT_STEP, round(x / DROPOUT_STEP), abs_tol=1e-9)


def test_dropout_values_on_the_grid(default_samples):
    values = set()
    for s in default_samples:
        for d in [b.dropout for b in s.spec.blocks] + [d.dropout for d in s.spec.dense]:
            values.add(d)
            assert on_grid(d), d
            assert 0.0 <= d <= 0.5
            assert d == round(d, 4)
    assert len(values) > 5


def test_dropout_is_shared_within_blocks_and_within_dense(default_samples):
    for s in default_samples:
        assert len({b.dropout for b in s.spec.blocks}) == 1
        assert len({d.dropout for d in s.spec.dense}) <= 1


def test_dense_widths_within_bounds(default_samples):
    for s in default_samples:
        assert all(16 <= d.width <= 1024 for d in s.spec.dense)


def test_dropout_never_exceeds_the_configured_max():
    space = plain_space(block_dropout=FloatRange(0.1, 0.33))
    values = set()
    for s in sample(space, (1, 28, 28), 200):
        values |= {b.dropout for b in s.spec.blocks}
        assert all(0.1 <= b.dropout <= 0.33 for b in s.spec.blocks)
    assert values == {0.1, 0.15, 0.2, 0.25, 0.3}


def test_dropout_choices_are_taken_as_given():
    space = plain_space(block_dropout=(0.0, 0.33), dense_layers=(1,), dense_dropout=(0.125,))
    values = set()
    for s in sample(space, (1, 28, 28), 40):
        values |= {b.dropout for b in s.spec.blocks}
        assert [d.dropout for d in s.spec.dense] == [0.125]
        assert "dense_dropout" not in s.params
    assert values == {0.0, 0.33}


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_specs():
    a = sample(SpaceConfig(), (1, 28, 28), 50, seed=42)
    b = sample(SpaceConfig(), (1, 28, 28), 50, seed=42)
    c = sample(SpaceConfig(), (1, 28, 28), 50, seed=43)
    assert [s.spec for s in a] == [s.spec for s in b]
    assert [s.params for s in a] == [s.params for s in b]
    assert [s.spec for s in a] != [s.spec for s in c]


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random"])
def test_project_samplers_are_deterministic(name):
    runs = [
        [
            s.spec.spec_hash()
            for s in sample(SpaceConfig(), (1, 28, 28), 15, sampler=make_sampler(name, 5))
        ]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
