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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._spec import SpecError

if TYPE_CHECKING:
    from ._spec import ArchSpec

__all__ = ["Layer", "count_macs", "count_params", "infer_shapes", "layers", "out_size"]

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


def layers(spec: ArchSpec) -> Iterator[Layer]:
    """Walks the spec in forward order, raising :class:`SpecError` where a feature map collapses."""
    shape: Shape = spec.input_shape
    for bi, block in enumerate(spec.blocks):
        prefix = f"features.{bi}"
        for ci in range(block.convs):
            c_in, h, w = shape
            pad = block.kernel // 2 if block.padding == "same" else 0
            new = (
                block.filters,
                out_size(h, block.kernel, 1, pad),
                out_size(w, block.kernel, 1, pad),
            )
            _check(
                f"blocks[{bi}].conv{ci}",
                shape,
                new,
                f"{block.kernel}x{block.kernel} {block.padding}",
            )
            k2 = block.kernel * block.kernel
            bias = 0 if block.batch_norm else block.filters
            yield Layer(
                f"{prefix}.conv{ci}",
                "conv",
                shape,
                new,
                block.filters * c_in * k2 + bias,
                new[0] * new[1] * new[2] * c_in * k2,
            )
            shape = new
            if block.batch_norm:
                yield Layer(f"{prefix}.bn{ci}", "bn", shape, shape, 2 * block.filters, 0)
            yield Layer(f"{prefix}.act{ci}", "act", shape, shape, 0, 0)
        if block.pool != "none":
            c, h, w = shape
            new = (c, out_size(h, 2, 2, 0), out_size(w, 2, 2, 0))
            _check(f"blocks[{bi}].pool", shape, new, f"{block.pool} pool 2x2 stride 2")
            yield Layer(f"{prefix}.pool", "pool", shape, new, 0, 0)
            shape = new
        if block.dropout:
            yield Layer(f"{prefix}.drop", "dropout", shape, shape, 0, 0)

    c, h, w = shape
    flat: Shape = (c * h * w,) if spec.aggregation == "flatten" else (c,)
    yield Layer("aggregate", "aggregate", shape, flat, 0, 0)

    width = flat[0]
    for di, dense in enumerate(spec.dense):
        yield Layer(
            f"head.{di}.linear",
            "linear",
            (width,),
            (dense.width,),
            width * dense.width + dense.width,
            width * dense.width,
        )
        width = dense.width
        yield Layer(f"head.{di}.act", "act", (width,), (width,), 0, 0)
        if dense.dropout:
            yield Layer(f"head.{di}.drop", "dropout", (width,), (width,), 0, 0)
    n = spec.num_classes
    yield Layer("classifier", "linear", (width,), (n,), width * n + n, width * n)


def infer_shapes(spec: ArchSpec) -> tuple[Layer, ...]:
    """Every layer with its output shape; raises :class:`SpecError` naming a collapsing layer."""
    return tuple(layers(spec))


def count_params(spec: ArchSpec) -> int:
    """Trainable parameters of ``build(spec)``, computed without building it."""
    return sum(layer.params for layer in layers(spec))


def count_macs(spec: ArchSpec) -> int:
    """Multiply-accumulates of one forward pass of one image (convolutions and linear layers)."""
    return sum(layer.macs for layer in layers(spec))
