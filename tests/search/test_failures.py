"""What a study does when training goes wrong: a non-finite loss, an exception, GPU memory.

Training itself is real (objectives.fit on digits); the failures are injected around it, at
chosen trials, because a real NaN or a real CUDA out-of-memory error cannot be produced on
demand on a CPU-only machine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas.objectives import fit as real_fit
from cnnas.search import load_config, prepare, run_study
from cnnas.search.errors import StudyFailing
from tests.search._helpers import front_of

SEED = 11
CONFIG = {
    "study": {"name": "failing", "trials": 4, "seed": SEED, "max_failures": 2},
    "data": {"dataset": "digits"},
    "train": {"epochs": 1, "batch_size": 64},
    "registry": {"register": False},
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


def config(tmp_path: Path) -> Path:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["study"]["project_dir"] = str(tmp_path / "runs")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def trial_of(seed: int) -> int:
    return seed - SEED


def test_a_nan_loss_fails_its_trial_and_run_and_the_study_goes_on(tmp_path, monkeypatch) -> None:
    def diverging(spec, data, cfg, *, seed, callbacks=()):
        result = real_fit(spec, data, cfg, seed=seed, callbacks=callbacks)
        if trial_of(seed) == 1:
            return dataclasses.replace(result, train_loss=float("nan"), val_loss=float("inf"))
        return result

    study = run_study(prepare(load_config(config(tmp_path)), trainer=diverging))
    states = [t.state for t in study.trials]
    assert len(states) == 4 and states.count(TrialState.FAIL) == 1
    bad = study.trials[1]
    assert bad.state == TrialState.FAIL
    assert "training diverged" in bad.user_attrs["fail_reason"]
    assert "val_loss" in bad.user_attrs["fail_reason"]
    run = client(tmp_path).get_run(bad.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["cnnas.failure"]


def test_an_exception_fails_its_trial_and_run_and_the_study_goes_on(tmp_path, monkeypatch) -> None:
    def crashing(spec, data, cfg, *, seed, callbacks=()):
        if trial_of(seed) == 2:
            raise ValueError("simulated crash in training")
        return real_fit(spec, data, cfg, seed=seed, callbacks=callbacks)

    study = run_study(prepare(load_config(config(tmp_path)), trainer=crashing))
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3
    bad = study.trials[2]
    assert bad.state == TrialState.FAIL
    assert bad.user_attrs["fail_reason"] == "ValueError: simulated crash in training"
    run = client(tmp_path).get_run(bad.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["cnnas.failure"] == "ValueError: simulated crash in training"


def test_out_of_memory_retries_at_half_the_batch_then_marks_infeasible(
    tmp_path, monkeypatch
) -> None:
    batches: dict[int, list[int]] = {}

    def short_of_memory(spec, data, cfg, *, seed, callbacks=()):
        n = trial_of(seed)
        batches.setdefault(n, []).append(cfg.batch_size)
        # trial 0 fits at half the batch; trial 1 fits at no batch size
        if (n == 0 and cfg.batch_size == 64) or n == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(spec, data, cfg, seed=seed, callbacks=callbacks)

    study = run_study(prepare(load_config(config(tmp_path)), trainer=short_of_memory))
    assert len(study.trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert batches[0] == [64, 32] and batches[1] == [64, 32] and batches[2] == [64]
    retried, hopeless = study.trials[0], study.trials[1]
    assert retried.user_attrs["oom_batch_size"] == 32 and "infeasible" not in retried.user_attrs
    assert retried.values[0] == retried.user_attrs["val_acc"] > 0
    assert hopeless.user_attrs["infeasible"] == "out of memory at batch size 32 on cpu"
    # Nothing measured: the lower edge of the trained trials' accuracies so far (trial 0's).
    assert hopeless.values[0] == retried.user_attrs["val_acc"]
    assert hopeless.number not in {t.number for t in front_of(study)}
    run = client(tmp_path).get_run(hopeless.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "out of memory" in run.data.tags["cnnas.infeasible"]


def test_out_of_memory_without_retry_is_infeasible_at_once(tmp_path, monkeypatch) -> None:
    calls = []

    def short_of_memory(spec, data, cfg, *, seed, callbacks=()):
        calls.append(cfg.batch_size)
        raise RuntimeError("CUDA error: out of memory")

    cfg = load_config(config(tmp_path)).replace("train", oom_retry=False)
    study = run_study(prepare(cfg.replace("study", trials=2), trainer=short_of_memory))
    assert calls == [64, 64]
    assert all("out of memory at batch size 64" in t.user_attrs["infeasible"] for t in study.trials)


def test_other_runtime_errors_are_failures_not_memory(tmp_path, monkeypatch) -> None:
    def broken(spec, data, cfg, *, seed, callbacks=()):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(StudyFailing, match="shapes cannot be multiplied"):
        run_study(prepare(load_config(config(tmp_path)), trainer=broken))
