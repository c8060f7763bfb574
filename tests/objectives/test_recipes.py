"""The training recipes (optimiser, schedule, warm-up, label smoothing, a time limit) and the
latency measurement, on digits and tiny networks."""

from __future__ import annotations

import math
import time

import pytest
import torch

from cnnas.models import ArchSpec, ConvBlock, DenseLayer
from cnnas.objectives import (
    OPTIMIZERS,
    SCHEDULES,
    Latency,
    TrainConfig,
    evaluate,
    fit,
    measure_latency,
)
from cnnas.objectives._train import _cosine


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(digits) -> ArchSpec:
    return ArchSpec(
        input_shape=digits.input_shape,
        num_classes=digits.num_classes,
        blocks=(ConvBlock(16, batch_norm=True, pool="max"), ConvBlock(32, batch_norm=True)),
        aggregation="gap",
    )


def cfg(epochs: int = 4, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, accelerator="cpu", **kw)


def test_cosine_warms_up_then_decays_to_zero() -> None:
    f = _cosine(100, 0.1)
    assert [round(f(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02)
    assert f(99) < 0.001
    assert all(f(s) >= f(s + 1) for s in range(10, 99))  # monotone after the warm-up


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_recipe_trains(digits, optimizer, schedule) -> None:
    lr = 0.05 if optimizer == "sgd" else 3e-3
    r = fit(small(digits), digits, cfg(optimizer=optimizer, schedule=schedule, lr=lr, warmup=0.1))
    assert math.isfinite(r.train_loss) and r.val_acc > 0.2, (optimizer, schedule, r.val_acc)
    lrs = r.curves["lr"]
    if schedule == "constant":
        assert lrs == [lr] * 4
    if schedule == "cosine":
        # Read at each epoch's end: falling to about zero at the last step.
        assert lrs[0] > lrs[1] > lrs[2] > lrs[3] and lrs[3] < 0.01 * lr
    if schedule == "onecycle":
        assert max(lrs) <= lr * 1.0001 and lrs[-1] < 0.01 * lr


def test_label_smoothing_changes_the_optimised_loss_not_the_reported_one(digits) -> None:
    spec = small(digits)
    plain = fit(spec, digits, cfg(), seed=0)
    smooth = fit(spec, digits, cfg(label_smoothing=0.2), seed=0)
    assert plain.val_acc > 0.5 and smooth.val_acc > 0.5
    # The reported validation loss is the plain cross-entropy of the network's prediction.
    loss, _ = evaluate(smooth.model, digits.val_x, digits.val_y, digits.mean, digits.std)
    assert smooth.val_loss == pytest.approx(loss, rel=1e-4)


def test_unknown_optimizer_names_the_choices(digits) -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; known: adam, adamw, sgd"):
        fit(small(digits), digits, cfg(optimizer="lamb"))


def test_max_seconds_stops_a_fit_in_time(digits) -> None:
    start = time.perf_counter()
    r = fit(small(digits), digits, cfg(400, max_seconds=3.0))
    assert time.perf_counter() - start < 30
    assert 1 <= r.epochs < 400


def test_latency_is_measured_for_one_image_and_a_batch() -> None:
    spec = ArchSpec(
        input_shape=(1, 28, 28),
        num_classes=10,
        blocks=(ConvBlock(8, pool="max"), ConvBlock(16, pool="max")),
        aggregation="flatten",
        dense=(DenseLayer(32),),
    )
    before = torch.get_num_threads()
    lat = measure_latency(spec, threads=1, batch=16, budget=0.05)
    assert isinstance(lat, Latency) and lat.threads == 1 and lat.batch == 16
    assert 0 < lat.single_ms < lat.batch_ms
    assert torch.get_num_threads() == before  # the process's setting is restored


def test_a_big_network_is_timed_within_its_budget() -> None:
    big = ArchSpec(
        input_shape=(3, 128, 128),
        num_classes=10,
        blocks=tuple(ConvBlock(64, kernel=5, convs=2) for _ in range(3)),
        aggregation="gap",
    )
    start = time.perf_counter()
    measure_latency(big, budget=0.05, batch=4)
    # A warm-up and 3 runs each at least, however slow the network: bounded, not 50 runs.
    assert time.perf_counter() - start < 60


def test_latency_refuses_an_unknown_backend() -> None:
    spec = ArchSpec(input_shape=(1, 8, 8), num_classes=2, blocks=(ConvBlock(2),))
    with pytest.raises(ValueError, match="known: torch, onnxruntime"):
        measure_latency(spec, backend="tflite")
