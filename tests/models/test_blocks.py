"""The efficient blocks: each module computes what its block type says, named as the walk says.

The grid and random specs of ``_specs.py`` check every option's shapes, parameters and MACs
against the module and FlopCounterMode (test_shapes.py, test_build.py); here each block's forward
pass is recomputed by hand from its own modules, so a wrong wiring (a shortcut added at the wrong
place, an activation after a linear projection) fails even where the counts agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnas.models import (
    ArchSpec,
    ConvBlock,
    ResidualBlock,
    SqueezeExcite,
    build,
    count_macs,
    count_params,
    infer_shapes,
)


def _stage(block: ConvBlock, c_in: int = 4, hw: int = 8) -> nn.Module:
    """Block 0 of a one-block network, in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = build(ArchSpec((c_in, hw, hw), 3, (block,), aggregation="gap"))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval().features[0]


def _x(c: int = 4, hw: int = 8) -> torch.Tensor:
    return torch.randn(2, c, hw, hw, generator=torch.Generator().manual_seed(1))


def _children(stage: nn.Module) -> list[str]:
    return [n for n, _ in stage.named_children()]


# --- separable -----------------------------------------------------------------------------


def test_separable_modules_and_forward():
    block = ConvBlock(6, kernel=5, convs=2, block_type="separable", batch_norm=True, stride=2)
    stage = _stage(block)
    assert isinstance(stage, nn.Sequential)  # nothing is added back
    assert _children(stage) == [
        f"{k}{i}" for i in range(2) for k in ("dw", "dw_bn", "dw_act", "pw", "pw_bn", "pw_act")
    ]
    dw0, pw0, dw1 = stage.dw0, stage.pw0, stage.dw1
    assert (dw0.in_channels, dw0.out_channels, dw0.groups) == (4, 4, 4)
    assert dw0.kernel_size == (5, 5) and dw0.stride == (2, 2) and dw0.padding == (2, 2)
    assert (pw0.in_channels, pw0.out_channels, pw0.kernel_size) == (4, 6, (1, 1))
    assert (dw1.groups, dw1.stride) == (6, (1, 1))
    x = _x()
    y = x
    for i in range(2):
        for name in ("dw", "dw_bn", "dw_act", "pw", "pw_bn", "pw_act"):
            y = getattr(stage, f"{name}{i}")(y)
    with torch.no_grad():
        torch.testing.assert_close(stage(x), y)
    assert stage(x).shape == (2, 6, 4, 4)


# --- residual ------------------------------------------------------------------------------


def test_residual_identity_adds_the_input_before_the_last_activation():
    block = ConvBlock(4, convs=2, block_type="residual", batch_norm=True)
    stage = _stage(block)
    assert isinstance(stage, ResidualBlock)
    assert _children(stage) == ["conv0", "bn0", "act0", "conv1", "bn1", "act1"]
    x = _x()
    with torch.no_grad():
        branch = stage.bn1(stage.conv1(stage.act0(stage.bn0(stage.conv0(x)))))
        torch.testing.assert_close(stage(x), F.relu(branch + x))
        # A branch whose last BatchNorm outputs zero leaves the block the identity (then ReLU).
        stage.bn1.weight.zero_()
        stage.bn1.bias.zero_()
        torch.testing.assert_close(stage(x), F.relu(x))


def test_residual_projection_where_the_shape_changes():
    block = ConvBlock(8, convs=2, block_type="residual", batch_norm=True, stride=2, pool="max")
    stage = _stage(block)
    assert _children(stage) == [
        "conv0", "bn0", "act0", "conv1", "bn1", "proj", "proj_bn", "act1", "pool"
    ]  # fmt: skip
    proj = stage.proj
    assert (proj.in_channels, proj.out_channels, proj.kernel_size) == (4, 8, (1, 1))
    assert proj.stride == (2, 2) and proj.bias is None
    assert stage.conv0.stride == (2, 2) and stage.conv1.stride == (1, 1)
    x = _x()
    with torch.no_grad():
        branch = stage.bn1(stage.conv1(stage.act0(stage.bn0(stage.conv0(x)))))
        want = F.max_pool2d(F.relu(branch + stage.proj_bn(stage.proj(x))), 2)
        torch.testing.assert_close(stage(x), want)
    assert want.shape == (2, 8, 2, 2)


