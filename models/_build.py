"""spec -> nn.Module.

The module's structure follows the spec walk in ``_shapes.layers`` name for name, so a parameter
count or a MAC figure computed from the spec describes exactly the module built here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ._shapes import conv_names, infer_shapes, multiscale_sections, se_width, shortcut
from ._spec import ACTIVATIONS, AGGREGATIONS, POOLS, ArchSpec, ConvBlock, DenseLayer

__all__ = ["CNN", "MultiScale", "ResidualBlock", "SqueezeExcite", "build"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "tanh": nn.Tanh,
}
_POOLS: dict[str, Callable[[], nn.Module] | None] = {
    "max": lambda: nn.MaxPool2d(2, 2),
    "avg": lambda: nn.AvgPool2d(2, 2),
    "conv": None,  # learnable: built in _conv_block, it needs the channel count
    "none": None,
}


class MultiScale(nn.Module):
    """Seed 000's multi-scale flatten: the map and its 2x2 and 4x4 max-pooled versions.

    ``forward`` returns the flattened sections; the network concatenates them for the main head
    and gives each pooled one to its own head when the spec asks for several heads.
    """

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__()
        self.windows = windows
        for k in windows[1:]:
            self.add_module(f"pool{k}", nn.MaxPool2d(k, k))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x.flatten(1)]
        for k in self.windows[1:]:
            out.append(getattr(self, f"pool{k}")(x).flatten(1))
        return out


_AGGREGATIONS: dict[str, Callable[[], nn.Module]] = {
    "flatten": nn.Flatten,
    "gap": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "multiscale": MultiScale,  # built with its windows in CNN
}
# The spec validates names against its own tuples; these asserts keep the two lists in step.
assert set(_ACTIVATIONS) == set(ACTIVATIONS)
assert set(_POOLS) == set(POOLS)
assert set(_AGGREGATIONS) == set(AGGREGATIONS)


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): each channel scaled by a gate in (0, 1) computed from
    the global average of every channel (linear, ReLU, linear, sigmoid)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3))))))
        return x * g[:, :, None, None]


# A run of modules applied in turn, and what is added to its result: None (nothing), {} (its
# input, the identity) or the modules of a projection applied to its input.
_Segment = tuple[dict[str, nn.Module], dict[str, nn.Module] | None]


class ResidualBlock(nn.Module):
    """A conv block with shortcuts. Its modules are its direct children, named as the spec walk
    names them (``conv0``, ``proj``, ``dw_bn1``, ...), so its state_dict keys are flat like a
    plain block's; ``plan`` says how they are wired: segments run in turn, and a segment with a
    shortcut adds it (the segment's input, or a projection of it) to what the segment computed.
    """

    def __init__(self, segments: list[_Segment]) -> None:
        super().__init__()
        plan = []
        for body, skip in segments:
            for name, module in {**body, **(skip or {})}.items():
                self.add_module(name, module)
            plan.append((tuple(body), None if skip is None else tuple(skip)))
        self.plan: tuple[tuple[tuple[str, ...], tuple[str, ...] | None], ...] = tuple(plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for body, skip in self.plan:
            y = x
            for name in body:
                y = getattr(self, name)(y)
            if skip is not None:
                s = x
                for name in skip:
                    s = getattr(self, name)(s)
                y = y + s
            x = y
        return x


def _conv(
    block: ConvBlock,
    name: tuple[str, int | str],
    channels: tuple[int, int],
    kernel: int,
    stride: int = 1,
    depthwise: bool = False,
    act: bool = True,
) -> dict[str, nn.Module]:
    """A convolution, its BatchNorm when the block has it, and (``act``) its activation."""
    conv, bn, a = conv_names(*name)
    c_in, c_out = channels
    pad = kernel // 2 if block.padding == "same" else 0
    layers: dict[str, nn.Module] = {
        conv: nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=pad,
            groups=c_in if depthwise else 1,
            bias=not block.batch_norm,
        )
    }
    if block.batch_norm:
        layers[bn] = nn.BatchNorm2d(c_out)
    if act:
        layers[a] = _activation(block.activation)
    return layers


def _se(block: ConvBlock, name: str, channels: int) -> dict[str, nn.Module]:
    if not block.se_ratio:
        return {}
    return {name: SqueezeExcite(channels, se_width(channels, block.se_ratio))}


def _plain_body(block: ConvBlock, c_in: int) -> list[_Segment]:
    layers: dict[str, nn.Module] = {}
    for i, kernel in enumerate(block.conv_kernels):
        stride = block.stride if i == 0 else 1
        if block.block_type == "separable":
            layers |= _conv(block, ("dw", i), (c_in, c_in), kernel, stride, depthwise=True)
            layers |= _conv(block, ("pw", i), (c_in, block.filters), 1)
        else:
            layers |= _conv(block, ("conv", i), (c_in, block.filters), kernel, stride)
        c_in = block.filters
    return [(layers | _se(block, "se", block.filters), None)]


def _residual_body(block: ConvBlock, c_in: int) -> list[_Segment]:
    branch: dict[str, nn.Module] = {}
    last = len(block.conv_kernels) - 1
    c = c_in
    for i, kernel in enumerate(block.conv_kernels):
        stride = block.stride if i == 0 else 1
        branch |= _conv(block, ("conv", i), (c, block.filters), kernel, stride, act=i < last)
        c = block.filters
    branch |= _se(block, "se", block.filters)
    skip: dict[str, nn.Module] = {}
    if shortcut(block, c_in) == "projection":
        skip = _conv(block, ("proj", ""), (c_in, block.filters), 1, block.stride, act=False)
    # The last activation comes after the addition (ResNet's basic block).
    return [(branch, skip), ({f"act{last}": _activation(block.activation)}, None)]


def _inverted_body(block: ConvBlock, c_in: int) -> list[_Segment]:
    segments: list[_Segment] = []
    for i in range(block.convs):
        hidden = c_in * block.expansion
        unit: dict[str, nn.Module] = {}
        if block.expansion > 1:
            unit |= _conv(block, ("expand", i), (c_in, hidden), 1)
        stride = block.stride if i == 0 else 1
        unit |= _conv(block, ("dw", i), (hidden, hidden), block.kernel, stride, depthwise=True)
        unit |= _se(block, f"se{i}", hidden)
        unit |= _conv(block, ("project", i), (hidden, block.filters), 1, act=False)
        skip = shortcut(block, c_in, i)
        segments.append((unit, {} if skip == "identity" else None))
        c_in = block.filters
    return segments


_BODIES: dict[str, Callable[[ConvBlock, int], list[_Segment]]] = {
    "plain": _plain_body,
    "separable": _plain_body,
    "residual": _residual_body,
    "inverted": _inverted_body,
}


def _pool(block: ConvBlock) -> dict[str, nn.Module]:
    layers: dict[str, nn.Module] = {}
    if block.pool == "conv":
        c = block.filters
        layers["pool"] = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=not block.batch_norm)
        if block.batch_norm:
            layers["pool_bn"] = nn.BatchNorm2d(c)
        layers["pool_act"] = _activation(block.activation)
    elif (pool := _POOLS[block.pool]) is not None:
        layers["pool"] = pool()
    if block.dropout:
        layers["drop"] = nn.Dropout(block.dropout)
    return layers


def _conv_block(block: ConvBlock, c_in: int) -> nn.Module:
    """The block's module: an ``nn.Sequential`` when nothing is added back, else a
    :class:`ResidualBlock`; either way its children carry the spec walk's names."""
    segments = [*_BODIES[block.block_type](block, c_in), (_pool(block), None)]
    if all(skip is None for _, skip in segments):
        layers: dict[str, nn.Module] = {}
        for body, _ in segments:
            layers |= body
        return nn.Sequential(OrderedDict(layers))
    return ResidualBlock(segments)


def _dense_layer(dense: DenseLayer, width: int) -> nn.Sequential:
    layers: dict[str, nn.Module] = {
        "linear": nn.Linear(width, dense.width),
        "act": _activation(dense.activation),
    }
    if dense.dropout:
        layers["drop"] = nn.Dropout(dense.dropout)
    return nn.Sequential(OrderedDict(layers))


class CNN(nn.Module):
    """The network a spec describes: ``features -> aggregate -> head -> classifier``.

    ``forward_heads`` returns the logits of every output head, the main head first; training sums
    their losses. ``forward`` returns what the network predicts: the main head's logits, or, for a
    multi-head spec with ``predict='mean'``, the log of the heads' mean probabilities (its argmax
    is the prediction and it works with ``nll_loss``).

    An adaptive-depth spec adds an exit classifier after every block but the last (the last
    block's exit is the usual head). ``forward_exits`` returns every exit's logits in stage order;
    ``adaptive_forward`` runs, per image, the stages up to its first confident exit. ``forward``
    is the adaptive prediction in eval mode and the last exit's logits in training mode (training
    sums the exits' losses over ``forward_exits``).
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        blocks, c = [], spec.input_shape[0]
        for block in spec.blocks:
            blocks.append(_conv_block(block, c))
            c = block.filters
        self.features = nn.Sequential(*blocks)
        walk = infer_shapes(spec)
        agg = next(la for la in walk if la.kind == "aggregate")
        if spec.aggregation == "multiscale":
            self.aggregate = MultiScale(multiscale_sections(agg.in_shape))
        else:
            self.aggregate = _AGGREGATIONS[spec.aggregation]()
        width = agg.out_shape[0]
        head = []
        for dense in spec.dense:
            head.append(_dense_layer(dense, width))
            width = dense.width
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(width, spec.num_classes)
        aux = [la for la in walk if la.name.startswith("aux_heads.")]
        self.aux_heads = nn.ModuleList(nn.Linear(la.in_shape[0], spec.num_classes) for la in aux)
        exits = [la for la in walk if la.name.startswith("exits.")]
        self.exits = nn.ModuleList(nn.Linear(la.in_shape[0], spec.num_classes) for la in exits)

    def _exit(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """The logits of exit ``k`` on the output ``x`` of block ``k``."""
        if k < len(self.exits):
            return self.exits[k](x.mean((2, 3)))
        return self.classifier(self.head(self.aggregate(x)))

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits at full depth, in stage order (the last is the head's)."""
        if not self.spec.adaptive_depth:
            raise ValueError("forward_exits needs a spec with adaptive_depth true")
        out = []
        for k, block in enumerate(self.features):
            x = block(x)
            out.append(self._exit(k, x))
        return out

    def _confident(self, logits: torch.Tensor) -> torch.Tensor:
        # Softmax confidence cannot exceed 1, but in float it can round to exactly 1.0: a
        # threshold of 1.0 is therefore tested apart, as "never stop early".
        if self.spec.exit_threshold >= 1.0:
            return torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
        return logits.float().softmax(1).amax(1) >= self.spec.exit_threshold

    def choose_exit(self, exits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, depths)`` of the adaptive rule applied to all exits' logits (stage order).

        Image ``i`` takes the logits of its first confident exit (the last one if none is) and
        ``depths[i]`` is that exit's number, 1-based. The same answer as ``adaptive_forward``,
        computed from a full-depth pass (what training and validation already have).
        """
        n = len(exits)
        depths = torch.full((len(exits[0]),), n, dtype=torch.long, device=exits[0].device)
        for k in range(n - 2, -1, -1):  # backwards, so the first confident exit wins
            depths = torch.where(self._confident(exits[k]), k + 1, depths)
        stacked = torch.stack(exits)  # (exits, images, classes)
        index = (depths - 1).view(1, -1, 1).expand(1, *stacked.shape[1:])
        return stacked.gather(0, index).squeeze(0), depths

    def adaptive_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, depths)``, running for each image only the stages up to its exit.

        After each stage the images whose exit is confident leave; the next stage runs on the
        sub-batch still undecided, so a stage (and its exit) no image reaches is not run at all
        and gets no gradient.
        """
        if not self.spec.adaptive_depth:
            raise ValueError("adaptive_forward needs a spec with adaptive_depth true")
        n, last = len(x), len(self.features) - 1
        depths = torch.full((n,), last + 1, dtype=torch.long, device=x.device)
        idx = torch.arange(n, device=x.device)  # the images still undecided
        out: torch.Tensor | None = None
        for k, block in enumerate(self.features):
            x = block(x)
            logits = self._exit(k, x)
            if out is None:
                out = logits.new_zeros((n, logits.shape[1]))
            done = torch.ones_like(idx, dtype=torch.bool) if k == last else self._confident(logits)
            if bool(done.all()):
                return out.index_copy(0, idx, logits), depths.index_fill(0, idx, k + 1)
            if bool(done.any()):
                # Out of place, so autograd follows every image to the exit that answered it.
                stop = idx[done]
                out = out.index_copy(0, stop, logits[done])
                depths = depths.index_fill(0, stop, k + 1)
                keep = ~done
                idx, x = idx[keep], x[keep]
        raise AssertionError("unreachable: the last stage answers every image")

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.spec.adaptive_depth:
            exits = self.forward_exits(x)
            return (exits[-1], *exits[:-1])  # the main head (the last exit) first
        features = self.aggregate(self.features(x))
        if isinstance(features, list):  # multi-scale sections
            sections, features = features, torch.cat(features, 1)
        main = self.classifier(self.head(features))
        if not len(self.aux_heads):
            return (main,)
        return (main, *(h(s) for h, s in zip(self.aux_heads, sections[1:], strict=True)))

    def combine(self, heads: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The prediction from all heads' logits, by the spec's rule."""
        if self.spec.adaptive_depth:
            return self.choose_exit([*heads[1:], heads[0]])[0]
        if len(heads) == 1 or self.spec.predict == "main":
            return heads[0]
        probs = torch.stack([h.float().softmax(1) for h in heads]).mean(0)
        return probs.clamp_min(1e-12).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.adaptive_depth:
            if self.training:
                return self._exit(len(self.features) - 1, self.features(x))
            return self.adaptive_forward(x)[0]
        return self.combine(self.forward_heads(x))


def build(spec: ArchSpec) -> CNN:
    """Builds the (randomly initialised) network that ``spec`` describes."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build() takes an ArchSpec, got {type(spec).__name__}")
    return CNN(spec)
