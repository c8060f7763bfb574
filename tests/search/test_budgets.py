"""Budgets, repeats, multi-head metrics and augmentation checks in real studies on sklearn digits.

Each study has its own project folder under ``tmp_path`` with an Optuna journal and an MLflow
SQLite store (seeded from an empty template, see conftest.py, to skip MLflow's migrations).
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from cnnas.models import ArchSpec, build, count_macs, count_params
from cnnas.objectives import TrialResult, fit
from cnnas.search import ConfigError, StudyRun, load_config, prepare, run_study
from cnnas.search._config import StudyConfig
from cnnas.search._space import suggest_spec
from cnnas.search._study import make_sampler
from cnnas.search.cli import main
from tests.search._helpers import SMALL_SPACE, counts_of, front_of

optuna.logging.set_verbosity(optuna.logging.WARNING)


# About half of this space has more than 3000 parameters on digits.
BUDGET_SPACE = {
    "base_filters": [4, 8, 16, 32, 64],
    "blocks": {"min": 1, "max": 3},
    "kernels": [3, 5],
    "factorize": [False],
    "convs": [1],
    "batch_norm": [False, True],
    "pools": ["max", "none"],
    "block_dropout": [0.0],
    "aggregations": ["gap"],
    "dense_layers": [0],
}
BUDGET = 3000

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "ratio", "seconds", "epochs")


def sampler_constraints(t: optuna.trial.FrozenTrial) -> list[float]:
    """The constraint values Optuna's samplers read for a trial."""
    attrs = t.system_attrs
    if "constraints:max_params" in attrs:  # Trial.set_constraint (Optuna 5)
        return [attrs["constraints:max_params"], attrs["constraints:max_macs"]]
    return list(attrs["constraints"])  # constraints_func (Optuna 4)


def make_run(
    tmp_path: Path,
    seed_mlflow,
    *,
    study: dict | None = None,
    space: dict | None = None,
    train: dict | None = None,
    replace_space: bool = False,
    trainer=fit,
) -> StudyRun:
    """A checked, not yet opened study on digits in ``tmp_path/runs``."""
    project = tmp_path / "runs"
    seed_mlflow(project)
    cfg = {
        "study": {"name": "budget", "trials": 4, "project_dir": str(project), **(study or {})},
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 256, "accelerator": "cpu", **(train or {})},
        "space": (space or {}) if replace_space else {**SMALL_SPACE, **(space or {})},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return prepare(load_config(path), trainer=trainer)


def config_of(tmp_path: Path, data: dict[str, Any]) -> StudyConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def client_of(run: StudyRun) -> MlflowClient:
    return MlflowClient(tracking_uri=run.tracker.uri)


