"""Tests for models._shapes: the output-size rule, collapse errors, and the walk vs. the module."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from cnnas.models import (
    ArchSpec,
    ConvBlock,
    DenseLayer,
    Layer,
    MultiScale,
    SpecError,
    SqueezeExcite,
    build,
    count_macs,
    count_params,
    infer_shapes,
    multiscale_sections,
    out_size,
    se_width,
    shortcut,
)
from tests.models._specs import grid_params, grid_specs, random_params, random_specs

# --------------------------------------------------------------------------------------------
# out_size
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "kernel", "stride", "padding", "expected"),
    [
        (28, 3, 1, 1, 28),
        (28, 5, 1, 0, 24),
        (7, 2, 2, 0, 3),
        (1, 2, 2, 0, 0),
        (28, 5, 1, 2, 28),
        (8, 7, 1, 0, 2),
        (2, 7, 1, 0, -4),
        (28, 2, 2, 0, 14),
        (5, 3, 2, 1, 3),
        (1, 1, 1, 0, 1),
    ],
)
def test_out_size_hand_cases(n: int, kernel: int, stride: int, padding: int, expected: int):
    assert out_size(n, kernel, stride, padding) == expected


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(1, 1, 0), (3, 1, 1), (3, 2, 0), (5, 1, 0), (2, 2, 0), (5, 3, 2)],
)
def test_out_size_matches_torch(n: int, kernel: int, stride: int, padding: int):
    expected = out_size(n, kernel, stride, padding)
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding)
    if expected < 1:
        with pytest.raises(RuntimeError):
            conv(torch.zeros(1, 1, n, n))
    else:
        assert conv(torch.zeros(1, 1, n, n)).shape[-1] == expected


# --------------------------------------------------------------------------------------------
# collapse
# --------------------------------------------------------------------------------------------

_COLLAPSES = [
    pytest.param(
        (1, 8, 8), [ConvBlock(4, pool="max")] * 4, "blocks[3].pool", "1x1 -> 0x0", id="4-pools-8x8"
    ),
    pytest.param(
        (1, 8, 8), [ConvBlock(4, pool="avg")] * 4, "blocks[3].pool", "1x1 -> 0x0", id="4-avg-8x8"
    ),
    pytest.param(
        (1, 8, 8),
        [ConvBlock(4, kernel=7, padding="valid")] * 2,
        "blocks[1].conv0",
        "2x2 -> -4x-4",
        id="valid-k7-twice",
    ),
    pytest.param(
        (1, 8, 8),
        [ConvBlock(4, kernel=9, padding="valid")],
        "blocks[0].conv0",
        "8x8 -> 0x0",
        id="kernel-larger-than-input",
    ),
    pytest.param(
        (3, 8, 8),
        [ConvBlock(4, kernel=11, padding="valid")],
        "blocks[0].conv0",
        "8x8 -> -2x-2",
        id="kernel-much-larger",
    ),
    pytest.param(
        (1, 8, 8),
        [ConvBlock(4, kernel=5, convs=3, padding="valid")],
        "blocks[0].conv1",
        "4x4 -> 0x0",
        id="convs3-valid-k5",
    ),
    pytest.param(
        (1, 8, 32),
        [ConvBlock(4, pool="max")] * 4,
        "blocks[3].pool",
        "1x4 -> 0x2",
        id="non-square-height",
    ),
    pytest.param(
        (1, 32, 6),
        [ConvBlock(4, kernel=7, padding="valid")],
        "blocks[0].conv0",
        "32x6 -> 26x0",
        id="non-square-width",
    ),
    pytest.param(
        (1, 28, 28),
        [ConvBlock(4, kernel=3, padding="valid", pool="max")] * 3
        + [ConvBlock(4, kernel=3, padding="valid")],
        "blocks[3].conv0",
        "1x1 -> -1x-1",
        id="28-valid-pools",
    ),
    # A factorised kernel collapses at the 3x3 convolution that runs out of map, and says so.
    pytest.param(
        (1, 5, 5),
        [ConvBlock(4, kernel=7, factorize=True, padding="valid")],
        "blocks[0].conv2",
        "1x1 -> -1x-1 (3x3 valid)",
        id="factorized-valid-k7-5x5",
    ),
    pytest.param(
        (1, 5, 5),
        [ConvBlock(4, kernel=7, padding="valid")],
        "blocks[0].conv0",
        "5x5 -> -1x-1 (7x7 valid)",
        id="unfactorized-valid-k7-5x5",
    ),
    pytest.param(
        (1, 8, 8),
        [ConvBlock(4, kernel=5, convs=2, factorize=True, padding="valid")],
        "blocks[0].conv3",
        "2x2 -> 0x0",
        id="factorized-valid-k5-convs2",
    ),
    # A conv pool never collapses a map, but the block after it still may.
    pytest.param(
        (1, 8, 8),
        [ConvBlock(4, pool="conv")] * 5 + [ConvBlock(4, kernel=3, padding="valid")],
        "blocks[5].conv0",
        "1x1 -> -1x-1",
        id="conv-pools-then-valid",
    ),
    # The efficient blocks collapse at the depthwise convolution, with its stride in the message.
    pytest.param(
        (1, 5, 5),
        [ConvBlock(4, kernel=7, padding="valid", stride=2)],
        "blocks[0].conv0",
        "5x5 -> 0x0 (7x7 valid stride 2)",
        id="strided-valid-k7",
    ),
    pytest.param(
        (2, 6, 6),
        [ConvBlock(4, kernel=5, padding="valid", block_type="separable", convs=2)],
        "blocks[0].dw1",
        "2x2 -> -2x-2 (5x5 valid)",
        id="separable-valid-k5",
    ),
    pytest.param(
        (2, 8, 8),
        [ConvBlock(4, pool="max"), ConvBlock(4, kernel=5, padding="valid", block_type="inverted")],
        "blocks[1].dw0",
        "4x4 -> 0x0 (5x5 valid)",
        id="inverted-valid-k5",
    ),
    pytest.param(
        (1, 4, 4),
        [ConvBlock(4, stride=2, pool="max"), ConvBlock(4, pool="max")],
        "blocks[1].pool",
        "1x1 -> 0x0",
        id="stride-then-pools",
    ),
]


@pytest.mark.parametrize(("input_shape", "blocks", "path", "sizes"), _COLLAPSES)
def test_collapse_names_layer_and_sizes(
    input_shape: tuple[int, int, int], blocks: list[ConvBlock], path: str, sizes: str
):
    with pytest.raises(SpecError) as info:
        ArchSpec(input_shape, 10, blocks)
    e = info.value
    assert e.path == path, str(e)
    assert sizes in e.message, e.message
    assert "collapses" in e.message
    # The message suggests a way out.
    assert "padding" in e.message or "fewer" in e.message


def test_collapse_through_from_dict_and_json_keeps_path():
    data = {
        "input_shape": [1, 8, 8],
        "num_classes": 3,
        "blocks": [{"filters": 2, "pool": "max"}] * 4,
    }
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(data)
    assert info.value.path == "blocks[3].pool"
    with pytest.raises(SpecError) as info:
        ArchSpec.from_json(json.dumps(data))
    assert info.value.path == "blocks[3].pool"


def test_shrinking_to_exactly_1x1_is_valid():
    spec = ArchSpec((1, 8, 8), 3, [ConvBlock(4, pool="max")] * 3)
    agg = next(la for la in infer_shapes(spec) if la.kind == "aggregate")
    assert agg.in_shape == (4, 1, 1) and agg.out_shape == (4,)
    build(spec).eval()(torch.randn(2, 1, 8, 8))
    spec = ArchSpec((1, 7, 7), 3, [ConvBlock(4, kernel=7, padding="valid")])
    assert next(la for la in infer_shapes(spec) if la.kind == "aggregate").in_shape == (4, 1, 1)


def test_odd_sizes_floor_on_pool():
    spec = ArchSpec((1, 7, 9), 3, [ConvBlock(2, pool="max"), ConvBlock(2, pool="avg")])
    pools = [la for la in infer_shapes(spec) if la.kind == "pool"]
    assert [la.out_shape for la in pools] == [(2, 3, 4), (2, 1, 2)]


# --------------------------------------------------------------------------------------------
# the walk itself
# --------------------------------------------------------------------------------------------


def test_walk_on_a_hand_spec():
    spec = ArchSpec(
        (1, 28, 28),
        10,
        (
            ConvBlock(8, convs=2, batch_norm=True, pool="max", dropout=0.25),
            ConvBlock(16, kernel=5, padding="valid"),
        ),
        dense=(DenseLayer(32, dropout=0.5),),
    )
    got = [
        (la.name, la.kind, la.in_shape, la.out_shape, la.params, la.macs)
        for la in infer_shapes(spec)
    ]
    # fmt: off
    assert got == [
        ("features.0.conv0", "conv", (1, 28, 28), (8, 28, 28), 8 * 9, 8 * 28 * 28 * 9),
        ("features.0.bn0", "bn", (8, 28, 28), (8, 28, 28), 16, 0),
        ("features.0.act0", "act", (8, 28, 28), (8, 28, 28), 0, 0),
        ("features.0.conv1", "conv", (8, 28, 28), (8, 28, 28), 8 * 8 * 9, 8 * 28 * 28 * 8 * 9),
        ("features.0.bn1", "bn", (8, 28, 28), (8, 28, 28), 16, 0),
        ("features.0.act1", "act", (8, 28, 28), (8, 28, 28), 0, 0),
        ("features.0.pool", "pool", (8, 28, 28), (8, 14, 14), 0, 0),
        ("features.0.drop", "dropout", (8, 14, 14), (8, 14, 14), 0, 0),
        ("features.1.conv0", "conv", (8, 14, 14), (16, 10, 10),
         16 * 8 * 25 + 16, 16 * 10 * 10 * 8 * 25),
        ("features.1.act0", "act", (16, 10, 10), (16, 10, 10), 0, 0),
        ("aggregate", "aggregate", (16, 10, 10), (1600,), 0, 0),
        ("head.0.linear", "linear", (1600,), (32,), 1600 * 32 + 32, 1600 * 32),
        ("head.0.act", "act", (32,), (32,), 0, 0),
        ("head.0.drop", "dropout", (32,), (32,), 0, 0),
        ("classifier", "linear", (32,), (10,), 32 * 10 + 10, 32 * 10),
    ]
    # fmt: on
    assert all(isinstance(la, Layer) for la in infer_shapes(spec))
    assert count_params(spec) == sum(row[4] for row in got)
    assert count_macs(spec) == sum(row[5] for row in got)


# --------------------------------------------------------------------------------------------
# factorised convolutions
# --------------------------------------------------------------------------------------------


def _agg_in(spec: ArchSpec) -> tuple[int, ...]:
    return next(la for la in infer_shapes(spec) if la.kind == "aggregate").in_shape


def test_factorized_7x7_same_is_three_3x3_convs():
    factorized = ArchSpec((1, 28, 28), 10, (ConvBlock(8, kernel=7, factorize=True),))
    plain = ArchSpec((1, 28, 28), 10, (ConvBlock(8, kernel=7),))
    convs = [la for la in infer_shapes(factorized) if la.kind == "conv"]
    assert [la.name for la in convs] == [f"features.0.conv{i}" for i in range(3)]
    assert [la.in_shape for la in convs] == [(1, 28, 28), (8, 28, 28), (8, 28, 28)]
    assert all(la.out_shape == (8, 28, 28) for la in convs)
    assert [la.params for la in convs] == [8 * 9 + 8, 8 * 8 * 9 + 8, 8 * 8 * 9 + 8]
    # 'same' padding: both keep 28x28, so the heads are identical.
    assert _agg_in(factorized) == _agg_in(plain) == (8, 28, 28)
    assert [la.name for la in infer_shapes(plain) if la.kind == "conv"] == ["features.0.conv0"]
    modules = dict(build(factorized).named_modules())
    assert all(modules[la.name].kernel_size == (3, 3) for la in convs)
    assert "features.0.conv3" not in modules


@pytest.mark.parametrize(
    ("kernel", "n", "expected"), [(5, 8, 4), (7, 8, 2), (5, 28, 24), (9, 9, 1)]
)
def test_factorized_valid_shrinks_like_the_kernel(kernel: int, n: int, expected: int):
    factorized = ArchSpec(
        (1, n, n), 2, (ConvBlock(3, kernel=kernel, factorize=True, padding="valid"),)
    )
    plain = ArchSpec((1, n, n), 2, (ConvBlock(3, kernel=kernel, padding="valid"),))
    assert _agg_in(factorized) == _agg_in(plain) == (3, expected, expected)
    convs = [la for la in infer_shapes(factorized) if la.kind == "conv"]
    assert len(convs) == (kernel - 1) // 2
    # Each 3x3 'valid' convolution takes 2 off each side.
    assert [la.out_shape[1] for la in convs] == [n - 2 * (i + 1) for i in range(len(convs))]
    _check_walk_against_module(factorized)


def test_factorized_valid_5x5_on_8x8_by_hand():
    spec = ArchSpec((1, 8, 8), 2, (ConvBlock(3, kernel=5, factorize=True, padding="valid"),))
    got = [(la.name, la.out_shape) for la in infer_shapes(spec) if la.kind == "conv"]
    assert got == [("features.0.conv0", (3, 6, 6)), ("features.0.conv1", (3, 4, 4))]


def test_factorize_is_inactive_on_small_kernels():
    for kernel in (1, 3):
        for padding in ("same", "valid"):
            on = ArchSpec((1, 9, 9), 2, (ConvBlock(3, kernel, factorize=True, padding=padding),))
            off = ArchSpec((1, 9, 9), 2, (ConvBlock(3, kernel, padding=padding),))
            assert infer_shapes(on) == infer_shapes(off)


# --------------------------------------------------------------------------------------------
# conv pools
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 13, 28])
def test_conv_pool_is_ceil_half(n: int):
    spec = ArchSpec((2, n, n + 1), 3, (ConvBlock(4, kernel=1, pool="conv"),))
    pool = next(la for la in infer_shapes(spec) if la.name == "features.0.pool")
    assert pool.kind == "conv"
    assert pool.out_shape == (4, math.ceil(n / 2), math.ceil((n + 1) / 2))
    assert pool.params == 4 * 4 * 9 + 4
    assert pool.macs == 4 * 4 * 9 * pool.out_shape[1] * pool.out_shape[2]
    _check_walk_against_module(spec)


def test_conv_pool_by_hand():
    spec = ArchSpec((1, 7, 7), 3, (ConvBlock(4, pool="conv", batch_norm=True, dropout=0.1),))
    got = [(la.name, la.kind, la.out_shape) for la in infer_shapes(spec)]
    assert got[:7] == [
        ("features.0.conv0", "conv", (4, 7, 7)),
        ("features.0.bn0", "bn", (4, 7, 7)),
        ("features.0.act0", "act", (4, 7, 7)),
        ("features.0.pool", "conv", (4, 4, 4)),
        ("features.0.pool_bn", "bn", (4, 4, 4)),
        ("features.0.pool_act", "act", (4, 4, 4)),
        ("features.0.drop", "dropout", (4, 4, 4)),
    ]


def test_conv_pool_never_collapses():
    # Eight stride-2 convolutions on 8x8: 8 -> 4 -> 2 -> 1 -> 1 -> ... where max pools collapse.
    spec = ArchSpec((1, 8, 8), 3, [ConvBlock(2, pool="conv")] * 8)
    pools = [la.out_shape for la in infer_shapes(spec) if la.name.endswith(".pool")]
    assert pools == [(2, 4, 4), (2, 2, 2)] + [(2, 1, 1)] * 6
    with pytest.raises(SpecError, match="collapses"):
        ArchSpec((1, 8, 8), 3, [ConvBlock(2, pool="max")] * 8)
    _check_walk_against_module(spec)
    # A 1x1 input stays 1x1.
    tiny = ArchSpec((1, 1, 1), 2, (ConvBlock(2, pool="conv"), ConvBlock(2, pool="conv")))
    assert _agg_in(tiny) == (2, 1, 1)
    _check_walk_against_module(tiny)


# --------------------------------------------------------------------------------------------
# the efficient blocks
# --------------------------------------------------------------------------------------------


def _rows(spec: ArchSpec, bi: int = 0) -> list[tuple]:
    """(local name, kind, in, out, params, MACs) of block ``bi``'s layers."""
    prefix = f"features.{bi}."
    return [
        (la.name.removeprefix(prefix), la.kind, la.in_shape, la.out_shape, la.params, la.macs)
        for la in infer_shapes(spec)
        if la.name.startswith(prefix)
    ]


