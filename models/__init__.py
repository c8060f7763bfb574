"""Architecture specs and the networks they describe. Imports only torch."""

from __future__ import annotations

from ._build import CNN, MultiScale, build
from ._shapes import (
    Layer,
    count_macs,
    count_params,
    infer_shapes,
    multiscale_sections,
    out_size,
)
from ._spec import (
    ACTIVATIONS,
    AGGREGATIONS,
    HEADS,
    PADDINGS,
    POOLS,
    PREDICTIONS,
    ArchSpec,
    ConvBlock,
    DenseLayer,
    SpecError,
)

__all__ = [
    "ACTIVATIONS",
    "AGGREGATIONS",
    "CNN",
    "HEADS",
    "PADDINGS",
    "POOLS",
    "PREDICTIONS",
    "ArchSpec",
    "ConvBlock",
    "DenseLayer",
    "Layer",
    "MultiScale",
    "SpecError",
    "build",
    "count_macs",
    "count_params",
    "infer_shapes",
    "multiscale_sections",
    "out_size",
]
