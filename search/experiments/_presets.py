"""The settings of ``cnnas experiment ablation`` and ``cnnas experiment heads``: each preset
gives every setting, an option given on the command line overrides it."""

from __future__ import annotations

from typing import Any

from ._ablation import FACTORS

__all__ = ["ABLATION_PRESETS", "HEADS_PRESETS", "PRESETS"]

PRESETS = ("small", "full")

# "full" is the seed's own setting (100 epochs, every factor value, VGG11/16/19 at full width);
# "small" shrinks widths, data and epochs so the whole table trains in minutes on two CPU cores.
ABLATION_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "epochs": 100,
        "subset": None,
        "batch_size": 128,
        "test_limit": None,
        "base_conv_layers": 1,
        "base_dense_layers": 1,
        "base_filters": 64,
        "base_kernel": 5,
        "dense_width": 1024,
        "conv_layers": FACTORS["conv_layers"],
        "dense_layers": FACTORS["dense_layers"],
        "filters": FACTORS["filters"],
        "kernels": FACTORS["kernel"],
        "factors": tuple(FACTORS),
        "vgg": (11, 16, 19),
        "vgg_width": 1.0,
        "vgg_dense": 4096,
    },
    "small": {
        "epochs": 3,
        "subset": 3000,
        "batch_size": 64,
        "test_limit": 2000,
        "base_conv_layers": 1,
        "base_dense_layers": 1,
        "base_filters": 16,
        "base_kernel": 5,
        "dense_width": 128,
        "conv_layers": (1, 2, 4),
        "dense_layers": (1, 2),
        "filters": (8, 16, 32),
        "kernels": (3, 5, 7),
        "factors": tuple(FACTORS),
        "vgg": (11,),
        "vgg_width": 0.125,
        "vgg_dense": 128,
    },
}
HEADS_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "epochs": 20,
        "subset": None,
        "batch_size": 128,
        "test_limit": None,
        "seeds": 5,
        "filters": (32, 64),
        "dense_width": 128,
        "rank_widths": (8, 16, 32, 64),
    },
    "small": {
        "epochs": 3,
        "subset": 4000,
        "batch_size": 64,
        "test_limit": 2000,
        "seeds": 2,
        "filters": (16, 32),
        "dense_width": 64,
        "rank_widths": (8, 16, 32),
    },
}
