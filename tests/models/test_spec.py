"""Tests for models._spec: JSON round trip, validation errors that name the field, identity."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest

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
    infer_shapes,
    multiscale_sections,
)
from tests.models._specs import BLOCK_COMBOS, grid_specs, random_params, random_specs


def small_spec(**changes: Any) -> ArchSpec:
    fields = {
        "input_shape": (1, 28, 28),
        "num_classes": 10,
        "blocks": (ConvBlock(8, pool="max"), ConvBlock(16, kernel=5, pool="max")),
        "aggregation": "flatten",
        "dense": (DenseLayer(32),),
    }
    fields.update(changes)
    return ArchSpec(**fields)


def small_dict(**changes: Any) -> dict[str, Any]:
    d = small_spec().to_dict()
    d.update(changes)
    return d


# --------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------


def test_random_generator_yields_enough_valid_specs():
    specs, collapsed = random_specs()
    assert len(specs) >= 100, f"only {len(specs)} valid, {collapsed} collapsed"
    # Every option value occurs among the valid specs, so the round trip covers them all.
    blocks = [b for s in specs for b in s.blocks]
    dense = [d for s in specs for d in s.dense]
    assert {b.activation for b in blocks} == set(ACTIVATIONS)
    assert {d.activation for d in dense} == set(ACTIVATIONS)
    assert {b.pool for b in blocks} == set(POOLS)
    assert {b.padding for b in blocks} == set(PADDINGS)
    assert {s.aggregation for s in specs} == set(AGGREGATIONS)
    assert {b.batch_norm for b in blocks} == {False, True}
    assert {b.convs for b in blocks} == {1, 2, 3}
    assert {len(s.dense) for s in specs} == {0, 1, 2, 3}
    assert {len(s.blocks) for s in specs} >= {1, 2, 3}
    assert any(b.dropout > 0 for b in blocks)
    assert any(d.dropout > 0 for d in dense)
    # The new options: factorisation active and inactive, and every head setting.
    assert {b.factorize for b in blocks if b.kernel > 3} == {False, True}
    assert {b.factorize for b in blocks if b.kernel <= 3} == {False, True}
    assert {s.heads for s in specs if s.aggregation == "multiscale"} == set(HEADS)
    multi = [s for s in specs if s.heads == "multi"]
    assert {s.predict for s in multi} == set(PREDICTIONS)
    assert {s.predict for s in specs if s.heads == "single"} == set(PREDICTIONS)
    assert {0.0, 100.0} <= {s.aux_weight for s in specs}
    assert any(w not in (0.0, 0.5, 1.0, 100.0) for w in (s.aux_weight for s in multi))
    assert any(b.pool == "conv" for s in multi for b in s.blocks)
    # Multi-head specs whose last map allows three, two and one head (the tiny inputs).
    maps = [next(la for la in infer_shapes(s) if la.kind == "aggregate").in_shape for s in multi]
    assert {len(multiscale_sections(m)) for m in maps} == {1, 2, 3}
    # The efficient blocks: every type, SE on and off, strides, expansions active and inactive.
    assert {b.block_type for b in blocks} == set(BLOCK_TYPES)
    assert {b.se_ratio > 0 for b in blocks} == {False, True}
    assert any(b.se_ratio not in (0.0, 0.25) for b in blocks)
    assert {b.stride for b in blocks} == {1, 2, 3}
    assert {b.expansion for b in blocks if b.block_type == "inverted"} == {1, 2, 3, 6}
    assert {b.expansion for b in blocks if b.block_type != "inverted"} == {1, 2, 3, 6}
    assert any(b.factorize and b.kernel > 3 for b in blocks if b.block_type == "inverted")


@pytest.mark.parametrize("spec", random_params())
def test_round_trip_random(spec: ArchSpec):
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_json(spec.to_json(indent=None)) == spec
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize("spec", [s for _, s in grid_specs()])
def test_round_trip_grid(spec: ArchSpec):
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert ArchSpec.from_json(spec.to_json()) == spec


def test_round_trip_new_fields():
    spec = small_spec(
        blocks=(
            ConvBlock(8, kernel=7, factorize=True, pool="conv", batch_norm=True),
            ConvBlock(16, kernel=3, factorize=True, pool="max"),
        ),
        aggregation="multiscale",
        heads="multi",
        aux_weight=0.123456789012345,
        predict="mean",
    )
    data = json.loads(spec.to_json())
    assert [b["factorize"] for b in data["blocks"]] == [True, True]
    assert data["blocks"][0]["pool"] == "conv"
    assert (data["aggregation"], data["heads"], data["predict"]) == ("multiscale", "multi", "mean")
    assert data["aux_weight"] == 0.123456789012345
    back = ArchSpec.from_json(spec.to_json())
    assert back == spec
    assert back.blocks[1].factorize is True  # inactive, yet kept by the round trip
    assert back.spec_hash() == spec.spec_hash()
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    # An integer weight is stored as a float, so 1 and 1.0 are one spec.
    assert small_spec(aux_weight=1) == small_spec(aux_weight=1.0)
    assert type(small_spec(aux_weight=2).aux_weight) is float
    assert type(small_spec(aux_weight=2).to_dict()["aux_weight"]) is float


def _assert_plain_json(value: Any, where: str = "$") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where}: key {k!r}"
            _assert_plain_json(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _assert_plain_json(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), f"{where}: {value!r}"
        if isinstance(value, float):
            assert math.isfinite(value), where


def test_json_is_plain_types():
    for spec in random_specs()[0][:50]:
        data = json.loads(spec.to_json())
        _assert_plain_json(data)
        assert set(data) == {f.name for f in dataclasses.fields(ArchSpec)}
        assert data["input_shape"] == list(spec.input_shape)
        assert type(data["aux_weight"]) is float
        for b in data["blocks"]:
            assert set(b) == {f.name for f in dataclasses.fields(ConvBlock)}
            assert type(b["dropout"]) is float
            assert type(b["factorize"]) is bool
            assert type(b["se_ratio"]) is float
            assert type(b["stride"]) is int and type(b["expansion"]) is int
            assert b["block_type"] in BLOCK_TYPES
        for d in data["dense"]:
            assert set(d) == {f.name for f in dataclasses.fields(DenseLayer)}


def test_to_dict_is_plain_and_equals_its_json_round_trip():
    for spec in random_specs()[0][:50]:
        d = spec.to_dict()
        _assert_plain_json(d)
        assert d == json.loads(spec.to_json())
        assert d == json.loads(json.dumps(d))


def test_from_dict_does_not_mutate_its_input():
    data = small_dict(blocks=[{"filters": 8, "pool": "max"}], dense=[{"width": 4}])
    before = copy.deepcopy(data)
    ArchSpec.from_dict(data)
    assert data == before


def test_lists_become_tuples():
    spec = ArchSpec(
        input_shape=[3, 32, 32],
        num_classes=5,
        blocks=[ConvBlock(4), {"filters": 8, "pool": "avg"}],
        dense=[DenseLayer(7), {"width": 3}],
    )
    assert spec.input_shape == (3, 32, 32) and type(spec.input_shape) is tuple
    assert type(spec.blocks) is tuple and type(spec.dense) is tuple
    assert all(isinstance(b, ConvBlock) for b in spec.blocks)
    assert all(isinstance(d, DenseLayer) for d in spec.dense)
    assert spec.blocks[1] == ConvBlock(8, pool="avg")
    # Tuples all the way down, so the frozen spec is hashable and can key a dict.
    assert {spec: 1}[spec] == 1
    expected = ArchSpec(
        (3, 32, 32),
        5,
        (ConvBlock(4), ConvBlock(8, pool="avg")),
        dense=(DenseLayer(7), DenseLayer(3)),
    )
    assert spec == expected


def test_dropout_is_normalised_to_float():
    assert ConvBlock(4, dropout=0) == ConvBlock(4, dropout=0.0)
    assert type(ConvBlock(4, dropout=0).dropout) is float
    assert type(DenseLayer(4, dropout=0).dropout) is float


def test_specs_are_frozen():
    spec = small_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.blocks[0].filters = 3  # type: ignore[misc]


def test_defaults():
    b = ConvBlock(8)
    got = (b.kernel, b.convs, b.padding, b.batch_norm, b.activation, b.pool, b.dropout)
    assert got == (3, 1, "same", False, "relu", "none", 0.0)
    assert b.factorize is False
    got = (b.block_type, b.expansion, b.se_ratio, b.stride)
    assert got == ("plain", 6, 0.0, 1)
    d = DenseLayer(8)
    assert (d.activation, d.dropout) == ("relu", 0.0)
    s = ArchSpec((1, 8, 8), 2, (b,))
    assert s.aggregation == "flatten" and s.dense == ()
    assert (s.heads, s.aux_weight, s.predict) == ("single", 1.0, "main")
    # Defaults may be left out of a dict.
    data = {"input_shape": [1, 8, 8], "num_classes": 2, "blocks": [{"filters": 8}]}
    assert ArchSpec.from_dict(data) == s


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

# (id, thunk, expected path, substrings the message must contain)
# fmt: off
_ERRORS: list[tuple[str, Callable[[], Any], str, tuple[str, ...]]] = [
    ("filters=0", lambda: ConvBlock(filters=0), "filters", ("1..",)),
    ("filters=-3", lambda: ConvBlock(filters=-3), "filters", ()),
    ("filters=True", lambda: ConvBlock(filters=True), "filters", ("True",)),
    ("filters=8.0", lambda: ConvBlock(filters=8.0), "filters", ("integer",)),
    ("filters='8'", lambda: ConvBlock(filters="8"), "filters", ()),
    ("filters=huge", lambda: ConvBlock(filters=10**9), "filters", ()),
    ("kernel=4", lambda: ConvBlock(8, kernel=4), "kernel", ("odd",)),
    ("kernel=2", lambda: ConvBlock(8, kernel=2), "kernel", ("odd",)),
    ("kernel=0", lambda: ConvBlock(8, kernel=0), "kernel", ()),
    ("kernel=17", lambda: ConvBlock(8, kernel=17), "kernel", ()),
    ("kernel=True", lambda: ConvBlock(8, kernel=True), "kernel", ()),
    ("convs=0", lambda: ConvBlock(8, convs=0), "convs", ()),
    ("convs=1.5", lambda: ConvBlock(8, convs=1.5), "convs", ()),
    ("padding", lambda: ConvBlock(8, padding="full"), "padding", ("'full'", *PADDINGS)),
    ("batch_norm=1", lambda: ConvBlock(8, batch_norm=1), "batch_norm", ()),
    ("batch_norm='yes'", lambda: ConvBlock(8, batch_norm="yes"), "batch_norm", ()),
    ("activation", lambda: ConvBlock(8, activation="swish"), "activation",
     ("'swish'", *ACTIVATIONS)),
    ("activation=None", lambda: ConvBlock(8, activation=None), "activation", ACTIVATIONS),
    ("pool", lambda: ConvBlock(8, pool="min"), "pool", ("'min'", *POOLS)),
    ("dropout=1.0", lambda: ConvBlock(8, dropout=1.0), "dropout", ("[0, 1)",)),
    ("dropout=-0.1", lambda: ConvBlock(8, dropout=-0.1), "dropout", ("[0, 1)",)),
    ("dropout=nan", lambda: ConvBlock(8, dropout=float("nan")), "dropout", ()),
    ("dropout=True", lambda: ConvBlock(8, dropout=True), "dropout", ()),
    ("dropout='0.1'", lambda: ConvBlock(8, dropout="0.1"), "dropout", ()),
    ("dense.width=0", lambda: DenseLayer(0), "width", ()),
    ("dense.width=True", lambda: DenseLayer(True), "width", ()),
    ("dense.activation", lambda: DenseLayer(8, activation="soft"), "activation", ACTIVATIONS),
    ("dense.dropout=1.0", lambda: DenseLayer(8, dropout=1.0), "dropout", ()),
    ("num_classes=1", lambda: small_spec(num_classes=1), "num_classes", ()),
    ("num_classes=0", lambda: small_spec(num_classes=0), "num_classes", ()),
    ("num_classes=True", lambda: small_spec(num_classes=True), "num_classes", ()),
    ("num_classes=10.0", lambda: small_spec(num_classes=10.0), "num_classes", ()),
    ("input_shape=2d", lambda: small_spec(input_shape=(28, 28)), "input_shape", ("(28, 28)",)),
    ("input_shape=4d", lambda: small_spec(input_shape=(1, 1, 28, 28)), "input_shape", ()),
    ("input_shape=str", lambda: small_spec(input_shape="1x28x28"), "input_shape", ()),
    ("input_shape=int", lambda: small_spec(input_shape=28), "input_shape", ()),
    ("input_shape[0]=0", lambda: small_spec(input_shape=(0, 28, 28)), "input_shape[0]", ()),
    ("input_shape[2]=bool", lambda: small_spec(input_shape=(1, 28, True)), "input_shape[2]", ()),
    ("blocks=()", lambda: small_spec(blocks=()), "blocks", ("at least one",)),
    ("blocks=[]", lambda: small_spec(blocks=[]), "blocks", ("at least one",)),
    ("blocks=block", lambda: small_spec(blocks=ConvBlock(8)), "blocks", ("list",)),
    ("blocks[0]=int", lambda: small_spec(blocks=[5]), "blocks[0]", ("mapping",)),
    ("blocks[0]=dense", lambda: small_spec(blocks=[DenseLayer(4)]), "blocks[0]", ("mapping",)),
    ("dense=layer", lambda: small_spec(dense=DenseLayer(4)), "dense", ("list",)),
    ("aggregation", lambda: small_spec(aggregation="concat"), "aggregation",
     ("'concat'", *AGGREGATIONS)),
    # The new options.
    ("factorize='yes'", lambda: ConvBlock(8, kernel=5, factorize="yes"), "factorize",
     ("'yes'",)),
    ("factorize=1", lambda: ConvBlock(8, kernel=5, factorize=1), "factorize", ()),
    ("factorize=None on 3x3", lambda: ConvBlock(8, factorize=None), "factorize", ()),
    ("heads", lambda: small_spec(heads="three"), "heads", ("'three'", *HEADS)),
    ("heads=multi flatten", lambda: small_spec(heads="multi"), "heads",
     ("multiscale", "'flatten'")),
    ("heads=multi gap", lambda: small_spec(aggregation="gap", heads="multi"), "heads",
     ("multiscale", "'gap'")),
    ("aux_weight=-1", lambda: small_spec(aux_weight=-1), "aux_weight", ("[0, 100]", "-1")),
    ("aux_weight=101", lambda: small_spec(aux_weight=101), "aux_weight", ("[0, 100]",)),
    ("aux_weight=100.5", lambda: small_spec(aux_weight=100.5), "aux_weight", ()),
    ("aux_weight='x'", lambda: small_spec(aux_weight="x"), "aux_weight", ("'x'",)),
    ("aux_weight=True", lambda: small_spec(aux_weight=True), "aux_weight", ("True",)),
    ("aux_weight=None", lambda: small_spec(aux_weight=None), "aux_weight", ()),
    ("aux_weight=nan", lambda: small_spec(aux_weight=float("nan")), "aux_weight", ()),
    ("aux_weight=inf", lambda: small_spec(aux_weight=float("inf")), "aux_weight", ()),
    ("aux_weight multi", lambda: small_spec(aggregation="multiscale", heads="multi",
                                            aux_weight=-0.5), "aux_weight", ()),
    ("predict", lambda: small_spec(predict="vote"), "predict", ("'vote'", *PREDICTIONS)),
    ("predict=None", lambda: small_spec(predict=None), "predict", PREDICTIONS),
    ("pool=Conv", lambda: ConvBlock(8, pool="Conv"), "pool", ("'Conv'", *POOLS)),
    # The efficient blocks.
    ("block_type", lambda: ConvBlock(8, block_type="mbconv"), "block_type",
     ("'mbconv'", *BLOCK_TYPES)),
    ("block_type=None", lambda: ConvBlock(8, block_type=None), "block_type", BLOCK_TYPES),
    ("block_type=residual valid", lambda: ConvBlock(8, block_type="residual", padding="valid"),
     "block_type", ("'residual'", "padding 'same'", "'valid'")),
    ("expansion=0", lambda: ConvBlock(8, block_type="inverted", expansion=0), "expansion",
     ("1..16",)),
    ("expansion=17", lambda: ConvBlock(8, expansion=17), "expansion", ("1..16",)),
    ("expansion=2.0", lambda: ConvBlock(8, expansion=2.0), "expansion", ("integer",)),
    ("expansion=True", lambda: ConvBlock(8, expansion=True), "expansion", ("True",)),
    ("se_ratio=-0.1", lambda: ConvBlock(8, se_ratio=-0.1), "se_ratio", ("[0, 1]", "-0.1")),
    ("se_ratio=1.5", lambda: ConvBlock(8, se_ratio=1.5), "se_ratio", ("[0, 1]",)),
    ("se_ratio=nan", lambda: ConvBlock(8, se_ratio=float("nan")), "se_ratio", ()),
    ("se_ratio=True", lambda: ConvBlock(8, se_ratio=True), "se_ratio", ("True",)),
    ("se_ratio='0.25'", lambda: ConvBlock(8, se_ratio="0.25"), "se_ratio", ("'0.25'",)),
    ("se_ratio=None", lambda: ConvBlock(8, se_ratio=None), "se_ratio", ()),
    ("stride=0", lambda: ConvBlock(8, stride=0), "stride", ("1..4",)),
    ("stride=5", lambda: ConvBlock(8, stride=5), "stride", ("1..4",)),
    ("stride=2.0", lambda: ConvBlock(8, stride=2.0), "stride", ("integer",)),
    ("stride=False", lambda: ConvBlock(8, stride=False), "stride", ()),
    ("from_dict blocks[1].block_type",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 8},
                                                   {"filters": 8, "block_type": "Residual"}])),
     "blocks[1].block_type", BLOCK_TYPES),
    ("from_json blocks[0].se_ratio",
     lambda: ArchSpec.from_json(json.dumps(small_dict(blocks=[{"filters": 8, "se_ratio": 2}]))),
     "blocks[0].se_ratio", ()),
    ("from_dict blocks[0].residual valid",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 8, "block_type": "residual",
                                                    "padding": "valid"}])),
     "blocks[0].block_type", ("same",)),
    ("from_dict blocks[1].factorize",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 8},
                                                   {"filters": 8, "factorize": "true"}])),
     "blocks[1].factorize", ()),
    ("from_json heads=multi",
     lambda: ArchSpec.from_json(json.dumps(small_dict(heads="multi"))), "heads",
     ("multiscale",)),
    ("from_json aux_weight",
     lambda: ArchSpec.from_json(json.dumps(small_dict(aux_weight="0.5"))), "aux_weight", ()),
    # Nested paths through from_dict.
    ("from_dict blocks[1].kernel",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 8}, {"filters": 8, "kernel": 4}])),
     "blocks[1].kernel", ("odd",)),
    ("from_dict blocks[0].filters",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 0}])), "blocks[0].filters", ()),
    ("from_dict blocks[2].pool",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 1}] * 2 + [{"filters": 1,
                                                                            "pool": "x"}])),
     "blocks[2].pool", POOLS),
    ("from_dict dense[0].width",
     lambda: ArchSpec.from_dict(small_dict(dense=[{"width": 0}])), "dense[0].width", ()),
    ("from_dict dense[1].dropout",
     lambda: ArchSpec.from_dict(small_dict(dense=[{"width": 3}, {"width": 3, "dropout": 2}])),
     "dense[1].dropout", ()),
    ("from_dict dense[0].activation",
     lambda: ArchSpec.from_dict(small_dict(dense=[{"width": 3, "activation": "RELU"}])),
     "dense[0].activation", ACTIVATIONS),
    ("constructor blocks[1].kernel",
     lambda: small_spec(blocks=[{"filters": 8}, {"filters": 8, "kernel": 6}]),
     "blocks[1].kernel", ("odd",)),
    # Unknown and missing keys.
    ("unknown key kernal",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"filters": 8, "kernal": 3}])),
     "blocks[0]", ("kernal", "allowed", "kernel", "filters", "padding")),
    ("unknown key in dense",
     lambda: ArchSpec.from_dict(small_dict(dense=[{"width": 8, "units": 3}])),
     "dense[0]", ("units", "allowed", "width")),
    ("unknown top-level key",
     lambda: ArchSpec.from_dict(small_dict(optimizer="adam")), "",
     ("optimizer", "allowed", "blocks", "num_classes")),
    ("missing filters",
     lambda: ArchSpec.from_dict(small_dict(blocks=[{"kernel": 3}])), "blocks[0]", ("filters",)),
    ("missing width",
     lambda: ArchSpec.from_dict(small_dict(dense=[{"activation": "relu"}])), "dense[0]",
     ("width",)),
    ("missing num_classes",
     lambda: ArchSpec.from_dict({"input_shape": [1, 8, 8], "blocks": [{"filters": 1}]}), "",
     ("num_classes",)),
    ("ConvBlock.from_dict unknown",
     lambda: ConvBlock.from_dict({"filters": 8, "groups": 2}), "", ("groups", "stride")),
    ("from_dict non-mapping", lambda: ArchSpec.from_dict([1, 2]), "", ("mapping",)),
    # JSON.
    ("from_json invalid", lambda: ArchSpec.from_json("{not json"), "", ("JSON",)),
    ("from_json empty", lambda: ArchSpec.from_json(""), "", ("JSON",)),
    ("from_json list", lambda: ArchSpec.from_json("[1, 2, 3]"), "", ("mapping",)),
    ("from_json nested",
     lambda: ArchSpec.from_json(json.dumps(small_dict(blocks=[{"filters": 8, "kernel": 8}]))),
     "blocks[0].kernel", ("odd",)),
]
# fmt: on


@pytest.mark.parametrize(
    ("thunk", "path", "needles"),
    [pytest.param(t, p, n, id=i) for i, t, p, n in _ERRORS],
)
def test_validation_error_names_the_field(
    thunk: Callable[[], Any], path: str, needles: tuple[str, ...]
):
    with pytest.raises(SpecError) as info:
        thunk()
    e = info.value
    assert e.path == path, str(e)
    for needle in needles:
        assert needle in e.message, f"{needle!r} not in {e.message!r}"
    # str() leads with the path, so a log line says where the problem is.
    assert str(e) == (f"{path}: {e.message}" if path else e.message)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
    with pytest.raises(ValueError):
        ConvBlock(0)


def test_spec_error_under_prefixes_paths():
    e = SpecError("kernel", "bad")
    assert e.under("blocks[1]").path == "blocks[1].kernel"
    assert e.under("blocks[1]").message == "bad"
    assert SpecError("", "bad").under("dense[0]").path == "dense[0]"


def test_spec_error_pickles_and_copies():
    e = SpecError("blocks[1].kernel", "must be odd")
    for clone in (pickle.loads(pickle.dumps(e)), copy.copy(e)):
        assert type(clone) is SpecError
        assert (clone.path, clone.message, str(clone)) == (e.path, e.message, str(e))


def test_from_dict_unknown_keys_of_mixed_types_raise_spec_error():
    data = small_dict()
    data.update({1: "one", "kernal": 3})
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(data)
    assert info.value.path == ""
    assert "kernal" in info.value.message


def test_unknown_key_message_lists_allowed_keys_in_order():
    with pytest.raises(SpecError) as info:
        ConvBlock.from_dict({"filters": 8, "kernal": 3})
    allowed = [f.name for f in dataclasses.fields(ConvBlock)]
    assert str(allowed) in info.value.message
    assert "['kernal']" in info.value.message


def test_boundary_values_are_valid():
    ConvBlock(1, kernel=1, convs=1, dropout=0.0)
    ConvBlock(1, kernel=15)
    ConvBlock(1, dropout=0.999)
    DenseLayer(1, dropout=0.5)
    small_spec(num_classes=2)
    ArchSpec((1, 1, 1), 2, (ConvBlock(1),))
    ConvBlock(1, kernel=15, factorize=True, convs=8)
    ConvBlock(1, kernel=1, factorize=True)
    ConvBlock(1, block_type="inverted", expansion=1, se_ratio=1.0, stride=4)
    ConvBlock(1, block_type="inverted", expansion=16, se_ratio=0)
    ConvBlock(1, block_type="residual", kernel=1)
    assert (
        ConvBlock(1, se_ratio=1).se_ratio == 1.0
        and type(ConvBlock(1, se_ratio=1).se_ratio) is float
    )
    # An inverted block may use 'valid' padding: its bottlenecks then add nothing back.
    ArchSpec((1, 8, 8), 2, (ConvBlock(2, block_type="inverted", padding="valid", convs=2),))
    multi = {"aggregation": "multiscale", "heads": "multi"}
    assert small_spec(**multi, aux_weight=0).aux_weight == 0.0
    assert small_spec(**multi, aux_weight=100).aux_weight == 100.0
    ArchSpec((1, 1, 1), 2, (ConvBlock(1, pool="conv"),), **multi)
    # Multi-scale without extra heads, and the head options on single-head specs, are valid.
    small_spec(aggregation="multiscale")
    small_spec(aux_weight=50.0, predict="mean")


# --------------------------------------------------------------------------------------------
# identity and summary
# --------------------------------------------------------------------------------------------


def test_spec_hash_is_16_hex_and_stable_across_round_trip():
    for spec in random_specs()[0]:
        h = spec.spec_hash()
        assert re.fullmatch(r"[0-9a-f]{16}", h), h
        assert ArchSpec.from_json(spec.to_json()).spec_hash() == h
        assert ArchSpec.from_dict(spec.to_dict()).spec_hash() == h
        assert spec.spec_hash() == h


def test_spec_hash_is_a_constant_across_processes():
    # sha256 of canonical JSON, not Python's salted hash(): pin one value.
    spec = ArchSpec((1, 8, 8), 2, (ConvBlock(1),))
    canonical = json.dumps(spec.canonical_dict(), sort_keys=True, separators=(",", ":"))
    import hashlib

    assert spec.spec_hash() == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _mutations() -> list[tuple[str, ArchSpec]]:
    """The base spec, and one spec per field with only that field changed."""
    base = small_spec()
    b0, d0 = base.blocks[0], base.dense[0]
    block_changes = {
        "filters": 9,
        "kernel": 5,
        "convs": 2,
        "padding": "valid",
        "batch_norm": True,
        "activation": "gelu",
        "pool": "avg",
        "dropout": 0.25,
        "block_type": "separable",
        "se_ratio": 0.25,
        "stride": 2,
    }
    # factorize is active only on kernels above 3 (not in inverted blocks), expansion only in
    # inverted blocks: both are mutated where they are active, below.
    block_fields = {f.name for f in dataclasses.fields(ConvBlock)} - {"factorize", "expansion"}
    dense_changes = {"width": 33, "activation": "tanh", "dropout": 0.5}
    assert set(block_changes) == block_fields
    assert set(dense_changes) == {f.name for f in dataclasses.fields(DenseLayer)}
    out = [("base", base)]
    out += [("input_shape", small_spec(input_shape=(3, 28, 28)))]
    out += [("input_shape.hw", small_spec(input_shape=(1, 28, 32)))]
    out += [("num_classes", small_spec(num_classes=11))]
    out += [("aggregation", small_spec(aggregation="gap"))]
    out += [("blocks.len", small_spec(blocks=base.blocks[:1]))]
    out += [("blocks.order", small_spec(blocks=base.blocks[::-1]))]
    out += [("dense.len", small_spec(dense=()))]
    for name, value in block_changes.items():
        changed = dataclasses.replace(b0, **{name: value})
        out.append((f"blocks[0].{name}", small_spec(blocks=(changed, *base.blocks[1:]))))
    for name, value in dense_changes.items():
        changed = dataclasses.replace(d0, **{name: value})
        out.append((f"dense[0].{name}", small_spec(dense=(changed,))))
    factorized = dataclasses.replace(b0, kernel=5, factorize=True)
    out.append(("blocks[0].factorize", small_spec(blocks=(factorized, *base.blocks[1:]))))
    for name, value in {"residual": "residual", "inverted": "inverted"}.items():
        changed = dataclasses.replace(b0, block_type=value)
        out.append((f"blocks[0].block_type={name}", small_spec(blocks=(changed, *base.blocks[1:]))))
    inverted = dataclasses.replace(b0, block_type="inverted", expansion=2)
    out.append(("blocks[0].expansion", small_spec(blocks=(inverted, *base.blocks[1:]))))
    out.append(
        (
            "blocks[0].se_ratio=0.5",
            small_spec(blocks=(dataclasses.replace(b0, se_ratio=0.5), *base.blocks[1:])),
        )
    )
    out.append(("aggregation.multiscale", small_spec(aggregation="multiscale")))
    multi = {"aggregation": "multiscale", "heads": "multi"}
    out.append(("heads", small_spec(**multi)))
    out.append(("aux_weight", small_spec(**multi, aux_weight=0.5)))
    out.append(("predict", small_spec(**multi, predict="mean")))
    return out


def test_spec_hash_ignores_inactive_fields():
    base = small_spec()
    b0 = base.blocks[0]
    assert b0.kernel == 3
    factorized = dataclasses.replace(b0, factorize=True)  # nothing to factorise in a 3x3
    same = small_spec(blocks=(factorized, *base.blocks[1:]))
    assert same != base and same.spec_hash() == base.spec_hash()
    assert "factorize" not in same.canonical_dict()["blocks"][0]
    # Head options mean nothing for a single-head network.
    single = small_spec(aux_weight=0.25, predict="mean")
    assert single != base and single.spec_hash() == base.spec_hash()
    assert "predict" not in single.canonical_dict()


def test_inactive_fields():
    assert small_spec().inactive() == ("heads", "aux_weight", "predict")
    assert small_spec(aggregation="multiscale").inactive() == ("heads", "aux_weight", "predict")
    assert small_spec(aggregation="multiscale", heads="multi").inactive() == ()
    multi = small_spec(aggregation="multiscale", heads="multi", predict="mean")
    assert {"aux_weight", "predict", "heads"} <= set(multi.canonical_dict())
    single = small_spec(aggregation="multiscale")
    # adaptive_depth and exit_threshold came later: off, they leave the canonical dict too, so
    # every spec hashed before they existed keeps its hash.
    assert set(single.to_dict()) - set(single.canonical_dict()) == {
        "heads",
        "aux_weight",
        "predict",
        "adaptive_depth",
        "exit_threshold",
    }
    # Factorisation is dropped block by block, only where the kernel is 3 or less.
    spec = small_spec(
        blocks=(ConvBlock(8, kernel=5, factorize=True), ConvBlock(4, kernel=3, factorize=True))
    )
    blocks = spec.canonical_dict()["blocks"]
    assert blocks[0]["factorize"] is True and "factorize" not in blocks[1]
    # canonical_dict leaves the spec's own dict alone.
    assert spec.to_dict()["blocks"][1]["factorize"] is True


def test_spec_hash_follows_active_head_options():
    multi = {"aggregation": "multiscale", "heads": "multi"}
    hashes = {
        small_spec(**multi, aux_weight=w, predict=p).spec_hash()
        for w in (0.0, 0.5, 1.0)
        for p in PREDICTIONS
    }
    assert len(hashes) == 6
    # Unfactorised is the default: writing it out or leaving it out is one network.
    assert (
        small_spec(blocks=(ConvBlock(8, kernel=5, factorize=False),)).spec_hash()
        == small_spec(blocks=(ConvBlock(8, kernel=5),)).spec_hash()
    )


def test_spec_hash_ignores_head_options_without_extra_heads():
    def spec(**changes: Any) -> ArchSpec:
        return ArchSpec(
            (1, 1, 1), 3, (ConvBlock(2),), aggregation="multiscale", heads="multi", **changes
        )

    from cnnas.models import build

    assert len(build(spec()).aux_heads) == 0
    assert spec(aux_weight=0.5).spec_hash() == spec(aux_weight=2.0).spec_hash()
    assert spec(predict="mean").spec_hash() == spec(predict="main").spec_hash()


def test_spec_hash_differs_when_any_field_differs():
    hashes = {}
    for name, spec in _mutations():
        h = spec.spec_hash()
        assert h not in hashes, f"{name} has the same hash as {hashes.get(h)}"
        hashes[h] = name


def test_spec_hash_distinct_for_distinct_random_specs():
    specs = set(random_specs()[0])
    assert len({s.spec_hash() for s in specs}) == len(specs)


def test_equality_follows_hash():
    a, b = small_spec(), small_spec()
    assert a == b and hash(a) == hash(b) and a.spec_hash() == b.spec_hash()
    assert a != small_spec(num_classes=3)


def test_summary_mentions_filters_and_aggregation():
    spec = ArchSpec(
        (1, 28, 28),
        10,
        (
            ConvBlock(16, convs=2, batch_norm=True, pool="max"),
            ConvBlock(32, kernel=5, padding="valid", dropout=0.25),
        ),
        aggregation="gap",
        dense=(DenseLayer(128, dropout=0.5),),
    )
    s = spec.summary()
    assert "\n" not in s
    assert "16c3x2+bn>max" in s
    assert "32c5v~0.25" in s
    assert "gap" in s and "d128~0.5" in s
    assert s.endswith("| 10")
    assert "flatten" in small_spec().summary()
    spec = small_spec(
        blocks=(ConvBlock(8, kernel=5, factorize=True, pool="conv"), ConvBlock(4, factorize=True)),
        aggregation="multiscale",
        heads="multi",
        aux_weight=0.5,
        predict="mean",
    )
    s = spec.summary()
    # The factorised 5x5 is marked, the 3x3 (where it is inactive) is not.
    assert "8c5f>conv" in s and "4c3 " in s and "4c3f" not in s
    assert "multiscale+heads(mean,0.5)" in s
    assert "heads" not in small_spec(aggregation="multiscale", predict="mean").summary()
    for spec in random_specs()[0]:
        s = spec.summary()
        assert spec.aggregation in s
        for b in spec.blocks:
            assert f"{b.filters}c{b.kernel}" in s


# --------------------------------------------------------------------------------------------
# the efficient blocks: identity of earlier specs, inactive fields, summary
# --------------------------------------------------------------------------------------------

# Hashes computed before block_type, expansion, se_ratio and stride existed. Stored studies find
# their trained twins and saved weights their spec by these: they must never change.
_EARLIER_HASHES = {
    "tiny": "7c73222ff991dfb7",
    "small": "514dbb9cbf858160",
    "bn-gap-f5": "68b8693aafc7c181",
    "multi": "f373608426010d4d",
    "adaptive": "2d1c063f66acca8d",
}


def _earlier_specs() -> dict[str, ArchSpec]:
    return {
        "tiny": ArchSpec((1, 8, 8), 2, (ConvBlock(1),)),
        "small": small_spec(),
        "bn-gap-f5": ArchSpec(
            (3, 32, 32),
            10,
            (
                ConvBlock(16, 5, 2, True, batch_norm=True, pool="conv", dropout=0.25),
                ConvBlock(32, factorize=True, activation="gelu", pool="avg"),
            ),
            aggregation="gap",
            dense=(DenseLayer(64, activation="silu", dropout=0.5),),
        ),
        "multi": ArchSpec(
            (1, 28, 28),
            10,
            (ConvBlock(16, pool="max"), ConvBlock(32, padding="valid", pool="max")),
            aggregation="multiscale",
            heads="multi",
            aux_weight=0.5,
            predict="mean",
        ),
        "adaptive": ArchSpec(
            (1, 28, 28),
            10,
            (
                ConvBlock(16, batch_norm=True, pool="max"),
                ConvBlock(16, batch_norm=True),
                ConvBlock(16, batch_norm=True),
            ),
            aggregation="gap",
            adaptive_depth=True,
            exit_threshold=0.87,
        ),
    }


@pytest.mark.parametrize("name", sorted(_EARLIER_HASHES))
def test_earlier_specs_keep_their_hash(name: str):
    spec = _earlier_specs()[name]
    assert spec.spec_hash() == _EARLIER_HASHES[name]
    # Written out with the new fields at their defaults, it is the same network and identity.
    data = spec.to_dict()
    assert {"block_type", "expansion", "se_ratio", "stride"} <= set(data["blocks"][0])
    for b in data["blocks"]:
        del b["block_type"], b["expansion"], b["se_ratio"], b["stride"]
    assert ArchSpec.from_dict(data) == spec
    assert ArchSpec.from_dict(data).spec_hash() == _EARLIER_HASHES[name]
    # The canonical dict has none of them.
    for b in spec.canonical_dict()["blocks"]:
        assert not {"block_type", "expansion", "se_ratio", "stride"} & set(b)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def test_earlier_random_and_grid_specs_keep_their_hashes():
    # The generators' specs as they were before the efficient blocks (the random ones without
    # the later fields' stream, the grid without the options and combinations that use them),
    # hashed before those fields existed.
    earlier, _ = random_specs(later=False)
    assert len(earlier) == 142
    assert _digest([s.spec_hash() for s in earlier]) == "004ea18ba7890113"
    new_opts = ("block_type=", "se_ratio=", "stride=", "expansion=")
    new_combos = tuple(f"{c}-" for c in BLOCK_COMBOS)
    grid = [
        f"{sid}:{s.spec_hash()}"
        for sid, s in grid_specs()
        if not any(o in sid for o in new_opts) and not sid.startswith(new_combos)
    ]
    assert len(grid) == 135
    assert _digest(grid) == "138eda52afc673ce"


def test_new_fields_change_the_hash_only_when_active():
    base = small_spec()
    b0 = base.blocks[0]

    def with_block(**changes: Any) -> ArchSpec:
        return small_spec(blocks=(dataclasses.replace(b0, **changes), *base.blocks[1:]))

    # The expansion of a non-inverted block, and factorisation in an inverted one, change nothing.
    assert with_block(expansion=2).spec_hash() == base.spec_hash()
    inverted = with_block(block_type="inverted", kernel=5)
    assert with_block(block_type="inverted", kernel=5, factorize=True).spec_hash() == (
        inverted.spec_hash()
    )
    assert with_block(block_type="inverted", expansion=2).spec_hash() != (
        with_block(block_type="inverted").spec_hash()
    )
    # Written at their defaults, the new fields are the earlier network.
    defaults = {"block_type": "plain", "se_ratio": 0.0, "stride": 1, "expansion": 6}
    assert with_block(**defaults).spec_hash() == base.spec_hash()
    hashes = {
        with_block(**change).spec_hash()
        for change in (
            {},
            {"block_type": "separable"},
            {"block_type": "residual"},
            {"block_type": "inverted"},
            {"se_ratio": 0.25},
            {"se_ratio": 0.5},
            {"stride": 2},
            {"block_type": "inverted", "se_ratio": 0.25, "stride": 2},
        )
    }
    assert len(hashes) == 8


def test_inactive_fields_of_the_new_blocks():
    assert ConvBlock(4).inactive() == ("factorize", "expansion")
    assert ConvBlock(4, kernel=5, block_type="separable").inactive() == ("expansion",)
    assert ConvBlock(4, kernel=5, block_type="residual").inactive() == ("expansion",)
    assert ConvBlock(4, kernel=5, block_type="inverted").inactive() == ("factorize",)
    assert ConvBlock(4, kernel=3, block_type="inverted").inactive() == ("factorize",)
    spec = small_spec(
        blocks=(
            ConvBlock(8, kernel=5, block_type="inverted", expansion=4, se_ratio=0.25, stride=2),
            ConvBlock(8, block_type="separable", expansion=4),
        )
    )
    inverted, separable = spec.canonical_dict()["blocks"]
    assert inverted["expansion"] == 4 and inverted["se_ratio"] == 0.25 and inverted["stride"] == 2
    assert inverted["block_type"] == "inverted" and "factorize" not in inverted
    assert separable["block_type"] == "separable"
    assert not {"expansion", "se_ratio", "stride"} & set(separable)
    # The round trip keeps every field, inactive ones included.
    back = ArchSpec.from_json(spec.to_json())
    assert back == spec and back.blocks[1].expansion == 4


def test_round_trip_of_the_new_fields():
    spec = small_spec(
        blocks=(
            ConvBlock(8, block_type="residual", convs=2, batch_norm=True, stride=2, pool="max"),
            ConvBlock(16, block_type="inverted", expansion=3, se_ratio=0.123456789, convs=2),
        ),
        aggregation="gap",
    )
    data = json.loads(spec.to_json())
    assert [b["block_type"] for b in data["blocks"]] == ["residual", "inverted"]
    assert data["blocks"][1]["se_ratio"] == 0.123456789
    assert (data["blocks"][0]["stride"], data["blocks"][1]["expansion"]) == (2, 3)
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_dict(spec.to_dict()).spec_hash() == spec.spec_hash()
    # An integer ratio is stored as a float: 1 and 1.0 are one block.
    assert ConvBlock(4, se_ratio=1) == ConvBlock(4, se_ratio=1.0)


def test_summary_names_the_new_blocks():
    spec = small_spec(
        blocks=(
            ConvBlock(16, batch_norm=True),
            ConvBlock(16, block_type="separable", stride=2, batch_norm=True),
            ConvBlock(32, block_type="residual", convs=2, stride=2, se_ratio=0.25, pool="max"),
            ConvBlock(32, kernel=5, block_type="inverted", expansion=4, convs=2, dropout=0.1),
        ),
        aggregation="gap",
    )
    s = spec.summary()
    assert s.split(" | ")[:4] == [
        "16c3+bn",
        "16c3/2+dw+bn",
        "32c3x2/2+res+se0.25>max",
        "32c5x2+inv4~0.1",
    ]
    # Markdown-safe: nothing the report renderer would have to escape beyond its own separators.
    assert not set(s.replace(" | ", "")) & set("*[]<`_#")
    # Earlier specs read as they always did.
    assert small_spec().summary() == "8c3>max | 16c5>max | flatten | d32 | 10"
    marks = {"separable": "+dw", "residual": "+res", "inverted": "+inv"}
    for spec in random_specs()[0]:
        parts = spec.summary().split(" | ")
        for b, part in zip(spec.blocks, parts, strict=False):
            assert part.startswith(f"{b.filters}c{b.kernel}")
            for kind, mark in marks.items():
                assert (mark in part) == (b.block_type == kind), part
            assert ("+inv" + str(b.expansion) in part) == (b.block_type == "inverted"), part
            assert ("+se" in part) == (b.se_ratio > 0), part
            assert ("/" in part) == (b.stride > 1), part
