"""spec -> nn.Module.

The module's structure follows the spec walk in ``_shapes.layers`` name for name, so a parameter
count or a MAC figure computed from the spec describes exactly the module built here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ._shapes import infer_shapes
from ._spec import ACTIVATIONS, AGGREGATIONS, POOLS, ArchSpec, ConvBlock, DenseLayer

__all__ = ["CNN", "build"]

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
    "none": None,
}
_AGGREGATIONS: dict[str, Callable[[], nn.Module]] = {
    "flatten": nn.Flatten,
    "gap": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
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
    for i in range(block.convs):
        pad = block.kernel // 2 if block.padding == "same" else 0
        layers[f"conv{i}"] = nn.Conv2d(
            c_in, block.filters, block.kernel, padding=pad, bias=not block.batch_norm
        )
        if block.batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(block.filters)
        layers[f"act{i}"] = _activation(block.activation)
        c_in = block.filters
    pool = _POOLS[block.pool]
    if pool is not None:
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

    ``forward`` returns the logits used for prediction. ``forward_heads`` returns the logits of
    every output head as a tuple, which is what training uses (one head today; the loss is summed
    over heads, so multi-head specs train through the same call).
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        blocks, c = [], spec.input_shape[0]
        for block in spec.blocks:
            blocks.append(_conv_block(block, c))
            c = block.filters
        self.features = nn.Sequential(*blocks)
        self.aggregate = _AGGREGATIONS[spec.aggregation]()
        width = next(la.out_shape[0] for la in infer_shapes(spec) if la.kind == "aggregate")
        head = []
        for dense in spec.dense:
            head.append(_dense_layer(dense, width))
            width = dense.width
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(width, spec.num_classes)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.classifier(self.head(self.aggregate(self.features(x)))),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(x)[0]


def build(spec: ArchSpec) -> CNN:
    """Builds the (randomly initialised) network that ``spec`` describes."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build() takes an ArchSpec, got {type(spec).__name__}")
    return CNN(spec)
