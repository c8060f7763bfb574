"""Spec generators shared by the tests of ``models``: a seeded random generator and an option grid.

Plain functions, not fixtures, because the specs parametrise tests at collection time. Imported as
``_specs`` (pytest puts this directory on ``sys.path``; there is no ``__init__.py``).
"""

from __future__ import annotations

import functools
import itertools
import random
from typing import Any

from cnnas.models import (
    ACTIVATIONS,
    AGGREGATIONS,
    BLOCK_TYPES,
    HEADS,
    PADDINGS,
    POOLS,
    PREDICTIONS,
    ArchSpec,
    ConvBlock,
    DenseLayer,
    SpecError,
)

# Input shapes of the random specs: greyscale and colour, square and not, and a tiny one on which
# pooling and 'valid' padding collapse often.
RANDOM_INPUT_SHAPES = ((1, 28, 28), (3, 32, 32), (3, 64, 48), (1, 8, 8))
# Input shapes of the option grid.
GRID_INPUT_SHAPES = ((1, 28, 28), (3, 32, 32), (3, 64, 64))

N_RANDOM = 200
RANDOM_SEED = 20240611


def _dropout(rng: random.Random) -> float:
    # Half the time no dropout; otherwise an arbitrary float, so the JSON round trip sees values
    # such as 0.1234567890123 rather than only tidy decimals.
    return 0.0 if rng.random() < 0.5 else rng.choice([0.3, rng.random() * 0.95])


def random_block(rng: random.Random, later: random.Random | None = None) -> dict[str, Any]:
    """A random conv block as a dict, covering every field.

    The fields that came later (block type, expansion, SE, stride) are drawn from ``later``, a
    stream of their own, so that without it the generator yields exactly the specs it yielded
    before they existed (whose hashes a test pins).
    """
    block = {
        "filters": rng.randint(1, 12),
        "kernel": rng.choice([1, 3, 3, 5, 7, 9]),
        "convs": rng.randint(1, 3),
        # Drawn on every kernel: on 1x1 and 3x3 ones it is an inactive field the round trip and
        # the hash still have to handle.
        "factorize": rng.random() < 0.5,
        "padding": rng.choice(PADDINGS),
        "batch_norm": rng.random() < 0.5,
        "activation": rng.choice(ACTIVATIONS),
        "pool": rng.choice(POOLS),
        "dropout": _dropout(rng),
    }
    if later is None:
        return block
    # A residual block needs 'same' padding (anything else is a validation error, not a collapse).
    types = [t for t in BLOCK_TYPES if t != "residual" or block["padding"] == "same"]
    return {
        **block,
        "block_type": later.choice(types),
        # Drawn for every type: outside inverted blocks it is an inactive field.
        "expansion": later.choice([1, 2, 3, 6]),
        "se_ratio": 0.0 if later.random() < 0.5 else later.choice([0.25, later.random()]),
        "stride": later.choice([1, 1, 1, 1, 2, 2, 3]),
    }


def random_dense(rng: random.Random) -> dict[str, Any]:
    """A random dense layer as a dict, covering every field."""
    return {
        "width": rng.randint(1, 32),
        "activation": rng.choice(ACTIVATIONS),
        "dropout": _dropout(rng),
    }


def _aux_weight(rng: random.Random) -> float:
    # The bounds, tidy values, and an arbitrary float for the JSON round trip.
    return rng.choice([0.0, 0.5, 1.0, 100.0, rng.random() * 5])


def random_spec_dict(rng: random.Random, later: random.Random | None = None) -> dict[str, Any]:
    """A random spec as a dict; it may describe a network whose feature map collapses.

    ``heads`` is 'multi' only with the 'multiscale' aggregation it needs (any other combination is
    a validation error, not a collapse); ``aux_weight`` and ``predict`` are drawn for single-head
    specs too, where they are inactive.
    """
    aggregation = rng.choice(AGGREGATIONS)
    multi = aggregation == "multiscale" and rng.random() < 0.6
    return {
        "input_shape": list(rng.choice(RANDOM_INPUT_SHAPES)),
        "num_classes": rng.randint(2, 12),
        "blocks": [random_block(rng, later) for _ in range(rng.randint(1, 4))],
        "aggregation": aggregation,
        "dense": [random_dense(rng) for _ in range(rng.randint(0, 3))],
        "heads": "multi" if multi else "single",
        "aux_weight": _aux_weight(rng),
        "predict": rng.choice(PREDICTIONS),
    }


