"""Tests for models._shapes: the output-size rule, collapse errors, and the walk vs. the module."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from models import (
    ArchSpec,
    ConvBlock,
    DenseLayer,
    Layer,
    SpecError,
    build,
    count_macs,
    count_params,
    infer_shapes,
    out_size,
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


def test_gap_aggregate_is_channels():
    spec = ArchSpec((3, 32, 32), 4, (ConvBlock(6, pool="max"),), aggregation="gap")
    agg = next(la for la in infer_shapes(spec) if la.kind == "aggregate")
    assert agg.in_shape == (6, 16, 16) and agg.out_shape == (6,)
    assert infer_shapes(spec)[-1].in_shape == (6,)


def test_walk_is_chained():
    for spec in (*random_specs()[0], *(s for _, s in grid_specs())):
        shapes = infer_shapes(spec)
        assert shapes[0].in_shape == spec.input_shape
        for prev, cur in itertools.pairwise(shapes):
            assert cur.in_shape == prev.out_shape, cur.name
        assert shapes[-1].name == "classifier"
        assert shapes[-1].out_shape == (spec.num_classes,)
        assert all(la.params >= 0 and la.macs >= 0 for la in shapes)


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
        if not list(m.children()) and not isinstance(m, nn.Sequential)
    }
    leaves = {n for n in leaves if not n.startswith("aggregate.")}
    if spec.aggregation == "gap":
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
    }
    for name, kind in kinds.items():
        if kind in expected:
            assert isinstance(modules[name], expected[kind]), (name, modules[name])
