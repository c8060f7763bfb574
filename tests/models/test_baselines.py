"""The five standard networks of models._baselines: what they are, and that their docstrings'
figures are the walk's."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnas import models
from cnnas.models import (
    BASELINES,
    ArchSpec,
    ResidualBlock,
    build,
    count_macs,
    count_params,
    gap_cnn,
    infer_shapes,
    lenet5,
    mobilenet_small,
    resnet8,
    rules_cnn,
)

FASHION = ((1, 28, 28), 10)
# The figures on Fashion-MNIST, as the docstrings give them.
EXPECTED = {
    "lenet5": (61_706, 416_520),
    "gap_cnn": (35_674, 5_532_544),
    "rules_cnn": (468_010, 18_691_840),
    "mobilenet_small": (31_946, 2_375_232),
    "resnet8": (77_754, 9_345_920),
}


def test_the_five_are_exported_in_order():
    assert list(BASELINES) == list(EXPECTED)
    assert {
        "lenet5": lenet5,
        "gap_cnn": gap_cnn,
        "rules_cnn": rules_cnn,
        "mobilenet_small": mobilenet_small,
        "resnet8": resnet8,
    } == BASELINES
    assert all(name in models.__all__ for name in (*BASELINES, "BASELINES"))


@pytest.mark.parametrize("name", list(BASELINES))
def test_figures_of_the_docstring_are_the_walks(name: str):
    fn = BASELINES[name]
    spec = fn(*FASHION)
    assert spec == fn()  # Fashion-MNIST is the default
    params, macs = EXPECTED[name]
    assert (count_params(spec), count_macs(spec)) == (params, macs)
    doc = " ".join(fn.__doc__.split())
    found = re.search(r"Fashion-MNIST: ([\d,]+) parameters, ([\d,]+) MACs per image", doc)
    assert found, doc
    assert found.groups() == (f"{params:,}", f"{macs:,}")
    model = build(spec).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        out = model(torch.randn(1, *FASHION[0]))
    assert fc.get_total_flops() == 2 * macs
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize(("shape", "classes"), [((3, 32, 32), 100), ((1, 16, 16), 2)])
def test_other_datasets(name: str, shape: tuple[int, int, int], classes: int):
    spec = BASELINES[name](shape, classes)
    assert spec.input_shape == shape and spec.num_classes == classes
    assert ArchSpec.from_json(spec.to_json()) == spec
    model = build(spec)
    model.train()
    out = model(torch.randn(2, *shape))
    out.sum().backward()
    assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_lenet5_is_6c5_pool_16c5_pool_120_84():
    spec = lenet5()
    convs = [la for la in infer_shapes(spec) if la.kind == "conv"]
    assert [(la.out_shape, la.params) for la in convs] == [
        ((6, 28, 28), 6 * 25 + 6),
        ((16, 10, 10), 16 * 6 * 25 + 16),
    ]
    assert [d.width for d in spec.dense] == [120, 84]
    assert next(la for la in infer_shapes(spec) if la.kind == "aggregate").out_shape == (400,)
    assert spec.summary() == "6c5>max | 16c5v>max | flatten | d120 | d84 | 10"


def test_gap_cnn_is_16_16_pool_32_32_pool_64_gap():
    spec = gap_cnn()
    widths = [la.out_shape[0] for la in infer_shapes(spec) if la.kind == "conv"]
    assert widths == [16, 16, 32, 32, 64]
    assert spec.aggregation == "gap" and spec.dense == ()
    assert [b.pool for b in spec.blocks] == ["max", "max", "none"]


def test_rules_cnn_is_seed_002s_net():
    spec = rules_cnn()
    widths = [la.out_shape[0] for la in infer_shapes(spec) if la.kind == "conv"]
    assert widths == [32, 32, 64, 64]
    assert all(b.batch_norm and b.dropout == 0.4 and b.pool == "max" for b in spec.blocks)
    assert [(d.width, d.dropout) for d in spec.dense] == [(128, 0.4)]


def test_mobilenet_small_is_depthwise_separable_and_about_30k():
    spec = mobilenet_small()
    assert 28_000 <= count_params(spec) <= 34_000
    assert [b.block_type for b in spec.blocks] == ["plain"] + ["separable"] * 4
    model = build(spec)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in depthwise] == [16, 32, 64, 128]
    assert [m.stride for m in depthwise] == [(1, 1), (2, 2), (2, 2), (1, 1)]
    agg = next(la for la in infer_shapes(spec) if la.kind == "aggregate")
    assert agg.in_shape == (128, 7, 7)


def test_resnet8_has_eight_weighted_layers_and_two_projections():
    spec = resnet8()
    walk = infer_shapes(spec)
    main = [la for la in walk if la.kind in ("conv", "linear") and ".proj" not in la.name]
    assert len(main) == 8  # the stem, three basic blocks of two, the classifier
    projections = [la.name for la in walk if la.name.endswith(".proj")]
    assert projections == ["features.2.proj", "features.3.proj"]
    model = build(spec)
    assert [type(s) for s in model.features] == [nn.Sequential] + [ResidualBlock] * 3
    agg = next(la for la in walk if la.kind == "aggregate")
    assert agg.in_shape == (64, 7, 7)