def test_residual_projection_without_batch_norm_has_a_bias():
    stage = _stage(ConvBlock(8, block_type="residual"))
    assert _children(stage) == ["conv0", "proj", "act0"]
    assert stage.proj.bias is not None
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(stage(x), F.relu(stage.conv0(x) + stage.proj(x)))


def test_residual_se_is_on_the_branch():
    block = ConvBlock(4, block_type="residual", se_ratio=0.5, activation="tanh")
    stage = _stage(block)
    assert _children(stage) == ["conv0", "se", "act0"]
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(stage(x), torch.tanh(stage.se(stage.conv0(x)) + x))


# --- inverted ------------------------------------------------------------------------------


def test_inverted_bottleneck_modules_and_forward():
    block = ConvBlock(
        4, convs=2, block_type="inverted", expansion=3, batch_norm=True, activation="silu"
    )
    stage = _stage(block)
    assert isinstance(stage, ResidualBlock)
    unit = ("expand", "expand_bn", "expand_act", "dw", "dw_bn", "dw_act", "project", "project_bn")
    assert _children(stage) == [f"{k}{i}" for i in range(2) for k in unit]
    assert (stage.expand0.in_channels, stage.expand0.out_channels) == (4, 12)
    assert stage.dw0.groups == 12 and stage.dw0.kernel_size == (3, 3)
    assert (stage.project0.in_channels, stage.project0.out_channels) == (12, 4)
    x = _x()
    y = x
    with torch.no_grad():
        for i in range(2):
            h = y
            for name in unit:
                h = getattr(stage, f"{name}{i}")(h)
            y = h + y  # 4 -> 4 channels, stride 1: each bottleneck adds its input
        torch.testing.assert_close(stage(x), y)


def test_inverted_no_residual_when_the_shape_changes():
    block = ConvBlock(6, convs=2, block_type="inverted", expansion=1, stride=2, se_ratio=0.25)
    stage = _stage(block)
    assert _children(stage) == [
        "dw0", "dw_act0", "se0", "project0", "dw1", "dw_act1", "se1", "project1"
    ]  # fmt: skip
    assert stage.dw0.stride == (2, 2) and stage.dw1.stride == (1, 1)
    # The SE gates the expanded (here: the input's) channels, after the depthwise conv.
    assert stage.se0.fc1.in_features == 4 and stage.se1.fc1.in_features == 6
    x = _x()
    with torch.no_grad():
        first = stage.project0(stage.se0(stage.dw_act0(stage.dw0(x))))  # 4 -> 6, stride 2
        second = stage.project1(stage.se1(stage.dw_act1(stage.dw1(first)))) + first
        torch.testing.assert_close(stage(x), second)


def test_inverted_without_any_residual_is_sequential():
    stage = _stage(ConvBlock(8, block_type="inverted", expansion=2))
    assert isinstance(stage, nn.Sequential)
    assert _children(stage) == ["expand0", "expand_act0", "dw0", "dw_act0", "project0"]


# --- squeeze-and-excitation ------------------------------------------------------------------


def test_squeeze_excite_by_hand():
    se = SqueezeExcite(6, 2)
    assert isinstance(se.act, nn.ReLU) and isinstance(se.gate, nn.Sigmoid)
    assert (se.fc1.in_features, se.fc1.out_features, se.fc2.out_features) == (6, 2, 6)
    x = _x(6, 5)
    with torch.no_grad():
        g = torch.sigmoid(se.fc2(F.relu(se.fc1(x.mean((2, 3))))))
        out = se(x)
    torch.testing.assert_close(out, x * g[:, :, None, None])
    # Each channel is scaled by one factor in (0, 1).
    ratio = out / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_plain_and_separable_se_comes_last_before_the_pool():
    for kind, last in (("plain", "act0"), ("separable", "pw_act0")):
        stage = _stage(ConvBlock(8, block_type=kind, se_ratio=0.25, pool="avg", dropout=0.1))
        names = _children(stage)
        assert names[-4:] == [last, "se", "pool", "drop"], kind
        assert stage.se.fc1.out_features == 2


def test_a_strided_plain_conv_is_stride_2_same():
    stage = _stage(ConvBlock(5, kernel=5, convs=2, stride=2))
    assert stage.conv0.stride == (2, 2) and stage.conv0.padding == (2, 2)
    assert stage.conv1.stride == (1, 1)
    assert stage(_x()).shape == (2, 5, 4, 4)


