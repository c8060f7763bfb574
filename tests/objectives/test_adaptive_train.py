"""Training an adaptive-depth network: every exit learns, and validation measures the MACs the
images actually ran."""

from __future__ import annotations

import math

import pytest

from cnnas.models import ArchSpec, ConvBlock, count_macs, stage_macs
from cnnas.objectives import TrainConfig, evaluate, fit

ONE_EPOCH = TrainConfig(epochs=1, batch_size=64, lr=3e-3)


def adaptive_spec(data, threshold: float) -> ArchSpec:
    return ArchSpec(
        data.input_shape,
        data.num_classes,
        (ConvBlock(8, pool="max"), ConvBlock(8), ConvBlock(8)),
        "gap",
        adaptive_depth=True,
        exit_threshold=threshold,
    )


def test_fit_records_the_executed_macs(digits) -> None:
    spec = adaptive_spec(digits, 0.5)
    r = fit(spec, digits, ONE_EPOCH)
    full = count_macs(spec)
    assert r.macs == full
    assert stage_macs(spec)[0] <= r.executed_macs <= full
    assert r.metrics()["executed_macs"] == r.executed_macs
    assert r.curves["val_executed_macs"] == [r.executed_macs]
    for k in (1, 2, 3):
        assert 0.0 <= r.curves[f"val_acc_exit{k}"][0] <= 1.0
    assert all(math.isfinite(v) for v in r.metrics().values())
    # val_acc is the adaptive prediction's, the one the returned model makes in eval mode (which
    # runs the sub-batches for real; a borderline confidence may round the other way there).
    _, acc = evaluate(r.model, digits.val_x, digits.val_y, digits.mean, digits.std)
    assert acc == pytest.approx(r.val_acc, abs=0.01)


@pytest.mark.slow
def test_threshold_one_runs_every_stage_and_ordinary_specs_report_their_macs(digits) -> None:
    spec = adaptive_spec(digits, 1.0)
    r = fit(spec, digits, ONE_EPOCH)
    assert r.executed_macs == count_macs(spec)
    plain = ArchSpec(digits.input_shape, digits.num_classes, spec.blocks, "gap")
    p = fit(plain, digits, ONE_EPOCH)
    assert p.executed_macs == p.macs == count_macs(plain)
    assert "val_executed_macs" not in p.curves
