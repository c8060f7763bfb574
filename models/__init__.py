"""Architecture specs and the networks they describe. Imports only torch."""

from __future__ import annotations

from ._build import CNN, build
from ._shapes import Layer, count_macs, count_params, infer_shapes, out_size
from ._spec import (
    ACTIVATIONS,
    AGGREGATIONS,
    PADDINGS,
    POOLS,
    ArchSpec,
    ConvBlock,
    DenseLayer,
    SpecError,
)

__all__ = [
    "ACTIVATIONS",
    "AGGREGATIONS",
    "CNN",
    "PADDINGS",
    "POOLS",
    "ArchSpec",
    "ConvBlock",
    "DenseLayer",
    "Layer",
    "SpecError",
    "build",
    "count_macs",
    "count_params",
    "infer_shapes",
    "out_size",
]