def seconds(trial: FrozenTrial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # No ./mlflow.yml of the working directory may redirect the runs.
    monkeypatch.chdir(tmp_path)


class CountingTrainer(list):
    """A trainer handed to the study that records every architecture it is asked to train."""

    def __init__(self, train) -> None:
        super().__init__()
        self.train = train

    def __call__(self, spec, *args, **kwargs):
        self.append(spec)
        return self.train(spec, *args, **kwargs)


@pytest.fixture
def fit_calls() -> CountingTrainer:
    """Counts the trainings: the real ``fit``, wrapped."""
    return CountingTrainer(fit)


def fake_result(spec: ArchSpec) -> TrialResult:
    """A deterministic stand-in for training: accuracy from the spec's hash, near chance."""
    acc = 0.1 + int(hashlib.sha256(spec.spec_hash().encode()).hexdigest()[:4], 16) / 0xFFFF / 10
    params = count_params(spec)
    curves = {"val_acc": [acc], "val_loss": [2.0], "train_acc": [acc], "train_loss": [2.0]}
    return TrialResult(
        val_acc=acc,
        val_loss=2.0,
        train_acc=acc,
        train_loss=2.0,
        params=params,
        macs=count_macs(spec),
        ratio=acc / params,
        seconds=0.01,
        epochs=1,
        curves=curves,
        model=build(spec).eval(),  # untrained: the study saves the weights of each trial
    )


@pytest.fixture
def fake_fit() -> CountingTrainer:
    """Training replaced by :func:`fake_result`, which is the same on every machine."""
    return CountingTrainer(lambda spec, *args, **kwargs: fake_result(spec))


# --- an architecture over budget is not trained ------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "index", "key"),
    [({"max_params": 50}, 0, "study.max_params"), ({"max_macs": 50}, 1, "study.max_macs")],
    ids=["params", "macs"],
)
def test_an_over_budget_architecture_is_rejected_without_training(
    tmp_path, seed_mlflow, monkeypatch, budget, index, key
):
    calls = []

    def no_training(spec, *args, **kwargs):
        calls.append(spec)
        raise AssertionError("an infeasible architecture was trained")

    run = make_run(tmp_path, seed_mlflow, study={"trials": 5, **budget}, trainer=no_training)
    study = run_study(run)
    assert calls == []
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    client = client_of(run)
    for t in trials:
        a = t.user_attrs
        params, macs = a["params"], a["macs"]
        assert a["infeasible"].startswith("over budget: ") and key in a["infeasible"]
        violations = a["constraints"]
        assert len(violations) == 2
        assert violations[index] == float((params, macs)[index] - 50) > 0
        assert violations[1 - index] == 0.0
        # The samplers see the constraints: set on the trial (Optuna 5) or by constraints_func.
        assert sampler_constraints(t) == violations
        # Nothing trained yet: chance accuracy (the lower edge), the real complexity.
        assert t.values == [pytest.approx(0.1), float(params)]
        assert "val_acc" not in a and "curves" not in a and "duplicate_of" not in a
        assert ArchSpec.from_dict(a["spec"]).spec_hash() == a["spec_hash"]
        # Nothing was trained: the whole objective is bookkeeping.
        assert seconds(t) < 1.0, seconds(t)
        mlflow_run = client.get_run(a["mlflow_run_id"])
        assert mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.tags["cnnas.infeasible"] == a["infeasible"]
        assert mlflow_run.data.tags["cnnas.trial"] == str(t.number)
        assert "val_acc" not in mlflow_run.data.metrics
        assert client.get_metric_history(a["mlflow_run_id"], "val_acc") == []
        assert mlflow_run.data.metrics["params"] == params
        assert mlflow_run.data.metrics["macs"] == macs
    assert front_of(study) == []
    counts = counts_of(study)
    assert counts["trials_complete"] == 5
    assert counts["trials_infeasible"] == 5
    assert counts["trials_duplicate"] == 0
    assert counts["trials_fail"] == 0
    parent = client.get_run(run.parent_run_id)
    assert parent.data.metrics["trials_infeasible"] == 5
    assert parent.info.status == "FINISHED"


def test_a_generous_budget_rejects_nothing(tmp_path, seed_mlflow, fake_fit):
    run = make_run(
        tmp_path, seed_mlflow, study={"trials": 3, "max_params": 10**9}, trainer=fake_fit
    )
    study = run_study(run)
    for t in study.trials:
        assert "infeasible" not in t.user_attrs
        assert t.user_attrs["constraints"][0] < 0
        assert t.user_attrs["constraints"][1] == 0.0  # no MAC budget: no violation
    assert len(fake_fit) == len({t.user_attrs["identity"] for t in study.trials})


