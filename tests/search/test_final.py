"""The budget covers the hand-over: the final phase, defaults sized to a small dataset, and
latency as the complexity axis. Real studies on digits (and a 129-image folder of real
Fashion-MNIST pictures), real stores."""

from __future__ import annotations

import contextlib
import io
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from cnnas.objectives import fit
from cnnas.search import load_config, prepare, register_front
from cnnas.search._final import (
    final_data,
    final_members,
    final_runs,
    fitting_epochs,
    kendall_tau,
    plan_final,
    plan_lanes,
    probe_epochs,
    searched_before,
    stand_in,
    train_final,
)
from cnnas.search._records import records
from cnnas.search._sizing import size_for
from cnnas.search.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")

SPACE = {
    "blocks": {"min": 1, "max": 2},
    "base_filters": [4, 8],
    "kernels": [3],
    "convs": [1],
    "pools": ["max", "none"],
    "aggregations": ["gap", "flatten"],
    "dense_layers": [0],
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cnnas(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write(tmp: Path, name: str, **sections) -> Path:
    cfg = {
        "study": {"name": name, "trials": 4, "seed": 0, "project_dir": str(tmp / "runs")},
        "data": {"dataset": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "accelerator": "cpu"},
        "space": SPACE,
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def study_of(tmp: Path, name: str, project: str = "runs") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp / project / "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


# --- pure pieces ------------------------------------------------------------------------------


def test_kendall_tau_of_agreeing_reversed_and_tied_orders() -> None:
    assert kendall_tau([(1, 1), (2, 2)]) is None  # too few to say
    assert kendall_tau([(0.1, 0.5), (0.2, 0.6), (0.3, 0.9)]) == 1.0
    assert kendall_tau([(0.1, 0.9), (0.2, 0.6), (0.3, 0.5)]) == -1.0
    tau = kendall_tau([(0.1, 0.5), (0.2, 0.9), (0.3, 0.6), (0.4, 0.95)])
    assert tau == pytest.approx(2 / 3)
    assert kendall_tau([(1, 1), (1, 1), (1, 1)]) is None  # no order at all


def trained(
    number: int, params: int, acc: float, epoch_seconds: float, start: int | None = None
) -> optuna.trial.FrozenTrial:
    t = create_trial(
        state=TrialState.COMPLETE,
        values=[acc, params],
        user_attrs={
            **({} if start is None else {"start_point": start}),
            "spec": {"input_shape": [1, 8, 8], "num_classes": 10, "blocks": [{"filters": 4}]},
            "params": params,
            "macs": params * 10,
            "val_acc": acc,
            "ratio": acc / params,
            "seconds": 3 * epoch_seconds,
            "epochs": 3,
            "curves": {"val_acc": [acc] * 3, "epoch_seconds": [epoch_seconds] * 3},
        },
    )
    t.number = number
    return t


def test_the_plan_fits_the_budget_and_drops_members_before_the_champion(tmp_path) -> None:
    run = prepare(load_config(write(tmp_path, "plan")))
    recs = records(
        [trained(0, 1000, 0.80, 1.0), trained(1, 5000, 0.90, 2.0), trained(2, 20000, 0.95, 4.0)]
    )
    n = len(run.data.train_y)
    plan = plan_final(run, recs, budget=70.0, final_images=n)  # the search's data: scale 1
    # Champion (most accurate, no limit) first; 1 + 2 + 4 = 7 s an epoch for all three.
    assert plan.members[0].number == 2
    assert plan.epochs == 10 and plan.estimate <= plan.budget
    twice = plan_final(run, recs, budget=70.0, final_images=2 * n)  # twice the images
    assert twice.epochs == 5
    short = plan_final(run, recs, budget=5.0, final_images=n)  # not one epoch of all three
    assert [r.number for r in short.members] == [2] and short.epochs == 1
    assert plan_final(run, recs, budget=3.0, final_images=n) is None  # not even the champion


def test_the_epochs_that_fit_follow_the_measured_pace() -> None:
    recs = records([trained(1, 5000, 0.90, 2.0), trained(0, 1000, 0.80, 1.0)])
    times = {1: 2.0, 0: 1.0}  # seconds an epoch, by trial number
    assert fitting_epochs(recs, 30.0, times, limit=50) == 10  # 3 s an epoch for both
    assert fitting_epochs(recs, 30.0, times, limit=50, pace=2.0) == 5  # twice as slow
    second = [r for r in recs if r.number == 1]
    assert fitting_epochs(second, 30.0, times, limit=50, pace=0.5) == 30  # one, faster
    assert fitting_epochs(recs, 30.0, times, limit=4) == 4  # final.max_epochs
    assert fitting_epochs(recs, 2.0, times, limit=50) == 0  # not one epoch


def test_a_plan_from_timed_epochs_uses_those_times(tmp_path) -> None:
    run = prepare(load_config(write(tmp_path, "timedplan")))
    recs = records(
        [trained(0, 1000, 0.80, 1.0), trained(1, 5000, 0.90, 2.0), trained(2, 20000, 0.95, 4.0)]
    )
    n = len(run.data.train_y)
    # Timed: each epoch twice what the search's epochs said (14 s for all three).
    plan = plan_final(run, recs, budget=70.0, final_images=n, measured={0: 2, 1: 4, 2: 8})
    assert plan.epochs == 5 and plan.epoch_seconds == {0: 2, 1: 4, 2: 8}
    assert "timed on the final data" in plan.reason


def test_a_champion_share_gives_the_champion_more_epochs_than_the_rest(tmp_path) -> None:
    recs = records(
        [trained(0, 1000, 0.80, 1.0), trained(1, 5000, 0.90, 2.0), trained(2, 20000, 0.95, 4.0)]
    )
    shared = prepare(load_config(write(tmp_path, "share", final={"champion_share": 0.8})))
    n = len(shared.data.train_y)
    plan = plan_final(shared, recs, budget=70.0, final_images=n)
    # 0.8 x 70 s = 56 s at 4 s an epoch: 14 for the champion; 14 s left: 4 for the other two.
    assert plan.members[0].number == 2 and plan.epochs == 14
    assert plan.estimate == 14 * 4 + 4 * 3 <= plan.budget
    assert "final.champion_share 0.8" in plan.reason
    # Too short for the others after the champion's share: equal epochs, as without a share.
    assert plan_final(shared, recs, budget=10.0, final_images=n).epochs == 1


def test_lanes_give_a_reference_its_own_lane_and_share_the_rest(tmp_path) -> None:
    run = prepare(load_config(write(tmp_path, "lanes", study={"workers": 2})))
    recs = records(
        [
            trained(0, 90000, 0.85, 5.0, start=0),  # the reference: off the front
            trained(1, 1000, 0.80, 1.0),
            trained(2, 5000, 0.90, 2.0),
            trained(3, 20000, 0.95, 4.0),
        ]
    )
    chosen = final_members(recs, run)
    assert [r.number for r in chosen] == [3, 2, 1, 0]  # the aliases' members; the reference
    times = {0: 5.0, 1: 1.0, 2: 2.0, 3: 4.0}
    (ref, shared) = plan_lanes(run, chosen, 60.0, times, lanes=2)
    # The reference alone, for the whole phase; the others equal epochs in theirs.
    assert [r.number for r in ref.members] == [0] and ref.slots == (60.0,) and ref.epochs == (12,)
    assert [r.number for r in shared.members] == [3, 2, 1] and shared.epochs == (8, 8, 8)
    assert shared.slots == (32.0, 16.0, 8.0)
    # Three lanes: the reference, then the longest network first to the emptiest lane.
    three = plan_lanes(run, chosen, 60.0, times, lanes=3)
    assert [[r.number for r in lane.members] for lane in three] == [[0], [3], [2, 1]]
    assert [lane.epochs for lane in three] == [(12,), (15,), (20, 20)]
    # final.max_epochs bounds the search's networks, not the reference.
    capped = prepare(
        load_config(write(tmp_path, "cap", study={"workers": 2}, final={"max_epochs": 5}))
    )
    (ref, shared) = plan_lanes(capped, chosen, 60.0, times, lanes=2)
    assert ref.epochs == (12,) and shared.epochs == (5, 5, 5)
    assert shared.slots == (20.0, 10.0, 5.0)
    # Short: a reference that cannot train one epoch is left out (its lane goes to the
    # others), and a lane's last networks go first.
    short = plan_lanes(run, chosen, 4.5, times, lanes=2)
    assert [[r.number for r in lane.members] for lane in short] == [[3], [2, 1]]
    assert [lane.epochs for lane in short] == [(1,), (1, 1)]
    tight = plan_lanes(run, chosen, 2.5, times, lanes=2)
    assert [[r.number for r in lane.members] for lane in tight] == [[2]]
    # Without references (final.references false), the start network is not a member.
    off = prepare(load_config(write(tmp_path, "off", final={"references": False})))
    assert [r.number for r in final_members(recs, off)] == [3, 2, 1]


def test_a_barely_smaller_worse_member_is_left_to_the_better_one(tmp_path) -> None:
    """The 'smallest' alias once named 1.92k parameters at 0.64 beside the knee's 2.00k at
    0.83: the final phase trains the knee only, and the registry points both aliases at it."""
    run = prepare(load_config(write(tmp_path, "near", final={"max_epochs": 1})))
    run.open()
    for t in (
        trained(0, 1920, 0.64, 0.01),
        trained(1, 2000, 0.83, 0.01),
        trained(2, 15000, 0.90, 0.01),
    ):
        run.study.add_trial(t)
    recs = run.records()
    assert stand_in(recs[0], recs).number == 1  # within 10% of its size, more accurate
    assert stand_in(recs[1], recs) is None and stand_in(recs[2], recs) is None
    assert [r.number for r in final_members(recs, run)] == [2, 1]
    train_final(run, budget=30.0, line=lambda _: None)
    assert set(final_runs(run.study)) == {1, 2}
    done = register_front(run, run.cfg.registry.rule())
    assert set(done["versions"]) == {1, 2}
    assert done["aliases"]["smallest"][0] == 1 and done["aliases"]["champion"][0] == 2


def test_contenders_within_the_champions_limits_are_trained_and_registered(tmp_path) -> None:
    """final.contenders: the next front members within the champion's size limit, the most
    accurate in the search first, are trained beside the champion and registered; the
    aliases stay on the search's scores."""
    front = [
        trained(0, 900, 0.70, 0.01),
        trained(1, 3000, 0.85, 0.01),
        trained(2, 8000, 0.88, 0.01),
        trained(3, 12000, 0.90, 0.01),  # the champion: the best of at most 12k
        trained(4, 40000, 0.95, 0.01),  # above the limit: never a contender
    ]
    recs = records(front)
    limits = {"registry": {"champion_max_params": 12000}}

    def run_with(name: str, **final):
        return prepare(load_config(write(tmp_path, name, final=final, **limits)))

    two = run_with("two", members="champion", contenders=2)
    assert [r.number for r in final_members(recs, two)] == [3, 2, 1]
    one = run_with("one", members="champion", contenders=1)
    assert [r.number for r in final_members(recs, one)] == [3, 2]
    none = run_with("none", members="champion")
    assert [r.number for r in final_members(recs, none)] == [3]
    # With the aliases' members, a contender is one no alias already names.
    chosen = [r.number for r in final_members(recs, run_with("al", contenders=1))]
    assert chosen[0] == 3 and len(chosen) == len(set(chosen))
    assert len(chosen) == len(final_members(recs, run_with("al0"))) + 1
    # Trained for real and registered beside the champion, which keeps its alias.
    run = run_with("reg", members="champion", contenders=1, max_epochs=1)
    run.open()
    for t in front:
        run.study.add_trial(t)
    train_final(run, budget=30.0, line=lambda _: None)
    assert set(final_runs(run.study)) == {2, 3}
    done = register_front(run, run.cfg.registry.rule())
    assert set(done["versions"]) == {2, 3}
    assert done["aliases"]["champion"][0] == 3
    assert all(trial != 2 for trial, _ in done["aliases"].values())


def test_the_front_picture_shows_the_final_networks_and_the_reference(tmp_path) -> None:
    from cnnas.search.report import pareto_plot

    recs = records(
        [
            trained(0, 90000, 0.85, 1.0, start=0),
            trained(1, 1000, 0.10, 1.0),  # never learned: below the axis, said so
            trained(2, 5000, 0.90, 1.0),
            trained(3, 20000, 0.95, 1.0),
        ]
    )
    top = [r for r in recs if r.number in (2, 3)]
    png, html = pareto_plot(recs, top, "params", tmp_path, "t", {3: 0.97, 0: 0.96}, {0})
    assert png.read_bytes()[:4] == b"\x89PNG"
    page = html.read_text()
    # Each final network at its test accuracy, the reference in a series of its own.
    for name, y in (
        ("after the final phase: test accuracy", "[0.97]"),
        ("reference (study.start_from): test accuracy", "[0.96]"),
    ):
        assert f'"name":"{name}"' in page and f'"y":{y}' in page, name


def test_the_probe_times_each_member_on_a_twelfth_of_the_final_data(tmp_path) -> None:
    run = prepare(load_config(write(tmp_path, "probe")))
    recs = records([trained(0, 1000, 0.80, 1.0), trained(1, 5000, 0.90, 2.0)])
    data = final_data(run)
    seen: list[tuple[int, int]] = []

    def timed(spec, probe, cfg, **kwargs):
        seen.append((len(probe.train_y), cfg.epochs))
        return fit(spec, probe, cfg, **kwargs)

    run.trainer = timed
    times = probe_epochs(run, recs, data)
    n = len(data.train_y) // 12
    assert seen == [(n, 3), (n, 3)]
    assert set(times) == {0, 1} and all(t > 0 for t in times.values())


def test_a_slow_first_network_leaves_the_others_only_the_time_that_is_left(tmp_path) -> None:
    """The plan comes from the search's epoch times; when the champion's training takes far
    longer than planned, the networks left are re-planned into the time left (here: none, so
    one epoch each, the least that keeps every alias trained on the final data)."""
    run = prepare(load_config(write(tmp_path, "slow", final={"max_epochs": 4})))
    run.open()
    for t in (trained(0, 1000, 0.80, 0.01), trained(1, 5000, 0.90, 0.02)):
        run.study.add_trial(t)
    calls: list[int] = []

    def slow_first(spec, data, cfg, **kwargs):
        calls.append(cfg.epochs)
        if len(calls) == 1:
            time.sleep(3.0)  # a machine slower than the search's epochs said
        return fit(spec, data, cfg, **kwargs)

    run.trainer = slow_first
    said: list[str] = []
    done = train_final(run, budget=2.0, line=said.append)
    assert calls == [4, 1]  # the champion its planned 4 epochs, the other what is left: 1
    assert [f.trial for f in done] == [1, 0] and [f.epochs for f in done] == [4, 1]
    assert any("the 1 network(s) left: 1 epoch(s) each" in s for s in said), said
    assert set(final_runs(run.study)) == {0, 1}


def test_networks_faster_than_planned_train_the_epochs_their_time_allows(tmp_path) -> None:
    """A plan from search epochs far slower than the final ones (as in a study of two CPU
    workers, whose epochs ran at one thread each): each network trains for its share of the
    time, its epochs re-planned at the pace it meets (up to final.max_epochs), not the plan's
    few; and the network left is planned at the pace measured."""
    run = prepare(load_config(write(tmp_path, "fast", final={"max_epochs": 12})))
    run.open()
    for t in (trained(0, 1000, 0.80, 1.0), trained(1, 5000, 0.90, 1.0)):
        run.study.add_trial(t)  # 1 s a search epoch each; digits epochs take a few ms
    calls: list[int] = []

    def counted(spec, data, cfg, **kwargs):
        calls.append(cfg.epochs)
        return fit(spec, data, cfg, **kwargs)

    run.trainer = counted
    said: list[str] = []
    done = train_final(run, budget=10.0, line=said.append)
    assert calls[0] == 4, said  # the plan: 10 s // (2 networks x about 1.1 s) = 4 epochs
    assert calls[1] > 4, (calls, said)
    assert any(f"the 1 network(s) left: {calls[1]} epoch(s) each" in s for s in said), said
    # Digits epochs take milliseconds: each network's 5 s allow far more than the plan's 4.
    assert [f.epochs for f in done] == [12, 12], (done, said)


def test_a_second_final_phase_keeps_the_networks_the_first_trained(tmp_path) -> None:
    """A resumed (or repeated) final phase trains only the members no earlier run trained on
    the same data: the champion's record here is kept, the other network is trained."""
    run = prepare(load_config(write(tmp_path, "keep", final={"max_epochs": 2})))
    run.open()
    for t in (trained(0, 1000, 0.80, 0.01), trained(1, 5000, 0.90, 0.02)):
        run.study.add_trial(t)
    calls: list[int] = []

    def counted(spec, data, cfg, **kwargs):
        calls.append(spec.blocks[0].filters)
        return fit(spec, data, cfg, **kwargs)

    run.trainer = counted
    first = train_final(run, budget=30.0, line=lambda _: None)
    assert [f.trial for f in first] == [1, 0] and len(calls) == 2
    champion = final_runs(run.study)[1]
    # An earlier run that was killed after the champion: only its record is on the study.
    run.study.set_user_attr("final_runs", {"1": champion.to_dict()})
    said: list[str] = []
    second = train_final(run, budget=30.0, line=said.append)
    assert len(calls) == 3  # trial 0 alone was trained again
    assert [f.trial for f in second] == [1, 0] and second[0] == champion
    assert any("trial 1 kept from an earlier run" in s for s in said), said
    assert set(final_runs(run.study)) == {0, 1}
    # Everything trained: a third phase trains nothing, and says why not.
    said.clear()
    assert [f.trial for f in train_final(run, budget=30.0, line=said.append)] == [1, 0]
    assert len(calls) == 3 and not any("skipped" in s for s in said), said
    # Trained on other data (final.data changed): not kept.
    other = prepare(load_config(write(tmp_path, "keep", final={"max_epochs": 2, "data": "train"})))
    other.open()
    other.trainer = counted
    train_final(other, budget=30.0, line=lambda _: None)
    assert len(calls) == 5


def test_searched_before_is_the_union_of_the_earlier_trials_spans() -> None:
    t0 = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)

    def span(start: float, stop: float | None) -> SimpleNamespace:
        end = None if stop is None else t0 + timedelta(seconds=stop)
        return SimpleNamespace(datetime_start=t0 + timedelta(seconds=start), datetime_complete=end)

    trials = [
        span(0, 10),  # one run: 0-10 s, two workers overlapping from 5 s to 12 s
        span(5, 12),
        span(100, 130),  # a later run, after a pause the spans leave out
        span(120, None),  # killed while running: no end, not counted
        span(500, 560),  # this run's: started after `before`
    ]
    before = (t0 + timedelta(seconds=400)).timestamp()
    assert searched_before(trials, before) == pytest.approx(12 + 30)
    assert searched_before(trials, t0.timestamp()) == 0.0


def test_a_small_dataset_gets_defaults_of_its_size(tmp_path) -> None:
    cfg = load_config(write(tmp_path, "tiny"))
    sized = size_for(cfg, train_images=82, pool_images=103)
    # What the config named (batch 64, 2 epochs) stays; the rest follows the dataset's size.
    assert sized.cfg.train.batch_size == 64 and sized.cfg.train.epochs == 2
    assert sized.cfg.data.val_fraction == 0.2
    assert sized.cfg.study.max_params == 20_000 and sized.cfg.space.max_filters == 32
    bare = load_config(None).replace("data", dataset="digits")
    sized = size_for(bare, train_images=82, pool_images=103)
    assert sized.cfg.train.batch_size == 8  # 82 train images: at least 16 steps an epoch
    assert sized.cfg.train.epochs == 40  # 400 steps at 10 an epoch
    assert "train.batch_size 8" in sized.line(82) and "train.epochs 40" in sized.line(82)
    big = size_for(bare, train_images=54000, pool_images=60000)
    assert big.cfg == bare and big.line(54000) is None


# --- studies ----------------------------------------------------------------------------------


def test_a_timed_study_hands_over_networks_trained_in_its_final_phase(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The search ends at its 4 trials well before the timeout; the final phase gets the rest,
    # bounded by final.max_epochs to keep the test short.
    config = write(tmp_path, "timed", study={"trials": 4, "timeout": 300}, final={"max_epochs": 3})
    rc, out, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    assert "final training:" in out and "(final.max_epochs 3)" in out
    study = study_of(tmp_path, "timed")
    finals = final_runs(study)
    assert finals, out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'cnnas-timed'")
    # The registered versions are the final phase's networks, with its test accuracies.
    assert {int(v.tags["cnnas.trial"]) for v in versions} == set(finals)
    for v in versions:
        f = finals[int(v.tags["cnnas.trial"])]
        assert v.run_id == f.run_id and v.tags["cnnas.refit"] == "final"
        assert float(v.tags["test_acc"]) == pytest.approx(f.test_acc, abs=1e-6)
        assert float(v.tags["val_acc"]) == pytest.approx(f.search_val_acc, abs=1e-6)
        run = client.get_run(f.run_id)
        assert run.data.tags["cnnas.role"] == "final" and run.info.status == "FINISHED"
        assert run.data.metrics["test_acc"] == pytest.approx(f.test_acc)
        # trained on the whole pool: train + validation
        assert f.data == "train+val"
    champion = client.get_model_version_by_alias("cnnas-timed", "champion")
    assert int(champion.tags["cnnas.trial"]) in finals
    rc, out, err = cnnas("pareto", "timed", "--config", config, "--json", "--no-test")
    assert rc == 0, err
    doc = json.loads(out)
    retrained = [t for t in doc["front"] if t["final_test_acc"] is not None]
    assert {t["number"] for t in retrained} == set(finals)
    assert "rank_agreement" in doc


def test_two_workers_train_the_final_networks_side_by_side_with_the_reference(
    tmp_path, monkeypatch
):
    """study.workers 2: the search in two processes, then the final phase in two lanes, the
    study.start_from network (the reference) alone in one for the whole phase; it is
    registered with the alias start, and what `cnnas pull` gives scores its recorded test
    accuracy to the last image (the weights crossed from the lane whole)."""
    monkeypatch.chdir(tmp_path)
    point = {"blocks": 1, "base_filters": 8, "pool_0": "max", "aggregation": "flatten"}
    config = write(
        tmp_path,
        "lanes",
        study={"trials": 4, "timeout": 40, "workers": 2, "start_from": [point]},
        final={"max_epochs": 6},
    )
    rc, out, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    assert "in 2 lanes side by side" in out and "(reference)" in out, out
    finals = final_runs(study_of(tmp_path, "lanes"))
    refs = [f for f in finals.values() if f.reference]
    assert [f.trial for f in refs] == [0], finals  # the start point ran as trial 0
    # Alone in its lane for the whole phase: more epochs than the search's networks' cap.
    assert refs[0].epochs > 6 and all(f.epochs <= 6 for f in finals.values() if not f.reference)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    start = client.get_model_version_by_alias("cnnas-lanes", "start")
    assert int(start.tags["cnnas.trial"]) == 0 and start.run_id == refs[0].run_id
    rc, out, err = cnnas("pull", "cnnas-lanes@start", "--out", tmp_path / "ref", "--config", config)
    assert rc == 0, err
    rc, out, err = cnnas("evaluate", tmp_path / "ref", "--json")
    assert rc == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(refs[0].test_acc, abs=1e-12)
    rc, out, err = cnnas("pareto", "lanes", "--config", config, "--no-test")
    assert rc == 0 and "(reference: study.start_from)" in out, (out, err)


def test_a_head_start_trains_the_reference_from_the_studys_start(tmp_path, monkeypatch):
    """final.head_start: the start network (fully given, so known before any trial) trains in
    a lane of its own from the study's start while the one worker left searches; the final
    phase trains the champion and records the reference, registered as start, trained for
    about the whole study rather than the final phase's 30%."""
    monkeypatch.chdir(tmp_path)
    point = {
        "blocks": 1,
        "base_filters": 8,
        "batch_norm": True,
        "block_dropout": 0.1,
        "pool_0": "max",
        "aggregation": "flatten",
    }
    config = write(
        tmp_path,
        "head",
        study={"trials": 6, "timeout": 60, "workers": 2, "start_from": [point]},
        final={"share": 0.3, "max_epochs": 3, "head_start": True, "members": "champion"},
    )
    rc, out, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    assert "head start: trial 0 (reference" in out, out
    assert "worker process(es)" not in out, "the other worker's cores train the reference"
    finals = final_runs(study_of(tmp_path, "head"))
    refs = [f for f in finals.values() if f.reference]
    assert [f.trial for f in refs] == [0], finals
    assert refs[0].seconds > 30, refs  # the final phase alone had 18 s
    assert all(f.epochs <= 3 for f in finals.values() if not f.reference)
    assert len(finals) == 2, "the champion was trained in the final phase beside it"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    start = client.get_model_version_by_alias("cnnas-head", "start")
    assert start.run_id == refs[0].run_id
    history = client.get_metric_history(refs[0].run_id, "train_loss")
    assert len(history) == refs[0].epochs, "every epoch is in its MLflow run"


def test_without_a_timeout_the_final_phase_takes_its_share_of_the_searchs_time(tmp_path):
    config = write(tmp_path, "counted", final={"share": 0.5, "members": "champion"})
    rc, _, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    finals = final_runs(study_of(tmp_path, "counted"))
    assert len(finals) == 1
    (f,) = finals.values()
    # The champion alone, about as long as the whole search: many more epochs than a trial.
    assert f.epochs > 2


def test_final_share_0_registers_the_search_networks(tmp_path):
    config = write(tmp_path, "nofinal", final={"share": 0.0})
    rc, out, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    assert "final training" not in out
    assert final_runs(study_of(tmp_path, "nofinal")) == {}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'cnnas-nofinal'")
    assert versions and all(v.tags["cnnas.refit"] == "0" for v in versions)


def test_a_latency_study_draws_its_front_against_milliseconds(tmp_path):
    config = write(
        tmp_path,
        "fast",
        study={"complexity": "latency"},
        final={"share": 0.0},
        latency={"budget": 0.02},
    )
    rc, out, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    assert " ms" in out  # the progress line shows the front's size in milliseconds
    study = study_of(tmp_path, "fast")
    assert study.metric_names == ["val_acc", "latency"]
    for t in study.trials:
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["latency_batch_ms"] > 0
        assert t.values[1] == t.user_attrs["latency_ms"]
    cache = json.loads((tmp_path / "runs" / "latency-cache.json").read_text())
    assert len(cache) == len({t.user_attrs["spec_hash"] for t in study.trials})
    rc, out, err = cnnas(
        "pareto", "fast", "--config", config, "--json", "--no-test", "--out", tmp_path / "plots"
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["complexity"] == "latency" and doc["front"]
    assert (tmp_path / "plots" / "pareto.png").is_file()
    from cnnas.search.report._plots import axis_label

    assert axis_label("latency") == "latency (ms per image)"


def test_every_trial_records_its_latency_whatever_the_axis(tmp_path):
    config = write(tmp_path, "anyaxis", final={"share": 0.0}, latency={"budget": 0.02})
    rc, _, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    trials = study_of(tmp_path, "anyaxis").trials
    assert all(t.user_attrs["latency_ms"] > 0 for t in trials)


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_a_129_image_folder_learns_with_the_default_settings(tmp_path, monkeypatch, capsys):
    """Real pictures (Fashion-MNIST trousers, bags and sneakers, 43 each) as a user's folder;
    only the dataset and a short trial count are configured."""
    from PIL import Image

    from cnnas.objectives import read_idx

    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    folder = tmp_path / "clothes"
    for cls, name in ((1, "trouser"), (8, "bag"), (7, "sneaker")):
        (folder / name).mkdir(parents=True)
        for i, k in enumerate(np.flatnonzero(labels == cls)[:43]):
            Image.fromarray(images[k]).save(folder / name / f"{i}.png")
    assert sum(1 for _ in folder.rglob("*.png")) == 129
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "study": {"name": "clothes", "trials": 6},
                "data": {"dataset": "image-folder", "path": str(folder)},
            }
        )
    )
    rc, out, err = cnnas("study", "start", "--config", "study.yaml", "--no-report")
    assert rc == 0, err
    assert "small dataset (" in out and "train.batch_size 8" in out
    finals = final_runs(study_of(tmp_path, "clothes", "cnnas-runs"))
    best = max(f.test_acc for f in finals.values())
    assert best >= 0.7, (best, out)  # chance is 1/3
