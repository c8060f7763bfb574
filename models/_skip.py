"""Layer skipping (seed 001): a CNN that runs a per-image number of its conv stages.

Seed 001's CNN1/CNN3 is three convolutions of equal height and width (no pooling) and one dense
layer. CNN3 runs, per image, only the first ``depth`` of them: a skipped stage passes its input
through unchanged, which is why every stage after the first must keep channels, height and width.
The network is described by an ordinary :class:`ArchSpec` (one block per stage), so its parameters
and its MACs come from the same spec walk as every other model's.

Skipped stages are not run at all: each stage sees only the sub-batch of images that use it. A
stage's gradient therefore comes only from those images, and a stage no image of a batch uses has
no gradient, so an optimiser step leaves its weights bit for bit as they were.
"""

from __future__ import annotations

import torch

from ._build import CNN
from ._shapes import count_macs, infer_shapes
from ._spec import ArchSpec, ConvBlock, SpecError

__all__ = [
    "SkipCNN",
    "check_skippable",
    "depth_macs",
    "executed_macs",
    "router_spec",
    "skip_spec",
]


def skip_spec(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    filters: int = 32,
    kernel: int = 3,
    stages: int = 3,
) -> ArchSpec:
    """Seed 001's CNN1: ``stages`` 'same'-padded convolutions of ``filters`` maps, no pooling,
    flatten, one dense (softmax) layer."""
    block = ConvBlock(filters=filters, kernel=kernel, padding="same", activation="relu")
    return ArchSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        blocks=(block,) * stages,
        aggregation="flatten",
    )


def router_spec(
    input_shape: tuple[int, int, int], depths: int = 3, *, filters: int = 8
) -> ArchSpec:
    """CNN2, the router: a small image -> depth-label classifier (two conv-pool stages, GAP).

    The seed does not describe CNN2's layers; it is kept small so that its MACs are a fraction of
    what skipping saves.
    """
    return ArchSpec(
        input_shape=input_shape,
        num_classes=depths,
        blocks=(ConvBlock(filters=filters, pool="max"), ConvBlock(filters=2 * filters, pool="max")),
        aggregation="gap",
    )


def check_skippable(spec: ArchSpec) -> None:
    """Raises :class:`SpecError` unless every block after the first keeps (C, H, W) unchanged."""
    if len(spec.blocks) < 2:
        raise SpecError("blocks", f"layer skipping needs at least 2 blocks, got {len(spec.blocks)}")
    walk = infer_shapes(spec)
    for bi in range(1, len(spec.blocks)):
        mine = [la for la in walk if la.name.startswith(f"features.{bi}.")]
        if mine[0].in_shape != mine[-1].out_shape:
            raise SpecError(
                f"blocks[{bi}]",
                f"a skippable stage must keep channels, height and width: "
                f"{mine[0].in_shape} -> {mine[-1].out_shape}; use filters equal to the first "
                "block's, 'same' padding and pool 'none'",
            )


def depth_macs(spec: ArchSpec) -> tuple[int, ...]:
    """MACs per image when running the first 1, 2, ..., len(blocks) stages (then the head).

    The last entry equals :func:`count_macs` of the spec.
    """
    walk = infer_shapes(spec)
    per_block = [
        sum(la.macs for la in walk if la.name.startswith(f"features.{bi}."))
        for bi in range(len(spec.blocks))
    ]
    rest = count_macs(spec) - sum(per_block)
    return tuple(rest + sum(per_block[: d + 1]) for d in range(len(per_block)))


def executed_macs(spec: ArchSpec, depths: torch.Tensor) -> float:
    """Average MACs per image actually executed when image ``i`` runs ``depths[i]`` stages.

    ``depths`` holds values in 1..len(blocks); an empty tensor is an error.
    """
    if depths.numel() == 0:
        raise ValueError("executed_macs needs at least one depth")
    table = torch.tensor(depth_macs(spec), dtype=torch.float64)
    d = depths.detach().to("cpu", torch.long).flatten()
    if int(d.min()) < 1 or int(d.max()) > len(table):
        raise ValueError(f"depths must lie in 1..{len(table)}, got {int(d.min())}..{int(d.max())}")
    return float(table[d - 1].mean())


class SkipCNN(CNN):
    """The network of a skippable spec, running ``depth[i]`` conv stages for image ``i``.

    ``forward(x)`` runs every stage (CNN1); ``forward(x, depth)`` skips per image (CNN3).
    """

    def __init__(self, spec: ArchSpec) -> None:
        check_skippable(spec)
        super().__init__(spec)

    @property
    def stages(self) -> int:
        return len(self.features)

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage at full depth (what the activation labelling ranks)."""
        out = []
        for stage in self.features:
            x = stage(x)
            out.append(x)
        return out

    def features_at(self, x: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        """The last feature map, image ``i`` having run its first ``depth[i]`` stages."""
        if depth is None:
            return self.features(x)
        if depth.shape != (len(x),):
            raise ValueError(f"depth must have shape ({len(x)},), got {tuple(depth.shape)}")
        x = self.features[0](x)
        for k in range(1, self.stages):
            use = depth > k
            if bool(use.all()):
                x = self.features[k](x)
                continue
            idx = use.nonzero().squeeze(1)
            if idx.numel():
                # Out of place: rows outside idx keep their value and their gradient path, and
                # stage k never sees (nor gets gradient from) the images that skip it.
                x = x.index_copy(0, idx, self.features[k](x.index_select(0, idx)))
        return x

    def forward_heads(
        self, x: torch.Tensor, depth: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        features = self.aggregate(self.features_at(x, depth))
        if isinstance(features, list):
            sections, features = features, torch.cat(features, 1)
        main = self.classifier(self.head(features))
        if not len(self.aux_heads):
            return (main,)
        return (main, *(h(s) for h, s in zip(self.aux_heads, sections[1:], strict=True)))

    def forward(self, x: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
        return self.combine(self.forward_heads(x, depth))
