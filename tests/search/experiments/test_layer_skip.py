from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cnnas.models import depth_macs, skip_spec
from cnnas.search.cli import build_parser, command_of
from cnnas.search.errors import UsageError
from cnnas.search.experiments._layer_skip import (
    LAYER_SKIP_EXPERIMENT,
    LAYER_SKIP_PRESETS,
    LayerSkipConfig,
)


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["experiment", "layer-skip", *argv])


def _run(args: argparse.Namespace) -> int:
    return command_of(args)(args)


def test_presets() -> None:
    full = LAYER_SKIP_PRESETS["full"]
    assert (full.epochs, full.filters, full.subset, full.maps, full.top) == (20, 32, None, 10, 10)
    assert full.dataset == "fashion-mnist" and full.lr == 1e-3
    small = LAYER_SKIP_PRESETS["small"]
    assert small.subset is not None and small.epochs < full.epochs and small.filters >= small.maps


def test_parser_defaults_to_the_seed_settings() -> None:
    args = _parse()
    assert args.preset == "full" and args.dataset is None and not args.no_mlflow


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (("--epochs", "0"), "--epochs: epochs must be a positive integer"),
        (("--filters", "4"), r"--filters: filters \(4\) must be at least maps \(10\)"),
        (("--device", "tpu9"), "--device"),
    ],
)
def test_bad_options_name_the_option(argv: tuple[str, ...], match: str, tmp_path: Path) -> None:
    args = _parse(*argv, "--dataset", "digits", "--no-mlflow", "--out", str(tmp_path))
    with pytest.raises(UsageError, match=match):
        _run(args)


def test_config_checks_itself() -> None:
    with pytest.raises(ValueError, match="stages must be at least 2"):
        LayerSkipConfig(stages=1)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("layer-skip")
    out, project = root / "report", root / "project"
    args = _parse(
        "--dataset", "digits", "--epochs", "1", "--router-epochs", "2", "--filters", "10",
        "--device", "cpu", "--out", str(out), "--project-dir", str(project),
    )  # fmt: skip
    assert _run(args) == 0
    return out, project


@pytest.mark.slow
def test_report_files_and_numbers(digits_run: tuple[Path, Path]) -> None:
    out, _ = digits_run
    assert (out / "layer-skip.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "## Routed skipping (test set)" in md and "| activation |" in md and "| exit |" in md
    res = json.loads((out / "results.json").read_text())
    ds = res["dataset"]
    table = depth_macs(skip_spec(tuple(ds["input_shape"]), ds["classes"], filters=10))
    assert res["depth_macs"] == list(table) and res["cnn1_macs"] == table[-1]
    for v in res["variants"]:
        # Every training image is counted once: per label, then unlabelled.
        assert sum(v["train_labels"]) == ds["train"]
        assert sum(v["depth_share"]) == pytest.approx(1.0)
        # The executed MACs are the routed depths' MACs, averaged.
        expected = sum(s * m for s, m in zip(v["depth_share"], table, strict=True))
        assert v["executed_macs"] == pytest.approx(expected)
        assert v["total_macs"] == pytest.approx(v["executed_macs"] + v["router_macs"])
        assert 0.0 <= v["router_acc"] <= 1.0 and 0.0 <= v["cnn3_acc"] <= 1.0
    act, ex = res["variants"]
    # The seed's rule labels at most maps x top images per layer; the exit rule labels all.
    assert sum(act["train_labels"][:3]) <= 3 * 10 * 10 and act["train_labels"][3] > 0
    assert ex["train_labels"][3] == 0 and ex["router_train_images"] == ds["train"]


@pytest.mark.slow
def test_mlflow_parent_and_child_runs(digits_run: tuple[Path, Path]) -> None:
    _, project = digits_run
    client = MlflowClient(tracking_uri=f"sqlite:///{(project / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(LAYER_SKIP_EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dataset"] == "digits" and parent.data.params["epochs"] == "1"
    assert {"cnn1_acc", "activation.cnn3_acc", "exit.executed_macs"} <= set(parent.data.metrics)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "layer-skip.png", "results.json"} <= arts
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert set(children) == {
        "cnn1", "exits", "router-activation", "cnn3-activation", "router-exit", "cnn3-exit",
    }  # fmt: skip
    for name, r in children.items():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.status == "FINISHED", name
    hist = client.get_metric_history(children["cnn3-exit"].info.run_id, "val_acc")
    assert len(hist) == 1
    model_files = {a.path for a in client.list_artifacts(children["cnn1"].info.run_id, "model")}
    assert "model/spec.json" in model_files
