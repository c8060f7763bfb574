"""Lanes: final-phase networks trained side by side in processes of their own, reporting to
the parent. Real processes, real training on digits."""

from __future__ import annotations

import io

import pytest
import torch

from cnnas.models import ArchSpec, ConvBlock, build
from cnnas.objectives import TrainConfig, evaluate
from cnnas.search._lanes import DataSource, Job, LaneEvent, LaneFailed, run_lanes

DIGITS = DataSource("digits", {}, seed=0, merge_val=True)


def spec(filters: int) -> dict:
    net = ArchSpec((1, 8, 8), 10, (ConvBlock(filters, batch_norm=True, pool="max"),))
    return net.to_dict()


def job(trial: int, filters: int, slot: float = 3.0) -> Job:
    cfg = TrainConfig(epochs=3, batch_size=64, accelerator="cpu", max_epochs=6)
    return Job(trial, spec(filters), cfg, seed=trial, slot=slot, epoch_seconds=0.1)


def test_two_lanes_train_their_networks_and_report_each_epoch_and_the_weights() -> None:
    events: list[LaneEvent] = []
    run_lanes([[job(0, 4)], [job(1, 8), job(2, 6)]], DIGITS, 20.0, 2, events.append)
    starts = [(e.lane, e.trial) for e in events if e.kind == "start"]
    assert sorted(starts) == [(0, 0), (1, 1), (1, 2)]
    # A lane trains its networks in order: trial 2 starts after trial 1 is done.
    order = [(e.kind, e.trial) for e in events if e.lane == 1 and e.kind != "epoch"]
    assert order == [("start", 1), ("done", 1), ("start", 2), ("done", 2)]
    done = {e.trial: e for e in events if e.kind == "done"}
    data = DIGITS.load()
    for trial, filters in ((0, 4), (1, 8), (2, 6)):
        e = done[trial]
        epochs = [x for x in events if x.kind == "epoch" and x.trial == trial]
        # Every epoch reported, in order, with its curves' values; at most the cap.
        assert [x.epoch for x in epochs] == list(range(int(e.result["epochs"])))
        assert 1 <= e.result["epochs"] <= 6 and "val_acc" in epochs[-1].values
        # The weights come back whole: the rebuilt network scores what the lane measured.
        net = build(ArchSpec.from_dict(spec(filters)))
        net.load_state_dict(torch.load(io.BytesIO(e.weights), weights_only=True))
        _, acc = evaluate(net.eval(), data.val_x, data.val_y, data.mean, data.std)
        assert acc == pytest.approx(e.result["val_acc"], abs=1e-9)
        assert e.result["curves"]["val_acc"][-1] == e.result["val_acc"]


def test_a_lane_whose_training_fails_stops_the_phase_with_its_traceback() -> None:
    bad = Job(5, {"input_shape": [1, 8, 8], "num_classes": 10, "blocks": []}, job(5, 4).cfg, 0,
              slot=3.0, epoch_seconds=0.1)  # fmt: skip
    events: list[LaneEvent] = []
    with pytest.raises(LaneFailed, match="needs at least one conv block"):
        run_lanes([[job(0, 4)], [bad]], DIGITS, 20.0, 2, events.append)


def test_an_error_in_the_parent_stops_the_lanes() -> None:
    """What the parent does with an event may fail (a store gone) or be interrupted (Ctrl-C):
    the lanes are stopped, not left training for nobody."""
    import multiprocessing

    def on_event(event: LaneEvent) -> None:
        if event.kind == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_lanes([[job(0, 4, slot=30.0)], [job(1, 4, slot=30.0)]], DIGITS, 60.0, 2, on_event)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("cnnas-lane")]
