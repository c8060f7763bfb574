"""Shape inference and complexity, computed from the spec alone.

One walk over the spec yields every layer with its input and output shape, its parameters and its
multiply-accumulates. Shape inference, parameter counts and MACs all come from that walk, so they
cannot disagree with each other; tests check the walk against the built module and against
``torch.utils.flop_counter.FlopCounterMode``.

MACs count the multiply-accumulates of convolutions and linear layers per image (what
FlopCounterMode counts, at 2 FLOPs per MAC). BatchNorm, activations, pooling and biases are
elementwise and left out, as is usual.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import SpecError

if TYPE_CHECKING:
    from ._spec import ArchSpec, ConvBlock

__all__ = [
    "Layer",
    "adaptive_macs",
    "count_macs",
    "count_params",
    "infer_shapes",
    "layers",
    "multiscale_sections",
    "out_size",
    "stage_macs",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layer:
    """One layer of a spec as the walk sees it."""

    # Dotted name, matching the module path in the built network (``features.0.conv1``).
    name: str
    # What the layer is: conv, bn, act, pool, dropout, aggregate, linear.
    kind: str
    # Shape of one image's input and output: (C, H, W) or (features,).
    in_shape: Shape
    out_shape: Shape
    # Trainable parameters of the layer (buffers such as BatchNorm running stats excluded).
    params: int
    # Multiply-accumulates per image.
    macs: int


def out_size(n: int, kernel: int, stride: int, padding: int) -> int:
    """Seed 002's output-size rule: floor((N - K + 2P) / S) + 1."""
    return (n - kernel + 2 * padding) // stride + 1


def _check(name: str, before: Shape, after: Shape, what: str) -> None:
    if after[1] < 1 or after[2] < 1:
        raise SpecError(
            name,
            f"feature map collapses: {before[1]}x{before[2]} -> {after[1]}x{after[2]} ({what}); "
            "use fewer downsampling stages, 'same' padding or a smaller kernel",
        )


def multiscale_sections(shape: Shape) -> tuple[int, ...]:
    """Max-pool windows of the multi-scale sections a (C, H, W) map allows: 1 (the map), 2, 4.

    A section is left out when its window does not fit in the map, so small maps degrade to
    fewer sections instead of failing.
    """
    _, h, w = shape
    return tuple(k for k in (1, 2, 4) if h >= k and w >= k)


def _conv_layers(prefix: str, bi: int, block: ConvBlock, shape: Shape) -> Iterator[Layer]:
    """The block's convolutions, each with its BatchNorm and activation."""
    for ci, kernel in enumerate(block.conv_kernels):
        c_in, h, w = shape
        pad = kernel // 2 if block.padding == "same" else 0
        new = (block.filters, out_size(h, kernel, 1, pad), out_size(w, kernel, 1, pad))
        _check(f"blocks[{bi}].conv{ci}", shape, new, f"{kernel}x{kernel} {block.padding}")
        bias = 0 if block.batch_norm else block.filters
        k2 = kernel * kernel
        macs = new[0] * new[1] * new[2] * c_in * k2
        yield Layer(
            f"{prefix}.conv{ci}", "conv", shape, new, block.filters * c_in * k2 + bias, macs
        )
        shape = new
        if block.batch_norm:
            yield Layer(f"{prefix}.bn{ci}", "bn", shape, shape, 2 * block.filters, 0)
        yield Layer(f"{prefix}.act{ci}", "act", shape, shape, 0, 0)


def _pool_layers(prefix: str, bi: int, block: ConvBlock, shape: Shape) -> Iterator[Layer]:
    """The block's downsampling: a learnable stride-2 conv, a 2x2 pool, or nothing."""
    c, h, w = shape
    if block.pool == "conv":
        new = (c, out_size(h, 3, 2, 1), out_size(w, 3, 2, 1))
        bias = 0 if block.batch_norm else c
        yield Layer(
            f"{prefix}.pool", "conv", shape, new, c * c * 9 + bias, c * new[1] * new[2] * c * 9
        )
        if block.batch_norm:
            yield Layer(f"{prefix}.pool_bn", "bn", new, new, 2 * c, 0)
        yield Layer(f"{prefix}.pool_act", "act", new, new, 0, 0)
    elif block.pool != "none":
        new = (c, out_size(h, 2, 2, 0), out_size(w, 2, 2, 0))
        _check(f"blocks[{bi}].pool", shape, new, f"{block.pool} pool 2x2 stride 2")
        yield Layer(f"{prefix}.pool", "pool", shape, new, 0, 0)


def _block_layers(bi: int, block: ConvBlock, shape: Shape) -> Iterator[Layer]:
    prefix = f"features.{bi}"
    yield from (walk := list(_conv_layers(prefix, bi, block, shape)))
    shape = walk[-1].out_shape
    yield from (pool := list(_pool_layers(prefix, bi, block, shape)))
    if pool:
        shape = pool[-1].out_shape
    if block.dropout:
        yield Layer(f"{prefix}.drop", "dropout", shape, shape, 0, 0)


