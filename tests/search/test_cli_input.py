"""Bad input through the real ``cnnas`` CLI: exit status 2, a message naming the problem on
stderr, and nothing created on disk."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import optuna
import pytest

from cnnas.models import ArchSpec, ConvBlock, DenseLayer, count_macs, count_params
from cnnas.search import StudyRun
from cnnas.search.cli import build_parser, main
from tests.search import _fs

FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

TINY_STUDY = """\
study:
  name: tiny
  trials: 1
  sampler: random
data:
  dataset: digits
train:
  epochs: 1
  batch_size: 256
  accelerator: cpu
space:
  blocks: [1]
  base_filters: [4]
  dense_layers: [0]
"""


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Runs ``cnnas argv``; returns (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size."""
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


def _input_was_accepted(self, *args, **kwargs):
    # An input these tests call bad got past every check: without this guard the CLI would go
    # on to create the study and run it (minutes for the default Fashion-MNIST study).
    pytest.fail("the input was accepted and the CLI started to create the study")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory (no ./mlflow.yml, no CNNAS_DATA_DIR) for bad input.

    Opening a study is the CLI's first write, so it fails the test at once: bad input must be
    refused before it, and a case that is not bad fails in milliseconds instead of training.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNAS_DATA_DIR", raising=False)
    monkeypatch.setattr(StudyRun, "open", _input_was_accepted)
    return tmp_path


def test_the_workdir_guard_stops_an_accepted_config(capsys, workdir):
    (workdir / "config.yaml").write_text("data:\n  dataset: digits\n")
    with pytest.raises(pytest.fail.Exception, match="accepted"):
        main(["study", "start", "--config", "config.yaml", "--project-dir", "runs"])
    assert sorted(os.listdir(workdir)) == ["config.yaml"]


def start_with(capsys, workdir: Path, config: str, *extra: str) -> tuple[int, str]:
    """``cnnas study start`` on ``config``; asserts exit 2 and that nothing was created."""
    (workdir / "config.yaml").write_text(config)
    runs = workdir / "runs"
    status, out, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", str(runs), *extra
    )
    assert status == 2, (out, err)
    assert err.startswith("error: ")
    assert not runs.exists()
    assert sorted(os.listdir(workdir)) == ["config.yaml"]
    return status, err


# --- config mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ("train:\n  epoch: 3\n", ["train.epoch", "unknown key", "epochs"]),
        ("trian:\n  epochs: 3\n", ["trian", "unknown key"]),
        ('train:\n  epochs: "ten"\n', ["train.epochs", "integer", "'ten'"]),
        ("train:\n  epochs: true\n", ["train.epochs", "integer"]),
        ("train:\n  epochs: 0\n", ["train.epochs", "[1, 10000]"]),
        ("data:\n  val_fraction: 0.9\n", ["data.val_fraction", "[0.01, 0.5]"]),
        ("study:\n  sampler: cmaes\n", ["study.sampler", "tpe, nsga2, random"]),
        ("space:\n  blocks: {min: 5, max: 2}\n", ["space.blocks", "min 5 is above max 2"]),
        ("space:\n  blocks: {min: 1}\n", ["space.blocks", "{min: ..., max: ...}"]),
        ("space:\n  blocks: {min: 1, max: 3, step: 1}\n", ["space.blocks", "step"]),
        ("space:\n  blocks: {min: 0}\n", ["space.blocks", "{min: ..., max: ...}"]),
        ("space:\n  blocks: {min: 0, max: 3}\n", ["space.blocks.min", "[1, 12]"]),
        ("space:\n  blocks: [1, 13]\n", ["space.blocks[1]", "[1, 12]"]),
        ("space:\n  blocks: three\n", ["space.blocks", "list of choices or {min: ..., max: ...}"]),
        ("space:\n  block_dropout: {min: 0, max: 0.95}\n", ["space.block_dropout.max"]),
        ("space:\n  blocks: [2, 2]\n", ["space.blocks", "repeated"]),
        ("space:\n  kernels: [3, 4]\n", ["space.kernels[1]", "odd"]),
        ("space:\n  preset: seed001\n", ["space.preset", "seed003"]),
        ("space:\n  pool_scope: layer\n", ["space.pool_scope", "block, network"]),
        ("study:\n  max_params: 0\n", ["study.max_params", ">= 1"]),
        ("train:\n  augment:\n    flip: maybe\n", ["train.augment.flip", "true or false"]),
        ("- a list\n", ["mapping"]),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "wrong-type",
        "bool-for-int",
        "out-of-range",
        "fraction-range",
        "bad-choice",
        "range-order",
        "range-missing-max",
        "range-extra-key",
        "range-of-one-key",
        "range-out-of-bounds",
        "choice-out-of-bounds",
        "string-for-a-dimension",
        "float-range-out-of-bounds",
        "repeated-choice",
        "even-kernel",
        "bad-preset",
        "bad-pool-scope",
        "zero-budget",
        "augment-flip-not-bool",
        "top-level-list",
    ],
)
def test_bad_config(capsys, workdir, config, fragments):
    _, err = start_with(capsys, workdir, config)
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_malformed_yaml_names_the_line(capsys, workdir):
    _, err = start_with(capsys, workdir, "train:\n  epochs: 3\n  batch_size: [1, 2\n")
    assert "config.yaml" in err
    assert "malformed YAML" in err and "line 3" in err


