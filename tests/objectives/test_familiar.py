"""An image unlike the training images is flagged: inverted, photo-like, colour for a grayscale
model, far from the model's size; real images of the dataset are not."""

from __future__ import annotations

import torch

from cnnas.objectives import input_statistics, unfamiliar


def test_the_training_range_leaves_out_only_the_extremes(digits) -> None:
    stats = input_statistics(digits.train_x)
    assert stats["channels"] == 1 and (stats["height"], stats["width"]) == (8, 8)
    lo, hi = stats["image_mean"]
    means = digits.train_x.reshape(len(digits.train_x), -1).float().mean(1)
    inside = ((means >= lo) & (means <= hi)).float().mean()
    assert 0.98 <= float(inside) <= 1.0


def test_test_images_of_the_dataset_look_familiar(digits) -> None:
    stats = input_statistics(digits.train_x)
    flagged = sum(bool(unfamiliar(x, stats)) for x in digits.test_x[:200].float())
    assert flagged <= 4  # the 0.5% tails at each end, and the test split's own oddities


def test_an_inverted_image_is_unfamiliar(digits) -> None:
    stats = input_statistics(digits.train_x)
    inverted = 255 - digits.test_x[0].float()
    notes = unfamiliar(inverted, stats)
    assert notes and "mean brightness" in notes[0]


def test_a_photo_like_image_is_unfamiliar(digits) -> None:
    """A bright background with a dark object in the middle, as a product photo is."""
    stats = input_statistics(digits.train_x)
    photo = torch.full((1, 8, 8), 230.0)
    photo[:, 2:6, 2:6] = 40.0
    assert any("mean brightness" in n for n in unfamiliar(photo, stats))


def test_colour_and_size_are_named(digits) -> None:
    stats = input_statistics(digits.train_x)
    image = digits.test_x[0].float()
    notes = unfamiliar(image, stats, original_size=(480, 640), original_mode="RGB")
    assert any("480x640, far from the model's 8x8" in n for n in notes)
    assert any("colour" in n for n in notes)
    assert unfamiliar(image, stats, original_size=(16, 16), original_mode="L") == []


def test_a_model_without_stored_statistics_uses_its_normalisation(digits) -> None:
    inverted = 255 - digits.test_x[0].float()
    notes = unfamiliar(inverted, None, mean=digits.mean, std=digits.std)
    assert notes and "far from the training images'" in notes[0]
