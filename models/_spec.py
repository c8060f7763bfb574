"""The architecture spec: the one structural input of a CNN.

A spec is a tree of frozen dataclasses that says everything needed to build a network and nothing
about how it was found or trained. It round-trips exactly through JSON, validates itself at
construction (every spec that exists can be built), and is what a trial, an MLflow run and a pulled
model all store, so a model can be rebuilt without the search space's code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ._errors import SpecError
from ._shapes import infer_shapes

__all__ = [
    "ACTIVATIONS",
    "AGGREGATIONS",
    "BLOCK_TYPES",
    "HEADS",
    "PADDINGS",
    "POOLS",
    "PREDICTIONS",
    "ArchSpec",
    "ConvBlock",
    "DenseLayer",
]

# The names a spec may use. The builder maps each to a module; keeping the names here lets the spec
# validate itself without importing torch.nn.
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh")
POOLS = ("max", "avg", "conv", "none")
PADDINGS = ("same", "valid")
AGGREGATIONS = ("flatten", "gap", "multiscale")
HEADS = ("single", "multi")
PREDICTIONS = ("main", "mean")
BLOCK_TYPES = ("plain", "separable", "residual", "inverted")

MAX_KERNEL = 15
MAX_WIDTH = 65536
MAX_EXPANSION = 16
MAX_STRIDE = 4

# ConvBlock fields that came after specs were first hashed, with the value every earlier spec
# had: at that value they leave the canonical dict, so an earlier spec keeps its identity.
_BLOCK_ADDED_LATER = {"block_type": "plain", "se_ratio": 0.0, "stride": 1}


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    # bool is an int subclass; `batch_norm: true` typed into `filters` must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(name, f"must be an integer in {lo}..{hi}, got {value}")
    return value


def _prob(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(name, f"must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise SpecError(name, f"must be a number in [0, 1), got {value}")
    return float(value)


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SpecError(name, f"unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(name, f"must be true or false, got {value!r}")
    return value


def _from_dict(cls: type, data: Any, path: str) -> Any:
    """Builds dataclass ``cls`` from a mapping, refusing unknown keys by name."""
    if not isinstance(data, dict):
        raise SpecError(path, f"must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        raise SpecError(path, f"unknown key(s) {unknown}; allowed: {names}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise SpecError(path, f"missing key(s) {missing}")
    return data


def _plain(value: Any) -> Any:
    """Tuples become lists, recursively: the dict equals its own JSON round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ConvBlock:
    """One stage of the feature extractor: ``convs`` convolutions of its ``block_type`` (plain,
    depthwise-separable, a residual block or inverted bottlenecks), then optional downsampling.
    """

    # Output channels of every convolution in the block.
    filters: int
    # Square kernel size. Odd, so that 'same' padding is symmetric.
    kernel: int = 3
    # Convolutions in a row before the pooling
    # (seed 002: "two consecutive conv layers then a pool").
    convs: int = 1
    # Replace each kxk convolution by (k-1)/2 stacked 3x3 ones, each with its BatchNorm and
    # activation: the same receptive field, fewer weights, more nonlinearity (seed 002: "5x5 ~
    # two 3x3"). Inactive for kernels of 3 or less.
    factorize: bool = False
    # 'same' keeps H x W; 'valid' shrinks each side by kernel-1 (seed 002's [(N-K+2P)/S]+1 rule).
    padding: str = "same"
    # BatchNorm after each convolution, before the activation. The conv then has no bias.
    batch_norm: bool = False
    # Nonlinearity after each convolution (after BatchNorm when present).
    activation: str = "relu"
    # Downsampling after the block: 'max' or 'avg' pool (2x2, stride 2), or 'conv', a learnable
    # 3x3 stride-2 convolution with its own BatchNorm and activation (seed 002: "pool by using a
    # convolution layer with strides=2 and it will be learnable"), or 'none'.
    pool: str = "none"
    # Dropout probability after the block's pooling; 0 means no dropout layer.
    dropout: float = 0.0
    # How the convolutions are built. 'plain': each is a kxk conv. 'separable': each is a
    # depthwise kxk conv then a pointwise 1x1 conv, each with its BatchNorm and activation
    # (MobileNet). 'residual': the convs form a basic block whose input is added before the last
    # activation, through a 1x1 projection (with BatchNorm) where channels or size change
    # (ResNet; needs padding 'same'). 'inverted': ``convs`` inverted bottlenecks, each a 1x1
    # expansion, a depthwise kxk conv and a linear 1x1 projection, its input added when the shape
    # allows (MobileNetV2).
    block_type: str = "plain"
    # Inverted blocks: width of the 1x1 expansion over its input channels (MobileNetV2: 6); 1
    # leaves the expansion out. Inactive for the other block types.
    expansion: int = 6
    # Squeeze-and-excitation: each channel is rescaled by a gate computed from the channels'
    # global averages (linear to max(1, round(C * se_ratio)) units, ReLU, linear back, sigmoid).
    # After the block's convolutions (residual: on the branch, before the shortcut is added;
    # inverted: on the expanded channels after each depthwise conv); 0 leaves it out.
    se_ratio: float = 0.0
    # Stride of the block's first convolution (the first depthwise one in separable and inverted
    # blocks): 2 halves the map inside the block, as ResNet's and MobileNet's stages do, instead
    # of a pool after it (seed 002: "strided conv instead of pooling").
    stride: int = 1

    def __post_init__(self) -> None:
        _int(self.filters, "filters", 1, MAX_WIDTH)
        _int(self.kernel, "kernel", 1, MAX_KERNEL)
        if self.kernel % 2 == 0:
            raise SpecError(
                "kernel", f"must be odd so 'same' padding is symmetric, got {self.kernel}"
            )
        _int(self.convs, "convs", 1, 8)
        _bool(self.factorize, "factorize")
        _choice(self.padding, "padding", PADDINGS)
        _bool(self.batch_norm, "batch_norm")
        _choice(self.activation, "activation", ACTIVATIONS)
        _choice(self.pool, "pool", POOLS)
        object.__setattr__(self, "dropout", _prob(self.dropout, "dropout"))
        _choice(self.block_type, "block_type", BLOCK_TYPES)
        if self.block_type == "residual" and self.padding != "same":
            raise SpecError(
                "block_type",
                "'residual' needs padding 'same' (the shortcut adds the block's input to its "
                f"output, so the convolutions must keep the map's size), got {self.padding!r}",
            )
        _int(self.expansion, "expansion", 1, MAX_EXPANSION)
        se = self.se_ratio
        if isinstance(se, bool) or not isinstance(se, (int, float)) or not 0 <= se <= 1:
            raise SpecError("se_ratio", f"must be a number in [0, 1] (0: no SE), got {se!r}")
        object.__setattr__(self, "se_ratio", float(se))
        _int(self.stride, "stride", 1, MAX_STRIDE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvBlock:
        return cls(**_from_dict(cls, data, ""))

    @property
    def conv_kernels(self) -> tuple[int, ...]:
        """Kernel size of every kxk convolution the block runs, in order (factorisation applied).

        Separable blocks run each as a depthwise conv (with its pointwise 1x1 after it); inverted
        blocks have one depthwise conv per bottleneck and are never factorised.
        """
        if self.factorize and "factorize" not in self.inactive():
            return (3,) * ((self.kernel - 1) // 2 * self.convs)
        return (self.kernel,) * self.convs

    def inactive(self) -> tuple[str, ...]:
        """Fields whose value does not change the network."""
        out = []
        if self.kernel <= 3 or self.block_type == "inverted":
            out.append("factorize")
        if self.block_type != "inverted":
            out.append("expansion")
        return tuple(out)


@dataclass(frozen=True)
class DenseLayer:
    """One fully connected layer of the classification head, before the classifier."""

    # Output units.
    width: int
    # Nonlinearity after the layer.
    activation: str = "relu"
    # Dropout probability after the activation; 0 means no dropout layer.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _int(self.width, "width", 1, MAX_WIDTH)
        _choice(self.activation, "activation", ACTIVATIONS)
        object.__setattr__(self, "dropout", _prob(self.dropout, "dropout"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseLayer:
        return cls(**_from_dict(cls, data, ""))


@dataclass(frozen=True)
class ArchSpec:
    """A whole CNN: conv blocks -> aggregation -> dense layers -> classifier.

    Construction validates every field and runs shape inference, so an ``ArchSpec`` that exists
    always builds; an invalid one raises :class:`SpecError` naming the field or the layer.
    """

    # Input images as (channels, height, width).
    input_shape: tuple[int, int, int]
    # Number of classes of the classifier.
    num_classes: int
    # The feature extractor, in order. At least one block.
    blocks: tuple[ConvBlock, ...]
    # How the last feature map becomes a vector: 'flatten' keeps every position, 'gap' averages
    # each channel over H x W (seed 003), so the head's size no longer grows with the image;
    # 'multiscale' concatenates the flattened map with its 2x2 and 4x4 max-pooled versions (seed
    # 000's 'road sign' network), leaving out a section the map is too small for.
    aggregation: str = "flatten"
    # Hidden dense layers between the aggregation and the classifier; may be empty.
    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)
    # 'multi' (multiscale only) adds a softmax head on each pooled section next to the main head
    # (seed 000's three-headed model), so each section is optimised on its own.
    heads: str = "single"
    # Weight of each extra head's loss in the sum (the main head's weight is 1).
    aux_weight: float = 1.0
    # What a multi-head network predicts: the main head's, or the mean of all heads' probabilities.
    predict: str = "main"
    # Adaptive depth (seed 001's layer skipping, learned): every block after the first keeps
    # channels, height and width, and each block but the last has an exit classifier (global
    # average pooling + linear) in front of the usual head. An image stops at the first exit that
    # is confident enough, so easy images run fewer stages. Needs aggregation 'gap', heads 'single'.
    adaptive_depth: bool = False
    # Adaptive depth: an image stops at the first exit whose largest softmax probability is at
    # least this; 1.0 runs every stage for every image. In (0, 1].
    exit_threshold: float = 0.9

    def __post_init__(self) -> None:
        shape = self.input_shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 3:
            raise SpecError("input_shape", f"must be [channels, height, width], got {shape!r}")
        for i, (dim, hi) in enumerate(zip(shape, (4096, 16384, 16384), strict=True)):
            _int(dim, f"input_shape[{i}]", 1, hi)
        object.__setattr__(self, "input_shape", tuple(shape))
        _int(self.num_classes, "num_classes", 2, 100000)
        object.__setattr__(self, "blocks", self._children("blocks", self.blocks, ConvBlock))
        if not self.blocks:
            raise SpecError("blocks", "needs at least one conv block")
        _choice(self.aggregation, "aggregation", AGGREGATIONS)
        object.__setattr__(self, "dense", self._children("dense", self.dense, DenseLayer))
        _choice(self.heads, "heads", HEADS)
        if self.heads == "multi" and self.aggregation != "multiscale":
            raise SpecError(
                "heads", f"'multi' needs aggregation 'multiscale', got {self.aggregation!r}"
            )
        aux = self.aux_weight
        if isinstance(aux, bool) or not isinstance(aux, (int, float)) or not 0 <= aux <= 100:
            raise SpecError("aux_weight", f"must be a number in [0, 100], got {aux!r}")
        object.__setattr__(self, "aux_weight", float(aux))
        _choice(self.predict, "predict", PREDICTIONS)
        _bool(self.adaptive_depth, "adaptive_depth")
        t = self.exit_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise SpecError("exit_threshold", f"must be a number in (0, 1], got {t!r}")
        object.__setattr__(self, "exit_threshold", float(t))
        if self.adaptive_depth:
            self._check_adaptive()
        # Shape inference is the last check: it raises if a feature map collapses.
        infer_shapes(self)

    def _check_adaptive(self) -> None:
        if len(self.blocks) < 2:
            raise SpecError(
                "adaptive_depth", f"needs at least 2 blocks to skip any, got {len(self.blocks)}"
            )
        if self.aggregation != "gap":
            raise SpecError("adaptive_depth", f"needs aggregation 'gap', got {self.aggregation!r}")
        if self.heads != "single":
            raise SpecError("adaptive_depth", f"needs heads 'single', got {self.heads!r}")
        # An image that stops early skips the remaining stages, so each must map the first
        # block's output to the same shape; every exit then sees the same kind of feature map.
        from ._shapes import infer_shapes

        walk = infer_shapes(self)
        for bi in range(1, len(self.blocks)):
            mine = [la for la in walk if la.name.startswith(f"features.{bi}.")]
            if mine[0].in_shape != mine[-1].out_shape:
                raise SpecError(
                    f"blocks[{bi}]",
                    "adaptive_depth needs every block after the first to keep channels, height "
                    f"and width, got {mine[0].in_shape} -> {mine[-1].out_shape}; use filters "
                    f"{self.blocks[0].filters}, padding 'same', stride 1 and pool 'none'",
                )

    @staticmethod
    def _children(name: str, items: Any, cls: type) -> tuple:
        if not isinstance(items, (tuple, list)):
            raise SpecError(name, f"must be a list, got {type(items).__name__}")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(item if isinstance(item, cls) else cls.from_dict(item))
            except SpecError as e:
                raise e.under(f"{name}[{i}]") from None
            except TypeError as e:  # a non-mapping item
                raise SpecError(f"{name}[{i}]", str(e)) from None
        return tuple(out)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``ArchSpec.from_dict(spec.to_dict()) == spec``."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        _from_dict(cls, data, "")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError("", f"not valid JSON: {e}") from None
        return cls.from_dict(data)

    def inactive(self) -> tuple[str, ...]:
        """Top-level fields whose value does not change the network.

        The head options matter only when extra heads exist: a multi-head spec whose last map is
        too small for any pooled section builds the single-head network.
        """
        if any(la.name.startswith("aux_heads.") for la in infer_shapes(self)):
            return ()
        return ("heads", "aux_weight", "predict")

    def canonical_dict(self) -> dict[str, Any]:
        """``to_dict()`` without inactive fields: two specs that build the same network agree."""
        d = self.to_dict()
        for name in self.inactive():
            del d[name]
        if not self.adaptive_depth:
            # The adaptive-depth fields came after specs were first hashed: off, they leave the
            # dict, so every spec hashed before they existed keeps its hash (stored studies find
            # their twins, saved weights their spec). The threshold is inactive without exits.
            del d["adaptive_depth"], d["exit_threshold"]
        for block, bd in zip(self.blocks, d["blocks"], strict=True):
            for name in block.inactive():
                del bd[name]
            for name, before in _BLOCK_ADDED_LATER.items():
                if bd[name] == before:
                    del bd[name]
        return d

    def spec_hash(self) -> str:
        """A short, stable identity of the network (sha256 of the canonical JSON)."""
        canonical = json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """A one-line description, e.g. ``16c3x2+bn>max | 32c3>max | gap | d128 | 10``.

        A block reads ``{filters}c{kernel}``, then ``x{convs}``, ``f`` (factorised), ``/2``
        (stride), ``+dw`` (separable), ``+res`` or ``+inv{expansion}``, ``+se{ratio}``, ``+bn``,
        ``v`` (valid padding), ``>{pool}`` and ``~{dropout}``.
        """
        parts = [_block_summary(b) for b in self.blocks]
        parts.append(self.aggregation)
        if self.adaptive_depth:
            parts[-1] += f"+exits({self.exit_threshold:g})"
        if self.heads == "multi":
            parts[-1] += f"+heads({self.predict},{self.aux_weight:g})"
        parts += [f"d{d.width}" + (f"~{d.dropout:.2g}" if d.dropout else "") for d in self.dense]
        parts.append(str(self.num_classes))
        return " | ".join(parts)


_TYPE_MARKS = {"plain": "", "separable": "+dw", "residual": "+res", "inverted": "+inv"}


def _block_summary(b: ConvBlock) -> str:
    s = f"{b.filters}c{b.kernel}" + (f"x{b.convs}" if b.convs > 1 else "")
    s += "f" if "factorize" not in b.inactive() and b.factorize else ""
    s += f"/{b.stride}" if b.stride > 1 else ""
    s += _TYPE_MARKS[b.block_type] + (str(b.expansion) if b.block_type == "inverted" else "")
    s += f"+se{b.se_ratio:g}" if b.se_ratio else ""
    s += "+bn" if b.batch_norm else ""
    s += "v" if b.padding == "valid" else ""
    s += f">{b.pool}" if b.pool != "none" else ""
    s += f"~{b.dropout:.2g}" if b.dropout else ""
    return s
