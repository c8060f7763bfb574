"""Tests for search._config: the strict YAML study config and mlflow.yml."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cnnas.objectives import Augment
from cnnas.search._config import (
    SPACE_PRESETS,
    SPACE_PRESETS_VALUES,
    AugmentSection,
    ConfigError,
    DataConfig,
    FinalSection,
    FloatRange,
    IntRange,
    LatencySection,
    MlflowConfig,
    SpaceConfig,
    StudyConfig,
    StudySection,
    TrainSection,
    load_config,
    load_mlflow_config,
    load_preset,
    preset_names,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]

FULL_EXAMPLE = """\
study:
  name: full-example_1.0
  trials: 12
  timeout: 3600
  sampler: nsga2
  seed: 7
  objective: accuracy
  complexity: macs
  project_dir: my-runs
  storage: sqlite:///optuna.db
  max_params: 100000
  max_macs: 5000000
  start_from:
    - {blocks: 2, base_filters: 16, batch_norm: true}
    - {blocks: 1, block_dropout: 0.25, pool_0: avg}
  max_failures: 5
  heartbeat_interval: 30
  grace_period: 90
  retries: 2
  workers: 3
data:
  dataset: digits
  data_dir: /srv/data
  path: /srv/data/digits
  height: 8
  width: 8
  val_fraction: 0.2
  test_fraction: 0.25
  subset: 500
  cache_dir: /srv/cache
  max_unreadable: 0.02
train:
  epochs: 4
  batch_size: 64
  optimizer: adamw
  lr: 0.01
  weight_decay: 0.0001
  schedule: cosine
  lr_factor: 0.3
  lr_patience: 2
  warmup: 0.1
  label_smoothing: 0.05
  accelerator: cpu
  precision: 32-true
  memory_format: contiguous
  deterministic: false
  oom_retry: false
  augment:
    translate: 3
    rotate: 10.5
    flip: true
space:
  preset: seed002
  blocks: {min: 2, max: 4}
  convs: [1, 2]
  base_filters: [8, 16]
  growth: [doubling]
  max_filters: 128
  kernels: [3, 5]
  factorize: [false, true]
  batch_norm: [true]
  pools: [max, avg, conv, none]
  pool_scope: network
  block_dropout: {min: 0, max: 0.3}
  aggregations: [gap, multiscale]
  heads: [single, multi]
  predict: [mean]
  aux_weight: [0.5, 1]
  dense_layers: [0, 2]
  dense_width: {min: 32, max: 256}
  dense_dropout: [0.1, 0.4]
  augment: [false, true]
  adaptive_depth: [false, true]
  exit_threshold: {min: 0.7, max: 0.95}
  block_types: [plain, residual]
  expansions: [2, 4]
  se_ratio: [0.0, 0.25]
final:
  share: 0.3
  members: champion
  data: train
  schedule: onecycle
  contenders: 2
  max_epochs: 50
  champion_share: 0.6
  references: false
  head_start: true
latency:
  backend: onnxruntime
  threads: 2
  batch_size: 16
  budget: 0.5
mlflow: tracking.yml
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults and a full file ----------------------------------------------------------------


def test_no_path_gives_the_defaults():
    assert load_config(None) == StudyConfig()


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == StudyConfig()


def test_comment_only_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n")) == StudyConfig()


def test_empty_section_gives_that_sections_defaults(tmp_path):
    assert load_config(write(tmp_path, "train:\nspace: {}\n")) == StudyConfig()


