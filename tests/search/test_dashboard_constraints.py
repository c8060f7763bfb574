"""Over-budget trials are infeasible in optuna-dashboard, and their recorded accuracy sits at the
edge of the trained ones: a real study on the digits (one epoch per trial), read through the real
dashboard application over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import optuna_dashboard
import pytest
import torch
import yaml

from cnnas.models import count_params
from cnnas.search import load_config, prepare, run_study
from cnnas.search._objective import Infeasible, Proposal, edge_accuracy, evaluate, propose

BUDGET = 1500
SPACE = {
    "blocks": [1, 2],
    "convs": [1],
    "base_filters": [4, 32],
    "growth": ["constant"],
    "kernels": [3],
    "batch_norm": [False],
    "block_dropout": [0.0],
    "pools": ["max"],
    "aggregations": ["gap", "flatten"],
    "dense_layers": [0],
}
SMALL = {"blocks": 1, "base_filters": 4, "pool_0": "max", "aggregation": "gap"}
LARGE = {
    "blocks": 2,
    "base_filters": 32,
    "pool_0": "max",
    "pool_1": "max",
    "aggregation": "flatten",
}


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, mlflow_db_template):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dashboard-constraints")
    (root / "runs").mkdir()
    (root / "runs" / "mlflow.db").write_bytes(mlflow_db_template.read_bytes())
    cfg = {
        "study": {
            "name": "budget",
            "trials": 5,
            "seed": 0,
            "max_params": BUDGET,
            "project_dir": str(root / "runs"),
        },
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 128, "accelerator": "cpu"},
        "final": {"share": 0},
        "space": SPACE,
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = prepare(load_config(path))
    run.open()
    for params in (SMALL, LARGE, SMALL | {"aggregation": "flatten"}, LARGE):
        run.study.enqueue_trial(params)
    run_study(run)
    torch.set_num_threads(before)
    return run


def test_the_dashboard_reads_over_budget_trials_as_infeasible(study_run) -> None:
    trials = study_run.study.get_trials(deepcopy=False)
    over = [t for t in trials if t.user_attrs["params"] > BUDGET]
    within = [t for t in trials if t.user_attrs["params"] <= BUDGET]
    assert over and within, [t.user_attrs["params"] for t in trials]
    for t in trials:
        # The list the dashboard reads, beside Optuna 5's own keys, with the same values.
        assert t.system_attrs["constraints"] == t.user_attrs["constraints"]
        assert t.system_attrs["constraints:max_params"] == t.user_attrs["params"] - BUDGET
    app = optuna_dashboard.wsgi(study_run.storage)
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/studies/{study_run.study._study_id}"  # noqa: SLF001 -- the dashboard's URLs name the storage id
        with urllib.request.urlopen(f"{url}?after=0", timeout=30) as r:
            detail = json.load(r)
    finally:
        server.shutdown()
        thread.join()
    shown = {t["number"]: t["constraints"] for t in detail["trials"]}
    # The dashboard's rule: feasible when every constraint is <= 0.
    assert {n for n, c in shown.items() if any(v > 0 for v in c)} == {t.number for t in over}
    assert {n for n, c in shown.items() if c and all(v <= 0 for v in c)} == {
        t.number for t in within
    }
    # Optuna agrees: only feasible trials can be best.
    assert {t.number for t in study_run.study.best_trials} <= {t.number for t in within}


def test_an_over_budget_trial_is_given_the_edge_accuracy_of_the_trained_ones(study_run) -> None:
    recs = study_run.records()
    trained = [r.val_acc for r in recs if r.trained]
    assert trained
    assert edge_accuracy(recs, 10) == min(trained)
    assert edge_accuracy([], 10) == pytest.approx(0.1)  # chance, before anything trained
    # What evaluate decides for an architecture over the budget, without training it.
    trial = optuna.trial.FixedTrial(LARGE)
    proposal = propose(trial, study_run.cfg, study_run.data)
    assert isinstance(proposal, Proposal) and count_params(proposal.spec) > BUDGET
    outcome = evaluate(study_run.context(trial, "no-run"), trial, proposal)
    assert isinstance(outcome, Infeasible) and outcome.reason.startswith("over budget")
    assert outcome.accuracy == min(trained)
