from __future__ import annotations

import pytest
import torch

from cnnas.models import (
    ArchSpec,
    ConvBlock,
    SkipCNN,
    SpecError,
    build,
    check_skippable,
    count_macs,
    count_params,
    depth_macs,
    executed_macs,
    router_spec,
    skip_spec,
)

SHAPE = (1, 8, 8)


def _net(seed: int = 0, filters: int = 4) -> SkipCNN:
    torch.manual_seed(seed)
    return SkipCNN(skip_spec(SHAPE, 10, filters=filters))


def test_skip_spec_is_seed_cnn1() -> None:
    spec = skip_spec((1, 28, 28), 10, filters=32)
    assert len(spec.blocks) == 3
    assert all(b.pool == "none" and b.padding == "same" and b.filters == 32 for b in spec.blocks)
    assert spec.aggregation == "flatten" and spec.dense == ()
    net = SkipCNN(spec)
    assert sum(p.numel() for p in net.parameters()) == count_params(spec)


def test_full_depth_is_the_plain_network() -> None:
    net = _net()
    plain = build(net.spec)
    plain.load_state_dict(net.state_dict())
    x = torch.randn(5, *SHAPE)
    full = torch.full((5,), 3)
    assert torch.equal(net(x), plain(x))
    assert torch.equal(net(x, full), plain(x))


def test_skipped_stage_passes_its_input_through() -> None:
    net = _net().eval()
    x = torch.randn(6, *SHAPE)
    depth = torch.tensor([1, 2, 3, 1, 2, 3])
    out = net(x, depth)
    f = net.features
    by_depth = {
        1: net.classifier(f[0](x).flatten(1)),
        2: net.classifier(f[1](f[0](x)).flatten(1)),
        3: net.classifier(f[2](f[1](f[0](x))).flatten(1)),
    }
    for i, d in enumerate(depth.tolist()):
        torch.testing.assert_close(out[i], by_depth[d][i])


def test_depth_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="depth must have shape"):
        _net()(torch.randn(4, *SHAPE), torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ((ConvBlock(4), ConvBlock(8)), "filters equal"),
        ((ConvBlock(4), ConvBlock(4, pool="max")), "pool 'none'"),
        ((ConvBlock(4), ConvBlock(4, padding="valid")), "'same' padding"),
        ((ConvBlock(4),), "at least 2 blocks"),
    ],
)
def test_unskippable_specs_are_refused(blocks: tuple[ConvBlock, ...], match: str) -> None:
    spec = ArchSpec(input_shape=SHAPE, num_classes=10, blocks=blocks)
    with pytest.raises(SpecError, match=match):
        check_skippable(spec)
    with pytest.raises(SpecError):
        SkipCNN(spec)


def test_depth_macs_per_stage() -> None:
    spec = skip_spec((1, 28, 28), 10, filters=8)
    d1, d2, d3 = depth_macs(spec)
    conv1 = 28 * 28 * 8 * 1 * 9
    conv = 28 * 28 * 8 * 8 * 9
    dense = 28 * 28 * 8 * 10
    assert (d1, d2, d3) == (conv1 + dense, conv1 + conv + dense, conv1 + 2 * conv + dense)
    assert d3 == count_macs(spec)


def test_executed_macs_fall_when_stages_are_skipped() -> None:
    spec = skip_spec(SHAPE, 10, filters=4)
    full = executed_macs(spec, torch.full((8,), 3))
    assert full == count_macs(spec)
    some = executed_macs(spec, torch.tensor([3, 3, 3, 3, 2, 2, 1, 1]))
    fewer = executed_macs(spec, torch.tensor([3, 3, 2, 2, 1, 1, 1, 1]))
    assert fewer < some < full
    d = depth_macs(spec)
    assert some == pytest.approx((4 * d[2] + 2 * d[1] + 2 * d[0]) / 8)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        executed_macs(spec, torch.tensor([0, 3]))


def _step(net: SkipCNN, x: torch.Tensor, y: torch.Tensor, depth: torch.Tensor) -> None:
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-2, alpha=0.9, eps=1e-7)
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x, depth), y).backward()
    opt.step()


def test_skipped_stages_keep_their_weights_bit_for_bit() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(16, *SHAPE), torch.randint(0, 10, (16,))
    _step(net, x, y, torch.ones(16, dtype=torch.long))  # label 0: conv2 and conv3 skipped
    after = net.state_dict()
    for k in before:
        if k.startswith(("features.1.", "features.2.")):
            assert torch.equal(after[k], before[k]), k
        else:
            assert not torch.equal(after[k], before[k]), k


def test_images_that_skip_a_stage_give_it_no_gradient() -> None:
    x, y = torch.randn(12, *SHAPE), torch.randint(0, 10, (12,))
    depth = torch.tensor([3, 2, 1] * 4)

    def grads(x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = _net(seed=1)
        torch.nn.functional.cross_entropy(net(x, depth), y, reduction="sum").backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    g = grads(x)
    # Other inputs for the images that skip conv3: conv3's gradient does not move at all.
    x2 = x.clone()
    x2[depth < 3] = torch.randn_like(x2[depth < 3])
    g2 = grads(x2)
    for name in ("features.2.conv0.weight", "features.2.conv0.bias"):
        assert torch.equal(g[name], g2[name]), name
    assert not torch.equal(g["features.1.conv0.weight"], g2["features.1.conv0.weight"])
    # And it is the gradient of the depth-3 images alone.
    net = _net(seed=1)
    keep = depth == 3
    torch.nn.functional.cross_entropy(
        net(x[keep], depth[keep]), y[keep], reduction="sum"
    ).backward()
    torch.testing.assert_close(net.features[2].conv0.weight.grad, g["features.2.conv0.weight"])


def test_router_spec_is_small_and_classifies_depths() -> None:
    spec = router_spec((1, 28, 28), 3, filters=8)
    assert spec.num_classes == 3
    assert count_macs(spec) < count_macs(skip_spec((1, 28, 28), 10, filters=8)) / 3
    assert build(spec)(torch.randn(2, 1, 28, 28)).shape == (2, 3)