def test_separable_walk_by_hand():
    spec = ArchSpec((3, 8, 8), 2, (ConvBlock(6, block_type="separable", batch_norm=True),))
    # fmt: off
    assert _rows(spec) == [
        # Depthwise: one 3x3 filter per input channel, no bias (BatchNorm follows).
        ("dw0", "conv", (3, 8, 8), (3, 8, 8), 3 * 9, 3 * 64 * 9),
        ("dw_bn0", "bn", (3, 8, 8), (3, 8, 8), 6, 0),
        ("dw_act0", "act", (3, 8, 8), (3, 8, 8), 0, 0),
        # Pointwise: a 1x1 convolution to the block's filters.
        ("pw0", "conv", (3, 8, 8), (6, 8, 8), 6 * 3, 6 * 64 * 3),
        ("pw_bn0", "bn", (6, 8, 8), (6, 8, 8), 12, 0),
        ("pw_act0", "act", (6, 8, 8), (6, 8, 8), 0, 0),
    ]
    # fmt: on
    _check_walk_against_module(spec)


def test_separable_stride_and_factorisation():
    block = ConvBlock(4, kernel=5, factorize=True, convs=1, block_type="separable", stride=2)
    spec = ArchSpec((2, 9, 9), 2, (block,))
    got = [(n, i, o, p) for n, _, i, o, p, _ in _rows(spec) if not n.startswith("pw_act")]
    # Two separable 3x3 (the factorised 5x5); the first depthwise conv carries the stride.
    assert [g[0] for g in got] == ["dw0", "dw_act0", "pw0", "dw1", "dw_act1", "pw1"]
    assert got[0] == ("dw0", (2, 9, 9), (2, 5, 5), 2 * 9 + 2)
    assert got[2] == ("pw0", (2, 5, 5), (4, 5, 5), 4 * 2 + 4)
    assert got[3] == ("dw1", (4, 5, 5), (4, 5, 5), 4 * 9 + 4)
    _check_walk_against_module(spec)


