from __future__ import annotations

import dataclasses
import math

import pytest
import pytorch_lightning as pl
import torch

from cnnas.models import ArchSpec, ConvBlock, DenseLayer, count_macs, count_params
from cnnas.objectives import Batches, TrainConfig, cpu_has_bf16, epoch_seconds, evaluate, fit

FAST = TrainConfig(epochs=3, batch_size=64, lr=3e-3)


def small_spec(data, **block) -> ArchSpec:
    return ArchSpec(
        data.input_shape,
        data.num_classes,
        (ConvBlock(8, pool="max", **block), ConvBlock(16, pool="max")),
        "flatten",
        (DenseLayer(32),),
    )


def test_batches_cover_every_image_once_per_pass() -> None:
    x = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1)
    y = torch.arange(103)
    batches = Batches(x, y, 10, shuffle=True, seed=3)
    assert len(batches) == 11
    first = torch.cat([yb for _, yb in batches])
    second = torch.cat([yb for _, yb in batches])
    assert sorted(first.tolist()) == list(range(103))
    assert first.tolist() != second.tolist(), "each pass draws a new order"
    for xb, yb in batches:  # images stay aligned with their labels
        assert torch.equal(xb.view(-1).long(), yb)
    again = Batches(x, y, 10, shuffle=True, seed=3)
    assert torch.equal(torch.cat([yb for _, yb in again]), first), "same seed, same order"


def test_batches_drop_last_and_keep_order_without_shuffle() -> None:
    x, y = torch.zeros(25, 1, 2, 2, dtype=torch.uint8), torch.arange(25)
    dropped = Batches(x, y, 10, drop_last=True)
    assert len(dropped) == 2 and [len(b) for _, b in dropped] == [10, 10]
    kept = Batches(x, y, 10)
    assert torch.equal(torch.cat([b for _, b in kept]), y)
    # A set smaller than one batch keeps its only batch even with drop_last.
    assert len(Batches(x[:5], y[:5], 10, drop_last=True)) == 1
    with pytest.raises(ValueError, match="differ in length"):
        Batches(x, y[:3], 10)


def test_epoch_seconds_times_three_epochs_on_a_fraction_and_scales_up(digits) -> None:
    seen = []

    def timed(spec, probe, cfg, **kwargs):
        seen.append((len(probe.train_y), len(probe.val_y), cfg.epochs, cfg.max_seconds))
        return fit(spec, probe, cfg, **kwargs)

    budgeted = TrainConfig(epochs=40, batch_size=64, max_seconds=5.0)
    seconds = epoch_seconds(small_spec(digits), digits, budgeted, fraction=4, trainer=timed)
    n, v = len(digits.train_y) // 4, len(digits.val_y) // 4
    assert seen == [(n, v, 3, None)]  # three epochs whatever the fit's own length or limit
    assert seconds > 0


def test_fit_returns_a_complete_result(digits) -> None:
    spec = small_spec(digits)
    r = fit(spec, digits, FAST)
    assert r.epochs == 3
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"):
        assert len(r.curves[name]) == 3, name
    assert r.val_acc == r.curves["val_acc"][-1]
    assert r.params == count_params(spec) and r.macs == count_macs(spec)
    assert r.ratio == pytest.approx(r.val_acc / r.params)
    assert 0.5 < r.val_acc <= 1.0, "a small CNN learns 8x8 digits in 3 epochs"
    assert all(math.isfinite(v) for v in r.metrics().values())
    assert r.seconds > 0 and not r.model.training


def test_fit_is_deterministic_under_a_seed(digits) -> None:
    spec = small_spec(digits, batch_norm=True, dropout=0.2)
    a, b = fit(spec, digits, FAST, seed=5), fit(spec, digits, FAST, seed=5)
    assert a.curves["val_loss"] == b.curves["val_loss"]
    assert a.curves["train_loss"] == b.curves["train_loss"]
    c = fit(spec, digits, FAST, seed=6)
    assert c.curves["train_loss"] != a.curves["train_loss"]


def test_returned_model_is_the_one_scored(digits) -> None:
    r = fit(small_spec(digits), digits, FAST)
    loss, acc = evaluate(r.model, digits.val_x, digits.val_y, digits.mean, digits.std)
    assert acc == pytest.approx(r.val_acc)
    assert loss == pytest.approx(r.val_loss, rel=1e-4)


