"""spec -> nn.Module.

The module's structure follows the spec walk in ``_shapes.layers`` name for name, so a parameter
count or a MAC figure computed from the spec describes exactly the module built here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ._shapes import infer_shapes, multiscale_sections
from ._spec import ACTIVATIONS, AGGREGATIONS, POOLS, ArchSpec, ConvBlock, DenseLayer

__all__ = ["CNN", "MultiScale", "build"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "tanh": nn.Tanh,
}
_POOLS: dict[str, Callable[[], nn.Module] | None] = {
    "max": lambda: nn.MaxPool2d(2, 2),
    "avg": lambda: nn.AvgPool2d(2, 2),
    "conv": None,  # learnable: built in _conv_block, it needs the channel count
    "none": None,
}


class MultiScale(nn.Module):
    """Seed 000's multi-scale flatten: the map and its 2x2 and 4x4 max-pooled versions.

    ``forward`` returns the flattened sections; the network concatenates them for the main head
    and gives each pooled one to its own head when the spec asks for several heads.
    """

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__()
        self.windows = windows
        for k in windows[1:]:
            self.add_module(f"pool{k}", nn.MaxPool2d(k, k))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x.flatten(1)]
        for k in self.windows[1:]:
            out.append(getattr(self, f"pool{k}")(x).flatten(1))
        return out


_AGGREGATIONS: dict[str, Callable[[], nn.Module]] = {
    "flatten": nn.Flatten,
    "gap": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "multiscale": MultiScale,  # built with its windows in CNN
}
# The spec validates names against its own tuples; these asserts keep the two lists in step.
assert set(_ACTIVATIONS) == set(ACTIVATIONS)
assert set(_POOLS) == set(POOLS)
assert set(_AGGREGATIONS) == set(AGGREGATIONS)


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


def _conv_block(block: ConvBlock, c_in: int) -> nn.Sequential:
    layers: dict[str, nn.Module] = {}
    for i, kernel in enumerate(block.conv_kernels):
        pad = kernel // 2 if block.padding == "same" else 0
        layers[f"conv{i}"] = nn.Conv2d(
            c_in, block.filters, kernel, padding=pad, bias=not block.batch_norm
        )
        if block.batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(block.filters)
        layers[f"act{i}"] = _activation(block.activation)
        c_in = block.filters
    if block.pool == "conv":
        c = block.filters
        layers["pool"] = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=not block.batch_norm)
        if block.batch_norm:
            layers["pool_bn"] = nn.BatchNorm2d(c)
        layers["pool_act"] = _activation(block.activation)
    elif (pool := _POOLS[block.pool]) is not None:
        layers["pool"] = pool()
    if block.dropout:
        layers["drop"] = nn.Dropout(block.dropout)
    return nn.Sequential(OrderedDict(layers))


def _dense_layer(dense: DenseLayer, width: int) -> nn.Sequential:
    layers: dict[str, nn.Module] = {
        "linear": nn.Linear(width, dense.width),
        "act": _activation(dense.activation),
    }
    if dense.dropout:
        layers["drop"] = nn.Dropout(dense.dropout)
    return nn.Sequential(OrderedDict(layers))


class CNN(nn.Module):
    """The network a spec describes: ``features -> aggregate -> head -> classifier``.

    ``forward_heads`` returns the logits of every output head, the main head first; training sums
    their losses. ``forward`` returns what the network predicts: the main head's logits, or, for a
    multi-head spec with ``predict='mean'``, the log of the heads' mean probabilities (its argmax
    is the prediction and it works with ``nll_loss``).
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        blocks, c = [], spec.input_shape[0]
        for block in spec.blocks:
            blocks.append(_conv_block(block, c))
            c = block.filters
        self.features = nn.Sequential(*blocks)
        walk = infer_shapes(spec)
        agg = next(la for la in walk if la.kind == "aggregate")
        if spec.aggregation == "multiscale":
            self.aggregate = MultiScale(multiscale_sections(agg.in_shape))
        else:
            self.aggregate = _AGGREGATIONS[spec.aggregation]()
        width = agg.out_shape[0]
        head = []
        for dense in spec.dense:
            head.append(_dense_layer(dense, width))
            width = dense.width
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(width, spec.num_classes)
        aux = [la for la in walk if la.name.startswith("aux_heads.")]
        self.aux_heads = nn.ModuleList(nn.Linear(la.in_shape[0], spec.num_classes) for la in aux)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.aggregate(self.features(x))
        if isinstance(features, list):  # multi-scale sections
            sections, features = features, torch.cat(features, 1)
        main = self.classifier(self.head(features))
        if not len(self.aux_heads):
            return (main,)
        return (main, *(h(s) for h, s in zip(self.aux_heads, sections[1:], strict=True)))

    def combine(self, heads: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The prediction from all heads' logits, by the spec's rule."""
        if len(heads) == 1 or self.spec.predict == "main":
            return heads[0]
        probs = torch.stack([h.float().softmax(1) for h in heads]).mean(0)
        return probs.clamp_min(1e-12).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.forward_heads(x))


def build(spec: ArchSpec) -> CNN:
    """Builds the (randomly initialised) network that ``spec`` describes."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build() takes an ArchSpec, got {type(spec).__name__}")
    return CNN(spec)
