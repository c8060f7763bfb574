"""Tests for models._build: every option builds and runs; counts agree with the module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import models
from models import CNN, ArchSpec, ConvBlock, DenseLayer, build, count_macs, count_params
from tests.models._specs import GRID_INPUT_SHAPES, OPTIONS, grid_params, grid_specs, random_params

REPO = Path(__file__).resolve().parents[2]


def test_grid_covers_every_option_value_per_input_shape():
    specs = grid_specs()
    for shape in GRID_INPUT_SHAPES:
        on_shape = [s for _, s in specs if s.input_shape == shape]
        blocks = [b for s in on_shape for b in s.blocks]
        dense = [d for s in on_shape for d in s.dense]
        assert {b.activation for b in blocks} == set(OPTIONS["activation"])
        assert {d.activation for d in dense} == set(OPTIONS["activation"])
        assert {b.pool for b in blocks} == set(models.POOLS)
        assert {b.padding for b in blocks} == set(models.PADDINGS)
        assert {s.aggregation for s in on_shape} == set(models.AGGREGATIONS)
        assert {b.batch_norm for b in blocks} == {False, True}
        assert {b.convs for b in blocks} >= {1, 2, 3}
        assert {b.kernel for b in blocks} >= {1, 3, 5, 7}
        assert {b.dropout for b in blocks} >= {0.0, 0.3}
        assert {d.dropout for d in dense} >= {0.0, 0.3}
        assert {len(s.dense) for s in on_shape} >= {0, 1, 2}
    # The option table itself names every value the spec allows.
    assert set(OPTIONS["activation"]) == set(models.ACTIVATIONS)
    assert set(OPTIONS["pool"]) == set(models.POOLS)
    assert set(OPTIONS["padding"]) == set(models.PADDINGS)
    assert set(OPTIONS["aggregation"]) == set(models.AGGREGATIONS)


@pytest.mark.parametrize("spec", grid_params())
def test_every_option_builds_and_runs(spec: ArchSpec):
    torch.manual_seed(0)
    model = build(spec)
    assert isinstance(model, CNN) and isinstance(model, nn.Module)
    assert model.spec is spec
    x = torch.randn(2, *spec.input_shape)

    model.train()
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()
    # Training goes through forward_heads; the in-place activations must not break autograd.
    heads = model.forward_heads(x)
    assert isinstance(heads, tuple) and len(heads) >= 1
    sum(h.sum() for h in heads).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        out = model(x)
        heads = model.forward_heads(x)
        again = model(x)
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()
    assert isinstance(heads, tuple)
    assert torch.equal(heads[0], out)
    # Eval mode is deterministic (dropout off, BatchNorm on running stats).
    assert torch.equal(again, out)
    # Each image's logits do not depend on the rest of the batch in eval mode.
    with torch.no_grad():
        single = model(x[:1])
    torch.testing.assert_close(single, out[:1], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# parameter counts
# --------------------------------------------------------------------------------------------


def _module_params(spec: ArchSpec) -> int:
    return sum(p.numel() for p in build(spec).parameters())


@pytest.mark.parametrize("spec", grid_params())
def test_count_params_grid(spec: ArchSpec):
    assert count_params(spec) == _module_params(spec)


@pytest.mark.parametrize("spec", random_params())
def test_count_params_random(spec: ArchSpec):
    assert count_params(spec) == _module_params(spec)


def test_count_params_by_hand():
    # conv 1->8 k3 with bias: 80; linear 8*28*28 -> 10: 62730.
    spec = ArchSpec((1, 28, 28), 10, (ConvBlock(8),))
    assert count_params(spec) == 8 * 9 + 8 + 8 * 28 * 28 * 10 + 10
    # BatchNorm: no conv bias, plus weight and bias of the BN.
    spec = ArchSpec((1, 28, 28), 10, (ConvBlock(8, batch_norm=True),), aggregation="gap")
    assert count_params(spec) == 8 * 9 + 2 * 8 + 8 * 10 + 10


def test_count_params_excludes_buffers():
    spec = ArchSpec((3, 16, 16), 5, (ConvBlock(4, batch_norm=True, convs=2),))
    model = build(spec)
    assert sum(b.numel() for b in model.buffers()) > 0
    assert count_params(spec) == sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------


def _counted_flops(spec: ArchSpec) -> int:
    model = build(spec).eval()
    x = torch.randn(1, *spec.input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops()


@pytest.mark.parametrize("spec", grid_params())
def test_count_macs_matches_flop_counter_grid(spec: ArchSpec):
    assert 2 * count_macs(spec) == _counted_flops(spec)


@pytest.mark.parametrize("spec", random_params())
def test_count_macs_matches_flop_counter_random(spec: ArchSpec):
    assert 2 * count_macs(spec) == _counted_flops(spec)


def test_count_macs_by_hand():
    spec = ArchSpec(
        (1, 28, 28), 10, (ConvBlock(8, pool="max"),), dense=(DenseLayer(16, dropout=0.5),)
    )
    conv = 8 * 28 * 28 * 1 * 9
    head = 8 * 14 * 14 * 16
    assert count_macs(spec) == conv + head + 16 * 10


def test_count_macs_is_per_image():
    spec = ArchSpec((3, 16, 16), 4, (ConvBlock(4, batch_norm=True),))
    model = build(spec).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randn(3, *spec.input_shape))
    assert fc.get_total_flops() == 3 * 2 * count_macs(spec)


# --------------------------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------------------------


def test_conv_bias_only_without_batch_norm():
    spec = ArchSpec(
        (3, 32, 32),
        10,
        (
            ConvBlock(4, convs=2, batch_norm=True, pool="max"),
            ConvBlock(8, convs=2, batch_norm=False, pool="max"),
        ),
    )
    model = build(spec)
    for i in range(2):
        assert getattr(model.features[0], f"conv{i}").bias is None
        assert isinstance(getattr(model.features[0], f"bn{i}"), nn.BatchNorm2d)
        assert getattr(model.features[1], f"conv{i}").bias is not None
        assert f"bn{i}" not in dict(model.features[1].named_children())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4


def test_conv_bias_follows_batch_norm_on_random_specs():
    from tests.models._specs import random_specs

    for spec in random_specs()[0][:60]:
        model = build(spec)
        for block, stage in zip(spec.blocks, model.features, strict=True):
            for i in range(block.convs):
                conv = getattr(stage, f"conv{i}")
                assert (conv.bias is None) == block.batch_norm
                assert conv.kernel_size == (block.kernel, block.kernel)
                assert conv.out_channels == block.filters


def test_module_hyperparameters_follow_spec():
    spec = ArchSpec(
        (1, 28, 28),
        7,
        (
            ConvBlock(4, kernel=5, padding="valid", activation="leaky_relu", pool="avg",
                      dropout=0.2),
            ConvBlock(6, activation="tanh", pool="max"),
        ),
        aggregation="gap",
        dense=(DenseLayer(9, activation="elu", dropout=0.4), DenseLayer(5, activation="silu")),
    )  # fmt: skip
    m = build(spec)
    b0, b1 = m.features
    assert b0.conv0.padding == (0, 0) and b1.conv0.padding == (1, 1)
    assert isinstance(b0.act0, nn.LeakyReLU) and isinstance(b1.act0, nn.Tanh)
    assert isinstance(b0.pool, nn.AvgPool2d) and isinstance(b1.pool, nn.MaxPool2d)
    assert isinstance(b0.drop, nn.Dropout) and b0.drop.p == pytest.approx(0.2)
    assert not hasattr(b1, "drop")
    assert isinstance(m.head[0].act, nn.ELU) and m.head[0].drop.p == pytest.approx(0.4)
    assert isinstance(m.head[1].act, nn.SiLU) and not hasattr(m.head[1], "drop")
    assert m.head[0].linear.in_features == 6 and m.classifier.in_features == 5
    assert m.classifier.out_features == 7


def test_activation_modules():
    expected = {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "elu": nn.ELU,
        "leaky_relu": nn.LeakyReLU,
        "tanh": nn.Tanh,
    }
    assert set(expected) == set(models.ACTIVATIONS)
    for name, cls in expected.items():
        m = build(ArchSpec((1, 4, 4), 2, (ConvBlock(1, activation=name),)))
        assert type(m.features[0].act0) is cls


def test_build_rejects_non_spec():
    spec = ArchSpec((1, 8, 8), 2, (ConvBlock(1),))
    for bad in (spec.to_dict(), spec.to_json(), None, 3):
        with pytest.raises(TypeError, match="ArchSpec"):
            build(bad)  # type: ignore[arg-type]


def test_builds_are_independent():
    spec = ArchSpec((1, 8, 8), 2, (ConvBlock(2),))
    a, b = build(spec), build(spec)
    assert a is not b
    assert all(p is not q for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_state_dict_loads_into_rebuilt_spec():
    spec = next(s for _, s in grid_specs() if s.blocks[0].batch_norm)
    a = build(spec).eval()
    b = build(ArchSpec.from_json(spec.to_json())).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# --------------------------------------------------------------------------------------------
# layering
# --------------------------------------------------------------------------------------------


def test_models_imports_only_torch():
    code = (
        "import models, sys; "
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('optuna','lightning','pytorch_lightning','mlflow')]; "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