def test_full_example_loads_every_key(tmp_path):
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    assert cfg.study == StudySection(
        name="full-example_1.0",
        trials=12,
        timeout=3600.0,
        sampler="nsga2",
        seed=7,
        objective="accuracy",
        complexity="macs",
        project_dir="my-runs",
        storage="sqlite:///optuna.db",
        max_params=100000,
        max_macs=5000000,
        start_from=(
            {"blocks": 2, "base_filters": 16, "batch_norm": True},
            {"blocks": 1, "block_dropout": 0.25, "pool_0": "avg"},
        ),
        max_failures=5,
        heartbeat_interval=30,
        grace_period=90,
        retries=2,
        workers=3,
    )
    assert cfg.data == DataConfig(
        dataset="digits",
        data_dir="/srv/data",
        path="/srv/data/digits",
        height=8,
        width=8,
        val_fraction=0.2,
        test_fraction=0.25,
        subset=500,
        cache_dir="/srv/cache",
        max_unreadable=0.02,
    )
    assert cfg.train == TrainSection(
        epochs=4,
        batch_size=64,
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.0001,
        schedule="cosine",
        lr_factor=0.3,
        lr_patience=2,
        warmup=0.1,
        label_smoothing=0.05,
        accelerator="cpu",
        precision="32-true",
        memory_format="contiguous",
        deterministic=False,
        oom_retry=False,
        augment=AugmentSection(translate=3.0, rotate=10.5, flip=True),
    )
    # Every space key is written, so the preset contributes nothing but its name.
    assert cfg.space == SpaceConfig(
        preset="seed002",
        blocks=IntRange(2, 4),
        convs=(1, 2),
        base_filters=(8, 16),
        growth=("doubling",),
        max_filters=128,
        kernels=(3, 5),
        factorize=(False, True),
        batch_norm=(True,),
        pools=("max", "avg", "conv", "none"),
        pool_scope="network",
        block_dropout=FloatRange(0.0, 0.3),
        aggregations=("gap", "multiscale"),
        heads=("single", "multi"),
        predict=("mean",),
        aux_weight=(0.5, 1.0),
        dense_layers=(0, 2),
        dense_width=IntRange(32, 256),
        dense_dropout=(0.1, 0.4),
        augment=(False, True),
        adaptive_depth=(False, True),
        exit_threshold=FloatRange(0.7, 0.95),
        block_types=("plain", "residual"),
        expansions=(2, 4),
        se_ratio=(0.0, 0.25),
    )
    assert cfg.final == FinalSection(
        share=0.3,
        members="champion",
        data="train",
        schedule="onecycle",
        contenders=2,
        max_epochs=50,
        champion_share=0.6,
        references=False,
        head_start=True,
    )
    assert cfg.latency == LatencySection(
        backend="onnxruntime", threads=2, batch_size=16, budget=0.5
    )
    # A relative mlflow path is taken relative to the config file.
    assert cfg.mlflow == str(tmp_path / "tracking.yml")


def test_full_example_sets_every_key():
    """FULL_EXAMPLE is the reference of every key: a new key must be added to it."""
    text = FULL_EXAMPLE
    for section, cls in (
        ("study", StudySection),
        ("data", DataConfig),
        ("train", TrainSection),
        ("space", SpaceConfig),
        ("train.augment", AugmentSection),
        ("final", FinalSection),
        ("latency", LatencySection),
    ):
        for f in dataclasses.fields(cls):
            assert re.search(rf"^ *{f.name}:", text, re.M), f"{section}.{f.name}"


def test_lists_become_tuples_ranges_become_ranges_and_ints_become_floats(tmp_path):
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    for f in dataclasses.fields(SpaceConfig):
        value = getattr(cfg.space, f.name)
        if f.name not in ("preset", "max_filters", "pool_scope"):
            assert isinstance(value, (tuple, IntRange, FloatRange)), f.name
    assert type(cfg.space.blocks) is IntRange
    assert type(cfg.space.dense_width) is IntRange
    # A float range given integers holds floats; so does a float choice list.
    assert type(cfg.space.block_dropout) is FloatRange
    assert isinstance(cfg.space.block_dropout.min, float)
    assert all(isinstance(v, float) for v in cfg.space.aux_weight)
    assert isinstance(cfg.train.augment.translate, float)
    assert isinstance(cfg.study.timeout, float)
    # An integer where a float is expected is accepted and converted.
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n  weight_decay: 0\n", "ints.yaml"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.weight_decay, float)


def test_config_is_frozen():
    cfg = StudyConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_absolute_mlflow_path_is_kept(tmp_path):
    target = tmp_path / "elsewhere" / "mlflow.yml"
    cfg = load_config(write(tmp_path, f"mlflow: {target}\n"))
    assert cfg.mlflow == str(target)


def test_null_values_take_none_where_allowed(tmp_path):
    cfg = load_config(write(tmp_path, "study:\n  timeout: null\n  storage: null\n"))
    assert cfg.study.timeout is None and cfg.study.storage is None


