from __future__ import annotations

import pytest
import torch

from cnnas.models import SkipCNN, skip_spec
from cnnas.objectives._skip_train import (
    activation_scores,
    earliest_correct,
    predict_in_batches,
    strongest_activation_labels,
    train_rmsprop,
)


def test_labelling_picks_the_documented_images() -> None:
    # 12 images, 2 maps per layer, top 2 per map; every score is distinct, so the picks are known.
    n = 12
    s0 = torch.zeros(n, 2)
    s0[[0, 1], 0] = torch.tensor([9.0, 8.0])  # layer 0, map 0: images 0, 1
    s0[[2, 3], 1] = torch.tensor([7.0, 6.0])  # layer 0, map 1: images 2, 3
    s1 = torch.zeros(n, 2)
    s1[[3, 4], 0] = torch.tensor([5.0, 4.0])  # layer 1: image 3 repeats layer 0's pick
    s1[[5, 6], 1] = torch.tensor([5.0, 4.0])
    s2 = torch.zeros(n, 2)
    s2[[1, 6], 0] = torch.tensor([3.0, 2.0])  # layer 2: repeats of layer 0 (1) and layer 1 (6)
    s2[[7, 8], 1] = torch.tensor([3.0, 2.0])
    # Below the top 2 of its map: never picked although non-zero.
    s0[9, 0] = 1.0
    labels = strongest_activation_labels([s0, s1, s2], top=2)
    #                         0  1  2  3  4  5  6  7  8   9  10  11
    assert labels.tolist() == [0, 2, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]


def test_labelling_uses_only_the_top_images_of_each_map() -> None:
    torch.manual_seed(0)
    scores = [torch.rand(50, 3) for _ in range(3)]
    labels = strongest_activation_labels(scores, top=4)
    for k, s in enumerate(scores):
        for j in range(3):
            top = s[:, j].topk(4).indices
            assert (labels[top] >= k).all()
    picked = set().union(*(s.topk(4, dim=0).indices.flatten().tolist() for s in scores))
    assert set((labels >= 0).nonzero().flatten().tolist()) == picked
    with pytest.raises(ValueError, match="top"):
        strongest_activation_labels(scores, top=51)


def test_activation_scores_are_mean_abs_of_the_first_maps() -> None:
    torch.manual_seed(0)
    net = SkipCNN(skip_spec((1, 8, 8), 10, filters=4))
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    scores = activation_scores(net.stage_outputs, net, x, (100.0,), (50.0,), maps=3, batch_size=2)
    assert [s.shape for s in scores] == [(5, 3)] * 3
    outs = net.stage_outputs((x.float() - 100.0) / 50.0)
    for s, a in zip(scores, outs, strict=True):
        torch.testing.assert_close(s, a[:, :3].abs().mean((2, 3)))
    with pytest.raises(ValueError, match="fewer than 5"):
        activation_scores(net.stage_outputs, net, x, (0.0,), (1.0,), maps=5)


def test_earliest_correct_exit() -> None:
    correct = torch.tensor(
        [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool
    )
    assert earliest_correct(correct).tolist() == [0, 1, 2, 2, 0]


def test_train_rmsprop_learns_and_routes_depths() -> None:
    torch.manual_seed(0)
    n = 256
    y = torch.randint(0, 2, (n,))
    # Class 1 images are bright, class 0 dark: learnable in a few epochs.
    x = (y.view(n, 1, 1, 1) * 150 + torch.randint(0, 100, (n, 1, 8, 8))).to(torch.uint8)
    net = SkipCNN(skip_spec((1, 8, 8), 2, filters=2))
    depth = torch.ones(n, dtype=torch.long)
    before = net.features[2].conv0.weight.clone()
    curves = train_rmsprop(
        net, lambda xb, idx: net(xb, depth[idx]), x, y, (100.0,), (60.0,), epochs=3, batch_size=32
    )
    assert curves["train_acc"][-1] > 0.9
    assert len(curves["train_loss"]) == 3
    assert torch.equal(net.features[2].conv0.weight, before)
    pred = predict_in_batches(net, lambda xb, idx: net(xb, depth[idx]), x, (100.0,), (60.0,))
    assert (pred == y).float().mean() > 0.9
