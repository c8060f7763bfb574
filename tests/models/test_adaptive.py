"""Adaptive depth: equal-size stages, an exit after each, and each image stops at its first
confident exit (issue 7's "layer skipping in the search")."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnas.models import (
    ArchSpec,
    ConvBlock,
    DenseLayer,
    SpecError,
    adaptive_macs,
    build,
    count_macs,
    count_params,
    load_model,
    save_model,
    stage_macs,
)

SHAPE = (1, 8, 8)


def adaptive(threshold: float = 0.5, **changes) -> ArchSpec:
    """Three stages: a pooling stem block, then two blocks that keep (8, 4, 4)."""
    fields = {
        "input_shape": SHAPE,
        "num_classes": 10,
        "blocks": (ConvBlock(8, pool="max"), ConvBlock(8, batch_norm=True), ConvBlock(8)),
        "aggregation": "gap",
        "dense": (DenseLayer(16),),
        "adaptive_depth": True,
        "exit_threshold": threshold,
    }
    fields.update(changes)
    return ArchSpec(**fields)


def _net(spec: ArchSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(spec).eval()


# --- the spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "path", "match"),
    [
        ({"blocks": (ConvBlock(8),)}, "adaptive_depth", "at least 2 blocks"),
        ({"aggregation": "flatten"}, "adaptive_depth", "aggregation 'gap'"),
        ({"aggregation": "multiscale", "heads": "multi"}, "adaptive_depth", "'gap'"),
        (
            {"blocks": (ConvBlock(8, pool="max"), ConvBlock(16), ConvBlock(8))},
            "blocks[1]",
            "filters 8, padding 'same', stride 1 and pool 'none'",
        ),
        (
            {"blocks": (ConvBlock(8), ConvBlock(8, block_type="inverted", stride=2))},
            "blocks[1]",
            r"\(8, 8, 8\) -> \(8, 4, 4\)",
        ),
        (
            {"blocks": (ConvBlock(8), ConvBlock(8), ConvBlock(8, pool="max"))},
            "blocks[2]",
            r"\(8, 8, 8\) -> \(8, 4, 4\)",
        ),
        (
            {"blocks": (ConvBlock(8), ConvBlock(8, padding="valid"))},
            "blocks[1]",
            "keep channels, height and width",
        ),
        ({"exit_threshold": 0.0}, "exit_threshold", r"\(0, 1\]"),
        ({"exit_threshold": 1.01}, "exit_threshold", r"\(0, 1\]"),
        ({"exit_threshold": True}, "exit_threshold", r"\(0, 1\]"),
        ({"adaptive_depth": "yes"}, "adaptive_depth", "true or false"),
    ],
)
def test_invalid_adaptive_specs_name_the_field(changes, path, match) -> None:
    with pytest.raises(SpecError, match=match) as e:
        adaptive(**changes)
    assert e.value.path == path


def test_the_first_block_may_change_shape_and_the_threshold_may_be_one() -> None:
    spec = adaptive(1.0, blocks=(ConvBlock(4, kernel=5, pool="conv"), ConvBlock(4), ConvBlock(4)))
    assert spec.exit_threshold == 1.0 and type(spec.exit_threshold) is float


def test_json_round_trip_and_old_dicts() -> None:
    spec = adaptive(0.85)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["adaptive_depth"] is True
    # A spec.json written before the fields existed still loads, as an ordinary network.
    old = dataclasses.replace(spec, adaptive_depth=False).to_dict()
    del old["adaptive_depth"], old["exit_threshold"]
    back = ArchSpec.from_dict(old)
    assert back.adaptive_depth is False and back.exit_threshold == 0.9


def test_an_ordinary_spec_keeps_its_hash() -> None:
    spec = ArchSpec(
        SHAPE,
        10,
        (ConvBlock(4, pool="max"), ConvBlock(4), ConvBlock(4, batch_norm=True)),
        "gap",
        (DenseLayer(16),),
    )
    # The value the code computed before adaptive depth existed (git HEAD at the time).
    assert spec.spec_hash() == "2b7e7a00b3a0665e"
    canonical = spec.canonical_dict()
    assert "adaptive_depth" not in canonical and "exit_threshold" not in canonical
    # Without exits the threshold changes nothing, so it does not change the identity either.
    other = dataclasses.replace(spec, exit_threshold=0.5)
    assert other != spec and other.spec_hash() == spec.spec_hash()


def test_adaptive_fields_change_the_hash() -> None:
    spec = adaptive(0.8)
    plain = dataclasses.replace(spec, adaptive_depth=False)
    assert spec.canonical_dict()["exit_threshold"] == 0.8
    hashes = {spec.spec_hash(), plain.spec_hash(), adaptive(0.9).spec_hash()}
    assert len(hashes) == 3
    assert "gap+exits(0.8)" in spec.summary()


# --- complexity --------------------------------------------------------------------------------


def test_params_and_full_depth_macs_describe_the_module() -> None:
    spec = adaptive()
    net = _net(spec)
    assert sum(p.numel() for p in net.parameters()) == count_params(spec)
    assert len(net.exits) == 2
    # Every exit's linear layer is counted: the figure is the plain network's plus the exits'.
    plain = dataclasses.replace(spec, adaptive_depth=False)
    assert count_params(spec) == count_params(plain) + 2 * (8 * 10 + 10)
    # Full depth runs every stage and every exit: what FlopCounterMode sees in forward_exits.
    with FlopCounterMode(display=False) as counter:
        net.forward_exits(torch.randn(1, *SHAPE))
    assert counter.get_total_flops() == 2 * count_macs(spec)


def test_stage_macs_grow_to_the_full_count() -> None:
    spec = adaptive()
    table = stage_macs(spec)
    assert len(table) == 3 and table[-1] == count_macs(spec)
    assert table[0] < table[1] < table[2]
    # One entry, the full count, for an ordinary spec.
    plain = dataclasses.replace(spec, adaptive_depth=False)
    assert stage_macs(plain) == (count_macs(plain),)
    assert adaptive_macs(spec, [1, 3]) == (table[0] + table[2]) / 2
    with pytest.raises(ValueError, match=r"1\.\.3"):
        adaptive_macs(spec, [0, 4])
    with pytest.raises(ValueError, match="at least one"):
        adaptive_macs(spec, [])


def test_executed_macs_fall_when_images_exit_early() -> None:
    x = torch.randn(64, *SHAPE)
    full = adaptive(1.0)
    never = _net(full)
    _, depths = never.adaptive_forward(x)
    assert depths.tolist() == [3] * 64, "a threshold of 1.0 never stops early"
    assert adaptive_macs(full, depths.tolist()) == count_macs(full)
    # The same weights with a threshold every untrained exit reaches (10 classes: >= 0.1).
    eager = build(adaptive(0.1)).eval()
    eager.load_state_dict(never.state_dict())
    _, depths = eager.adaptive_forward(x)
    assert depths.tolist() == [1] * 64
    assert adaptive_macs(full, depths.tolist()) == stage_macs(full)[0] < count_macs(full)


def _mixed_threshold(net: torch.nn.Module, x: torch.Tensor) -> float:
    """A threshold that stops some images at the first exit and not others."""
    conf = net.forward_exits(x)[0].softmax(1).amax(1)
    return float(conf.median())


# --- running the network -----------------------------------------------------------------------


def test_adaptive_forward_runs_each_image_to_its_exit() -> None:
    x = torch.randn(40, *SHAPE)
    net = _net(adaptive())
    with torch.no_grad():
        t = _mixed_threshold(net, x)
        spec = adaptive(t)
        mixed = build(spec).eval()
        mixed.load_state_dict(net.state_dict())
        logits, depths = mixed.adaptive_forward(x)
        exits = mixed.forward_exits(x)
        assert 1 in depths.tolist() and max(depths.tolist()) > 1
        for i, d in enumerate(depths.tolist()):
            conf = [e[i].softmax(0).max().item() for e in exits]
            # The first exit confident enough, or the last.
            assert d == next((k + 1 for k, c in enumerate(conf[:-1]) if c >= t), 3)
            torch.testing.assert_close(logits[i], exits[d - 1][i])
        # The same choice read off a full-depth pass; eval forward is the adaptive prediction.
        chosen, chosen_depths = mixed.choose_exit(exits)
        assert torch.equal(chosen_depths, depths)
        torch.testing.assert_close(chosen, logits)
        torch.testing.assert_close(mixed(x), logits)
        assert adaptive_macs(spec, depths.tolist()) < count_macs(spec)


def test_training_forward_is_the_last_exit() -> None:
    net = _net(adaptive(0.1)).train()
    x = torch.randn(6, *SHAPE)
    torch.testing.assert_close(net(x), net.forward_exits(x)[-1])
    heads = net.forward_heads(x)
    assert len(heads) == 3 and heads[0].shape == (6, 10)


def test_stages_no_image_reaches_get_no_gradient() -> None:
    x = torch.randn(16, *SHAPE)
    y = torch.randint(0, 10, (16,))
    net = _net(adaptive(0.1)).train()
    logits, depths = net.adaptive_forward(x)
    assert depths.tolist() == [1] * 16
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None for n, g in grads.items() if n.startswith(("features.0.", "exits.0.")))
    unused = [n for n in grads if not n.startswith(("features.0.", "exits.0."))]
    assert unused and all(grads[n] is None for n in unused), unused
    # At threshold 1.0 every stage and exit runs, but early exits' logits are not the answer:
    # only the last exit and the stages feed the loss.
    full = _net(adaptive(1.0)).train()
    logits, _ = full.adaptive_forward(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    for n, p in full.named_parameters():
        assert (p.grad is None) == n.startswith("exits."), n


def test_ordinary_networks_have_no_exits() -> None:
    spec = dataclasses.replace(adaptive(), adaptive_depth=False)
    net = _net(spec)
    assert len(net.exits) == 0
    with pytest.raises(ValueError, match="adaptive_depth"):
        net.forward_exits(torch.randn(1, *SHAPE))
    with pytest.raises(ValueError, match="adaptive_depth"):
        net.adaptive_forward(torch.randn(1, *SHAPE))


def test_save_and_load_keep_the_adaptive_network(tmp_path) -> None:
    net = _net(adaptive(0.3))
    save_model(net, tmp_path)
    back = load_model(tmp_path)
    x = torch.randn(12, *SHAPE)
    with torch.no_grad():
        a, da = net.adaptive_forward(x)
        b, db = back.adaptive_forward(x)
    assert torch.equal(da, db) and torch.equal(a, b)