def test_malformed_yaml_bad_indent_line(capsys, workdir):
    _, err = start_with(capsys, workdir, "train:\n  epochs: 3\n batch_size: 4\n")
    assert "line 3" in err


def test_yaml_python_tag_is_refused(capsys, workdir):
    marker = workdir / "pwned"
    _, err = start_with(
        capsys, workdir, f'study: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    assert "malformed YAML" in err
    assert not marker.exists()


def test_missing_config_file(capsys, workdir):
    status, _, err = cli(
        capsys, "study", "start", "--config", "absent.yaml", "--project-dir", "runs"
    )
    assert status == 2
    assert "absent.yaml" in err and "does not exist" in err
    assert os.listdir(workdir) == []


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--name", "bad name"], "study.name"),
        (["--trials", "0"], "study.trials"),
        (["--timeout", "0"], "study.timeout"),
    ],
)
def test_bad_flag_overrides(capsys, workdir, flags, fragment):
    _, err = start_with(capsys, workdir, "data:\n  dataset: digits\n", *flags)
    assert fragment in err


def test_mlflow_yml_mistake_stops_before_anything(capsys, workdir):
    (workdir / "track.yml").write_text("experimnt: x\n")
    config = "mlflow: track.yml\ndata:\n  dataset: digits\n"
    (workdir / "config.yaml").write_text(config)
    status, _, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "runs"
    )
    assert status == 2
    assert "mlflow.yml.experimnt" in err
    assert sorted(os.listdir(workdir)) == ["config.yaml", "track.yml"]


def test_argparse_rejects_a_non_integer_trials(capsys, workdir):
    with pytest.raises(SystemExit) as info:
        main(["study", "start", "--trials", "many"])
    assert info.value.code == 2
    assert "--trials" in capsys.readouterr().err
    assert os.listdir(workdir) == []


def test_nan_val_fraction_is_bad_input(capsys, workdir):
    start_with(capsys, workdir, "data:\n  dataset: digits\n  val_fraction: .nan\n")


def test_non_utf8_config_is_bad_input(capsys, workdir):
    (workdir / "config.yaml").write_bytes(b"train:\n  epochs: \xff\n")
    status, _, err = cli(
        capsys, "study", "start", "--config", "config.yaml", "--project-dir", "runs"
    )
    assert status == 2 and "config.yaml" in err


# --- dataset mistakes --------------------------------------------------------------------------


