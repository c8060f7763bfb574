from __future__ import annotations

import pytest
import torch

from cnnas.models import ArchSpec, ConvBlock, DenseLayer
from cnnas.objectives import Augment, TrainConfig, augment, fit


def batch(n: int = 16, c: int = 1, h: int = 12, w: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, h, w), generator=g).float()


def test_off_is_the_identity() -> None:
    x = batch()
    assert augment(x, Augment()) is x
    assert not Augment().active and Augment(translate=1).active and Augment(flip=True).active


@pytest.mark.parametrize(
    "aug", [Augment(translate=2), Augment(rotate=15), Augment(flip=True), Augment(2, 10, True)]
)
def test_shapes_dtype_and_device_are_kept(aug: Augment) -> None:
    x = batch(c=3)
    y = augment(x, aug, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_each_image_stays_at_its_index() -> None:
    """Label alignment: image i of the output is a transform of image i of the input."""
    x = torch.zeros(8, 1, 9, 9)
    for i in range(8):
        x[i, 0, 4, 4] = 100.0 + i  # one bright pixel per image, its value is its identity
    y = augment(x, Augment(translate=2, flip=True), torch.Generator().manual_seed(3))
    for i in range(8):
        # bilinear resampling spreads the pixel, but only image i carries the value 100 + i
        peak = y[i].max()
        assert peak > 0
        assert (y[i] <= 100.0 + i + 1e-3).all()
        assert torch.isclose(y[i].sum(), torch.tensor(100.0 + i), rtol=0.05)


def test_shifts_stay_within_translate() -> None:
    x = torch.zeros(64, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0
    y = augment(x, Augment(translate=2), torch.Generator().manual_seed(0))
    rows = (y[:, 0].sum(2) * torch.arange(15.0)).sum(1) / y[:, 0].sum((1, 2))
    cols = (y[:, 0].sum(1) * torch.arange(15.0)).sum(1) / y[:, 0].sum((1, 2))
    assert ((rows - 7).abs() <= 2 + 1e-4).all() and ((cols - 7).abs() <= 2 + 1e-4).all()
    assert (rows - 7).abs().max() > 0.5, "something moved"


def test_flip_mirrors_about_half() -> None:
    x = torch.arange(10.0).view(1, 1, 1, 10).repeat(200, 1, 1, 1)
    y = augment(x, Augment(flip=True), torch.Generator().manual_seed(0))
    flipped = (y[:, 0, 0, 0] == 9).sum().item()
    assert 60 < flipped < 140
    assert ((y[:, 0, 0, 0] == 0) | (y[:, 0, 0, 0] == 9)).all()


def test_same_generator_same_result() -> None:
    x, aug = batch(), Augment(translate=2, rotate=10, flip=True)
    a = augment(x, aug, torch.Generator().manual_seed(5))
    b = augment(x, aug, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_training_with_augmentation_learns_and_changes_the_run(digits) -> None:
    spec = ArchSpec(
        digits.input_shape, 10, (ConvBlock(16, pool="max"),), "flatten", (DenseLayer(32),)
    )
    plain = TrainConfig(epochs=4, batch_size=64, lr=3e-3)
    aug = TrainConfig(epochs=4, batch_size=64, lr=3e-3, augment=Augment(translate=1, rotate=10))
    a, b = fit(spec, digits, plain), fit(spec, digits, aug)
    assert a.curves["train_loss"] != b.curves["train_loss"]
    assert b.val_acc > 0.6


def test_multi_head_training_records_each_head(digits) -> None:
    spec = ArchSpec(
        digits.input_shape,
        10,
        (ConvBlock(8),),
        "multiscale",
        heads="multi",
        predict="mean",
        aux_weight=0.5,
    )
    r = fit(spec, digits, TrainConfig(epochs=2, batch_size=64))
    assert set(k for k in r.curves if k.startswith("val_acc_head")) == {
        "val_acc_head0",
        "val_acc_head1",
        "val_acc_head2",
    }
    assert all(len(v) == 2 for v in r.curves.values())
    single = ArchSpec(digits.input_shape, 10, (ConvBlock(8),), "multiscale")
    assert not any(
        k.startswith("val_acc_head") for k in fit(single, digits, TrainConfig(epochs=1)).curves
    )
