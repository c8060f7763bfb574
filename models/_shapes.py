"""Shape inference and complexity, computed from the spec alone.

One walk over the spec yields every layer with its input and output shape, its parameters and its
multiply-accumulates. Shape inference, parameter counts and MACs all come from that walk, so they
cannot disagree with each other; tests check the walk against the built module and against
``torch.utils.flop_counter.FlopCounterMode``.

MACs count the multiply-accumulates of convolutions and linear layers per image (what
FlopCounterMode counts, at 2 FLOPs per MAC): a kxk convolution from C to C' channels on an
H' x W' output counts k*k*C*C'*H'*W', a depthwise one (one filter per channel) k*k*C*H'*W', and
squeeze-and-excitation its two small linear layers. BatchNorm, activations, pooling, biases, the
shortcut additions and the SE's averaging and rescaling are elementwise and left out, as is usual.
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
    "conv_names",
    "count_macs",
    "count_params",
    "infer_shapes",
    "layers",
    "multiscale_sections",
    "out_size",
    "se_width",
    "shortcut",
    "stage_macs",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layer:
    """One layer of a spec as the walk sees it."""

    # Dotted name, matching the module path in the built network (``features.0.conv1``).
    name: str
    # What the layer is: conv (depthwise and 1x1 ones too), bn, act, se (a squeeze-and-excitation
    # module: its two linear layers and its gate), pool, dropout, aggregate, linear.
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


def se_width(channels: int, ratio: float) -> int:
    """Units of a squeeze-and-excitation's hidden layer for ``channels`` channels."""
    return max(1, round(channels * ratio))


def shortcut(block: ConvBlock, c_in: int, unit: int = 0) -> str | None:
    """What is added to the output of a residual block or of an inverted bottleneck.

    'identity' (the input itself), 'projection' (a 1x1 conv with the block's stride, and
    BatchNorm when the block has it) or None (nothing: plain and separable blocks, and an
    inverted bottleneck whose output shape differs from its input's). ``unit`` is the
    bottleneck's index in an inverted block (its first has the block's stride and input).
    """
    if block.block_type == "residual":
        same = block.stride == 1 and c_in == block.filters
        return "identity" if same else "projection"
    if block.block_type == "inverted":
        c, stride = (c_in, block.stride) if unit == 0 else (block.filters, 1)
        keeps_size = block.padding == "same" or block.kernel == 1
        return "identity" if stride == 1 and c == block.filters and keeps_size else None
    return None


def conv_names(stem: str, i: int | str) -> tuple[str, str, str]:
    """The names of a convolution, its BatchNorm and its activation inside a block: conv0, bn0,
    act0 for a plain block's convolutions; dw1, dw_bn1, dw_act1 (and pw, expand, project, proj,
    pool) for the others."""
    if stem == "conv":
        return f"conv{i}", f"bn{i}", f"act{i}"
    return f"{stem}{i}", f"{stem}_bn{i}", f"{stem}_act{i}"


@dataclass(frozen=True)
class _Conv:
    """One convolution of a block, with what follows it."""

    stem: str  # its name without the index (see conv_names)
    index: int | str
    c_out: int
    kernel: int
    stride: int = 1
    depthwise: bool = False
    act: bool = True  # an activation after it (False: linear, or added to a shortcut first)


def _conv(prefix: str, bi: int, block: ConvBlock, cv: _Conv, shape: Shape) -> list[Layer]:
    """A convolution, its BatchNorm when the block has it, and its activation."""
    conv, bn, act = conv_names(cv.stem, cv.index)
    c_in, h, w = shape
    pad = cv.kernel // 2 if block.padding == "same" else 0
    new = (cv.c_out, out_size(h, cv.kernel, cv.stride, pad), out_size(w, cv.kernel, cv.stride, pad))
    how = f"{cv.kernel}x{cv.kernel} {block.padding}" + (
        f" stride {cv.stride}" if cv.stride > 1 else ""
    )
    _check(f"blocks[{bi}].{conv}", shape, new, how)
    # A depthwise conv has one kxk filter per channel; any other sees every input channel.
    weights = cv.kernel * cv.kernel * (1 if cv.depthwise else c_in)
    bias = 0 if block.batch_norm else cv.c_out
    macs = new[0] * new[1] * new[2] * weights
    out = [Layer(f"{prefix}.{conv}", "conv", shape, new, cv.c_out * weights + bias, macs)]
    if block.batch_norm:
        out.append(Layer(f"{prefix}.{bn}", "bn", new, new, 2 * cv.c_out, 0))
    if cv.act:
        out.append(Layer(f"{prefix}.{act}", "act", new, new, 0, 0))
    return out