def test_missing_dataset(capsys, workdir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-data")
    config = f"data:\n  dataset: fashion-mnist\n  data_dir: {empty}\n"
    _, err = start_with(capsys, workdir, config)
    assert str(empty) in err
    assert "dataset-fashion-mnist" in err
    assert "train-images-idx3-ubyte" in err
    assert os.listdir(empty) == []


def test_missing_dataset_via_data_dir_flag(capsys, workdir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-data")
    _, err = start_with(
        capsys, workdir, "data:\n  dataset: fashion-mnist\n", "--data-dir", str(empty)
    )
    assert str(empty) in err and "dataset-fashion-mnist" in err


def _idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_corrupt_dataset(capsys, workdir, tmp_path_factory):
    data = tmp_path_factory.mktemp("bad-data")
    n = 4
    images = _idx(0x08, (n, 28, 28), bytes(n * 28 * 28))
    labels = _idx(0x08, (n,), bytes(range(n)))
    bad_images = b"\x12\x34" + images[2:]  # not the IDX magic
    (data / FASHION_FILES[0]).write_bytes(bad_images)
    (data / FASHION_FILES[1]).write_bytes(labels)
    (data / FASHION_FILES[2]).write_bytes(images)
    (data / FASHION_FILES[3]).write_bytes(labels)
    config = f"data:\n  dataset: fashion-mnist\n  data_dir: {data}\n"
    _, err = start_with(capsys, workdir, config)
    assert str(data / FASHION_FILES[0]) in err
    assert "not an IDX file" in err


def test_subset_too_small_for_the_dataset(capsys, workdir):
    # The config refuses a subset below 20 before the dataset is looked at.
    _, err = start_with(capsys, workdir, "data:\n  dataset: digits\n  subset: 19\n")
    assert "data.subset" in err


# --- studies that do not exist -------------------------------------------------------------


def test_status_without_storage(capsys, workdir):
    runs = workdir / "runs"
    status, _, err = cli(capsys, "study", "status", "nosuch", "--project-dir", str(runs))
    assert status == 2
    assert "no study storage" in err and str(runs / "optuna.journal") in err
    assert not runs.exists()
    assert os.listdir(workdir) == []


def test_status_without_storage_default_project_dir(capsys, workdir):
    status, _, err = cli(capsys, "study", "status", "nosuch")
    assert status == 2
    assert "cnnas-runs" in err
    assert os.listdir(workdir) == []


def test_dashboard_without_storage(capsys, workdir):
    runs = workdir / "runs"
    status, _, err = cli(capsys, "dashboard", "--project-dir", str(runs))
    assert status == 2
    assert "no study storage" in err
    assert os.listdir(workdir) == []


def test_status_with_absent_sqlite_storage_creates_nothing(capsys, workdir):
    (workdir / "config.yaml").write_text(f"study:\n  storage: sqlite:///{workdir}/optuna.db\n")
    status, _, err = cli(capsys, "study", "status", "nosuch", "--config", "config.yaml")
    assert status == 2 and "'nosuch'" in err
    assert sorted(os.listdir(workdir)) == ["config.yaml"]


def test_dashboard_default_host_is_local():
    args = build_parser().parse_args(["dashboard"])
    assert args.host == "127.0.0.1"
    assert args.port == 8080


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, mlflow_db_template) -> Path:
    """One real study ('tiny': one trial, one epoch on sklearn digits); returns its folder."""
    root = tmp_path_factory.mktemp("tiny-study")
    (root / "config.yaml").write_text(TINY_STUDY)
    (root / "runs").mkdir()
    shutil.copy(mlflow_db_template, root / "runs" / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("CNNAS_DATA_DIR", raising=False)
        status = main(
            ["study", "start", "--config", "config.yaml", "--project-dir", str(root / "runs")]
        )
    assert status == 0
    assert (root / "runs" / "optuna.journal").is_file()
    return root


def test_status_of_the_tiny_study(capsys, tiny_study, monkeypatch):
    monkeypatch.chdir(tiny_study)
    status, out, _ = cli(capsys, "study", "status", "tiny", "--project-dir", "runs", "--all")
    assert status == 0
    assert "Pareto front of study 'tiny'" in out
    assert "1 complete" in out


def test_status_of_another_study_lists_the_existing_ones(capsys, tiny_study, monkeypatch):
    monkeypatch.chdir(tiny_study)
    before = snapshot(tiny_study)
    status, _, err = cli(capsys, "study", "status", "nosuch", "--project-dir", "runs")
    assert status == 2
    assert "'nosuch'" in err
    assert "['tiny']" in err
    assert str(Path("runs") / "optuna.journal") in err
    assert snapshot(tiny_study) == before


def test_dashboard_of_another_study_lists_the_existing_ones(capsys, tiny_study, monkeypatch):
    monkeypatch.chdir(tiny_study)
    before = snapshot(tiny_study)
    status, _, err = cli(capsys, "dashboard", "nosuch", "--project-dir", "runs")
    assert status == 2
    assert "'nosuch'" in err and "['tiny']" in err
    assert snapshot(tiny_study) == before


def test_resume_with_another_complexity_is_refused(capsys, tiny_study, monkeypatch):
    monkeypatch.chdir(tiny_study)
    (tiny_study / "macs.yaml").write_text(
        TINY_STUDY.replace("  trials: 1\n", "  trials: 2\n  complexity: macs\n")
    )
    try:
        status, _, err = cli(
            capsys, "study", "start", "--config", "macs.yaml", "--project-dir", "runs"
        )
    finally:
        (tiny_study / "macs.yaml").unlink()
    assert status == 2
    assert "study.complexity" in err and "'tiny'" in err
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tiny_study / "runs" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 1  # no trial was started


# --- spec check ----------------------------------------------------------------------------


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def collapsing_spec() -> dict:
    return {
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "blocks": [{"filters": 4, "pool": "max"} for _ in range(4)],
        "aggregation": "flatten",
        "dense": [],
    }


def test_spec_check_collapsing_feature_map(capsys, workdir):
    path = write_spec(workdir / "spec.json", collapsing_spec())
    status, out, err = cli(capsys, "spec", "check", str(path))
    assert status == 2
    assert "blocks[3].pool" in err
    assert "collapses" in err and "1x1 -> 0x0" in err
    assert out == ""
    assert os.listdir(workdir) == ["spec.json"]


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"colour": "red"}, ["unknown key", "colour"]),
        ({"blocks": [{"filters": 4, "kernal": 3}]}, ["blocks[0]", "kernal"]),
        ({"blocks": [{"filters": 4, "kernel": 4}]}, ["blocks[0].kernel", "odd"]),
        ({"blocks": []}, ["blocks", "at least one"]),
        ({"num_classes": 1}, ["num_classes"]),
        ({"input_shape": [1, 8]}, ["input_shape"]),
        ({"dense": [{"width": 0}]}, ["dense[0].width"]),
        ({"aggregation": "max"}, ["aggregation", "flatten, gap"]),
    ],
    ids=[
        "unknown-key",
        "unknown-block-key",
        "even-kernel",
        "no-blocks",
        "one-class",
        "short-shape",
        "zero-width",
        "bad-aggregation",
    ],
)
def test_spec_check_invalid_spec(capsys, workdir, change, fragments):
    data = {**collapsing_spec(), "blocks": [{"filters": 4}], **change}
    path = write_spec(workdir / "spec.json", data)
    status, _, err = cli(capsys, "spec", "check", str(path))
    assert status == 2
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_spec_check_not_json(capsys, workdir):
    (workdir / "spec.json").write_text("{not json")
    status, _, err = cli(capsys, "spec", "check", "spec.json")
    assert status == 2
    assert "not valid JSON" in err


