"""Tests for models._build: every option builds and runs; counts agree with the module."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnas import models
from cnnas.models import (
    CNN,
    ArchSpec,
    ConvBlock,
    DenseLayer,
    MultiScale,
    build,
    count_macs,
    count_params,
    infer_shapes,
    multiscale_sections,
    shortcut,
)
from tests.models._specs import (
    GRID_INPUT_SHAPES,
    OPTIONS,
    grid_params,
    grid_specs,
    random_params,
    random_specs,
)

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
        # Factorisation on and off where it is active (kernels above 3), on 5x5 and 7x7.
        assert {(b.kernel, b.factorize) for b in blocks} >= {
            (k, f) for k in (5, 7) for f in (False, True)
        }
        assert {b.dropout for b in blocks} >= {0.0, 0.3}
        assert {d.dropout for d in dense} >= {0.0, 0.3}
        assert {len(s.dense) for s in on_shape} >= {0, 1, 2}
        assert {s.heads for s in on_shape if s.aggregation == "multiscale"} == set(models.HEADS)
        # The head options on networks where they are active.
        multi = [s for s in on_shape if s.heads == "multi"]
        assert {s.predict for s in multi} == set(models.PREDICTIONS)
        assert {s.aux_weight for s in multi} >= {0.0, 0.5, 1.0}
        assert any(b.pool == "conv" and b.batch_norm for s in multi for b in s.blocks)
        # Every block type, with and without SE and stride, and inverted blocks' expansions.
        assert {b.block_type for b in blocks} == set(models.BLOCK_TYPES)
        for kind in models.BLOCK_TYPES:
            mine = [b for b in blocks if b.block_type == kind]
            assert {b.se_ratio > 0 for b in mine} == {False, True}, kind
            assert {b.stride for b in mine} >= {1, 2}, kind
            assert any(b.batch_norm for b in mine), kind
        assert {b.expansion for b in blocks if b.block_type == "inverted"} >= {1, 2, 6}
    # Identity and projection shortcuts, and inverted bottlenecks with and without a residual.
    kinds = {(b.block_type, _shortcuts(s, bi)) for _, s in specs for bi, b in enumerate(s.blocks)}
    assert {("residual", ("identity",)), ("residual", ("projection",))} <= kinds
    assert any(k == "inverted" and "identity" in sc for k, sc in kinds)
    assert ("inverted", (None,)) in kinds
    # Multi-head networks with three, two and a single head (maps too small for the 4x4 and 2x2
    # sections) are all among the grid's.
    counts = {len(_windows(s)) for _, s in specs if s.heads == "multi"}
    assert counts == {1, 2, 3}
    # The option table itself names every value the spec allows.
    assert set(OPTIONS["activation"]) == set(models.ACTIVATIONS)
    assert set(OPTIONS["pool"]) == set(models.POOLS)
    assert set(OPTIONS["padding"]) == set(models.PADDINGS)
    assert set(OPTIONS["aggregation"]) == set(models.AGGREGATIONS)
    assert set(OPTIONS["heads"]) == set(models.HEADS)
    assert set(OPTIONS["predict"]) == set(models.PREDICTIONS)
    assert set(OPTIONS["factorize"]) == {False, True}
    assert set(OPTIONS["block_type"]) == set(models.BLOCK_TYPES)


def _shortcuts(spec: ArchSpec, bi: int) -> tuple[str | None, ...]:
    """What each unit of block ``bi`` adds back (one unit unless the block is inverted)."""
    block = spec.blocks[bi]
    c_in = spec.blocks[bi - 1].filters if bi else spec.input_shape[0]
    units = block.convs if block.block_type == "inverted" else 1
    return tuple(shortcut(block, c_in, u) for u in range(units))


def _windows(spec: ArchSpec) -> tuple[int, ...]:
    """The multi-scale windows of the spec's last feature map."""
    agg = next(la for la in infer_shapes(spec) if la.kind == "aggregate")
    return multiscale_sections(agg.in_shape)