def test_budgets_default_to_none_and_take_integers(tmp_path):
    assert StudyConfig().study.max_params is None and StudyConfig().study.max_macs is None
    cfg = load_config(write(tmp_path, "study:\n  max_params: 5000\n  max_macs: null\n"))
    assert cfg.study.max_params == 5000 and cfg.study.max_macs is None


# --- numeric dimensions: a list of choices or a {min, max} range ------------------------------


def space_of(tmp_path, text: str) -> SpaceConfig:
    return load_config(write(tmp_path, "space:\n" + text)).space


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  blocks: {min: 1, max: 6}\n", {"blocks": IntRange(1, 6)}),
        ("  blocks: {max: 6, min: 1}\n", {"blocks": IntRange(1, 6)}),
        ("  blocks: {min: 3, max: 3}\n", {"blocks": IntRange(3, 3)}),
        # The old [min, max] pair form is gone: a list is always a list of choices.
        ("  blocks: [5, 2]\n", {"blocks": (5, 2)}),
        ("  blocks: [1, 2, 4, 8]\n", {"blocks": (1, 2, 4, 8)}),
        ("  blocks: [4]\n", {"blocks": (4,)}),
        ("  dense_layers: [0, 1, 2]\n", {"dense_layers": (0, 1, 2)}),
        ("  convs: {min: 1, max: 4}\n", {"convs": IntRange(1, 4)}),
        ("  block_dropout: {min: 0.0, max: 0.5}\n", {"block_dropout": FloatRange(0.0, 0.5)}),
        ("  block_dropout: {min: 0, max: 0}\n", {"block_dropout": FloatRange(0.0, 0.0)}),
        ("  dense_dropout: [0, 0.2]\n", {"dense_dropout": (0.0, 0.2)}),
        ("  aux_weight: {min: 0.25, max: 2}\n", {"aux_weight": FloatRange(0.25, 2.0)}),
        ("  dense_width: {min: 1, max: 65536}\n", {"dense_width": IntRange(1, 65536)}),
        ("  dense_width: [1024]\n", {"dense_width": (1024,)}),
    ],
)
def test_a_dimension_is_choices_or_a_range(tmp_path, text, expected):
    space = space_of(tmp_path, text)
    assert space == dataclasses.replace(SpaceConfig(), **expected)