def make_spec(data: dict[str, Any], rng: random.Random) -> ArchSpec:
    """Builds ``data`` either through ``from_dict`` or through the constructors, at random."""
    if rng.random() < 0.5:
        return ArchSpec.from_dict(data)
    seq = rng.choice([list, tuple])
    return ArchSpec(
        input_shape=seq(data["input_shape"]),
        num_classes=data["num_classes"],
        blocks=seq(ConvBlock(**b) for b in data["blocks"]),
        aggregation=data["aggregation"],
        dense=seq(DenseLayer(**d) for d in data["dense"]),
        heads=data["heads"],
        aux_weight=data["aux_weight"],
        predict=data["predict"],
    )


@functools.cache
def random_specs(
    n: int = N_RANDOM, seed: int = RANDOM_SEED, later: bool = True
) -> tuple[tuple[ArchSpec, ...], int]:
    """``n`` random candidates: the valid specs among them, and how many collapsed.

    Only a collapsing feature map may make a candidate invalid; any other ``SpecError`` means the
    generator (or the validation) is wrong, so it propagates. ``later=False`` leaves out the
    block fields that came later: the specs of the generator before they existed.
    """
    rng = random.Random(seed)
    other = random.Random(seed + 1) if later else None
    valid, collapsed = [], 0
    for _ in range(n):
        data = random_spec_dict(rng, other)
        try:
            valid.append(make_spec(data, rng))
        except SpecError as e:
            if "collapses" not in e.message:
                raise
            collapsed += 1
    return tuple(valid), collapsed


def random_params() -> list[Any]:
    """The valid random specs as ``pytest.param``s with readable ids."""
    import pytest

    specs, _ = random_specs()
    return [pytest.param(s, id=f"rand{i:03d}") for i, s in enumerate(specs)]


# --- the option grid ---------------------------------------------------------------------------

# Every value of every option. Each grid spec changes one option of ``_base`` (applied to every
# block or dense layer it concerns), so a failure names the option that broke.
OPTIONS: dict[str, tuple[Any, ...]] = {
    "activation": ACTIVATIONS,
    "pool": POOLS,  # 'conv' included: the learnable stride-2 convolution
    "padding": PADDINGS,
    "aggregation": AGGREGATIONS,
    "batch_norm": (False, True),
    "convs": (1, 2, 3),
    "kernel": (1, 3, 5, 7),
    "factorize": (False, True),
    "dropout": (0.0, 0.3),
    "dense": (0, 1, 2),
    "heads": HEADS,
    "predict": PREDICTIONS,
    "aux_weight": (0.0, 0.5),
    # The efficient blocks.
    "block_type": BLOCK_TYPES,
    "expansion": (1, 2, 6),
    "se_ratio": (0.0, 0.25, 1.0),
    "stride": (1, 2),
}

# Options that only mean something next to others: each of their grid specs is crossed with every
# value listed here (factorize needs a kernel above 3, the head options a multi-scale network).
_NEEDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "factorize": {"kernel": (5, 7)},
    "heads": {"aggregation": ("multiscale",)},
    "predict": {"aggregation": ("multiscale",), "heads": ("multi",)},
    "aux_weight": {"aggregation": ("multiscale",), "heads": ("multi",)},
    "expansion": {"block_type": ("inverted",)},
    # SE and strides in every block type.
    "se_ratio": {"block_type": BLOCK_TYPES},
    "stride": {"block_type": BLOCK_TYPES},
}


def _base(input_shape: tuple[int, int, int], **opts: Any) -> ArchSpec:
    block = {
        "kernel": opts.get("kernel", 3),
        "convs": opts.get("convs", 1),
        "factorize": opts.get("factorize", False),
        "padding": opts.get("padding", "same"),
        "batch_norm": opts.get("batch_norm", False),
        "activation": opts.get("activation", "relu"),
        "pool": opts.get("pool", "max"),
        "dropout": opts.get("dropout", 0.0),
        "block_type": opts.get("block_type", "plain"),
        "expansion": opts.get("expansion", 6),
        "se_ratio": opts.get("se_ratio", 0.0),
        "stride": opts.get("stride", 1),
    }
    # Equal widths give the residual and inverted blocks identity shortcuts; the default's
    # widening second block needs a projection (residual) or has none (inverted).
    widths = opts.get("widths", (4, 8))
    dense = DenseLayer(
        width=12, activation=opts.get("activation", "relu"), dropout=opts.get("dropout", 0.0)
    )
    return ArchSpec(
        input_shape=input_shape,
        num_classes=10,
        blocks=tuple(ConvBlock(filters=w, **block) for w in widths),
        aggregation=opts.get("aggregation", "flatten"),
        dense=(dense,) * opts.get("dense", 1),
        heads=opts.get("heads", "single"),
        aux_weight=opts.get("aux_weight", 1.0),
        predict=opts.get("predict", "main"),
    )