def _sections(spec: ArchSpec, shape: Shape) -> list[int]:
    """Widths of the aggregated vector's sections (one, or the multi-scale ones)."""
    c, h, w = shape
    if spec.aggregation == "gap":
        return [c]
    if spec.aggregation == "flatten":
        return [c * h * w]
    return [c * (h // k) * (w // k) for k in multiscale_sections(shape)]


def _head_layers(spec: ArchSpec, width: int, sections: list[int], c: int) -> Iterator[Layer]:
    """Dense layers, the classifier, the extra heads and the exit classifiers."""
    for di, dense in enumerate(spec.dense):
        params, macs = width * dense.width + dense.width, width * dense.width
        yield Layer(f"head.{di}.linear", "linear", (width,), (dense.width,), params, macs)
        width = dense.width
        yield Layer(f"head.{di}.act", "act", (width,), (width,), 0, 0)
        if dense.dropout:
            yield Layer(f"head.{di}.drop", "dropout", (width,), (width,), 0, 0)
    n = spec.num_classes
    yield Layer("classifier", "linear", (width,), (n,), width * n + n, width * n)
    if spec.heads == "multi":
        for i, size in enumerate(sections[1:]):
            yield Layer(f"aux_heads.{i}", "linear", (size,), (n,), size * n + n, size * n)
    if spec.adaptive_depth:
        # The exit after block k (all but the last, whose exit is the head above) sees the
        # GAP of the block's map, of ``c`` channels like the last map's. GAP has no MACs.
        for k in range(len(spec.blocks) - 1):
            yield Layer(f"exits.{k}", "linear", (c,), (n,), c * n + n, c * n)


def layers(spec: ArchSpec) -> Iterator[Layer]:
    """Walks the spec in forward order, raising :class:`SpecError` where a feature map collapses."""
    shape: Shape = spec.input_shape
    for bi, block in enumerate(spec.blocks):
        for layer in _block_layers(bi, block, shape):
            yield layer
            shape = layer.out_shape
    c, h, w = shape
    sections = _sections(spec, shape)
    if spec.aggregation == "multiscale":
        for k in multiscale_sections(shape)[1:]:
            yield Layer(f"aggregate.pool{k}", "pool", shape, (c, h // k, w // k), 0, 0)
    yield Layer("aggregate", "aggregate", shape, (sum(sections),), 0, 0)
    yield from _head_layers(spec, sum(sections), sections, c)


def infer_shapes(spec: ArchSpec) -> tuple[Layer, ...]:
    """Every layer with its output shape; raises :class:`SpecError` naming a collapsing layer."""
    return tuple(layers(spec))


def count_params(spec: ArchSpec) -> int:
    """Trainable parameters of ``build(spec)``, computed without building it."""
    return sum(layer.params for layer in layers(spec))


def count_macs(spec: ArchSpec) -> int:
    """Multiply-accumulates of one forward pass of one image (convolutions and linear layers)."""
    return sum(layer.macs for layer in layers(spec))


def stage_macs(spec: ArchSpec) -> tuple[int, ...]:
    """MACs per image of an adaptive-depth spec when the image stops at exit 1, 2, ..., n.

    Entry ``k - 1`` counts blocks 1..k and the exits 1..k that were evaluated on the way; the
    last entry (every stage, every exit, the head) equals :func:`count_macs`. A spec without
    adaptive depth has one entry, its :func:`count_macs`.
    """
    walk = infer_shapes(spec)
    if not spec.adaptive_depth:
        return (sum(la.macs for la in walk),)
    n = len(spec.blocks)
    block = [sum(la.macs for la in walk if la.name.startswith(f"features.{b}.")) for b in range(n)]
    exits = {la.name: la.macs for la in walk if la.name.startswith("exits.")}
    out, total = [], 0
    for k in range(n - 1):
        total += block[k] + exits[f"exits.{k}"]
        out.append(total)
    out.append(sum(la.macs for la in walk))
    return tuple(out)


def adaptive_macs(spec: ArchSpec, depths: Iterable[int]) -> float:
    """Average MACs per image actually executed when image ``i`` stops at exit ``depths[i]``.

    ``depths`` holds values in 1..len(stage_macs(spec)) (a list, or a tensor's ``.tolist()``);
    it must not be empty.
    """
    table = stage_macs(spec)
    counts = Counter(int(d) for d in depths)
    if not counts:
        raise ValueError("adaptive_macs needs at least one depth")
    bad = sorted(d for d in counts if not 1 <= d <= len(table))
    if bad:
        raise ValueError(f"depths must lie in 1..{len(table)}, got {bad}")
    return sum(table[d - 1] * c for d, c in counts.items()) / sum(counts.values())