def test_the_cli_reports_infeasible_trials(tmp_path, seed_mlflow, monkeypatch, capsys):
    project = tmp_path / "runs"
    seed_mlflow(project)
    config = {
        "study": {"name": "over", "trials": 2, "max_params": 50, "project_dir": str(project)},
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "accelerator": "cpu"},
        "space": SMALL_SPACE,
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    assert main(["study", "start", "--config", "study.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.count("infeasible, not trained: over budget:") == 2
    assert "study.max_params 50" in out
    front_line = next(line for line in out.splitlines() if "Pareto front of study" in line)
    assert "0 trial(s)" in front_line and "2 infeasible" in front_line


# --- the sampler learns the budget --------------------------------------------------------------


def feasible_flags(study: optuna.Study) -> list[bool]:
    return ["infeasible" not in t.user_attrs for t in study.trials]


@pytest.mark.parametrize(
    ("sampler", "trials", "window", "late_at_least", "gain_at_least"),
    [
        # TPE: 10 random start-up trials, then 20 modelled ones; compare the first and last 10.
        ("tpe", 30, 10, 7.5, 1.5),
        # NSGA-II: a random first generation of 20, then one bred under the constraints.
        ("nsga2", 40, 20, 13.0, 2.0),
    ],
)
def test_the_sampler_learns_the_budget_across_seeds(
    tmp_path, sampler, trials, window, late_at_least, gain_at_least
):
    """The production sampler and constraints on the production space code, without training.

    Ten seeds, so that the claim does not rest on one lucky sequence (a single TPE study meets
    'most of the last 10 feasible, more than the first 10' for about 8 seeds in 10).
    """
    space = config_of(tmp_path, {"space": BUDGET_SPACE}).space
    early, late = [], []
    for seed in range(10):
        rng = random.Random(seed)
        study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=make_sampler(sampler, seed)
        )
        flags = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for _ in range(trials):
                trial = study.ask()
                spec = suggest_spec(trial, space, (1, 8, 8), 10)
                params = count_params(spec)
                trial.set_user_attr("constraints", [float(params - BUDGET), 0.0])
                ok = params <= BUDGET
                flags.append(ok)
                # As the objective does: accuracy 0 when over budget; near chance otherwise.
                study.tell(trial, [rng.uniform(0.05, 0.2) if ok else 0.0, float(params)])
        early.append(sum(flags[:window]))
        late.append(sum(flags[-window:]))
    # Random sampling keeps about 55% within the budget.
    assert sum(early) / 10 < 0.65 * window, early
    assert sum(late) / 10 >= late_at_least, late
    assert (sum(late) - sum(early)) / 10 >= gain_at_least, (early, late)


def test_tpe_study_learns_the_budget(tmp_path, seed_mlflow, fake_fit):
    """In a real study TPE turns to feasible architectures: most late trials are, more than early.

    Training is replaced by a deterministic accuracy so the sampler's path is the same on every
    machine; the sampler, the objective, the constraints and both stores are the real ones.
    Seed 1 starts with 4 feasible random trials of 10. The claim holds for seeds 1 and 3-9; seeds
    0 and 2 start with 7 and 8 and end with as many (the test above covers seeds in aggregate).
    """
    run = make_run(
        tmp_path,
        seed_mlflow,
        study={"trials": 30, "seed": 1, "max_params": BUDGET},
        space=BUDGET_SPACE,
        replace_space=True,
        trainer=fake_fit,
    )
    study = run_study(run)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    flags = feasible_flags(study)
    assert sum(flags[-10:]) >= 7, flags
    assert sum(flags[-10:]) > sum(flags[:10]), flags
    assert 0 < sum(flags[:10]) < 10  # the budget does rule out part of the space
    for t in study.trials:
        assert sampler_constraints(t) == t.user_attrs["constraints"]
        assert ("infeasible" in t.user_attrs) == (t.user_attrs["params"] > BUDGET)
    # Only feasible architectures not seen before were trained.
    trained = [t for t in study.trials if "infeasible" not in t.user_attrs]
    firsts = [t for t in trained if "duplicate_of" not in t.user_attrs]
    assert len(fake_fit) == len(firsts)
    assert {t.number for t in front_of(study)} <= {t.number for t in firsts}


def test_nsga2_runs_with_the_constraints_and_marks_infeasible_trials(
    tmp_path, seed_mlflow, fake_fit
):
    run = make_run(
        tmp_path,
        seed_mlflow,
        study={"trials": 12, "sampler": "nsga2", "max_params": BUDGET},
        space=BUDGET_SPACE,
        replace_space=True,
        trainer=fake_fit,
    )
    study = run_study(run)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    flags = feasible_flags(study)
    assert 0 < sum(flags) < 12, flags
    client = client_of(run)
    measured: list[float] = []  # validation accuracies of the trained trials so far
    for t in sorted(study.trials, key=lambda t: t.number):
        assert t.state == TrialState.COMPLETE
        violations = t.user_attrs["constraints"]
        assert sampler_constraints(t) == violations
        tags = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
        if t.user_attrs["params"] > BUDGET:
            # Not trained: the lower edge of the accuracies so far, chance before any.
            edge = min(measured) if measured else 0.1
            assert violations[0] > 0 and t.values[0] == pytest.approx(edge)
            assert "cnnas.infeasible" in tags
        else:
            assert violations[0] <= 0 and t.values[0] > 0.0
            measured.append(t.user_attrs["val_acc"])
            assert "cnnas.infeasible" not in tags
    assert all(count_params(spec) <= BUDGET for spec in fake_fit)
    assert counts_of(study)["trials_infeasible"] == 12 - sum(flags)


# --- a repeated architecture is not trained again ------------------------------------------------


REPEAT_SPACE = {
    "blocks": [1],
    "base_filters": [4, 8],
    "kernels": [3],
    "convs": [1],
    "batch_norm": [False],
    "pools": ["max"],
    "block_dropout": [0.0],
    "aggregations": ["gap"],
    "dense_layers": [0],
    "augment": [False, True],
}


def test_a_repeated_architecture_is_not_trained_again(tmp_path, seed_mlflow, fit_calls):
    run = make_run(
        tmp_path,
        seed_mlflow,
        study={"trials": 5, "sampler": "random"},
        space=REPEAT_SPACE,
        replace_space=True,
        trainer=fit_calls,
    )
    run.open()
    plain = {"base_filters": 4, "augment": False}
    augmented = {"base_filters": 4, "augment": True}
    for params in (plain, plain, augmented, augmented, {"base_filters": 8, "augment": False}):
        run.study.enqueue_trial(params)
    study = run_study(run)
    t0, t1, t2, t3, t4 = study.trials
    assert [t.params for t in study.trials[:4]] == [plain, plain, augmented, augmented]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # Trained: the first of each (spec, augmentation) pair, and the other spec.
    assert len(fit_calls) == 3
    assert [s.spec_hash() for s in fit_calls] == [
        t0.user_attrs["spec_hash"],
        t2.user_attrs["spec_hash"],
        t4.user_attrs["spec_hash"],
    ]
    # The same spec with augmentation on is a different experiment, not a repeat.
    assert t2.user_attrs["spec_hash"] == t0.user_attrs["spec_hash"]
    assert t2.user_attrs["identity"] == t0.user_attrs["identity"] + "+aug"
    assert "duplicate_of" not in t2.user_attrs
    for original, repeat in ((t0, t1), (t2, t3)):
        assert repeat.user_attrs["duplicate_of"] == original.number
        assert repeat.values == original.values
        assert repeat.user_attrs["identity"] == original.user_attrs["identity"]
        for key in (*METRICS, "params", "macs", "curves", "spec", "spec_hash", "augment"):
            assert repeat.user_attrs[key] == original.user_attrs[key], key
        assert "duplicate_of" not in original.user_attrs
    client = client_of(run)
    runs = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]) for t in study.trials}
    for original, repeat in ((0, 1), (2, 3)):
        assert runs[repeat].data.tags["cnnas.duplicate_of"] == str(original)
        assert "cnnas.duplicate_of" not in runs[original].data.tags
        assert runs[repeat].info.status == "FINISHED"
        assert runs[repeat].data.metrics["val_acc"] == runs[original].data.metrics["val_acc"]
        history = client.get_metric_history(runs[repeat].info.run_id, "val_acc")
        curve = study.trials[original].user_attrs["curves"]["val_acc"]
        assert [m.value for m in history] == pytest.approx(curve)
    # A repeat is no new point: the front names originals only.
    front = {t.number for t in front_of(study)}
    assert front and front <= {0, 2, 4}
    counts = counts_of(study)
    assert counts["trials_duplicate"] == 2 and counts["trials_complete"] == 5
    # Looking the original up takes no training time.
    assert seconds(t1) < 1.0 and seconds(t3) < 1.0