# Combinations of several options at once, including the ones that shrink the map the most.
_COMBOS: dict[str, dict[str, Any]] = {
    "all-on": {
        "batch_norm": True,
        "convs": 3,
        "kernel": 5,
        "dropout": 0.3,
        "dense": 2,
        "aggregation": "gap",
        "activation": "gelu",
    },
    "valid-k5-convs2-avg": {"padding": "valid", "kernel": 5, "convs": 2, "pool": "avg"},
    "valid-k5-bn-nopool": {"padding": "valid", "kernel": 5, "batch_norm": True, "pool": "none"},
    # Seed 000's three-headed network with seed 002's learnable pools and factorised 5x5s.
    "multi-mean-convpool-f5-bn": {
        "aggregation": "multiscale",
        "heads": "multi",
        "predict": "mean",
        "aux_weight": 0.5,
        "pool": "conv",
        "kernel": 5,
        "factorize": True,
        "batch_norm": True,
        "dropout": 0.3,
        "dense": 2,
    },
    "multi-main-valid-f7-avg": {
        "aggregation": "multiscale",
        "heads": "multi",
        "padding": "valid",
        "kernel": 7,
        "factorize": True,
        "pool": "avg",
        "activation": "tanh",
    },
    # The last map is 1x1 on 28x28 (one head), 2x2 on 32x32 (two) and 10x10 on 64x64 (three).
    "multi-mean-valid-k5x2-convpool": {
        "aggregation": "multiscale",
        "heads": "multi",
        "predict": "mean",
        "padding": "valid",
        "kernel": 5,
        "convs": 2,
        "pool": "conv",
        "dense": 0,
    },
}

# The efficient blocks with everything else: BN, SE, strides, learnable pools, several convs.
# (Apart from _COMBOS: a test pins the hashes of the grid as it was before these blocks.)
BLOCK_COMBOS: dict[str, dict[str, Any]] = {
    "residual-identity-se-bn-convs2": {
        "block_type": "residual",
        "widths": (6, 6),
        "convs": 2,
        "batch_norm": True,
        "se_ratio": 0.25,
        "pool": "none",
        "aggregation": "gap",
    },
    "residual-stride-convpool-f5-multi": {
        "block_type": "residual",
        "stride": 2,
        "kernel": 5,
        "factorize": True,
        "convs": 2,
        "pool": "conv",
        "aggregation": "multiscale",
        "heads": "multi",
        "dropout": 0.3,
    },
    "inverted-identity-se-bn-convs3": {
        "block_type": "inverted",
        "widths": (8, 8),
        "convs": 3,
        "expansion": 3,
        "batch_norm": True,
        "se_ratio": 0.25,
        "activation": "silu",
        "aggregation": "gap",
    },
    "inverted-valid-stride-convs2": {
        "block_type": "inverted",
        "padding": "valid",
        "convs": 2,
        "stride": 2,
        "pool": "none",
        "expansion": 2,
    },
    "separable-f7-stride-se-avg": {
        "block_type": "separable",
        "kernel": 7,
        "factorize": True,
        "stride": 2,
        "se_ratio": 0.5,
        "pool": "avg",
        "batch_norm": True,
    },
    "plain-stride-valid-k5-se": {
        "stride": 2,
        "padding": "valid",
        "kernel": 5,
        "se_ratio": 0.125,
        "pool": "none",
        "dense": 2,
    },
}


def grid_specs() -> list[tuple[str, ArchSpec]]:
    """(id, spec) for every option value on every grid input shape, plus a few combinations."""
    out = []
    for shape in GRID_INPUT_SHAPES:
        sid = "x".join(map(str, shape))
        for name, values in OPTIONS.items():
            needs = _NEEDS.get(name, {})
            for value in values:
                for combo in itertools.product(*needs.values()):
                    opts = {name: value, **dict(zip(needs, combo, strict=True))}
                    tag = "-".join(f"{k}={v}" for k, v in opts.items())
                    out.append((f"{tag}-{sid}", _base(shape, **opts)))
        for name, opts in {**_COMBOS, **BLOCK_COMBOS}.items():
            out.append((f"{name}-{sid}", _base(shape, **opts)))
    return out


def grid_params() -> list[Any]:
    import pytest

    return [pytest.param(spec, id=sid) for sid, spec in grid_specs()]