def test_spec_check_json_list(capsys, workdir):
    (workdir / "spec.json").write_text("[1, 2]")
    status, _, err = cli(capsys, "spec", "check", "spec.json")
    assert status == 2
    assert "mapping" in err


def test_spec_check_missing_file(capsys, workdir):
    status, _, err = cli(capsys, "spec", "check", "absent.json")
    assert status == 2
    assert "absent.json" in err
    assert os.listdir(workdir) == []


def test_spec_check_non_utf8_file(capsys, workdir):
    (workdir / "spec.json").write_bytes(b"\xff\xfe{}")
    status, _, _ = cli(capsys, "spec", "check", "spec.json")
    assert status == 2


def test_spec_check_valid_spec_prints_totals(capsys, workdir):
    spec = ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=(
            ConvBlock(filters=8, kernel=3, batch_norm=True, pool="max", dropout=0.1),
            ConvBlock(filters=16, kernel=5, pool="avg"),
        ),
        aggregation="gap",
        dense=(DenseLayer(width=32, dropout=0.2),),
    )
    path = workdir / "spec.json"
    path.write_text(spec.to_json())
    status, out, err = cli(capsys, "spec", "check", str(path))
    assert status == 0, err
    assert err == ""
    assert f"total: {count_params(spec):,} parameters, {count_macs(spec):,} MACs per image" in out
    assert f"spec hash {spec.spec_hash()}: {spec.summary()}" in out
    assert "features.1.pool" in out and "16x7x7" in out
    assert os.listdir(workdir) == ["spec.json"]


