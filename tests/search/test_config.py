"""Tests for search._config: the strict YAML study config and mlflow.yml."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from search._config import (
    ConfigError,
    DataConfig,
    MlflowConfig,
    SpaceConfig,
    StudyConfig,
    StudySection,
    TrainSection,
    load_config,
    load_mlflow_config,
)

REPO = Path(__file__).resolve().parents[2]

FULL_EXAMPLE = """\
study:
  name: full-example_1.0
  trials: 12
  timeout: 3600
  sampler: nsga2
  seed: 7
  complexity: macs
  project_dir: my-runs
  storage: sqlite:///optuna.db
  max_failures: 5
data:
  dataset: digits
  data_dir: /srv/data
  val_fraction: 0.2
  subset: 500
train:
  epochs: 4
  batch_size: 64
  lr: 0.01
  weight_decay: 0.0001
  lr_factor: 0.3
  lr_patience: 2
  accelerator: cpu
  precision: 32-true
  deterministic: false
space:
  preset: default
  blocks: [2, 4]
  convs: [1, 2]
  base_filters: [8, 16]
  growth: [doubling]
  max_filters: 128
  kernels: [3, 5]
  batch_norm: [true]
  pools: [max, avg, none]
  block_dropout: [0.0, 0.3]
  aggregations: [gap]
  dense_layers: [0, 2]
  dense_width: [32, 256]
  dense_dropout: [0.1, 0.4]
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
        complexity="macs",
        project_dir="my-runs",
        storage="sqlite:///optuna.db",
        max_failures=5,
    )
    assert cfg.data == DataConfig(
        dataset="digits", data_dir="/srv/data", val_fraction=0.2, subset=500
    )
    assert cfg.train == TrainSection(
        epochs=4,
        batch_size=64,
        lr=0.01,
        weight_decay=0.0001,
        lr_factor=0.3,
        lr_patience=2,
        accelerator="cpu",
        precision="32-true",
        deterministic=False,
    )
    assert cfg.space == SpaceConfig(
        preset="default",
        blocks=(2, 4),
        convs=(1, 2),
        base_filters=(8, 16),
        growth=("doubling",),
        max_filters=128,
        kernels=(3, 5),
        batch_norm=(True,),
        pools=("max", "avg", "none"),
        block_dropout=(0.0, 0.3),
        aggregations=("gap",),
        dense_layers=(0, 2),
        dense_width=(32, 256),
        dense_dropout=(0.1, 0.4),
    )
    # A relative mlflow path is taken relative to the config file.
    assert cfg.mlflow == str(tmp_path / "tracking.yml")


def test_lists_become_tuples_and_ints_become_floats(tmp_path):
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    for f in dataclasses.fields(SpaceConfig):
        value = getattr(cfg.space, f.name)
        if f.name not in ("preset", "max_filters"):
            assert isinstance(value, tuple), f.name
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
    ("bad pool", "space:\n  pools: [max, min]\n", ["space.pools[1]", "max, avg, none"]),
    ("bad study name", 'study:\n  name: "a b/c"\n', ["study.name", "'a b/c'", "does not match"]),
    ("empty study name", 'study:\n  name: ""\n', ["study.name", "does not match"]),
    ("pair min above max", "space:\n  blocks: [5, 2]\n", ["space.blocks", "min 5 is above max 2"]),
    ("pair of one", "space:\n  blocks: [1]\n", ["space.blocks", "[min, max]"]),
    ("pair of three", "space:\n  dense_layers: [0, 1, 2]\n", ["space.dense_layers", "[min, max]"]),
    ("pair not a list", "space:\n  blocks: 3\n", ["space.blocks", "list"]),
    ("pair out of range", "space:\n  blocks: [1, 13]\n", ["space.blocks[1]", "[1, 12]"]),
    ("dropout pair range", "space:\n  block_dropout: [0.0, 0.95]\n", ["space.block_dropout[1]"]),
    ("even kernel", "space:\n  kernels: [3, 4]\n", ["space.kernels[1]", "odd", "4"]),
    ("empty choice list", "space:\n  kernels: []\n", ["space.kernels", "at least one"]),
    ("repeated choice", "space:\n  base_filters: [8, 8]\n", ["space.base_filters", "repeated"]),
    ("choice wrong type", "space:\n  batch_norm: [1]\n", ["space.batch_norm[0]", "true or false"]),
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
        ("space", {"blocks": (3, 1)}, "space.blocks"),
    ],
)
def test_replace_checks_like_the_file(section, changes, key):
    with pytest.raises(ConfigError) as info:
        StudyConfig().replace(section, **changes)
    assert str(info.value).startswith(f"{key}")


def test_replace_keeps_tuples():
    cfg = StudyConfig().replace("space", kernels=[3, 5])
    assert cfg.space.kernels == (3, 5)


def test_to_dict_round_trips_through_replace():
    cfg = load_config(None)
    d = cfg.to_dict()
    assert d["train"]["epochs"] == 3
    assert cfg.replace("train", **d["train"]) == cfg


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


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs").glob("*.yml")),
    ids=lambda p: p.name,
)
def test_repo_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, StudyConfig)
    if cfg.mlflow is not None:
        load_mlflow_config(cfg.mlflow)
