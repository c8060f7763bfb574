"""End-to-end studies against the real stores: an Optuna journal file and an MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas.models import ArchSpec
from cnnas.search import cli, load_config, prepare, run_study
from cnnas.search.errors import StudyFailing

TINY = {
    "study": {"name": "tiny", "trials": 4, "seed": 1},
    "data": {"dataset": "digits"},
    "train": {"epochs": 2, "batch_size": 64},
    "space": {
        "blocks": [1, 2],
        "base_filters": [4, 8],
        "kernels": [3, 5],
        "dense_layers": {"min": 0, "max": 1},
        "dense_width": {"min": 8, "max": 32},
        "convs": [1],
        "pools": ["max", "none"],
        "aggregations": ["flatten", "gap"],
    },
}


def write_config(tmp_path: Path, **overrides) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    cfg["study"]["project_dir"] = str(tmp_path / "runs")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mlflow_client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri)


def load(tmp_path: Path, name: str = "tiny") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def child_runs(client: MlflowClient, parent: str) -> list:
    """The trials' runs under ``parent``; the final phase's runs (``cnnas.role`` ``final``, one
    per front member trained again) are children too, and left out."""
    exp = client.get_experiment_by_name("cnnas")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    return [r for r in runs if r.data.tags.get("cnnas.role") != "final"]


def test_every_complete_trial_has_exactly_one_matching_child_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "start", "--config", str(write_config(tmp_path))]) == 0
    study = load(tmp_path)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    client = mlflow_client(tmp_path)
    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = child_runs(client, parent)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags["cnnas.trial"]), []).append(run)
    assert sorted(by_trial) == [t.number for t in trials]
    for t in trials:
        (run,) = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["cnnas.study"] == "tiny"
        # the values Optuna holds are the values MLflow holds
        assert run.data.metrics["val_acc"] == pytest.approx(t.values[0])
        assert run.data.metrics["params"] == t.values[1]
        for key in ("macs", "ratio", "seconds", "train_acc", "train_loss", "val_loss"):
            assert run.data.metrics[key] == pytest.approx(t.user_attrs[key]), key
        # the spec artifact is the spec the trial stored, and it rebuilds
        local = client.download_artifacts(run.info.run_id, "spec.json", str(tmp_path))
        spec = ArchSpec.from_json(Path(local).read_text())
        assert spec.to_dict() == t.user_attrs["spec"]
        assert run.data.params["spec.aggregation"] == spec.aggregation
        # per-epoch curves: one value per epoch, the last one the final
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == [0, 1]
        assert history[-1].value == pytest.approx(t.values[0])
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics["trials_complete"] == 4
    assert parent_run.data.params["study.name"] == "tiny"


def test_starting_again_resumes_the_study(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(write_config(tmp_path, study={"trials": 2}))
    assert cli.main(["study", "start", "--config", config]) == 0
    first_parent = load(tmp_path).user_attrs["mlflow_parent_run_id"]
    # Same command, larger total: trial numbers continue, the parent run is the same.
    assert cli.main(["study", "start", "--config", config, "--trials", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 trials done" in out
    study = load(tmp_path)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert study.user_attrs["mlflow_parent_run_id"] == first_parent
    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("cnnas")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`cnnas.role` = 'study'")
    assert [p.info.run_id for p in parents] == [first_parent]
    assert len(child_runs(client, first_parent)) == 4
    # A finished study started again runs nothing more.
    assert cli.main(["study", "start", "--config", config, "--trials", "4"]) == 0
    assert len(load(tmp_path).trials) == 4


def test_start_prints_progress_and_the_front(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(write_config(tmp_path, study={"trials": 3}))
    assert cli.main(["study", "start", "--config", config, "--name", "shown"]) == 0
    out = capsys.readouterr().out
    assert "[  1/3] trial 0" in out and "[  3/3] trial 2" in out
    assert "Pareto front of study 'shown'" in out
    assert "cnnas dashboard shown" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    study = load(tmp_path, "shown")
    front = [t.number for t in study.best_trials]
    for number in front:
        assert f"\n{number:>5}  " in out
    assert cli.main(["study", "status", "shown", "--config", config]) == 0
    status = capsys.readouterr().out
    assert "Pareto front of study 'shown'" in status and "3 complete" in status


def test_repeated_failures_stop_the_study_with_a_message(tmp_path, monkeypatch) -> None:

    def broken(*args, **kwargs):
        raise RuntimeError("simulated training crash")

    cfg = load_config(write_config(tmp_path, study={"trials": 10, "max_failures": 2}))
    run = prepare(cfg, trainer=broken)
    with pytest.raises(StudyFailing, match=r"2 trials failed in a row.*simulated training crash"):
        run_study(run)
    study = run.study
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    client = mlflow_client(tmp_path)
    for t in study.trials:
        failed = client.get_run(t.user_attrs["mlflow_run_id"])
        assert failed.info.status == "FAILED"
        assert "simulated training crash" in failed.data.tags["cnnas.failure"]


def test_a_changed_complexity_objective_is_refused(tmp_path) -> None:
    from cnnas.search.errors import StudyMismatch

    run = prepare(load_config(write_config(tmp_path, study={"trials": 1})))
    run_study(run)
    other = prepare(load_config(write_config(tmp_path, study={"complexity": "macs"})))
    with pytest.raises(StudyMismatch, match=r"study\.complexity"):
        other.open()


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_a_short_fashion_mnist_study_from_the_cli(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path,
        study={"name": "fmnist", "trials": 2},
        data={"dataset": "fashion-mnist", "subset": 600},
        train={"epochs": 3, "batch_size": 32, "lr": 0.003},
        space={
            "blocks": [1, 2],
            "base_filters": [8],
            "pools": ["max"],
            "aggregations": ["flatten"],
            "dense_layers": [0],
            "heads": ["single"],
        },
    )
    assert cli.main(["study", "start", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "dataset fashion-mnist (1, 28, 28), 480 train / 120 validation images" in out
    study = load(tmp_path, "fmnist")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert max(t.values[0] for t in study.trials) > 0.5, "well above chance (0.1)"


def test_a_new_project_store_is_copied_from_the_empty_template(tmp_path) -> None:
    from cnnas.search._config import MlflowConfig
    from cnnas.search._tracking import Tracker, _template_path

    template = _template_path()
    template.unlink(missing_ok=True)
    first = Tracker(MlflowConfig(), tmp_path / "a")  # creates the tables, keeps the template
    assert template.is_file()
    assert first.client.get_experiment_by_name("cnnas") is not None
    stamp = template.stat().st_mtime_ns
    second = Tracker(MlflowConfig(experiment="other"), tmp_path / "b")  # copied, not migrated
    assert template.stat().st_mtime_ns == stamp
    assert second.client.get_experiment_by_name("cnnas") is None, "the template holds no runs"
    parent = second.parent_run("s", None, {"study": {"name": "s"}})
    assert second.client.get_run(parent).info.status == "RUNNING"
    assert (tmp_path / "b" / "mlflow.db").is_file()
    assert not list((tmp_path / "b").glob(".*.tmp"))
