"""Training and labelling for the layer-skipping experiment (seed 001). Torch only.

Seed 001 trains with Keras' RMSprop and sparse categorical cross-entropy; :func:`train_rmsprop`
is that loop in plain PyTorch over in-memory uint8 batches, with the forward pass given by the
caller, so that CNN1, the router, CNN3 with its per-image depth and the exit classifiers all train
the same way. Lightning is not used here: the per-image routing and the frozen backbone of the exit
classifiers would need hooks for what is a ten-line loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._batches import Batches

__all__ = [
    "activation_scores",
    "earliest_correct",
    "predict_in_batches",
    "strongest_activation_labels",
    "train_rmsprop",
]

# forward(normalised float images, their indices into the training tensors) -> logits
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Keras' RMSprop defaults (the seed's optimiser): lr 1e-3, rho 0.9, epsilon 1e-7.
RMSPROP = {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}


def _normaliser(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, channels, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, channels, 1, 1)
    return lambda xb: (xb.to(device).float() - m) / s


def train_rmsprop(
    module: nn.Module,
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = RMSPROP["lr"],
    seed: int = 0,
    heads: int = 1,
    on_epoch: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
) -> dict[str, list[float]]:
    """Trains ``module``'s parameters that require grad with RMSprop and cross-entropy.

    ``forward(xb, idx)`` returns the logits of the normalised batch ``xb``, whose rows are
    ``x[idx]`` (so per-image side information such as a depth can be looked up). With ``heads``
    > 1 it returns the logits of that many classifiers stacked along the batch (head by head);
    the loss and accuracy are their means. Returns per-epoch
    curves ``train_loss``, ``train_acc``, ``epoch_seconds`` and whatever ``on_epoch(epoch,
    metrics)`` returns, appended under its keys.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(x) == 0:
        raise ValueError("no training images")
    device = next(module.parameters()).device
    norm = _normaliser(mean, std, x.shape[1], device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(params, lr=lr, alpha=RMSPROP["alpha"], eps=RMSPROP["eps"])
    index = torch.arange(len(x), device=x.device)
    batches = Batches(index, y, batch_size, shuffle=True, seed=seed)
    curves: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "epoch_seconds": []}
    for epoch in range(epochs):
        module.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for idx, yb in batches:
            yb = yb.to(device).repeat(heads)
            logits = forward(norm(x[idx]), idx.to(device))
            loss = nn.functional.cross_entropy(logits, yb)
            # set_to_none: a parameter no image of the batch reached keeps grad None, and
            # RMSprop skips it, so a skipped layer is not even touched by the running average.
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
        metrics = {
            "train_loss": float(loss_sum) / (len(x) * heads),
            "train_acc": float(correct) / (len(x) * heads),
            "epoch_seconds": time.perf_counter() - start,
        }
        if on_epoch is not None:
            metrics.update(on_epoch(epoch, metrics) or {})
        for k, v in metrics.items():
            curves.setdefault(k, []).append(v)
    return curves


@torch.no_grad()
def predict_in_batches(
    module: nn.Module,
    forward: Forward,
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Argmax of ``forward(xb, idx)`` over ``x`` in eval mode, as an int64 CPU tensor."""
    module.eval()
    device = next(module.parameters()).device
    norm = _normaliser(mean, std, x.shape[1], device)
    out = []
    for i in range(0, len(x), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(x)), device=device)
        out.append(forward(norm(x[i : i + batch_size]), idx).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def activation_scores(
    stage_outputs: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    module: nn.Module,
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    maps: int = 10,
    batch_size: int = 1024,
) -> list[torch.Tensor]:
    """Mean |activation| of the first ``maps`` feature maps of every layer, per image.

    ``stage_outputs(xb)`` returns each layer's (N, C, H, W) output. The result has one
    (len(x), maps) float tensor per layer, on the CPU.
    """
    module.eval()
    device = next(module.parameters()).device
    norm = _normaliser(mean, std, x.shape[1], device)
    per_layer: list[list[torch.Tensor]] = []
    for i in range(0, len(x), batch_size):
        outs = stage_outputs(norm(x[i : i + batch_size]))
        if not per_layer:
            per_layer = [[] for _ in outs]
        for k, a in enumerate(outs):
            if a.shape[1] < maps:
                raise ValueError(f"layer {k} has {a.shape[1]} feature maps, fewer than {maps}")
            per_layer[k].append(a[:, :maps].abs().mean(dim=(2, 3)).cpu())
    return [torch.cat(chunks) for chunks in per_layer]


def strongest_activation_labels(scores: Sequence[torch.Tensor], top: int = 10) -> torch.Tensor:
    """Seed 001's labelling: the layer at which an image gives one of the strongest activations.

    ``scores[k]`` is (N, M): image i's mean |activation| on feature map j of layer k. For every
    map of every layer, the ``top`` images with the highest score are labelled k; an image picked
    by several layers gets the highest such k ("the higher label was chosen since that
    convolutional layer was significant in processing the image"). Images picked by no map get
    -1. Returns an int64 tensor of length N.
    """
    if not scores:
        raise ValueError("scores needs at least one layer")
    n = len(scores[0])
    if top < 1 or top > n:
        raise ValueError(f"top must be in 1..{n} (the number of images), got {top}")
    labels = torch.full((n,), -1, dtype=torch.long)
    # Layers in increasing order, so a higher layer overwrites a lower one's label.
    for k, s in enumerate(scores):
        if len(s) != n:
            raise ValueError(f"layer {k} scores {len(s)} images, layer 0 scores {n}")
        picked = s.topk(top, dim=0).indices.flatten()
        labels[picked] = k
    return labels


def earliest_correct(correct: torch.Tensor) -> torch.Tensor:
    """Per image, the first layer whose exit classifier is right; the last layer if none is.

    ``correct`` is (N, L) bool: column k says whether the classifier after layer k is right.
    """
    if correct.ndim != 2 or correct.shape[1] < 1:
        raise ValueError(f"correct must be (N, layers), got shape {tuple(correct.shape)}")
    last = correct.shape[1] - 1
    # argmax of a 0/1 row is its first 1; rows of zeros fall back to the full depth.
    first = correct.to(torch.uint8).argmax(1)
    return torch.where(correct.any(1), first, torch.full_like(first, last))