def test_residual_walk_identity_by_hand():
    spec = ArchSpec((4, 8, 8), 2, (ConvBlock(4, block_type="residual", convs=2),))
    # fmt: off
    assert _rows(spec) == [
        ("conv0", "conv", (4, 8, 8), (4, 8, 8), 4 * 4 * 9 + 4, 4 * 64 * 4 * 9),
        ("act0", "act", (4, 8, 8), (4, 8, 8), 0, 0),
        # The last convolution's activation comes after the input is added: no projection.
        ("conv1", "conv", (4, 8, 8), (4, 8, 8), 4 * 4 * 9 + 4, 4 * 64 * 4 * 9),
        ("act1", "act", (4, 8, 8), (4, 8, 8), 0, 0),
    ]
    # fmt: on
    _check_walk_against_module(spec)


def test_residual_walk_projection_by_hand():
    block = ConvBlock(8, block_type="residual", convs=2, batch_norm=True, stride=2, se_ratio=0.25)
    spec = ArchSpec((4, 8, 8), 2, (block,))
    # fmt: off
    assert _rows(spec) == [
        ("conv0", "conv", (4, 8, 8), (8, 4, 4), 8 * 4 * 9, 8 * 16 * 4 * 9),
        ("bn0", "bn", (8, 4, 4), (8, 4, 4), 16, 0),
        ("act0", "act", (8, 4, 4), (8, 4, 4), 0, 0),
        ("conv1", "conv", (8, 4, 4), (8, 4, 4), 8 * 8 * 9, 8 * 16 * 8 * 9),
        ("bn1", "bn", (8, 4, 4), (8, 4, 4), 16, 0),
        # SE on the branch: 8 -> 2 -> 8 with biases.
        ("se", "se", (8, 4, 4), (8, 4, 4), 8 * 2 + 2 + 2 * 8 + 8, 2 * 8 * 2),
        # A stride-2 1x1 projection of the block's input, with its BatchNorm.
        ("proj", "conv", (4, 8, 8), (8, 4, 4), 8 * 4, 8 * 16 * 4),
        ("proj_bn", "bn", (8, 4, 4), (8, 4, 4), 16, 0),
        ("act1", "act", (8, 4, 4), (8, 4, 4), 0, 0),
    ]
    # fmt: on
    _check_walk_against_module(spec)