class _Seen(pl.Callback):
    """Records the numerics and layout the trainer chose, as the fit starts."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        # Not on_fit_start: the module's own (which moves the network to NHWC) runs after it.
        self.precision = trainer.precision
        # The last conv's: a first conv over one channel is NHWC and NCHW at once.
        weight = [p for p in module.parameters() if p.dim() == 4][-1]
        self.channels_last = weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_training_is_scored_in_fp32(digits) -> None:
    # The recorded score is what the saved fp32 network gives, to the last image.
    cfg = dataclasses.replace(FAST, precision="bf16-mixed")
    r = fit(small_spec(digits, batch_norm=True), digits, cfg, callbacks=[seen := _Seen()])
    assert seen.precision == "bf16-mixed"
    loss, acc = evaluate(r.model, digits.val_x, digits.val_y, digits.mean, digits.std)
    assert acc == r.val_acc
    assert loss == pytest.approx(r.val_loss, rel=1e-5)
    assert r.val_acc > 0.5, "bf16 training learns as fp32 does"


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_the_memory_format_trains_and_the_model_comes_back_plain(digits, memory_format) -> None:
    cfg = dataclasses.replace(FAST, memory_format=memory_format)
    r = fit(small_spec(digits, batch_norm=True), digits, cfg, callbacks=[seen := _Seen()])
    assert seen.channels_last == (memory_format == "channels_last")
    # NCHW again: exporters, safetensors and users get the layout they expect.
    assert all(p.is_contiguous() for p in r.model.parameters())
    assert r.val_acc > 0.5


def test_auto_trains_depthwise_networks_in_fp32(digits) -> None:
    plain, separable = small_spec(digits), small_spec(digits, block_type="separable")
    seen_plain, seen_separable = _Seen(), _Seen()
    fit(plain, digits, dataclasses.replace(FAST, epochs=1), callbacks=[seen_plain])
    fit(separable, digits, dataclasses.replace(FAST, epochs=1), callbacks=[seen_separable])
    # bf16 where this CPU runs it natively; depthwise convs run more slowly in it, so never.
    assert seen_plain.precision == ("bf16-mixed" if cpu_has_bf16() else "32-true")
    assert seen_separable.precision == "32-true"
    assert seen_plain.channels_last == torch.backends.mkldnn.is_available()


def test_learning_rate_decays_on_a_validation_plateau(digits) -> None:
    cfg = TrainConfig(
        epochs=8, batch_size=64, lr=3e-3, lr_patience=0, lr_factor=0.5, schedule="plateau"
    )
    r = fit(small_spec(digits), digits, cfg)
    lr, acc = r.curves["lr"], r.curves["val_acc"]
    assert lr[0] == pytest.approx(3e-3)
    best = acc[0]
    for i in range(1, len(acc) - 1):
        improved = acc[i] > best * (1 + 1e-4)
        best = max(best, acc[i])
        # patience 0: an epoch without improvement halves the rate for the next epoch
        assert lr[i + 1] == pytest.approx(lr[i] if improved else lr[i] * 0.5), (i, acc, lr)


def test_fit_refuses_a_spec_for_other_data(digits) -> None:
    spec = ArchSpec((1, 28, 28), 10, (ConvBlock(4),))
    with pytest.raises(ValueError, match="dataset 'digits'"):
        fit(spec, digits, FAST)


def test_training_never_reads_the_test_split(digits, monkeypatch) -> None:
    """Poison the test images: the scores must not change."""
    import dataclasses

    spec = small_spec(digits)
    clean = fit(spec, digits, FAST)
    poisoned = dataclasses.replace(
        digits,
        test_x=torch.full_like(digits.test_x, 255),
        test_y=torch.zeros_like(digits.test_y),
    )
    dirty = fit(spec, poisoned, FAST)
    assert dirty.curves["val_loss"] == clean.curves["val_loss"]


def test_callbacks_see_each_epoch_complete_at_its_end(digits) -> None:
    """Progress and pruning callbacks read the epoch that just ended, not the one before."""
    import pytorch_lightning as pl

    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            seen.append({k: list(v) for k, v in module.curves.items()})
            assert trainer.callback_metrics["val_acc"] == module.curves["val_acc"][-1]

    r = fit(small_spec(digits), digits, FAST, callbacks=[Spy()])
    assert [len(s["train_loss"]) for s in seen] == [1, 2, 3]
    assert [len(s["val_acc"]) for s in seen] == [1, 2, 3]
    assert seen[-1]["train_loss"] == r.curves["train_loss"]