def test_ranges_compare_and_hash_by_value():
    assert IntRange(1, 6) == IntRange(1, 6) != IntRange(1, 5)
    assert len({FloatRange(0.0, 0.5), FloatRange(0.0, 0.5)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        IntRange(1, 2).min = 0  # type: ignore[misc]


def test_default_space_is_the_whole_space():
    space = SpaceConfig()
    assert space.preset == "default"
    assert space.blocks == IntRange(1, 6)
    assert space.pools == ("max", "avg", "conv", "none")
    assert space.pool_scope == "block"
    assert space.factorize == (False, True)
    assert space.aggregations == ("flatten", "gap", "multiscale")
    assert space.heads == ("single", "multi")
    assert space.predict == ("main", "mean")
    assert space.augment == (False,)  # augmentation is opt-in


# --- named spaces -------------------------------------------------------------------------------


def test_presets_are_the_documented_four():
    assert SPACE_PRESETS == ("default", "seed003", "seed002", "seed000")
    assert set(SPACE_PRESETS_VALUES) == set(SPACE_PRESETS)
    assert SPACE_PRESETS_VALUES["default"] == {}
    names = {f.name for f in dataclasses.fields(SpaceConfig)}
    for preset, values in SPACE_PRESETS_VALUES.items():
        assert set(values) <= names - {"preset"}, preset


@pytest.mark.parametrize("preset", SPACE_PRESETS)
def test_a_preset_supplies_its_values(tmp_path, preset):
    space = space_of(tmp_path, f"  preset: {preset}\n")
    assert space == SpaceConfig(preset=preset, **SPACE_PRESETS_VALUES[preset])
    # The preset's own values pass the checks a file's values pass.
    for name, value in SPACE_PRESETS_VALUES[preset].items():
        assert getattr(space, name) == value, name


def test_the_default_preset_is_the_default_space(tmp_path):
    assert space_of(tmp_path, "  preset: default\n") == SpaceConfig()


def test_keys_in_the_file_override_the_preset(tmp_path):
    space = space_of(tmp_path, "  preset: seed003\n  kernels: [3]\n  blocks: {min: 1, max: 2}\n")
    seed003 = SpaceConfig(preset="seed003", **SPACE_PRESETS_VALUES["seed003"])
    assert space == dataclasses.replace(seed003, kernels=(3,), blocks=IntRange(1, 2))
    # The keys left out keep seed003's values, not the defaults.
    assert space.aggregations == ("gap",) and space.dense_width == (1024,)
    assert space.pool_scope == "network"


def test_a_preset_key_can_be_widened_back(tmp_path):
    space = space_of(tmp_path, "  preset: seed002\n  augment: [false]\n  pool_scope: network\n")
    assert space.augment == (False,) and space.pool_scope == "network"
    assert space.growth == ("doubling",) and space.max_filters == 128


def test_preset_values_match_the_source_documents():
    v = SPACE_PRESETS_VALUES
    # seed 003: N conv layers -> GAP -> M dense layers of 1024, one pooling choice per network.
    assert v["seed003"]["aggregations"] == ("gap",)
    assert v["seed003"]["dense_width"] == (1024,)
    assert v["seed003"]["pool_scope"] == "network"
    assert v["seed003"]["blocks"] == (1, 2, 4, 8)
    # seed 002: flatten, doubling filters up to 128, max pool against a strided conv.
    assert v["seed002"]["aggregations"] == ("flatten",)
    assert v["seed002"]["growth"] == ("doubling",) and v["seed002"]["max_filters"] == 128
    assert set(v["seed002"]["pools"]) == {"max", "conv"}
    assert v["seed002"]["augment"] == (False, True)
    # seed 000: multi-scale and plain flatten, the three-headed model.
    assert set(v["seed000"]["aggregations"]) == {"flatten", "multiscale"}
    assert "multi" in v["seed000"]["heads"]


# --- train.augment ------------------------------------------------------------------------------


def test_augment_section_defaults_and_what_a_trial_trains_with(tmp_path):
    assert TrainSection().augment == AugmentSection(translate=2.0, rotate=0.0, flip=False)
    cfg = load_config(write(tmp_path, "train:\n  augment:\n    rotate: 15\n"))
    assert cfg.train.augment == AugmentSection(translate=2.0, rotate=15.0, flip=False)
    on = cfg.train.to_train_config(seed=3, augment=True)
    off = cfg.train.to_train_config(seed=3)
    assert on.augment == Augment(translate=2.0, rotate=15.0, flip=False)
    assert off.augment == Augment() and not off.augment.active
    assert on.seed == off.seed == 3
    assert on.epochs == cfg.train.epochs


# --- bad input: each names the dotted key and what is allowed ----------------------------------

BAD = [
    # (id, yaml text, fragments the message must contain)
    ("unknown top-level key", "trian:\n  epochs: 3\n", ["trian", "unknown key", "train", "study"]),
    (
        "unknown nested key",
        "train:\n  epoch: 3\n",
        ["train.epoch", "unknown key", "epochs", "batch_size"],
    ),
    ("string for int", 'train:\n  epochs: "ten"\n', ["train.epochs", "integer", "'ten'"]),
    ("float for int", "train:\n  epochs: 3.5\n", ["train.epochs", "integer", "3.5"]),
    ("bool for int", "train:\n  epochs: true\n", ["train.epochs", "integer", "True"]),
    (
        "string for bool",
        'train:\n  deterministic: "yes"\n',
        ["train.deterministic", "true or false"],
    ),
    ("int for bool", "train:\n  deterministic: 1\n", ["train.deterministic", "true or false"]),
    ("bool for float", "train:\n  lr: true\n", ["train.lr", "number"]),
    ("list for scalar", "train:\n  epochs: [3]\n", ["train.epochs", "integer"]),
    ("int for string", "study:\n  name: 5\n", ["study.name", "string"]),
    ("epochs zero", "train:\n  epochs: 0\n", ["train.epochs", "[1, 10000]", "got 0"]),
    ("val_fraction high", "data:\n  val_fraction: 0.9\n", ["data.val_fraction", "[0.01, 0.5]"]),
    ("trials negative", "study:\n  trials: -1\n", ["study.trials", "[1, 1000000]", "-1"]),
    ("timeout below lo", "study:\n  timeout: 0\n", ["study.timeout", ">= 1"]),
    ("subset below lo", "data:\n  subset: 5\n", ["data.subset", ">= 20"]),
    ("bad sampler", "study:\n  sampler: cmaes\n", ["study.sampler", "cmaes", "tpe, nsga2, random"]),
    ("bad dataset", "data:\n  dataset: imagenet\n", ["data.dataset", "imagenet", "fashion-mnist"]),
    ("bad complexity", "study:\n  complexity: flops\n", ["study.complexity", "params, macs"]),
    ("bad accelerator", "train:\n  accelerator: tpu9\n", ["train.accelerator", "auto"]),
    ("bad growth", "space:\n  growth: [linear]\n", ["space.growth[0]", "constant, doubling"]),
    ("bad pool", "space:\n  pools: [max, min]\n", ["space.pools[1]", "max, avg, conv, none"]),
    ("bad study name", 'study:\n  name: "a b/c"\n', ["study.name", "'a b/c'", "does not match"]),
    ("empty study name", 'study:\n  name: ""\n', ["study.name", "does not match"]),
    # numeric dimensions: a list of choices or a {min, max} range
    (
        "range min above max",
        "space:\n  blocks: {min: 5, max: 2}\n",
        ["space.blocks", "min 5 is above max 2"],
    ),
    (
        "float range min above max",
        "space:\n  dense_dropout: {min: 0.5, max: 0.1}\n",
        ["space.dense_dropout", "min 0.5 is above max 0.1"],
    ),
    ("range missing max", "space:\n  blocks: {min: 1}\n", ["space.blocks", "{min: ..., max: ...}"]),
    ("range missing min", "space:\n  dense_layers: {max: 2}\n", ["space.dense_layers", "{min:"]),
    (
        "range extra key",
        "space:\n  blocks: {min: 1, max: 3, step: 1}\n",
        ["space.blocks", "{min: ..., max: ...}", "step"],
    ),
    ("range empty", "space:\n  blocks: {}\n", ["space.blocks", "{min: ..., max: ...}"]),
    ("range of one key out of bounds", "space:\n  blocks: {min: 0}\n", ["space.blocks"]),
    (
        "range min out of bounds",
        "space:\n  blocks: {min: 0, max: 3}\n",
        ["space.blocks.min", "[1, 12]", "got 0"],
    ),
    (
        "range max out of bounds",
        "space:\n  blocks: {min: 1, max: 13}\n",
        ["space.blocks.max", "[1, 12]"],
    ),
    (
        "log range below 1",
        "space:\n  dense_width: {min: 0, max: 64}\n",
        ["space.dense_width.min", "[1, 65536]"],
    ),
    (
        "float range out of bounds",
        "space:\n  block_dropout: {min: 0.0, max: 0.95}\n",
        ["space.block_dropout.max", "[0.0, 0.9]"],
    ),
    (
        "range float for int",
        "space:\n  blocks: {min: 1.5, max: 3}\n",
        ["space.blocks.min", "integer"],
    ),
    (
        "range bool for int",
        "space:\n  convs: {min: true, max: 2}\n",
        ["space.convs.min", "integer"],
    ),
    (
        "range null bound",
        "space:\n  blocks: {min: null, max: 3}\n",
        ["space.blocks.min", "integer"],
    ),
    (
        "range string bound",
        "space:\n  aux_weight: {min: a, max: 1}\n",
        ["space.aux_weight.min", "number"],
    ),
    (
        "range nan",
        "space:\n  block_dropout: {min: .nan, max: 0.5}\n",
        ["space.block_dropout.min", "finite"],
    ),
    (
        "string for a dimension",
        "space:\n  blocks: three\n",
        ["space.blocks", "list of choices or {min: ..., max: ...}", "'three'"],
    ),
    ("number for a dimension", "space:\n  blocks: 3\n", ["space.blocks", "list of choices or"]),
    (
        "null for a dimension",
        "space:\n  dense_width: null\n",
        ["space.dense_width", "list of choices"],
    ),
    ("choice out of range", "space:\n  blocks: [1, 13]\n", ["space.blocks[1]", "[1, 12]"]),
    (
        "dropout choice out of range",
        "space:\n  block_dropout: [0.0, 0.95]\n",
        ["space.block_dropout[1]"],
    ),
    (
        "float choice for int",
        "space:\n  dense_layers: [0, 1.5]\n",
        ["space.dense_layers[1]", "integer"],
    ),
    ("empty dimension list", "space:\n  convs: []\n", ["space.convs", "at least one"]),
    ("repeated dimension choice", "space:\n  blocks: [1, 1]\n", ["space.blocks", "repeated"]),
    (
        "repeated after conversion",
        "space:\n  aux_weight: [1, 1.0]\n",
        ["space.aux_weight", "repeated"],
    ),
    (
        "aux_weight negative",
        "space:\n  aux_weight: [-1]\n",
        ["space.aux_weight[0]", "[0.0, 100.0]"],
    ),
    (
        "range for a choice key",
        "space:\n  kernels: {min: 3, max: 7}\n",
        ["space.kernels", "expected a list"],
    ),
    (
        "range for a bool key",
        "space:\n  factorize: {min: false, max: true}\n",
        ["space.factorize", "list"],
    ),
    ("even kernel", "space:\n  kernels: [3, 4]\n", ["space.kernels[1]", "odd", "4"]),
    ("empty choice list", "space:\n  kernels: []\n", ["space.kernels", "at least one"]),
    ("repeated choice", "space:\n  base_filters: [8, 8]\n", ["space.base_filters", "repeated"]),
    ("choice wrong type", "space:\n  batch_norm: [1]\n", ["space.batch_norm[0]", "true or false"]),
    ("factorize not bool", "space:\n  factorize: [0]\n", ["space.factorize[0]", "true or false"]),
    ("augment not bool", 'space:\n  augment: ["on"]\n', ["space.augment[0]", "true or false"]),
    ("augment not a list", "space:\n  augment: true\n", ["space.augment", "expected a list"]),
    (
        "bad aggregation",
        "space:\n  aggregations: [max]\n",
        ["space.aggregations[0]", "flatten, gap, multiscale"],
    ),
    ("bad heads", "space:\n  heads: [three]\n", ["space.heads[0]", "single, multi"]),
    ("bad predict", "space:\n  predict: [vote]\n", ["space.predict[0]", "main, mean"]),
    ("bad pool scope", "space:\n  pool_scope: global\n", ["space.pool_scope", "block, network"]),
    ("pool scope list", "space:\n  pool_scope: [block]\n", ["space.pool_scope", "string"]),
    (
        "bad preset",
        "space:\n  preset: seed001\n",
        ["space.preset", "seed001", "default, seed003, seed002, seed000"],
    ),
    ("preset not a string", "space:\n  preset: [seed003]\n", ["space.preset", "string"]),
    ("preset null", "space:\n  preset: null\n", ["space.preset", "string"]),
    (
        "bad key beside a preset",
        "space:\n  preset: seed003\n  kernel: [3]\n",
        ["space.kernel", "unknown key"],
    ),
    (
        "bad value beside a preset",
        "space:\n  preset: seed002\n  kernels: [4]\n",
        ["space.kernels[0]", "odd"],
    ),
    # budgets
    ("max_params zero", "study:\n  max_params: 0\n", ["study.max_params", ">= 1", "got 0"]),
    ("max_macs float", "study:\n  max_macs: 1500000.0\n", ["study.max_macs", "integer"]),
    ("max_params string", "study:\n  max_params: 10k\n", ["study.max_params", "integer", "'10k'"]),
    # train.augment
    (
        "augment unknown key",
        "train:\n  augment:\n    shear: 3\n",
        ["train.augment.shear", "unknown key", "translate, rotate, flip"],
    ),
    (
        "augment negative shift",
        "train:\n  augment:\n    translate: -1\n",
        ["train.augment.translate", "[0.0, 64.0]"],
    ),
    (
        "augment rotate too far",
        "train:\n  augment:\n    rotate: 181\n",
        ["train.augment.rotate", "[0.0, 180.0]"],
    ),
    (
        "augment flip not bool",
        "train:\n  augment:\n    flip: 1\n",
        ["train.augment.flip", "true or false"],
    ),
    ("augment a bool", "train:\n  augment: true\n", ["train.augment", "mapping", "bool"]),
    ("section is a list", "train:\n  - epochs\n  - 3\n", ["train", "mapping", "list"]),
    ("section is a scalar", "study: 5\n", ["study", "mapping", "int"]),
    ("top level is a list", "- study\n- train\n", ["mapping", "list"]),
    ("top level is a scalar", "just words\n", ["mapping", "str"]),
    ("mlflow not a string", "mlflow: 3\n", ["mlflow", "string"]),
]


@pytest.mark.parametrize(("text", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_key(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_unknown_nested_key_lists_every_allowed_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  epoch: 3\n"))
    message = str(info.value)
    assert message.startswith("train.epoch:")
    for f in dataclasses.fields(TrainSection):
        assert f.name in message


def test_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- YAML itself --------------------------------------------------------------------------------


def test_malformed_yaml_gives_a_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "malformed YAML" in message
    assert re.search(r"line \d+, column \d+", message), message


def test_malformed_yaml_names_the_broken_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"line 3\b"):
        load_config(path)


def test_malformed_yaml_line_of_a_bad_indent(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n batch_size: 4\nstudy: {}\n")
    with pytest.raises(ConfigError, match=r"malformed YAML: .* at line 3, column \d+"):
        load_config(path)


def test_tabs_are_malformed_yaml_with_a_line(tmp_path):
    path = write(tmp_path, "study:\n  trials: 3\ntrain:\n\tepochs: 3\n")
    with pytest.raises(ConfigError, match=r"line 4"):
        load_config(path)


def test_python_tags_are_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f'study: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "malformed YAML" in str(info.value)
    assert not marker.exists()


def test_python_tag_at_top_level_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f'!!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "study.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"train:\n  epochs: \xff\xfe\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_unknown_keys_of_mixed_types_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "train:\n  yes: 1\n  epoch: 2\n"))


@pytest.mark.parametrize("text", ["train:\n  lr: .nan\n", "data:\n  val_fraction: .nan\n"])
def test_nan_is_out_of_range(tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


# --- replace --------------------------------------------------------------------------------


def test_replace_returns_a_checked_copy():
    cfg = StudyConfig()
    new = cfg.replace("study", trials=7)
    assert new.study.trials == 7
    assert new.study.name == cfg.study.name
    assert new.train == cfg.train
    assert cfg.study.trials == 20  # the original is unchanged


def test_replace_ignores_none():
    cfg = StudyConfig().replace("study", trials=7)
    assert cfg.replace("study", trials=None).study.trials == 7


@pytest.mark.parametrize(
    ("section", "changes", "key"),
    [
        ("train", {"epochs": 0}, "train.epochs"),
        ("study", {"name": "a b"}, "study.name"),
        ("study", {"sampler": "grid"}, "study.sampler"),
        ("train", {"epoch": 3}, "train.epoch"),
        ("space", {"blocks": {"min": 3, "max": 1}}, "space.blocks"),
        ("space", {"blocks": (1, 1)}, "space.blocks"),
        ("space", {"block_dropout": {"min": 0.0, "max": 1.0}}, "space.block_dropout.max"),
        ("space", {"preset": "seed9"}, "space.preset"),
        ("study", {"max_params": 0}, "study.max_params"),
    ],
)
def test_replace_checks_like_the_file(section, changes, key):
    with pytest.raises(ConfigError) as info:
        StudyConfig().replace(section, **changes)
    assert str(info.value).startswith(f"{key}")


def test_replace_takes_a_range_in_the_files_form():
    cfg = StudyConfig().replace("space", blocks={"min": 2, "max": 3}, convs=[1])
    assert cfg.space.blocks == IntRange(2, 3) and cfg.space.convs == (1,)


def test_replace_with_a_preset_gives_the_presets_space(tmp_path):
    from_file = space_of(tmp_path, "  preset: seed003\n")
    assert StudyConfig().replace("space", preset="seed003").space == from_file


def test_replace_takes_a_range_object():
    assert StudyConfig().replace("space", blocks=IntRange(2, 3)).space.blocks == IntRange(2, 3)


def test_replace_keeps_tuples():
    cfg = StudyConfig().replace("space", kernels=[3, 5])
    assert cfg.space.kernels == (3, 5)


def test_to_dict_round_trips_through_replace():
    cfg = load_config(None)
    d = cfg.to_dict()
    assert d["train"]["epochs"] == 3
    assert cfg.replace("train", **d["train"]) == cfg
    # Ranges come out as the mappings a file holds, and go back in.
    assert d["space"]["blocks"] == {"min": 1, "max": 6}
    assert cfg.replace("space", **d["space"]) == cfg


def test_start_from_round_trips_through_json_and_yaml(tmp_path):
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    stored = cfg.to_json_dict()  # what a study keeps, and later commands rebuild it from
    assert stored["study"]["start_from"][1] == {"blocks": 1, "block_dropout": 0.25, "pool_0": "avg"}
    assert StudyConfig.from_dict(stored) == cfg
    assert load_config(write(tmp_path, to_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{blocks: 2}", "study.start_from: expected a list"),
        ("[3]", r"study.start_from\[0\]: expected a mapping of trial parameters"),
        ("[{}]", r"study.start_from\[0\]: needs at least one parameter"),
        ("[{blocks: [2]}]", r"study.start_from\[0\].blocks: expected a number, a string"),
        ("[{blocks: .nan}]", r"study.start_from\[0\].blocks: expected a finite number"),
        ("[{1: 2}]", r"study.start_from\[0\]: a parameter name must be a string, got 1"),
        ("[{blocks: 2}, {blocks: 2}]", "study.start_from: repeated values"),
    ],
)
def test_start_from_refuses_what_is_no_list_of_parameters(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"study:\n  start_from: {value}\n"))


@pytest.mark.parametrize("preset", SPACE_PRESETS)
def test_a_preset_space_round_trips_through_to_dict(tmp_path, preset):
    cfg = load_config(write(tmp_path, f"space:\n  preset: {preset}\n"))
    assert cfg.replace("space", **cfg.to_dict()["space"]) == cfg


# --- mlflow.yml -------------------------------------------------------------------------------


def test_mlflow_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_mlflow_config(None) == MlflowConfig()


def test_mlflow_reads_dot_slash_mlflow_yml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "experiment: local-exp\n", "mlflow.yml")
    assert load_mlflow_config(None).experiment == "local-exp"


def test_mlflow_reads_a_given_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(
        tmp_path,
        "tracking_uri: http://mlflow-host:5000\nexperiment: exp\nregistered_model: m\n"
        "artifact_location: s3://bucket/x\n",
        "tracking.yml",
    )
    assert load_mlflow_config(path) == MlflowConfig(
        tracking_uri="http://mlflow-host:5000",
        experiment="exp",
        registered_model="m",
        artifact_location="s3://bucket/x",
    )


def test_mlflow_empty_file_gives_defaults(tmp_path):
    assert load_mlflow_config(write(tmp_path, "", "m.yml")) == MlflowConfig()


def test_mlflow_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "experiment_name: x\n", "m.yml")
    with pytest.raises(ConfigError) as info:
        load_mlflow_config(path)
    message = str(info.value)
    assert message.startswith("mlflow.yml.experiment_name:")
    assert "tracking_uri" in message and "experiment" in message


def test_mlflow_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"mlflow\.yml\.experiment: expected a string"):
        load_mlflow_config(write(tmp_path, "experiment: 5\n", "m.yml"))


def test_mlflow_missing_given_file(tmp_path):
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError, match=r"absent\.yml"):
        load_mlflow_config(path)


# --- the repository's own files ---------------------------------------------------------------


def test_repo_mlflow_yml_loads():
    cfg = load_mlflow_config(REPO / "mlflow.yml")
    assert isinstance(cfg, MlflowConfig)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_names_its_study(name):
    cfg = load_preset(name)
    assert isinstance(cfg, StudyConfig)
    assert cfg.mlflow is None  # a preset works wherever it runs: no path of the checkout


def test_there_are_presets():
    assert {"digits-quick", "fashion-mnist-cpu", "fashion-mnist-gpu"} <= set(preset_names())
