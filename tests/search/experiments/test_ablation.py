"""Seed 003's ablation: the grid, the specs, the table and the MLflow runs."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cnnas.models import build, count_params
from cnnas.objectives import ImageData, TrainConfig
from cnnas.search.cli import build_parser, command_of
from cnnas.search.errors import UsageError
from cnnas.search.experiments import (
    FACTORS,
    AblationBase,
    AblationSettings,
    ExperimentLog,
    ablation_grid,
    ablation_spec,
    run_ablation,
    seed_ratio,
    vgg_spec,
)

FIELDS = ("conv_layers", "dense_layers", "filters", "kernel", "regularisation")


def test_every_variant_differs_from_the_base_in_exactly_one_factor_group() -> None:
    base = AblationBase()
    grid = ablation_grid(base)
    assert grid[0].factor == "base" and grid[0].settings == base
    for v in grid[1:]:
        changed = [f for f in FIELDS if v.settings.get(f) != base.get(f)]
        assert changed == [v.factor], v.name
    # Every value of the seed's groups that is not the base's own is trained once.
    expected = sum(
        len(
            [x for x in values if (tuple(sorted(x)) if f == "regularisation" else x) != base.get(f)]
        )
        for f, values in FACTORS.items()
    )
    assert len(grid) == 1 + expected == 1 + 3 + 2 + 3 + 3 + 6
    assert len({v.name for v in grid}) == len(grid)


def test_a_different_base_moves_the_grid_with_it() -> None:
    base = AblationBase(conv_layers=4, dense_layers=2, filters=256)
    grid = ablation_grid(base, {"conv_layers": (1, 4), "filters": (32,)})
    assert [v.name for v in grid] == ["base", "conv_layers=1", "filters=32"]
    assert grid[2].settings == dataclasses.replace(base, filters=32)


def test_unknown_factor_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"unknown factor.*'depth'"):
        ablation_grid(AblationBase(), {"depth": (1,)})


def test_seed_base_model_matches_the_seed_parameter_count() -> None:
    # Seed 003's initial model: 79,624 parameters on its 8-class RGB images.
    spec = ablation_spec(AblationBase(), (3, 32, 32), 8)
    assert count_params(spec) == 79624
    assert seed_ratio(0.613503, 79624) == pytest.approx(7.705007e-07, rel=1e-6)
    four = ablation_spec(AblationBase(conv_layers=4, dense_layers=2, filters=256), (3, 32, 32), 8)
    assert count_params(four) == 6256392  # its Model 8


def test_regularisation_goes_where_the_seed_puts_it() -> None:
    settings = AblationBase(conv_layers=8, regularisation=("batchnorm", "dropout", "maxpool"))
    spec = ablation_spec(settings, (1, 28, 28), 10)
    assert all(b.batch_norm for b in spec.blocks)
    # 28 -> 14 -> 7 -> 3: three pools, the other five layers keep the 3x3 map.
    assert [b.pool for b in spec.blocks] == ["max"] * 3 + ["none"] * 5
    assert all(d.dropout == 0.2 for d in spec.dense) and spec.aggregation == "gap"


@pytest.mark.parametrize("depth", [11, 16, 19])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_vgg_specs_build_for_small_and_mnist_sized_inputs(depth: int, shape) -> None:
    import torch

    spec = vgg_spec(depth, shape, 10, width=0.0625, dense_width=16)
    convs = sum(b.convs for b in spec.blocks)
    assert convs + 3 == depth  # VGG-n: n - 3 conv layers and 3 dense ones
    out = build(spec)(torch.zeros(2, *shape))
    assert out.shape == (2, 10)


def _tiny_settings() -> AblationSettings:
    return AblationSettings(
        base=AblationBase(filters=4, kernel=3, dense_width=8),
        factors={"conv_layers": (2,), "regularisation": (("batchnorm", "maxpool"),)},
        vgg=(11,),
        vgg_width=0.0625,
        vgg_dense=8,
        train=TrainConfig(epochs=1, batch_size=64, accelerator="cpu"),
    )


@pytest.mark.slow
def test_run_writes_the_seed_table_and_logs_one_child_run_per_model(
    digits: ImageData, tmp_path: Path, seed_mlflow
) -> None:
    project = tmp_path / "project"
    seed_mlflow(project)
    log = ExperimentLog("cnnas-ablation", project)
    out = io.StringIO()
    result = run_ablation(digits, _tiny_settings(), tmp_path / "report", log, out=out)

    assert [r["name"] for r in result.rows] == [
        "base",
        "conv_layers=2",
        "regularisation=batchnorm+maxpool",
        "VGG11",
    ]
    with (tmp_path / "report" / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    for col in ("train_acc", "test_acc", "train_loss", "test_loss", "params", "ratio"):
        assert col in table[0]
    for row in table:
        assert float(row["ratio"]) == pytest.approx(
            float(row["train_acc"]) / (10 * int(row["params"])), rel=1e-9
        )
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| Model | Description | Factor | Train Accuracy | Test Accuracy |" in md
    assert "train accuracy / (10 x parameters)" in md
    for name in ("summary.png", "confusion_matrix.png", "misclassified.png", "report.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "HELD" in report  # each verdict is computed: HELD or NOT HELD
    assert "epoch   1/1" in out.getvalue()
    # Per-epoch test curves next to fit's own.
    assert len(result.runs[0].result.curves["test_acc"]) == 1

    client = MlflowClient(tracking_uri=log.uri)
    exp = client.get_experiment_by_name("cnnas-ablation")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all("test_acc" in r.data.metrics and "seed_ratio" in r.data.metrics for r in children)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/summary.csv" in artifacts and "report/summary.png" in artifacts


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["experiment", "ablation", *argv])


def _run(args: argparse.Namespace) -> int:
    return command_of(args)(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "cifar"], "--dataset: unknown dataset 'cifar'"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--base-kernel", "4"], "--base-kernel must be an odd integer"),
        (["--kernels", "3,4"], "--kernels takes odd kernel sizes"),
        (["--factors", "depth"], "--factors: unknown factor group"),
        (["--filters", "a,b"], "--filters takes comma-separated integers"),
        (["--vgg", "13"], "--vgg takes depths from"),
        (["--image-size", "3x"], "--image-size takes HxW"),
    ],
)
def test_bad_options_raise_a_usage_error_naming_the_option(argv, message, tmp_path) -> None:
    args = _parse("--preset", "small", "--project-dir", str(tmp_path), *argv)
    with pytest.raises(UsageError, match=message):
        _run(args)
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything is written


def test_preset_choices_are_checked_by_the_parser() -> None:
    with pytest.raises(SystemExit) as e:
        _parse("--preset", "tiny")
    assert e.value.code == 2


@pytest.mark.slow
def test_cli_runs_end_to_end_on_digits(tmp_path: Path, seed_mlflow) -> None:
    seed_mlflow(tmp_path)
    args = _parse(
        "--preset", "small", "--dataset", "digits", "--epochs", "1", "--project-dir",
        str(tmp_path), "--base-filters", "4", "--dense-width", "8", "--factors", "kernel",
        "--kernels", "3", "--vgg", "none", "--test-limit", "100",
    )  # fmt: skip
    assert _run(args) == 0
    report = (tmp_path / "experiments" / "ablation" / "report.md").read_text()
    assert "Command: `cnnas experiment ablation --preset small --dataset digits" in report
    assert "kernel=3" in report and "--base-filters 4" in report
