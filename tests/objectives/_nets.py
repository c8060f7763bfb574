"""Small trained networks on the digits for the predictor and export tests, and an adaptive-depth
network whose images exit at every depth."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from cnnas.models import CNN, ArchSpec, ConvBlock, DenseLayer, build
from cnnas.objectives import ImageData

STATIC = ArchSpec(
    input_shape=(1, 8, 8),
    num_classes=10,
    blocks=(ConvBlock(6, batch_norm=True, pool="max"), ConvBlock(8, dropout=0.1)),
    aggregation="flatten",
    dense=(DenseLayer(16, dropout=0.2),),
)
# Seed 000's three heads, predicting the mean of their probabilities.
MULTI_HEAD = ArchSpec(
    input_shape=(1, 8, 8),
    num_classes=10,
    blocks=(ConvBlock(8, batch_norm=True, pool="none"),),
    aggregation="multiscale",
    heads="multi",
    aux_weight=0.5,
    predict="mean",
)
ADAPTIVE = ArchSpec(
    input_shape=(1, 8, 8),
    num_classes=10,
    blocks=(ConvBlock(8, pool="max"), ConvBlock(8, batch_norm=True), ConvBlock(8)),
    aggregation="gap",
    dense=(DenseLayer(16),),
    adaptive_depth=True,
    exit_threshold=0.9,
)


def normalised(x: torch.Tensor, data: ImageData) -> torch.Tensor:
    """The test's own normalisation, the oracle the predictor is compared with."""
    c = x.shape[1]
    mean = torch.tensor(data.mean).view(1, c, 1, 1)
    std = torch.tensor(data.std).view(1, c, 1, 1)
    return (x.float() - mean) / std


def trained(spec: ArchSpec, data: ImageData, *, steps: int = 80, seed: int = 0) -> CNN:
    """A few Adam steps on the digits, every head's (or exit's) loss summed; eval mode."""
    torch.manual_seed(seed)
    net = build(spec).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    x, y = normalised(data.train_x, data), data.train_y
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = sum(F.cross_entropy(h, y[idx]) for h in net.forward_heads(x[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def exits_at_every_depth(net: CNN, x: torch.Tensor, *, least: int = 5) -> CNN:
    """A copy of ``net`` at which at least ``least`` images of ``x`` (normalised) stop at each
    of its exits.

    A briefly trained network's first exit is the least sure of all, so no threshold lets it
    answer; its logits are scaled up (a sharper, still sensible exit), then the threshold is the
    first of a range at which every depth is used. Raises when none is.
    """
    base = copy.deepcopy(net)
    with torch.no_grad():
        base.exits[0].weight.mul_(12.0)
        base.exits[0].bias.mul_(12.0)
        confidence = torch.stack([e.softmax(1).amax(1) for e in base.forward_exits(x)])
    n = len(confidence)
    for t in torch.linspace(0.3, 0.9, 25).tolist():
        stop = confidence[:-1] >= t
        depth = torch.where(stop.any(0), stop.int().argmax(0) + 1, n)
        if bool((torch.bincount(depth, minlength=n + 1)[1:] >= least).all()):
            spec = dataclasses.replace(net.spec, exit_threshold=t)
            out = build(spec)
            out.load_state_dict(base.state_dict())
            return out.eval()
    raise AssertionError("no threshold makes the images stop at every depth")