# --- the counts, by hand ---------------------------------------------------------------------


def test_count_params_and_macs_by_hand():
    # Separable 3x3, 2 -> 4 channels on 6x6, no BatchNorm: depthwise 2*9+2, pointwise 4*2+4.
    spec = ArchSpec((2, 6, 6), 3, (ConvBlock(4, block_type="separable"),), aggregation="gap")
    assert count_params(spec) == (2 * 9 + 2) + (4 * 2 + 4) + (4 * 3 + 3)
    assert count_macs(spec) == 36 * 2 * 9 + 36 * 4 * 2 + 4 * 3
    # Residual 2 -> 4 with BatchNorm: 3x3 conv, 1x1 projection, both with a BN of 2x4.
    spec = ArchSpec(
        (2, 6, 6), 3, (ConvBlock(4, block_type="residual", batch_norm=True),), aggregation="gap"
    )
    assert count_params(spec) == (4 * 2 * 9 + 8) + (4 * 2 + 8) + (4 * 3 + 3)
    assert count_macs(spec) == 36 * 4 * 2 * 9 + 36 * 4 * 2 + 4 * 3
    # Inverted 4 -> 4, expansion 2, SE 0.25 (8 -> 2 -> 8) on 5x5.
    block = ConvBlock(4, block_type="inverted", expansion=2, se_ratio=0.25)
    spec = ArchSpec((4, 5, 5), 3, (block,), aggregation="gap")
    se = 8 * 2 + 2 + 2 * 8 + 8
    assert count_params(spec) == (8 * 4 + 8) + (8 * 9 + 8) + se + (4 * 8 + 4) + (4 * 3 + 3)
    assert count_macs(spec) == 25 * 8 * 4 + 25 * 8 * 9 + 2 * 8 * 2 + 25 * 4 * 8 + 4 * 3


# --- with the other options --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "separable", "residual", "inverted"])
def test_adaptive_depth_with_every_block_type(kind: str):
    block = ConvBlock(6, block_type=kind, batch_norm=True, se_ratio=0.25, expansion=2)
    spec = ArchSpec(
        (1, 12, 12),
        4,
        (ConvBlock(6, pool="max"), block, block),
        aggregation="gap",
        adaptive_depth=True,
        exit_threshold=0.5,
    )
    model = build(spec).eval()
    with torch.no_grad():
        exits = model.forward_exits(torch.randn(3, 1, 12, 12))
        logits, depths = model.adaptive_forward(torch.randn(3, 1, 12, 12))
    assert len(exits) == 3 and logits.shape == (3, 4) and torch.isfinite(logits).all()
    assert set(depths.tolist()) <= {1, 2, 3}
    assert count_params(spec) == sum(p.numel() for p in model.parameters())


def test_a_strided_block_is_not_an_adaptive_stage():
    from cnnas.models import SpecError

    with pytest.raises(SpecError, match="keep channels"):
        ArchSpec(
            (1, 12, 12),
            4,
            (ConvBlock(6), ConvBlock(6, block_type="residual", stride=2)),
            aggregation="gap",
            adaptive_depth=True,
        )


def test_bf16_forward_of_every_block_type():
    """The blocks run in bfloat16, as training on a GPU does (SE's mean and gate included)."""
    blocks = tuple(
        ConvBlock(8, block_type=k, batch_norm=True, se_ratio=0.25, expansion=2, stride=s)
        for k, s in (("plain", 1), ("separable", 2), ("residual", 1), ("inverted", 1))
    )
    spec = ArchSpec((3, 16, 16), 5, blocks, aggregation="gap")
    model = build(spec).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_walk_kinds_of_the_new_layers():
    block = ConvBlock(8, block_type="inverted", se_ratio=0.25, expansion=2, batch_norm=True)
    spec = ArchSpec((8, 6, 6), 2, (block,), aggregation="gap")
    kinds = {la.name.removeprefix("features.0."): la.kind for la in infer_shapes(spec)}
    assert kinds["dw0"] == kinds["expand0"] == kinds["project0"] == "conv"
    assert kinds["se0"] == "se" and kinds["project_bn0"] == "bn"
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        build(spec).eval()(torch.randn(1, 8, 6, 6))
    assert fc.get_total_flops() == 2 * count_macs(spec)