def _se_layers(prefix: str, name: str, shape: Shape, ratio: float) -> list[Layer]:
    """Squeeze-and-excitation on a (C, H, W) map, as one layer that keeps the map's shape.

    Its parameters and MACs are those of its two linear layers (C -> r -> C, with biases) on the
    channels' means; the averaging, the sigmoid gate and the rescaling are elementwise.
    """
    c, r = shape[0], se_width(shape[0], ratio)
    return [Layer(f"{prefix}.{name}", "se", shape, shape, 2 * c * r + r + c, 2 * c * r)]


def _out(layers: list[Layer], shape: Shape) -> Shape:
    """The map after ``layers`` of a block body: the last convolution's output (BatchNorm,
    activations and SE keep the shape; a projection meets the branch's), else ``shape``."""
    main = [la for la in layers if la.kind == "conv"]
    return main[-1].out_shape if main else shape


def _plain_layers(prefix: str, bi: int, block: ConvBlock, shape: Shape) -> list[Layer]:
    """'plain' and 'separable': the convolutions in a row, then the optional SE."""
    out: list[Layer] = []
    for ci, kernel in enumerate(block.conv_kernels):
        stride = block.stride if ci == 0 else 1
        if block.block_type == "separable":
            dw = _Conv("dw", ci, shape[0], kernel, stride, depthwise=True)
            out += _conv(prefix, bi, block, dw, shape)
            shape = _out(out, shape)
            out += _conv(prefix, bi, block, _Conv("pw", ci, block.filters, 1), shape)
        else:
            out += _conv(prefix, bi, block, _Conv("conv", ci, block.filters, kernel, stride), shape)
        shape = _out(out, shape)
    if block.se_ratio:
        out += _se_layers(prefix, "se", shape, block.se_ratio)
    return out


def _residual_layers(prefix: str, bi: int, block: ConvBlock, shape: Shape) -> list[Layer]:
    """A basic block: the convolutions, SE, the projection shortcut, the last activation."""
    out: list[Layer] = []
    x = shape
    last = len(block.conv_kernels) - 1
    for ci, kernel in enumerate(block.conv_kernels):
        cv = _Conv("conv", ci, block.filters, kernel, block.stride if ci == 0 else 1, act=ci < last)
        out += _conv(prefix, bi, block, cv, x)
        x = _out(out, x)
    if block.se_ratio:
        out += _se_layers(prefix, "se", x, block.se_ratio)
    if shortcut(block, shape[0]) == "projection":
        cv = _Conv("proj", "", block.filters, 1, block.stride, act=False)
        proj = _conv(prefix, bi, block, cv, shape)
        # 'same' padding (required) makes the 1x1 strided projection meet the branch's size.
        assert proj[0].out_shape == x, (proj[0], x)
        out += proj
    out.append(Layer(f"{prefix}.act{last}", "act", x, x, 0, 0))
    return out


def _inverted_layers(prefix: str, bi: int, block: ConvBlock, shape: Shape) -> list[Layer]:
    """``convs`` inverted bottlenecks: 1x1 expansion, depthwise kxk, SE, linear 1x1 projection."""
    out: list[Layer] = []
    for i in range(block.convs):
        hidden = shape[0] * block.expansion
        if block.expansion > 1:
            out += _conv(prefix, bi, block, _Conv("expand", i, hidden, 1), shape)
            shape = _out(out, shape)
        stride = block.stride if i == 0 else 1
        dw = _Conv("dw", i, hidden, block.kernel, stride, depthwise=True)
        out += _conv(prefix, bi, block, dw, shape)
        shape = _out(out, shape)
        if block.se_ratio:
            out += _se_layers(prefix, f"se{i}", shape, block.se_ratio)
        out += _conv(prefix, bi, block, _Conv("project", i, block.filters, 1, act=False), shape)
        shape = _out(out, shape)
    return out


_BODIES = {
    "plain": _plain_layers,
    "separable": _plain_layers,
    "residual": _residual_layers,
    "inverted": _inverted_layers,
}


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


def _block_layers(bi: int, block: ConvBlock, shape: Shape) -> tuple[list[Layer], Shape]:
    """The block's layers in forward order, and the map it outputs."""
    prefix = f"features.{bi}"
    out = _BODIES[block.block_type](prefix, bi, block, shape)
    shape = _out(out, shape)
    pool = list(_pool_layers(prefix, bi, block, shape))
    if pool:
        shape = pool[-1].out_shape
    out += pool
    if block.dropout:
        out.append(Layer(f"{prefix}.drop", "dropout", shape, shape, 0, 0))
    return out, shape


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
        walk, shape = _block_layers(bi, block, shape)
        yield from walk
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