@pytest.mark.parametrize(
    ("c_in", "filters", "stride", "expected"),
    [
        (4, 4, 1, "identity"),
        (4, 8, 1, "projection"),
        (4, 4, 2, "projection"),
        (3, 8, 2, "projection"),
    ],
)
def test_residual_shortcut_kind(c_in: int, filters: int, stride: int, expected: str):
    block = ConvBlock(filters, block_type="residual", stride=stride)
    assert shortcut(block, c_in) == expected
    spec = ArchSpec((c_in, 7, 7), 2, (block,))
    names = {la.name for la in infer_shapes(spec)}
    assert ("features.0.proj" in names) == (expected == "projection")
    _check_walk_against_module(spec)


def test_inverted_walk_by_hand():
    block = ConvBlock(4, block_type="inverted", expansion=2, convs=2, stride=2, se_ratio=0.25)
    spec = ArchSpec((4, 8, 8), 2, (block,))
    # fmt: off
    assert _rows(spec) == [
        # Unit 0: 4 -> 8 (expansion 2), the stride-2 depthwise conv, SE, projection back to 4.
        ("expand0", "conv", (4, 8, 8), (8, 8, 8), 8 * 4 + 8, 8 * 64 * 4),
        ("expand_act0", "act", (8, 8, 8), (8, 8, 8), 0, 0),
        ("dw0", "conv", (8, 8, 8), (8, 4, 4), 8 * 9 + 8, 8 * 16 * 9),
        ("dw_act0", "act", (8, 4, 4), (8, 4, 4), 0, 0),
        ("se0", "se", (8, 4, 4), (8, 4, 4), 8 * 2 + 2 + 2 * 8 + 8, 2 * 8 * 2),
        # The projection is linear: no activation after it.
        ("project0", "conv", (8, 4, 4), (4, 4, 4), 4 * 8 + 4, 4 * 16 * 8),
        # Unit 1 keeps the shape, so its input is added (no layer for the identity).
        ("expand1", "conv", (4, 4, 4), (8, 4, 4), 8 * 4 + 8, 8 * 16 * 4),
        ("expand_act1", "act", (8, 4, 4), (8, 4, 4), 0, 0),
        ("dw1", "conv", (8, 4, 4), (8, 4, 4), 8 * 9 + 8, 8 * 16 * 9),
        ("dw_act1", "act", (8, 4, 4), (8, 4, 4), 0, 0),
        ("se1", "se", (8, 4, 4), (8, 4, 4), 8 * 2 + 2 + 2 * 8 + 8, 2 * 8 * 2),
        ("project1", "conv", (8, 4, 4), (4, 4, 4), 4 * 8 + 4, 4 * 16 * 8),
    ]
    # fmt: on
    assert [shortcut(block, 4, u) for u in range(2)] == [None, "identity"]
    _check_walk_against_module(spec)