def test_a_repeat_is_recognised_by_the_network_not_the_parameters(tmp_path, seed_mlflow, fit_calls):
    # With a base of 8 and max_filters 8, doubling and constant growth build the same network.
    space = {**REPEAT_SPACE, "blocks": [2], "base_filters": [8], "max_filters": 8}
    space["growth"] = ["constant", "doubling"]
    space["augment"] = [False]
    run = make_run(
        tmp_path,
        seed_mlflow,
        study={"trials": 2, "sampler": "random"},
        space=space,
        replace_space=True,
        trainer=fit_calls,
    )
    run.open()
    run.study.enqueue_trial({"growth": "constant"})
    run.study.enqueue_trial({"growth": "doubling"})
    study = run_study(run)
    t0, t1 = study.trials
    assert t0.params != t1.params
    assert t0.user_attrs["spec"] == t1.user_attrs["spec"]
    assert t1.user_attrs["duplicate_of"] == 0
    assert len(fit_calls) == 1
    assert [t.number for t in front_of(study)] == [0]


def test_the_front_lists_the_original_not_its_repeat(tmp_path, seed_mlflow, fit_calls):
    run = make_run(
        tmp_path,
        seed_mlflow,
        study={"trials": 2, "sampler": "random"},
        space=REPEAT_SPACE,
        replace_space=True,
        trainer=fit_calls,
    )
    run.open()
    for _ in range(2):
        run.study.enqueue_trial({"base_filters": 8, "augment": False})
    study = run_study(run)
    assert len(fit_calls) == 1
    assert [t.number for t in front_of(study)] == [0]
    # Optuna's own front would list both: the repeat has the same values.
    assert sorted(t.number for t in study.best_trials) == [0, 1]


# --- multi-head networks log each head's accuracy ----------------------------------------------


