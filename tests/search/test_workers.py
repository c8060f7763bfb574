"""Several worker processes on one study (CPU workers; GPUs are planned the same way)."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from mlflow import MlflowClient

from cnnas.search import cli
from cnnas.search._workers import plan_workers
from cnnas.search.cli._common import study_config


def test_plans_one_worker_per_gpu_or_n_cpu_workers() -> None:
    gpus = plan_workers(None, ["0", "1", "3"])
    assert [(p.index, p.device) for p in gpus] == [(0, "0"), (1, "1"), (2, "3")]
    cpus = plan_workers(2, None)
    assert [p.device for p in cpus] == [None, None] and all(p.threads >= 1 for p in cpus)
    assert len(plan_workers(None, None)) == 1


def test_two_cpu_workers_share_one_study(tmp_path: Path, monkeypatch, capfd) -> None:
    # study.workers in the config file: the CPU preset's way of asking for them.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": "shared",
                    "trials": 8,
                    "workers": 2,
                    "project_dir": str(tmp_path / "runs"),
                },
                "data": {"dataset": "digits"},
                "train": {"epochs": 2, "batch_size": 64},
                "space": {
                    "blocks": [1, 2],
                    "convs": [1],
                    "base_filters": [4, 8],
                    "kernels": [3],
                    "pools": ["max", "none"],
                    "aggregations": ["flatten", "gap"],
                    "dense_layers": [0],
                },
            }
        )
    )
    assert cli.main(["study", "start", "--config", str(config)]) == 0
    out = capfd.readouterr().out  # the workers print from their own processes
    assert "2 worker process(es)" in out
    assert "[worker 0]" in out and "[worker 1]" in out, "both workers ran trials"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))), "unique, consecutive trial numbers"
    assert len(numbers) == 8
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    parent = study.user_attrs["mlflow_parent_run_id"]
    exp = client.get_experiment_by_name("cnnas")
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    # The final phase's runs (front members trained again) are children of the study too.
    children = [r for r in children if r.data.tags.get("cnnas.role") != "final"]
    assert sorted(int(r.data.tags["cnnas.trial"]) for r in children) == numbers
    assert all(r.info.status == "FINISHED" for r in children)
    assert client.get_run(parent).info.status == "FINISHED"


def test_bad_worker_counts_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "start", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert cli.main(["study", "start", "--devices", "0,a"]) == 2
    assert "--devices" in capsys.readouterr().err
    config = tmp_path / "zero.yaml"
    config.write_text("study: {workers: 0}\n")
    assert cli.main(["study", "start", "--config", str(config)]) == 2
    assert "study.workers" in capsys.readouterr().err
    config.unlink()
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_overrides_study_workers(tmp_path: Path) -> None:
    config = tmp_path / "two.yaml"
    config.write_text("study: {workers: 2}\n")
    parser = cli.build_parser()
    args = parser.parse_args(["study", "start", "--config", str(config)])
    assert study_config(args).study.workers == 2
    args = parser.parse_args(["study", "start", "--config", str(config), "--workers", "1"])
    assert study_config(args).study.workers == 1
