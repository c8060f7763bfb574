"""Seed 001's layer skipping, end to end: CNN1 -> activation labels -> router (CNN2) -> CNN3.

The seed's pipeline, step by step:

1. CNN1: ``stages`` 'same'-padded convolutions of equal size (no pooling) and one dense layer,
   trained with RMSprop and sparse cross-entropy.
2. Labelling: for each of the first ``maps`` feature maps of each conv layer, the ``top`` images
   with the highest mean |activation| are labelled with that layer; on repeats the higher layer
   wins. Most images are picked by no map and stay unlabelled.
3. CNN2, the router, learns image -> label on the labelled training images.
4. CNN3, CNN1's architecture freshly initialised, trains with per-image skipping: label 0 runs
   conv1 only, label 1 conv1-2, label 2 all three; a skipped layer gets no update. The seed
   trains CNN3 on "the above-mentioned images and their corresponding labels" and says CNN2's
   predictions "were used to train, validate, and test CNN 3". So here a training image labelled
   by the activation rule keeps that label, every other image (training, validation, test) is
   routed by CNN2's prediction.

The exit-classifier variant replaces step 2: a linear classifier after each of CNN1's conv
layers but the last (the last one's is CNN1's own dense layer), trained on the frozen CNN1; an
image's label is the earliest layer whose classifier is already right (the last layer if none
is). Every image gets a label, so its router learns from the whole training split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param
from torch import nn

from cnnas.models import (
    ArchSpec,
    SkipCNN,
    build,
    count_macs,
    count_params,
    depth_macs,
    executed_macs,
)
from cnnas.models import router_spec as make_router_spec
from cnnas.models import skip_spec as make_skip_spec
from cnnas.objectives import (
    ImageData,
    activation_scores,
    earliest_correct,
    logits_in_batches,
    predict_in_batches,
    strongest_activation_labels,
    train_rmsprop,
)

from .._config import MlflowConfig
from .._tracking import Tracker
from ._common import markdown_head, markdown_row

__all__ = [
    "LAYER_SKIP_EXPERIMENT",
    "LAYER_SKIP_PRESETS",
    "LayerSkipConfig",
    "LayerSkipResult",
    "LayerSkipTracker",
    "NetRecord",
    "VariantResult",
    "run_layer_skip",
    "write_report",
]

LAYER_SKIP_EXPERIMENT = "cnnas-layer-skip"


@dataclass(frozen=True)
class LayerSkipConfig:
    """Settings of one layer-skipping run. The defaults are the seed's."""

    # Dataset name (objectives.load_dataset) and where its files are.
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    # Stratified subset of the training pool (train + validation); None: all of it.
    subset: int | None = None
    # Fraction of the training pool held out for validation.
    val_fraction: float = 0.1
    # Epochs of CNN1, CNN3 and the exit classifiers (the seed: 20).
    epochs: int = 20
    # Epochs of the routers; None: ``epochs``. The activation router sees only a few hundred
    # images, so a short preset gives it more passes than the big networks.
    router_epochs: int | None = None
    # Feature maps of every conv layer of CNN1/CNN3, their kernel, and how many layers.
    filters: int = 32
    kernel: int = 3
    stages: int = 3
    # Width of the router's first conv stage (the second has twice as many).
    router_filters: int = 8
    # Seed 001's labelling: the first ``maps`` maps per layer, ``top`` images per map.
    maps: int = 10
    top: int = 10
    batch_size: int = 128
    # RMSprop learning rate (Keras' default, like the seed).
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("epochs", "filters", "kernel", "router_filters", "maps", "top", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.router_epochs is not None and self.router_epochs < 1:
            raise ValueError(f"router_epochs must be a positive integer, got {self.router_epochs}")
        if self.stages < 2:
            raise ValueError(
                f"stages must be at least 2 (one to keep, one to skip), got {self.stages}"
            )
        if self.maps > self.filters:
            raise ValueError(
                f"filters ({self.filters}) must be at least maps ({self.maps}): the labelling "
                "ranks images on the first `maps` feature maps of each layer"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")

    @property
    def router_passes(self) -> int:
        return self.router_epochs or self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LAYER_SKIP_PRESETS: dict[str, LayerSkipConfig] = {
    # The seed's settings: 32 maps per layer, 20 epochs, the whole training set.
    "full": LayerSkipConfig(),
    # A few minutes on a 2-core CPU: 12,000 training-pool images, 3 epochs, 12 maps per layer.
    "small": LayerSkipConfig(
        subset=12000, epochs=3, router_epochs=15, filters=12, router_filters=4
    ),
}


@dataclass
class NetRecord:
    """One trained network of the pipeline, as it is logged (one MLflow child run each)."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, list[float]]
    # The network itself (a models spec-built module), saved with the run when it has a spec.
    model: nn.Module | None = None


@dataclass
class VariantResult:
    """CNN3 routed by one labelling rule."""

    # 'activation' (the seed's rule) or 'exit' (earliest correct exit classifier).
    name: str
    # Training images per label 0..stages-1 and, last, unlabelled (routed by the router).
    train_labels: list[int]
    # Images the router learned from.
    router_train_images: int
    # Router accuracy on the test images that the same rule labels, and how many those are.
    router_acc: float
    router_test_images: int
    router_macs: int
    # Share of test images the router sends to depth 1..stages.
    depth_share: list[float]
    # CNN3 test accuracy with the router's depths, and at full depth for every image.
    cnn3_acc: float
    cnn3_full_depth_acc: float
    # Average MACs per test image that CNN3 executed with the router's depths; with the router's.
    executed_macs: float
    total_macs: float


@dataclass
class LayerSkipResult:
    config: LayerSkipConfig
    dataset: dict[str, Any]
    cnn1_acc: float
    cnn1_params: int
    cnn1_macs: int
    # Test accuracy of the exit classifier after each conv layer (the last: CNN1 itself).
    exit_acc: list[float]
    # MACs per image at depth 1..stages.
    depth_macs: list[int]
    variants: list[VariantResult]
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        """Flat metrics for the parent run."""
        out: dict[str, float] = {
            "cnn1_acc": self.cnn1_acc,
            "cnn1_params": float(self.cnn1_params),
            "cnn1_macs": float(self.cnn1_macs),
            "seconds": self.seconds,
        }
        for k, a in enumerate(self.exit_acc):
            out[f"exit{k + 1}_acc"] = a
        for v in self.variants:
            for key in (
                "router_acc",
                "router_macs",
                "cnn3_acc",
                "cnn3_full_depth_acc",
                "executed_macs",
                "total_macs",
            ):
                out[f"{v.name}.{key}"] = float(getattr(v, key))
            for d, share in enumerate(v.depth_share):
                out[f"{v.name}.depth{d + 1}_share"] = share
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d


class _Exits(nn.Module):
    """Linear exit classifiers on the flattened output of every conv layer of CNN1 but the last."""

    def __init__(self, net: SkipCNN) -> None:
        super().__init__()
        _, h, w = net.spec.input_shape
        width = net.spec.blocks[0].filters * h * w
        n = net.spec.num_classes
        self.heads = nn.ModuleList(nn.Linear(width, n) for _ in range(net.stages - 1))
        # A plain attribute, not a submodule: the exits train, the frozen backbone does not.
        self.__dict__["net"] = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            outs = self.net.stage_outputs(x)
        logits = [head(o.flatten(1)) for head, o in zip(self.heads, outs, strict=False)]
        return [*logits, self.net.classifier(outs[-1].flatten(1))]


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``pred`` equal to ``y``; NaN for no images."""
    return float((pred == y.cpu()).float().mean()) if len(y) else float("nan")


def _plain_forward(net: nn.Module, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``net`` on a batch, ignoring which images of the split it holds."""
    return net(xb)


def _routed_forward(
    net: SkipCNN, depth: torch.Tensor | None, xb: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """``net`` running each image of the batch to its entry of ``depth`` (None: full depth)."""
    return net(xb, None if depth is None else depth[idx])


def _exit_forward(exits: _Exits, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The new exits' logits, one exit after another along the batch, for a loss over every
    exit; the last logits are CNN1's own (frozen) head, so they are left out."""
    return torch.cat(exits(xb)[:-1])


@torch.no_grad()
def _exit_correct(
    exits: _Exits, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(images, stages) booleans on the CPU: whether each exit classifies each image right."""
    cols = [
        torch.stack([lg.argmax(1) == yb for lg in logits], 1).cpu()
        for logits, yb in logits_in_batches(exits, x, y, mean, std)
    ]
    return torch.cat(cols)


@dataclass
class _Route:
    """A variant's labels and the router trained on them."""

    router: nn.Module
    # Per training image: the rule's label, -1 where it gave none.
    train_labels: torch.Tensor
    # Training images per label 0..stages-1, then unlabelled.
    counts: list[int]
    # Training images the router learned from; labelled test images it was scored on.
    train_images: int
    test_images: int
    acc: float
    # The router's label for every test image.
    test_routes: torch.Tensor


class _Pipeline:
    """The steps of one run, sharing the data on the device, CNN1's spec and the curves so far.

    The steps must run in the order ``run_layer_skip`` calls them: each seeds torch's generator
    before it initialises a network, so the same settings give the same numbers.
    """

    def __init__(
        self,
        cfg: LayerSkipConfig,
        data: ImageData,
        dev: torch.device,
        log: Callable[[str], None],
        on_net: Callable[[NetRecord], None] | None,
    ) -> None:
        self.cfg, self.dev, self.log, self.on_net = cfg, dev, log, on_net
        self.tr_x, self.tr_y = data.train_x.to(dev), data.train_y.to(dev)
        self.va_x, self.va_y = data.val_x.to(dev), data.val_y.to(dev)
        self.te_x, self.te_y = data.test_x.to(dev), data.test_y.to(dev)
        self.mean, self.std = data.mean, data.std
        self.spec = make_skip_spec(
            data.input_shape, data.num_classes, filters=cfg.filters, kernel=cfg.kernel,
            stages=cfg.stages,
        )  # fmt: skip
        self.common = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
        self.curves: dict[str, dict[str, list[float]]] = {}

    def record(
        self, name: str, params: dict, metrics: dict, crv: dict, model: nn.Module | None
    ) -> None:
        """Keeps ``name``'s curves for the report and hands the network to ``on_net``."""
        self.curves[name] = crv
        if self.on_net is not None:
            self.on_net(NetRecord(name, params, metrics, crv, model))

    def skip_pred(self, net: SkipCNN, x: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        """``net``'s predictions with each image run to its ``depth`` (None: full depth)."""
        forward = functools.partial(_routed_forward, net, depth)
        return predict_in_batches(net, forward, x, self.mean, self.std, batch_size=1024)

    def plain_pred(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net``'s predictions on ``x``."""
        forward = functools.partial(_plain_forward, net)
        return predict_in_batches(net, forward, x, self.mean, self.std)

    def validation(self, net: SkipCNN, depth: torch.Tensor | None) -> Callable:
        """An ``on_epoch`` callback: ``net``'s validation accuracy at ``depth``, logged."""
        return functools.partial(self._validate, net, depth)

    def _validate(
        self, net: SkipCNN, depth: torch.Tensor | None, epoch: int, m: dict[str, float]
    ) -> dict[str, float]:
        val = _acc(self.skip_pred(net, self.va_x, depth), self.va_y)
        self.log(
            f"  epoch {epoch + 1}: train_loss {m['train_loss']:.4f} "
            f"train_acc {m['train_acc']:.4f} val_acc {val:.4f} ({m['epoch_seconds']:.1f}s)"
        )
        return {"val_acc": val}

    def train_cnn1(self) -> tuple[SkipCNN, float]:
        """CNN1 trained at full depth, and its test accuracy."""
        cfg, spec = self.cfg, self.spec
        torch.manual_seed(cfg.seed)
        cnn1 = SkipCNN(spec).to(self.dev)
        self.log(
            f"CNN1 {spec.summary()}: {count_params(spec):,} params, {count_macs(spec):,} MACs/image"
        )
        c1 = train_rmsprop(
            cnn1, functools.partial(_plain_forward, cnn1), self.tr_x, self.tr_y, self.mean,
            self.std, seed=cfg.seed, on_epoch=self.validation(cnn1, None), **self.common,
        )  # fmt: skip
        acc = _acc(self.skip_pred(cnn1, self.te_x, None), self.te_y)
        self.log(f"CNN1 test accuracy {acc:.4f}")
        self.record(
            "cnn1",
            {"role": "CNN1", "arch": spec.summary(), **self.common},
            {"test_acc": acc, "params": count_params(spec), "macs": count_macs(spec)},
            c1,
            cnn1,
        )
        return cnn1, acc

    def activation_labels(self, cnn1: SkipCNN) -> dict[str, torch.Tensor]:
        """The seed's rule on the training and the test images: -1 where no map picks one."""
        out = {}
        for split, x in (("train", self.tr_x), ("test", self.te_x)):
            scores = activation_scores(
                cnn1.stage_outputs, cnn1, x, self.mean, self.std, maps=self.cfg.maps
            )
            out[split] = strongest_activation_labels(scores, top=min(self.cfg.top, len(x)))
        return out

    def exit_labels(self, cnn1: SkipCNN) -> tuple[list[float], dict[str, torch.Tensor]]:
        """Trains the exit classifiers on frozen CNN1; their test accuracies, and the earliest
        correct exit of every training and test image."""
        cfg = self.cfg
        for p in cnn1.parameters():
            p.requires_grad_(False)
        torch.manual_seed(cfg.seed + 1)
        exits = _Exits(cnn1).to(self.dev)
        ex_curves = train_rmsprop(
            exits, functools.partial(_exit_forward, exits), self.tr_x, self.tr_y, self.mean,
            self.std, seed=cfg.seed + 1, heads=cfg.stages - 1, **self.common,
        )  # fmt: skip
        te_correct = _exit_correct(exits, self.te_x, self.te_y, self.mean, self.std)
        exit_acc = te_correct.float().mean(0).tolist()
        self.log("exit classifiers' test accuracy: " + ", ".join(f"{a:.4f}" for a in exit_acc))
        self.record(
            "exits",
            {"role": "exit classifiers on frozen CNN1", **self.common},
            {f"exit{k + 1}_test_acc": a for k, a in enumerate(exit_acc)},
            ex_curves,
            None,
        )
        tr_correct = _exit_correct(exits, self.tr_x, self.tr_y, self.mean, self.std)
        labels = {"train": earliest_correct(tr_correct), "test": earliest_correct(te_correct)}
        for p in cnn1.parameters():
            p.requires_grad_(True)
        return exit_acc, labels

    def route(
        self, vi: int, vname: str, labels: dict[str, torch.Tensor], rspec: ArchSpec
    ) -> _Route:
        """Trains variant ``vi``'s router on the training images its rule labels; scores it on
        the test images the rule labels."""
        cfg, L = self.cfg, self.cfg.stages
        train_lab = labels["train"]
        counts = [int((train_lab == k).sum()) for k in range(L)] + [int((train_lab < 0).sum())]
        self.log(
            f"[{vname}] training labels per depth 1..{L}: {counts[:L]}, unlabelled {counts[L]}"
        )
        keep = (train_lab >= 0).nonzero().squeeze(1)
        torch.manual_seed(cfg.seed + 10 + vi)
        router = build(rspec).to(self.dev)
        rx, ry = self.tr_x[keep.to(self.dev)], train_lab[keep].to(self.dev)
        rc = train_rmsprop(
            router, functools.partial(_plain_forward, router), rx, ry, self.mean, self.std,
            epochs=cfg.router_passes, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed + 10 + vi,
        )  # fmt: skip
        test_lab = labels["test"]
        has = (test_lab >= 0).nonzero().squeeze(1)
        test_routes = self.plain_pred(router, self.te_x)
        acc = _acc(test_routes[has], test_lab[has])
        self.log(f"[{vname}] router test accuracy {acc:.4f} on {len(has)} labelled test images")
        self.record(
            f"router-{vname}",
            {"role": "CNN2 (router)", "labels": vname, "arch": rspec.summary(),
             "epochs": cfg.router_passes, "batch_size": cfg.batch_size, "lr": cfg.lr},
            {"test_acc": acc, "test_images": len(has), "train_images": len(keep),
             "params": count_params(rspec), "macs": count_macs(rspec)},
            rc,
            router,
        )  # fmt: skip
        return _Route(router, train_lab, counts, len(keep), len(has), acc, test_routes)

    def train_cnn3(self, vi: int, vname: str, route: _Route, router_macs: int) -> VariantResult:
        """Trains CNN3 with every image skipping the layers its depth leaves out; scores it on
        the test images routed and at full depth."""
        cfg, spec, L = self.cfg, self.spec, self.cfg.stages
        # Depth per training image: its own label where the rule gave one, else the router's.
        train_routes = self.plain_pred(route.router, self.tr_x)
        lab = route.train_labels
        train_depth = (torch.where(lab >= 0, lab, train_routes) + 1).to(self.dev)
        val_depth = (self.plain_pred(route.router, self.va_x) + 1).to(self.dev)
        test_depth = (route.test_routes + 1).to(self.dev)
        torch.manual_seed(cfg.seed + 20 + vi)
        cnn3 = SkipCNN(spec).to(self.dev)
        c3 = train_rmsprop(
            cnn3, functools.partial(_routed_forward, cnn3, train_depth), self.tr_x, self.tr_y,
            self.mean, self.std, seed=cfg.seed + 20 + vi, on_epoch=self.validation(cnn3, val_depth),
            **self.common,
        )  # fmt: skip
        cnn3_acc = _acc(self.skip_pred(cnn3, self.te_x, test_depth), self.te_y)
        full_acc = _acc(self.skip_pred(cnn3, self.te_x, None), self.te_y)
        run_macs = executed_macs(spec, test_depth)
        share = [float((test_depth == d + 1).float().mean()) for d in range(L)]
        self.log(
            f"[{vname}] CNN3 test accuracy {cnn3_acc:.4f} routed, {full_acc:.4f} at full depth; "
            f"{run_macs:,.0f} MACs/image executed ({run_macs / count_macs(spec):.1%} of CNN1), "
            f"+ router {router_macs:,}"
        )
        v = VariantResult(
            name=vname,
            train_labels=route.counts,
            router_train_images=route.train_images,
            router_acc=route.acc,
            router_test_images=route.test_images,
            router_macs=router_macs,
            depth_share=share,
            cnn3_acc=cnn3_acc,
            cnn3_full_depth_acc=full_acc,
            executed_macs=run_macs,
            total_macs=run_macs + router_macs,
        )
        self.record(
            f"cnn3-{vname}",
            {"role": "CNN3", "labels": vname, "arch": spec.summary(), **self.common},
            {"test_acc": cnn3_acc, "full_depth_test_acc": full_acc, "executed_macs": run_macs,
             "total_macs": v.total_macs, "params": count_params(spec),
             **{f"depth{d + 1}_share": s for d, s in enumerate(share)}},
            c3,
            cnn3,
        )  # fmt: skip
        return v


def run_layer_skip(
    cfg: LayerSkipConfig,
    data: ImageData,
    *,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    on_net: Callable[[NetRecord], None] | None = None,
) -> LayerSkipResult:
    """Runs the whole pipeline on ``data`` and returns its numbers; ``on_net`` sees each network."""
    start = time.perf_counter()
    run = _Pipeline(cfg, data, torch.device(device), log, on_net)
    cnn1, cnn1_acc = run.train_cnn1()
    act_labels = run.activation_labels(cnn1)
    exit_acc, exit_labels = run.exit_labels(cnn1)
    rspec = make_router_spec(data.input_shape, cfg.stages, filters=cfg.router_filters)
    router_macs = count_macs(rspec)
    variants = []
    for vi, (vname, labels) in enumerate((("activation", act_labels), ("exit", exit_labels))):
        route = run.route(vi, vname, labels, rspec)
        variants.append(run.train_cnn3(vi, vname, route, router_macs))
    return LayerSkipResult(
        config=cfg,
        dataset={
            "name": data.name,
            "input_shape": list(data.input_shape),
            "classes": data.num_classes,
            "train": len(data.train_y),
            "val": len(data.val_y),
            "test": len(data.test_y),
        },
        cnn1_acc=cnn1_acc,
        cnn1_params=count_params(run.spec),
        cnn1_macs=count_macs(run.spec),
        exit_acc=exit_acc,
        depth_macs=list(depth_macs(run.spec)),
        variants=variants,
        curves=run.curves,
        seconds=time.perf_counter() - start,
    )


# --- report -------------------------------------------------------------------------------------


def _k(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _convs(depth: int) -> str:
    return "conv1" if depth == 1 else f"conv1-{depth}"


def _networks_table(result: LayerSkipResult) -> list[str]:
    """CNN1 and the exit classifiers: test accuracy, size and MACs."""
    lines = [
        *markdown_head(["network", "test accuracy", "params", "MACs/image"], numbers=True),
        f"| CNN1 (all {result.config.stages} layers) | {result.cnn1_acc:.4f} | "
        f"{result.cnn1_params:,} | {result.cnn1_macs:,} |",
    ]
    for k, a in enumerate(result.exit_acc[:-1]):
        lines.append(
            f"| exit classifier after conv{k + 1} (frozen CNN1) | {a:.4f} | | "
            f"{result.depth_macs[k]:,} |"
        )
    return lines


def _labels_table(result: LayerSkipResult) -> list[str]:
    """Training images per label and unlabelled, one row per labelling rule."""
    L = result.config.stages
    headers = [
        "labelling",
        *(f"label {d} ({_convs(d + 1)})" for d in range(L)),
        "unlabelled (router decides)",
    ]
    rows = [markdown_row([v.name, *v.train_labels]) for v in result.variants]
    return [*markdown_head(headers, numbers=True), *rows]


def _routed_table(result: LayerSkipResult) -> list[str]:
    """Per labelling rule: router and CNN3 accuracy, routed depths, executed MACs."""
    headers = [
        "labels", "router acc", "CNN3 acc, routed", "CNN3 acc, full depth", "CNN1 acc",
        *(f"depth {d + 1}" for d in range(result.config.stages)),
        "executed MACs/image", "+ router", "vs CNN1",
    ]  # fmt: skip
    rows = [
        markdown_row(
            [
                v.name,
                f"{v.router_acc:.4f} ({v.router_test_images} img)",
                f"{v.cnn3_acc:.4f}",
                f"{v.cnn3_full_depth_acc:.4f}",
                f"{result.cnn1_acc:.4f}",
                *(f"{s:.1%}" for s in v.depth_share),
                _k(v.executed_macs),
                _k(v.total_macs),
                f"{v.total_macs / result.cnn1_macs:.1%}",
            ]
        )
        for v in result.variants
    ]
    return [*markdown_head(headers, numbers=True), *rows]


def report_markdown(result: LayerSkipResult, *, command: str | None = None) -> str:
    """The report as Markdown: settings, CNN1, labels, routed skipping, how to read it."""
    cfg, ds = result.config, result.dataset
    L = cfg.stages
    lines = [
        f"# Layer skipping (seed 001) on {ds['name']}",
        "",
        f"{ds['train']} training, {ds['val']} validation, {ds['test']} test images "
        f"({'x'.join(map(str, ds['input_shape']))}, {ds['classes']} classes). "
        f"CNN1/CNN3: {L} conv layers of {cfg.filters} maps ({cfg.kernel}x{cfg.kernel}, 'same', "
        f"no pooling) and one dense layer; RMSprop (lr {cfg.lr:g}), sparse cross-entropy, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}; routers {cfg.router_passes} epochs. "
        f"Labelling: first {cfg.maps} maps per layer, top {cfg.top} images per map. "
        f"Seed {cfg.seed}; {result.seconds:.0f} s in all.",
    ]
    if command:
        lines += ["", "```", command, "```"]
    lines += ["", "## Networks", "", *_networks_table(result)]
    lines += ["", "## Labels (training images)", "", *_labels_table(result)]
    lines += ["", "## Routed skipping (test set)", "", *_routed_table(result)]
    lines += [
        "",
        "![accuracy against executed MACs, depths, training curves](layer-skip.png)",
        "",
        "How to read it: *router acc* is CNN2's accuracy on the test images that the same rule "
        "labels (the activation rule labels at most maps x top images per layer; the exit rule "
        "labels every image). *CNN3 acc, routed* runs each test image to the depth its router "
        "predicts; *full depth* runs CNN3 with no skipping, to separate what routing costs from "
        "what CNN3 learned. *Executed MACs/image* averages the convolutions and the dense layer "
        "CNN3 actually ran over the test set; *+ router* adds the router's own MACs, the honest "
        "price of skipping; *vs CNN1* is that total over CNN1's MACs.",
    ]
    return "\n".join(lines) + "\n"


def report_figure(result: LayerSkipResult, path: Path) -> None:
    """Accuracy against MACs, the routed depths and the training curves, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = result.config.stages
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.scatter([result.cnn1_macs], [result.cnn1_acc], marker="s", s=60, label="CNN1", c="k")
    colours = {"activation": "tab:blue", "exit": "tab:orange"}
    for v in result.variants:
        c = colours.get(v.name)
        ax.scatter([v.executed_macs], [v.cnn3_acc], s=60, c=c, label=f"CNN3 {v.name} (routed)")
        ax.scatter([v.total_macs], [v.cnn3_acc], s=60, facecolors="none", edgecolors=c,
                   label="  + router MACs")  # fmt: skip
    ax.set_xlabel("MACs per test image (average, executed)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs executed MACs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    names = [v.name for v in result.variants]
    bottom = [0.0] * len(names)
    for d in range(L):
        share = [v.depth_share[d] for v in result.variants]
        ax.bar(names, share, bottom=bottom, label=f"depth {d + 1}")
        bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    ax.set_ylabel("share of test images")
    ax.set_title("routed depth (router's prediction)")
    ax.legend(fontsize=8)

    ax = axes[2]
    for name, crv in result.curves.items():
        if "val_acc" in crv:
            ax.plot(range(1, len(crv["val_acc"]) + 1), crv["val_acc"], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("CNN1 and CNN3 (routed) while training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: LayerSkipResult, out: Path, *, command: str | None = None) -> list[Path]:
    """Writes report.md, layer-skip.png and results.json into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, png, js = out / "report.md", out / "layer-skip.png", out / "results.json"
    md.write_text(report_markdown(result, command=command))
    report_figure(result, png)
    js.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return [md, png, js]


# --- MLflow -------------------------------------------------------------------------------------


class LayerSkipTracker:
    """One parent run per experiment run, one child run per network, in ``cnnas-layer-skip``."""

    def __init__(self, mlflow_cfg: MlflowConfig, project_dir: Path) -> None:
        cfg = dataclasses.replace(mlflow_cfg, experiment=LAYER_SKIP_EXPERIMENT)
        self.tracker = Tracker(cfg, project_dir)
        self.client = self.tracker.client
        self.uri = self.tracker.uri
        self.parent: str | None = None

    def start(self, cfg: LayerSkipConfig, preset: str) -> str:
        run = self.client.create_run(
            self.tracker.experiment_id,
            run_name=f"layer-skip-{cfg.dataset}-{preset}",
            tags={
                "cnnas.role": "experiment",
                "cnnas.experiment": "layer-skip",
                "cnnas.seed": "001",
            },
        )
        self.parent = run.info.run_id
        params = [Param(k, str(v)) for k, v in {"preset": preset, **cfg.to_dict()}.items()]
        self.client.log_batch(self.parent, params=params)
        return self.parent

    def child(self, rec: NetRecord) -> None:
        assert self.parent is not None, "start() first"
        run = self.client.create_run(
            self.tracker.experiment_id,
            run_name=rec.name,
            tags={"mlflow.parentRunId": self.parent, "cnnas.role": "network"},
        )
        rid = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(v), now, step)
            for name, values in rec.curves.items()
            for step, v in enumerate(values)
        ]
        metrics += [Metric(k, float(v), now, 0) for k, v in rec.metrics.items()]
        params = [Param(k, str(v)[:500]) for k, v in rec.params.items()]
        for i in range(0, max(len(metrics), 1), 900):
            self.client.log_batch(
                rid, metrics=metrics[i : i + 900], params=params if i == 0 else []
            )
        if rec.model is not None:
            self.tracker.log_model(
                rid, rec.model, {"experiment": "layer-skip", "network": rec.name}
            )
        self.client.set_terminated(rid, status="FINISHED")

    def finish(self, result: LayerSkipResult, files: list[Path]) -> None:
        assert self.parent is not None, "start() first"
        self.tracker.log_metrics(self.parent, result.summary())
        for f in files:
            self.client.log_artifact(self.parent, str(f))
        self.client.set_terminated(self.parent, status="FINISHED")

    def fail(self, reason: str) -> None:
        if self.parent is not None:
            self.client.set_tag(self.parent, "cnnas.failure", reason[:5000])
            self.client.set_terminated(self.parent, status="FAILED")