def test_inverted_expansion_1_has_no_expand_layer():
    block = ConvBlock(6, block_type="inverted", expansion=1, batch_norm=True)
    names = [n for n, *_ in _rows(ArchSpec((3, 8, 8), 2, (block,)))]
    assert names == ["dw0", "dw_bn0", "dw_act0", "project0", "project_bn0"]


@pytest.mark.parametrize(
    ("block", "c_in", "expected"),
    [
        (ConvBlock(4, block_type="inverted"), 4, ["identity"]),
        (ConvBlock(4, block_type="inverted"), 2, [None]),
        (ConvBlock(4, block_type="inverted", stride=2, convs=3), 4, [None, "identity", "identity"]),
        (ConvBlock(4, block_type="inverted", padding="valid", convs=2), 4, [None, None]),
        (ConvBlock(4, kernel=1, block_type="inverted", padding="valid"), 4, ["identity"]),
        (ConvBlock(4, block_type="plain"), 4, [None]),
        (ConvBlock(4, block_type="separable"), 4, [None]),
    ],
)
def test_inverted_residual_only_when_the_shape_allows(block, c_in, expected):
    assert [shortcut(block, c_in, u) for u in range(len(expected))] == expected


@pytest.mark.parametrize("ratio", [0.01, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("channels", [1, 3, 16])
def test_se_layer_counts(ratio: float, channels: int):
    spec = ArchSpec((channels, 5, 5), 2, (ConvBlock(channels, kernel=1, se_ratio=ratio),))
    se = next(la for la in infer_shapes(spec) if la.kind == "se")
    r = se_width(channels, ratio)
    assert r == max(1, round(channels * ratio))
    assert (se.name, se.in_shape, se.out_shape) == ("features.0.se", (channels, 5, 5), se.in_shape)
    assert se.params == 2 * channels * r + r + channels
    assert se.macs == 2 * channels * r
    _check_walk_against_module(spec)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("block_type", ["plain", "separable", "residual", "inverted"])
def test_stride_shrinks_like_a_strided_same_conv(n: int, stride: int, block_type: str):
    spec = ArchSpec((2, n, n + 3), 2, (ConvBlock(3, block_type=block_type, stride=stride),))
    assert _agg_in(spec) == (3, math.ceil(n / stride), math.ceil((n + 3) / stride))
    _check_walk_against_module(spec)


# --------------------------------------------------------------------------------------------
# multi-scale aggregation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "windows"),
    [
        ((8, 7, 7), (1, 2, 4)),
        ((8, 4, 4), (1, 2, 4)),
        ((8, 3, 3), (1, 2)),
        ((8, 2, 2), (1, 2)),
        ((8, 1, 1), (1,)),
        ((1, 16, 3), (1, 2)),
        ((1, 1, 9), (1,)),
        ((1, 5, 4), (1, 2, 4)),
    ],
)
def test_multiscale_sections(shape: tuple[int, int, int], windows: tuple[int, ...]):
    assert multiscale_sections(shape) == windows


def _multiscale(hw: int, heads: str = "single") -> ArchSpec:
    """A network whose last map is 8 x hw x hw, aggregated at several scales."""
    return ArchSpec(
        (1, hw, hw), 10, (ConvBlock(8),), aggregation="multiscale", heads=heads, predict="mean"
    )


def test_multiscale_7x7x8_by_hand():
    spec = _multiscale(7, heads="multi")
    walk = {la.name: la for la in infer_shapes(spec)}
    assert walk["aggregate.pool2"].out_shape == (8, 3, 3)
    assert walk["aggregate.pool4"].out_shape == (8, 1, 1)
    assert walk["aggregate"].in_shape == (8, 7, 7)
    assert walk["aggregate"].out_shape == (392 + 72 + 8,) == (472,)
    assert walk["classifier"].in_shape == (472,)
    assert (walk["aux_heads.0"].in_shape, walk["aux_heads.1"].in_shape) == ((72,), (8,))
    assert walk["aux_heads.0"].params == 72 * 10 + 10
    assert walk["aux_heads.1"].macs == 8 * 10
    assert "aux_heads.2" not in walk
    single = {la.name: la for la in infer_shapes(_multiscale(7))}
    assert single["aggregate"].out_shape == (472,)
    assert not any(n.startswith("aux_heads") for n in single)
    _check_walk_against_module(spec)


def test_multiscale_3x3_has_no_4x4_section():
    spec = _multiscale(3, heads="multi")
    names = [la.name for la in infer_shapes(spec)]
    assert "aggregate.pool2" in names and "aggregate.pool4" not in names
    assert [n for n in names if n.startswith("aux_heads")] == ["aux_heads.0"]
    agg = next(la for la in infer_shapes(spec) if la.name == "aggregate")
    assert agg.out_shape == (8 * 9 + 8 * 1,)
    model = build(spec)
    assert not hasattr(model.aggregate, "pool4") and len(model.aux_heads) == 1
    _check_walk_against_module(spec)


def test_multiscale_1x1_is_the_map_alone():
    spec = _multiscale(1, heads="multi")
    walk = infer_shapes(spec)
    names = [la.name for la in walk]
    assert not any(n.startswith(("aggregate.pool", "aux_heads")) for n in names)
    agg = next(la for la in walk if la.name == "aggregate")
    assert agg.in_shape == (8, 1, 1) and agg.out_shape == (8,)
    # The same features as plain flattening: multi-head degrades to the main head alone.
    flat = ArchSpec((1, 1, 1), 10, (ConvBlock(8),))
    assert count_params(spec) == count_params(flat)
    assert count_macs(spec) == count_macs(flat)
    model = build(spec)
    assert len(model.aux_heads) == 0
    assert len(model.forward_heads(torch.randn(2, 1, 1, 1))) == 1
    _check_walk_against_module(spec)


def test_gap_aggregate_is_channels():
    spec = ArchSpec((3, 32, 32), 4, (ConvBlock(6, pool="max"),), aggregation="gap")
    agg = next(la for la in infer_shapes(spec) if la.kind == "aggregate")
    assert agg.in_shape == (6, 16, 16) and agg.out_shape == (6,)
    assert infer_shapes(spec)[-1].in_shape == (6,)


def test_walk_is_chained():
    for spec in (*random_specs()[0], *(s for _, s in grid_specs())):
        walk = infer_shapes(spec)
        # Side branches (multi-scale pools, extra heads, a residual block's projection shortcut)
        # read a map without feeding the chain.
        branch = ("aggregate.pool", "aux_heads.")
        shapes = [la for la in walk if not la.name.startswith(branch) and not _is_proj(la)]
        assert shapes[0].in_shape == spec.input_shape
        for prev, cur in itertools.pairwise(shapes):
            assert cur.in_shape == prev.out_shape, cur.name
        _check_projections(spec, walk)
        assert shapes[-1].name == "classifier"
        assert shapes[-1].out_shape == (spec.num_classes,)
        aggregate = next(la for la in walk if la.name == "aggregate")
        for la in walk:
            if la.name.startswith("aggregate.pool"):
                assert la.in_shape == aggregate.in_shape, la.name
            if la.name.startswith("aux_heads."):
                assert la.out_shape == (spec.num_classes,), la.name
        assert all(la.params >= 0 and la.macs >= 0 for la in shapes)


def _is_proj(layer: Layer) -> bool:
    return layer.name.endswith((".proj", ".proj_bn"))


def _check_projections(spec: ArchSpec, walk: tuple[Layer, ...]) -> None:
    """A projection reads its block's input and meets the branch's output, the map the block's
    last activation (after the addition) receives."""
    for bi, block in enumerate(spec.blocks):
        mine = [la for la in walk if la.name.startswith(f"features.{bi}.")]
        proj = [la for la in mine if _is_proj(la)]
        if not proj:
            continue
        assert block.block_type == "residual"
        assert proj[0].in_shape == mine[0].in_shape
        last = f"features.{bi}.act{len(block.conv_kernels) - 1}"
        after = next(la for la in mine if la.name == last)
        assert proj[-1].out_shape == after.in_shape


# --------------------------------------------------------------------------------------------
# the walk against the real module
# --------------------------------------------------------------------------------------------


def _hooked_shapes(spec: ArchSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, output shape) without the batch dimension of every module a layer names."""
    model = build(spec).eval()
    modules = dict(model.named_modules())
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for layer in infer_shapes(spec):
        module = modules.get(layer.name)
        if module is None:
            continue

        def hook(mod, inputs, output, name=layer.name):
            # Shapes are read at call time: the in-place activations that follow may reuse the
            # tensor but never change its shape.
            if isinstance(output, list):  # multi-scale sections, concatenated by the network
                output = torch.cat(output, 1)
            seen[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.randn(2, *spec.input_shape))
    for h in handles:
        h.remove()
    return seen


def _check_walk_against_module(spec: ArchSpec) -> None:
    layers = infer_shapes(spec)
    seen = _hooked_shapes(spec)
    # Every layer of the walk is a module of the same name (the builder's promise), so every
    # one of them was hooked and checked.
    assert set(seen) == {la.name for la in layers}
    for layer in layers:
        in_shape, out_shape = seen[layer.name]
        assert out_shape == layer.out_shape, f"{layer.name}: module {out_shape}, walk {layer}"
        assert in_shape == layer.in_shape, f"{layer.name}: module {in_shape}, walk {layer}"


@pytest.mark.parametrize("spec", grid_params())
def test_infer_shapes_matches_module_grid(spec: ArchSpec):
    _check_walk_against_module(spec)


@pytest.mark.parametrize("spec", random_params())
def test_infer_shapes_matches_module_random(spec: ArchSpec):
    _check_walk_against_module(spec)


@pytest.mark.parametrize("spec", grid_params())
def test_walk_names_are_the_module_tree(spec: ArchSpec):
    """Every leaf module of the network is a layer of the walk (the GAP's insides excepted)."""
    model = build(spec)
    names = {la.name for la in infer_shapes(spec)}
    # An empty head is an empty Sequential: a container, not a layer.
    leaves = {
        n
        for n, m in model.named_modules()
        if not list(m.children()) and not isinstance(m, (nn.Sequential, nn.ModuleList))
    }
    if spec.aggregation == "gap":  # GAP's pool and flatten are one layer of the walk
        leaves = {n for n in leaves if not n.startswith("aggregate.")} | {"aggregate"}
    # A squeeze-and-excitation module (two linear layers and its gate) is one layer too.
    se = {n for n, m in model.named_modules() if isinstance(m, SqueezeExcite)}
    leaves = {n for n in leaves if not any(n.startswith(f"{e}.") for e in se)} | se
    if spec.aggregation == "multiscale":  # the sections' container is the walk's aggregate
        leaves.add("aggregate")
    assert leaves == names
    kinds = {la.name: la.kind for la in infer_shapes(spec)}
    modules = dict(model.named_modules())
    expected = {
        "conv": nn.Conv2d,
        "bn": nn.BatchNorm2d,
        "pool": (nn.MaxPool2d, nn.AvgPool2d),
        "dropout": nn.Dropout,
        "linear": nn.Linear,
        "se": SqueezeExcite,
    }
    for name, kind in kinds.items():
        if kind in expected:
            assert isinstance(modules[name], expected[kind]), (name, modules[name])
        if name.startswith("aggregate.pool"):  # the multi-scale sections are max pools
            assert isinstance(modules[name], nn.MaxPool2d), name
    if spec.aggregation == "multiscale":
        assert isinstance(modules["aggregate"], MultiScale)
