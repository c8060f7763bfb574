"""Pareto-aware early stopping: the rule on hand-made curves, and real pruned studies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas.search import ConfigError, load_config, prepare, run_study
from cnnas.search._pruning import PruneRule, Reference, prune_reason
from tests.search._helpers import front_of

RULE = PruneRule(margin=0.02, min_better=2, warmup_epochs=1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks train faster on one thread, and a busy 2-core machine stalls on two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ref(trial: int, complexity: float, *accs: float) -> Reference:
    return Reference(trial, complexity, tuple(accs))


def test_a_trial_beaten_by_enough_smaller_trials_stops() -> None:
    refs = [ref(0, 100, 0.5, 0.80), ref(1, 200, 0.5, 0.85), ref(2, 5000, 0.5, 0.99)]
    reason = prune_reason(1, 0.70, 300, refs, RULE)
    assert reason is not None and "epoch 2" in reason and "0 (0.800)" in reason
    assert "2 (" not in reason, "a larger trial is no evidence against a smaller one"


@pytest.mark.parametrize(
    ("epoch", "accuracy", "complexity", "why"),
    [
        (0, 0.10, 300, "the first epoch is warm-up"),
        (1, 0.79, 300, "within the margin of one of the two"),
        (1, 0.70, 150, "only one comparable trial is no larger"),
        (5, 0.10, 300, "no reference reached that epoch"),
    ],
)
def test_a_trial_goes_on(epoch: int, accuracy: float, complexity: float, why: str) -> None:
    refs = [ref(0, 100, 0.5, 0.80), ref(1, 200, 0.5, 0.85), ref(2, 5000, 0.5, 0.99)]
    assert prune_reason(epoch, accuracy, complexity, refs, RULE) is None, why


def test_equal_size_counts_as_no_larger_and_min_better_is_respected() -> None:
    refs = [ref(0, 300, 0.5, 0.9), ref(1, 300, 0.5, 0.9), ref(2, 300, 0.5, 0.9)]
    assert prune_reason(1, 0.5, 300, refs, PruneRule(0.02, 3, 1)) is not None
    assert prune_reason(1, 0.5, 300, refs, PruneRule(0.02, 4, 1)) is None
    assert prune_reason(1, 0.5, 300, refs, PruneRule(0.5, 1, 1)) is None  # margin too wide


def write_config(tmp_path: Path, sampler: str, **pruning) -> Path:
    cfg = {
        "study": {
            "name": f"prune-{sampler}",
            "trials": 20,
            "seed": 3,
            "sampler": sampler,
            "project_dir": str(tmp_path / "runs"),
        },
        "data": {"dataset": "digits"},
        "train": {"epochs": 4, "batch_size": 64},
        "pruning": {"method": "pareto", **pruning},
        "space": {
            "blocks": [1, 2],
            "convs": [1],
            "base_filters": [4, 8, 16],
            "kernels": [3],
            "pools": ["max", "none"],
            "aggregations": ["flatten", "gap"],
            "dense_layers": [0],
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    return path


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_a_pruned_multi_objective_study_completes_with_a_valid_front(tmp_path, sampler) -> None:
    # margin 0, one better trial suffices, no warm-up: many trials get pruned, and the samplers
    # must cope with them.
    cfg = write_config(tmp_path, sampler, margin=0.0, min_better=1, warmup_epochs=0)
    run = prepare(load_config(cfg))
    study = run_study(run)
    states = [t.state for t in study.trials]
    assert len(states) == 20 and TrialState.RUNNING not in states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) >= 3, f"only {len(pruned)} pruned"
    front = front_of(study)
    assert front and all(t.state == TrialState.COMPLETE for t in front)
    client = MlflowClient(tracking_uri=run.tracker.uri)
    for t in pruned:
        a = t.user_attrs
        assert "below" in a["pruned"] and 1 <= a["pruned_epoch"] < 4
        assert len(a["curves"]["val_acc"]) == a["pruned_epoch"]
        assert a["val_acc"] == a["curves"]["val_acc"][-1]  # the last values are kept
        r = client.get_run(a["mlflow_run_id"])
        assert r.info.status == "KILLED" and r.data.tags["cnnas.pruned"] == a["pruned"]
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) == a["pruned_epoch"]
    # pruned trials trained fewer epochs than the study's budget
    epochs = sum(len(t.user_attrs.get("curves", {}).get("val_acc", [])) for t in study.trials)
    assert epochs < 20 * 4


@pytest.mark.parametrize("method", ["median", "hyperband", "successive_halving"])
def test_single_objective_pruners_are_refused_for_a_pareto_study(tmp_path, method) -> None:
    cfg = load_config(write_config(tmp_path, "tpe"))
    cfg = cfg.replace("pruning", method=method)
    with pytest.raises(
        ConfigError, match=r"pruning\.method: .*single-objective.*study\.objective: accuracy"
    ):
        prepare(cfg)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["median", "hyperband"])
def test_a_single_objective_study_is_pruned_by_optunas_pruner(tmp_path, method) -> None:
    cfg = load_config(write_config(tmp_path, "tpe", warmup_epochs=0, startup_trials=3))
    cfg = cfg.replace("pruning", method=method).replace("study", objective="accuracy")
    run = prepare(cfg)
    study = run_study(run)
    assert len(study.directions) == 1 and study.metric_names == ["val_acc"]
    assert len(study.trials) == 20
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) >= 2, f"only {len(pruned)} pruned"
    for t in pruned:
        a = t.user_attrs
        assert "Pruner stopped it" in a["pruned"]
        # Lightning reported every epoch's validation accuracy to Optuna, up to the stop.
        assert len(t.intermediate_values) == a["pruned_epoch"] == len(a["curves"]["val_acc"])
        assert list(t.intermediate_values.values()) == a["curves"]["val_acc"]
        assert a["pruned_epoch"] < 4
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(len(t.values) == 1 and t.values[0] == t.user_attrs["val_acc"] for t in complete)
    # the accuracy-versus-size front is still drawn, from the recorded parameter counts
    front = front_of(study)
    assert front
    sizes = [t.user_attrs["params"] for t in front]
    accs = [t.values[0] for t in front]
    assert sizes == sorted(sizes) and accs == sorted(accs)
    assert max(accs) == max(t.values[0] for t in complete)


def test_a_study_cannot_change_its_number_of_objectives(tmp_path) -> None:
    from cnnas.search import StudyMismatch

    cfg = load_config(write_config(tmp_path, "tpe")).replace("study", trials=1)
    cfg = cfg.replace("pruning", method="none")
    run_study(prepare(cfg))
    with pytest.raises(StudyMismatch, match=r"study\.objective"):
        prepare(cfg.replace("study", objective="accuracy")).open()
