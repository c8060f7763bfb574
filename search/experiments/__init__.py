"""Reproductions of the seed documents' experiments (``cnnas experiment ...``)."""

from __future__ import annotations

from ._ablation import (
    FACTORS,
    REGULARISATIONS,
    VGG_CONFIGS,
    AblationBase,
    AblationResult,
    AblationSettings,
    Variant,
    ablation_grid,
    ablation_spec,
    run_ablation,
    seed_ratio,
    vgg_spec,
)
from ._common import ExperimentLog, ModelRun, train_model
from ._heads import (
    VARIANTS,
    HeadsResult,
    HeadsSettings,
    effective_rank,
    head_spec,
    linear_cka,
    run_heads,
    section_activations,
)
from ._layer_skip import (
    LAYER_SKIP_EXPERIMENT,
    LAYER_SKIP_PRESETS,
    LayerSkipConfig,
    LayerSkipResult,
    LayerSkipTracker,
    NetRecord,
    VariantResult,
    run_layer_skip,
    write_report,
)
from ._presets import ABLATION_PRESETS, HEADS_PRESETS

__all__ = [
    "ABLATION_PRESETS",
    "FACTORS",
    "HEADS_PRESETS",
    "LAYER_SKIP_EXPERIMENT",
    "LAYER_SKIP_PRESETS",
    "REGULARISATIONS",
    "VARIANTS",
    "VGG_CONFIGS",
    "AblationBase",
    "AblationResult",
    "AblationSettings",
    "ExperimentLog",
    "HeadsResult",
    "HeadsSettings",
    "LayerSkipConfig",
    "LayerSkipResult",
    "LayerSkipTracker",
    "ModelRun",
    "NetRecord",
    "Variant",
    "VariantResult",
    "ablation_grid",
    "ablation_spec",
    "effective_rank",
    "head_spec",
    "linear_cka",
    "run_ablation",
    "run_heads",
    "run_layer_skip",
    "section_activations",
    "seed_ratio",
    "train_model",
    "vgg_spec",
    "write_report",
]