# --- output folders that cannot take the output ------------------------------------------------

readonly_dir = _fs.readonly_dir  # a fixture
small_disk = _fs.small_disk  # a fixture


@pytest.mark.parametrize("command", ["pareto", "report"])
def test_an_out_that_is_a_file_is_refused_before_anything(capsys, tiny_study, monkeypatch, command):
    monkeypatch.chdir(tiny_study)
    (tiny_study / "taken").write_text("mine")
    before = snapshot(tiny_study)
    status, _, err = cli(capsys, command, "tiny", "--project-dir", "runs", "--out", "taken")
    assert status == 2
    assert err.startswith("error: --out: 'taken' is a file"), err
    assert snapshot(tiny_study) == before
    status, _, err = cli(capsys, command, "tiny", "--project-dir", "runs", "--out", "taken/x")
    assert status == 2 and "inside" in err, err
    (tiny_study / "taken").unlink()


def test_a_read_only_out_is_refused(capsys, tiny_study, monkeypatch, readonly_dir):
    monkeypatch.chdir(tiny_study)
    before = snapshot(tiny_study / "runs")
    out = str(readonly_dir / "report")
    status, _, err = cli(capsys, "report", "tiny", "--project-dir", "runs", "--out", out)
    assert status == 2 and "--out" in err and "not writable" in err, err
    assert snapshot(tiny_study / "runs") == before
    assert os.listdir(readonly_dir) == []


def test_out_dot_writes_the_report_into_the_working_folder(
    capsys, tiny_study, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    runs = str(tiny_study / "runs")
    status, _, err = cli(capsys, "report", "tiny", "--project-dir", runs, "--out", ".")
    assert status == 0, err
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()


def test_a_full_disk_under_the_report_is_one_error_line(
    capsys, tiny_study, monkeypatch, small_disk
):
    monkeypatch.chdir(tiny_study)
    disk = small_disk("64k")
    status, _, err = cli(capsys, "report", "tiny", "--project-dir", "runs", "--out", str(disk))
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), err
    assert "No space left on device" in lines[0]


def test_the_tracking_server_refuses_a_project_dir_that_is_a_file(capsys, workdir):
    (workdir / "afile").write_text("x")
    status, _, err = cli(capsys, "tracking-server", "--project-dir", "afile")
    assert status == 2 and "study.project_dir" in err and "is a file" in err, err
    assert os.listdir(workdir) == ["afile"]