def _expected_heads(spec: ArchSpec) -> int:
    """The main head, plus one per pooled multi-scale section of a multi-head spec."""
    return len(_windows(spec)) if spec.heads == "multi" else 1


def _mean_prediction(heads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """predict='mean' by its definition: log of the mean of the heads' softmax probabilities."""
    return torch.stack([h.softmax(1) for h in heads]).mean(0).log()


@pytest.mark.parametrize("spec", grid_params())
def test_every_option_builds_and_runs(spec: ArchSpec):
    torch.manual_seed(0)
    model = build(spec)
    assert isinstance(model, CNN) and isinstance(model, nn.Module)
    assert model.spec is spec
    x = torch.randn(2, *spec.input_shape)

    n_heads = _expected_heads(spec)
    assert len(model.aux_heads) == n_heads - 1

    model.train()
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()
    # Training goes through forward_heads and sums the heads' losses (objectives._train); the
    # in-place activations must not break autograd, and every parameter, the extra heads'
    # included, must be reached.
    heads = model.forward_heads(x)
    assert isinstance(heads, tuple) and len(heads) == n_heads
    for h in heads:
        assert h.shape == (2, spec.num_classes) and torch.isfinite(h).all()
    y = torch.tensor([0, spec.num_classes - 1])
    sum(F.cross_entropy(h, y) for h in heads).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for i, aux in enumerate(model.aux_heads):
        # A linear head's bias gradient is the batch's (softmax - one-hot): never all zero.
        assert aux.bias.grad.abs().sum() > 0, f"aux_heads.{i}"

    model.eval()
    with torch.no_grad():
        out = model(x)
        heads = model.forward_heads(x)
        again = model(x)
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()
    assert isinstance(heads, tuple) and len(heads) == n_heads
    assert all(h.shape == (2, spec.num_classes) and torch.isfinite(h).all() for h in heads)
    assert torch.equal(model.combine(heads), out)
    if spec.predict == "mean" and n_heads > 1:
        torch.testing.assert_close(out, _mean_prediction(heads))
        # Log-probabilities: they exponentiate to a distribution.
        torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    else:
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


def test_count_params_by_hand_new_options():
    # Factorised 5x5, 2 -> 4 channels: two 3x3 convs (2->4, 4->4) with biases, not one 5x5.
    spec = ArchSpec((2, 8, 8), 3, (ConvBlock(4, kernel=5, factorize=True),), aggregation="gap")
    assert count_params(spec) == (4 * 2 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 3 + 3)
    unfactorized = ArchSpec((2, 8, 8), 3, (ConvBlock(4, kernel=5),), aggregation="gap")
    assert count_params(unfactorized) == (4 * 2 * 25 + 4) + (4 * 3 + 3)
    # A conv pool is a 4->4 3x3 convolution; with BatchNorm no biases, two BNs of 2x4.
    spec = ArchSpec((1, 8, 8), 3, (ConvBlock(4, pool="conv", batch_norm=True),), aggregation="gap")
    assert count_params(spec) == (4 * 9 + 8) + (4 * 4 * 9 + 8) + (4 * 3 + 3)
    # Multi-scale 4x7x7 map -> 196 + 36 + 4 features; heads on the 36 and the 4.
    spec = ArchSpec(
        (1, 7, 7), 5, (ConvBlock(4),), aggregation="multiscale", heads="multi", aux_weight=0.0
    )
    conv = 4 * 9 + 4
    assert count_params(spec) == conv + (236 * 5 + 5) + (36 * 5 + 5) + (4 * 5 + 5)
    single = dataclasses.replace(spec, heads="single")
    assert count_params(single) == conv + (236 * 5 + 5)


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


def test_count_macs_by_hand_new_options():
    # Factorised 7x7 on 10x10, 1 -> 2 channels, 'same': 3x3 convs 1->2, 2->2, 2->2.
    spec = ArchSpec((1, 10, 10), 2, (ConvBlock(2, kernel=7, factorize=True),), aggregation="gap")
    assert count_macs(spec) == 100 * 2 * 9 * (1 + 2 + 2) + 2 * 2
    # Conv pool on 2x7x7: the map is 4x4 after it.
    spec = ArchSpec((2, 7, 7), 2, (ConvBlock(2, kernel=1, pool="conv"),))
    assert count_macs(spec) == 49 * 2 * 2 + 16 * 2 * 2 * 9 + (2 * 16) * 2
    # Multi-scale 1x4x4 map, three heads: 16+4+1 into the main head, 4 and 1 into the others.
    spec = ArchSpec(
        (1, 4, 4), 3, (ConvBlock(1, kernel=1),), aggregation="multiscale", heads="multi"
    )
    assert count_macs(spec) == 16 + 21 * 3 + 4 * 3 + 1 * 3


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
    for spec in random_specs()[0][:80]:
        model = build(spec)
        for block, stage in zip(spec.blocks, model.features, strict=True):
            # Every convolution of every block type: a bias exactly when no BatchNorm follows.
            every = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
            assert every and all((c.bias is None) == block.batch_norm for c in every)
            if block.block_type not in ("plain", "residual"):
                continue
            convs = [m for n, m in stage.named_children() if n.startswith("conv")]
            assert len(convs) == len(block.conv_kernels)
            for i, (conv, kernel) in enumerate(zip(convs, block.conv_kernels, strict=True)):
                assert (conv.bias is None) == block.batch_norm
                assert conv.kernel_size == (kernel, kernel)
                assert conv.out_channels == block.filters
                assert conv.stride == ((block.stride,) * 2 if i == 0 else (1, 1))
            if block.pool == "conv":  # the learnable pool follows the same rule
                assert (stage.pool.bias is None) == block.batch_norm
                assert hasattr(stage, "pool_bn") == block.batch_norm


def test_conv_kernels_follow_factorize():
    assert ConvBlock(4, kernel=5).conv_kernels == (5,)
    assert ConvBlock(4, kernel=5, factorize=True).conv_kernels == (3, 3)
    assert ConvBlock(4, kernel=7, factorize=True).conv_kernels == (3, 3, 3)
    assert ConvBlock(4, kernel=9, factorize=True, convs=2).conv_kernels == (3,) * 8
    assert ConvBlock(4, kernel=7, convs=2).conv_kernels == (7, 7)
    # Inactive on kernels of 3 or less: the block is the same network either way.
    for k in (1, 3):
        assert ConvBlock(4, kernel=k, factorize=True).conv_kernels == (k,)
        assert ConvBlock(4, kernel=k, convs=2, factorize=True).conv_kernels == (k, k)
        assert ConvBlock(4, kernel=k, factorize=True).inactive() == ("factorize", "expansion")
    assert ConvBlock(4, kernel=5).inactive() == ("expansion",)
    # Separable and residual blocks factorise their kxk convs; inverted ones never do (one
    # depthwise kxk per bottleneck), and only they use the expansion.
    for kind in ("separable", "residual"):
        assert ConvBlock(4, kernel=5, factorize=True, block_type=kind).conv_kernels == (3, 3)
    inverted = ConvBlock(4, kernel=5, convs=2, factorize=True, block_type="inverted")
    assert inverted.conv_kernels == (5, 5)
    assert inverted.inactive() == ("factorize",)


def test_factorized_block_modules():
    block = ConvBlock(6, kernel=7, factorize=True, batch_norm=True, activation="gelu")
    spec = ArchSpec((2, 12, 12), 3, (block,))
    stage = build(spec).features[0]
    names = [n for n, _ in stage.named_children()]
    assert names == [f"{k}{i}" for i in range(3) for k in ("conv", "bn", "act")]
    assert [stage.conv0.in_channels, stage.conv1.in_channels, stage.conv2.in_channels] == [2, 6, 6]
    for i in range(3):
        conv = getattr(stage, f"conv{i}")
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is None
        assert isinstance(getattr(stage, f"act{i}"), nn.GELU)
    valid = build(ArchSpec((2, 12, 12), 3, (ConvBlock(6, 5, factorize=True, padding="valid"),)))
    assert valid.features[0].conv1.padding == (0, 0)


def test_conv_pool_modules():
    spec = ArchSpec(
        (3, 16, 16),
        4,
        (
            ConvBlock(5, pool="conv", batch_norm=True, activation="elu", dropout=0.2),
            ConvBlock(7, pool="conv", padding="valid"),
        ),
    )
    b0, b1 = build(spec).features
    assert [n for n, _ in b0.named_children()] == [
        "conv0", "bn0", "act0", "pool", "pool_bn", "pool_act", "drop"
    ]  # fmt: skip
    assert [n for n, _ in b1.named_children()] == ["conv0", "act0", "pool", "pool_act"]
    for stage, c, bn in ((b0, 5, True), (b1, 7, False)):
        pool = stage.pool
        assert isinstance(pool, nn.Conv2d)
        assert (pool.in_channels, pool.out_channels) == (c, c)
        assert pool.kernel_size == (3, 3) and pool.stride == (2, 2) and pool.padding == (1, 1)
        assert (pool.bias is None) == bn
    assert isinstance(b0.pool_bn, nn.BatchNorm2d) and b0.pool_bn.num_features == 5
    assert isinstance(b0.pool_act, nn.ELU) and isinstance(b1.pool_act, nn.ReLU)
    # The pool's padding is its own: 'valid' applies to the block's convolutions only.
    assert b1.conv0.padding == (0, 0)


def test_multiscale_module():
    m = MultiScale((1, 2, 4))
    assert isinstance(m.pool2, nn.MaxPool2d) and isinstance(m.pool4, nn.MaxPool2d)
    assert (m.pool2.kernel_size, m.pool2.stride) == (2, 2)
    assert (m.pool4.kernel_size, m.pool4.stride) == (4, 4)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    out = m(x)
    assert isinstance(out, list) and [t.shape for t in out] == [(2, 75), (2, 12), (2, 3)]
    assert torch.equal(out[0], x.flatten(1))
    assert torch.equal(out[1], F.max_pool2d(x, 2).flatten(1))
    assert torch.equal(out[2], F.max_pool2d(x, 4).flatten(1))
    # The 4x4 section of a 5x5 map is the maximum of its top-left 4x4 corner.
    assert torch.equal(out[2], x[:, :, :4, :4].amax((2, 3)))
    only = MultiScale((1,))
    assert not list(only.children())
    assert [t.shape for t in only(x)] == [(2, 75)]


def test_multi_head_structure():
    spec = ArchSpec(
        (1, 28, 28),
        10,
        (ConvBlock(4, pool="max"), ConvBlock(8, pool="max")),
        aggregation="multiscale",
        dense=(DenseLayer(16),),
        heads="multi",
    )
    m = build(spec)
    assert isinstance(m.aggregate, MultiScale) and m.aggregate.windows == (1, 2, 4)
    # 8x7x7 map: 392 + 8x3x3 + 8x1x1 features into the dense layer; each head sees its section.
    assert m.head[0].linear.in_features == 392 + 72 + 8
    assert [h.in_features for h in m.aux_heads] == [72, 8]
    assert [h.out_features for h in m.aux_heads] == [10, 10]
    # The extra heads read the pooled sections directly, not through the dense layers.
    x = torch.randn(3, 1, 28, 28)
    m.eval()
    with torch.no_grad():
        heads = m.forward_heads(x)
        fmap = m.features(x)
    assert len(heads) == 3
    torch.testing.assert_close(heads[1], m.aux_heads[0](F.max_pool2d(fmap, 2).flatten(1)))
    torch.testing.assert_close(heads[2], m.aux_heads[1](F.max_pool2d(fmap, 4).flatten(1)))
    # A single-head multi-scale network has no extra heads and one output.
    single = build(dataclasses.replace(spec, heads="single"))
    assert len(single.aux_heads) == 0
    assert len(single.forward_heads(x)) == 1
    # Neither has extra heads with any other aggregation.
    for agg in ("flatten", "gap"):
        other = build(dataclasses.replace(spec, aggregation=agg, heads="single"))
        assert len(other.aux_heads) == 0 and len(other.forward_heads(x)) == 1


@pytest.mark.parametrize(
    ("input_shape", "n_heads"),
    [((1, 1, 1), 1), ((1, 2, 3), 2), ((1, 3, 3), 2), ((1, 4, 4), 3), ((1, 5, 9), 3)],
)
@pytest.mark.parametrize("predict", ["main", "mean"])
def test_multi_heads_degrade_with_small_maps(
    input_shape: tuple[int, int, int], n_heads: int, predict: str
):
    spec = ArchSpec(
        input_shape, 3, (ConvBlock(2),), aggregation="multiscale", heads="multi", predict=predict
    )
    m = build(spec).eval()
    assert len(m.aux_heads) == n_heads - 1
    x = torch.randn(2, *input_shape)
    with torch.no_grad():
        heads = m.forward_heads(x)
        out = m(x)
    assert len(heads) == n_heads
    assert all(h.shape == (2, 3) for h in heads)
    if predict == "mean" and n_heads > 1:
        torch.testing.assert_close(out, _mean_prediction(heads))
    else:
        # One head left: predict='mean' is the main head's logits, as for a single-head network.
        assert torch.equal(out, heads[0])


def test_combine_by_hand():
    spec = ArchSpec(
        (1, 8, 8), 2, (ConvBlock(1),), aggregation="multiscale", heads="multi", predict="mean"
    )
    m = build(spec)
    a = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    b = torch.tensor([[math.log(3.0), 0.0], [0.0, 10.0]])
    got = m.combine((a, b))
    # Row 0: mean of (1/2, 1/2) and (3/4, 1/4) is (5/8, 3/8).
    torch.testing.assert_close(got[0].exp(), torch.tensor([5 / 8, 3 / 8]))
    # Row 1: two confident heads that disagree average to a tie.
    torch.testing.assert_close(got[1].exp(), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(got, _mean_prediction((a, b)))
    assert torch.equal(m.combine((a,)), a)
    # The same heads under predict='main' give the main head's logits, untouched.
    main = build(dataclasses.replace(spec, predict="main"))
    assert torch.equal(main.combine((a, b)), a)
    # A mean prediction works with nll_loss: it equals the cross-entropy of the mean probabilities.
    y = torch.tensor([0, 1])
    loss = F.nll_loss(got, y)
    torch.testing.assert_close(loss, -torch.log(torch.tensor([5 / 8, 0.5])).mean())


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


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(lambda s: s.blocks[0].batch_norm, id="batch_norm"),
        pytest.param(
            lambda s: s.heads == "multi" and s.predict == "mean" and s.blocks[0].pool == "conv",
            id="multi-mean-convpool",
        ),
        pytest.param(lambda s: s.blocks[0].factorize and s.blocks[0].kernel == 7, id="f7"),
        pytest.param(lambda s: s.blocks[0].block_type == "separable", id="separable"),
        pytest.param(
            lambda s: s.blocks[1].block_type == "residual" and s.blocks[1].se_ratio,
            id="residual-projection-se",
        ),
        pytest.param(
            lambda s: (
                s.blocks[0].block_type == "inverted"
                and s.blocks[0].se_ratio
                and s.blocks[0].convs == 3
            ),
            id="inverted-identity-se",
        ),
    ],
)
def test_state_dict_loads_into_rebuilt_spec(pick):
    spec = next(s for _, s in grid_specs() if pick(s))
    a = build(spec).eval()
    b = build(ArchSpec.from_json(spec.to_json())).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        pairs = zip(a.forward_heads(x), b.forward_heads(x), strict=True)
        assert all(torch.equal(p, q) for p, q in pairs)


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