def test_multi_head_trials_log_per_head_accuracies(tmp_path, seed_mlflow, fit_calls):
    space = {
        # One block and no pooling keep the 8x8 map: all three multi-scale sections fit.
        "blocks": [1],
        "base_filters": [4],
        "kernels": [3],
        "convs": [1],
        "batch_norm": [False],
        "pools": ["none"],
        "block_dropout": [0.0],
        "aggregations": ["multiscale"],
        "heads": ["multi"],
        "predict": ["main"],
        "aux_weight": [0.5],
        "dense_layers": [0],
    }
    run = make_run(
        tmp_path,
        seed_mlflow,
        study={"trials": 1},
        space=space,
        train={"epochs": 2},
        replace_space=True,
        trainer=fit_calls,
    )
    study = run_study(run)
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE
    assert t.params == {}  # every dimension has one value
    spec = ArchSpec.from_dict(t.user_attrs["spec"])
    assert (spec.aggregation, spec.heads, spec.predict, spec.aux_weight) == (
        "multiscale",
        "multi",
        "main",
        0.5,
    )
    assert len(fit_calls) == 1
    curves = t.user_attrs["curves"]
    heads = sorted(k for k in curves if k.startswith("val_acc_head"))
    assert heads == ["val_acc_head0", "val_acc_head1", "val_acc_head2"]
    for key in heads:
        assert len(curves[key]) == 2
        assert all(0.0 <= v <= 1.0 for v in curves[key])
    # The main head is head 0, and with predict 'main' it is what val_acc measures.
    assert curves["val_acc_head0"] == pytest.approx(curves["val_acc"])
    client = client_of(run)
    run_id = t.user_attrs["mlflow_run_id"]
    for key in heads:
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [0, 1], key
        assert [m.value for m in history] == pytest.approx(curves[key])


def test_single_head_trials_have_no_head_curves(tmp_path, seed_mlflow):
    space = {**SMALL_SPACE, "aggregations": ["multiscale"], "heads": ["single"]}
    run = make_run(tmp_path, seed_mlflow, study={"trials": 1}, space=space)
    (t,) = run_study(run).trials
    assert not any(k.startswith("val_acc_head") for k in t.user_attrs["curves"])


# --- no mirrored digits -------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [[False, True], [True]])
def test_flipping_digits_is_refused_before_anything(tmp_path, augment):
    project = tmp_path / "runs"
    cfg = config_of(
        tmp_path,
        {
            "study": {"project_dir": str(project)},
            "data": {"dataset": "digits"},
            "train": {"augment": {"flip": True}},
            "space": {"augment": augment},
        },
    )
    with pytest.raises(ConfigError) as info:
        prepare(cfg)
    message = str(info.value)
    assert message.startswith("train.augment.flip: ")
    assert "digits" in message and "mirrored" in message
    assert not project.exists()


def test_flip_is_allowed_when_no_trial_augments_digits(tmp_path):
    cfg = config_of(
        tmp_path,
        {
            "study": {"project_dir": str(tmp_path / "runs")},
            "data": {"dataset": "digits"},
            "train": {"augment": {"flip": True}},
            "space": {"augment": [False]},
        },
    )
    assert prepare(cfg).cfg.train.augment.flip is True


def test_flip_is_allowed_for_fashion_mnist(tmp_path):
    from cnnas.objectives import DatasetError

    # The flip check passes, so prepare goes on to the dataset, which is missing here.
    empty = tmp_path / "no-data"
    empty.mkdir()
    cfg = config_of(
        tmp_path,
        {
            "data": {"dataset": "fashion-mnist", "data_dir": str(empty)},
            "train": {"augment": {"flip": True}},
            "space": {"augment": [False, True]},
        },
    )
    with pytest.raises(DatasetError):
        prepare(cfg)


def test_flipping_digits_through_the_cli(tmp_path, capsys):
    config = {
        "data": {"dataset": "digits"},
        "train": {"augment": {"flip": True}},
        "space": {"preset": "seed002"},  # seed 002 turns augmentation on and off
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    status = main(["study", "start", "--config", "config.yaml", "--project-dir", "runs"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: train.augment.flip: ")
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


# --- a failure after training ---------------------------------------------------------------------


def test_a_failure_after_training_closes_the_run(tmp_path, seed_mlflow, fake_fit, monkeypatch):
    from cnnas.search._tracking import Tracker

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Tracker, "log_model", full_disk)
    run = make_run(tmp_path, seed_mlflow, study={"trials": 1}, trainer=fake_fit)
    run_study(run)
    (t,) = run.study.trials
    assert t.state == TrialState.FAIL
    mlflow_run = client_of(run).get_run(t.user_attrs["mlflow_run_id"])
    assert "No space left on device" in t.user_attrs.get("fail_reason", "")
    assert mlflow_run.info.status == "FAILED"
    assert "No space left on device" in mlflow_run.data.tags.get("cnnas.failure", "")
