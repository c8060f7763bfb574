"""Architecture specs and the networks they describe. Imports only torch (and safetensors)."""

from __future__ import annotations

from ._build import CNN, MultiScale, build
from ._errors import CnnasError, SpecError
from ._io import (
    META_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    load_model,
    read_metadata,
    save_model,
    sha256_file,
)
from ._shapes import (
    Layer,
    adaptive_macs,
    count_macs,
    count_params,
    infer_shapes,
    multiscale_sections,
    out_size,
    stage_macs,
)
from ._skip import (
    SkipCNN,
    check_skippable,
    depth_macs,
    executed_macs,
    router_spec,
    skip_spec,
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
)

__all__ = [
    "ACTIVATIONS",
    "AGGREGATIONS",
    "CNN",
    "HEADS",
    "META_FILE",
    "PADDINGS",
    "POOLS",
    "PREDICTIONS",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "ArchSpec",
    "CnnasError",
    "ConvBlock",
    "DenseLayer",
    "Layer",
    "ModelFileError",
    "MultiScale",
    "SkipCNN",
    "SpecError",
    "adaptive_macs",
    "build",
    "check_skippable",
    "count_macs",
    "count_params",
    "depth_macs",
    "executed_macs",
    "infer_shapes",
    "load_model",
    "multiscale_sections",
    "out_size",
    "read_metadata",
    "router_spec",
    "save_model",
    "sha256_file",
    "skip_spec",
    "stage_macs",
]
