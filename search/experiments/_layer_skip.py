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
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param
from torch import nn

from models import SkipCNN, build, count_macs, count_params, depth_macs, executed_macs
from models import router_spec as make_router_spec
from models import skip_spec as make_skip_spec
from objectives import ImageData
from objectives._skip_train import (
    activation_scores,
    earliest_correct,
    predict_in_batches,
    strongest_activation_labels,
    train_rmsprop,
)

from .._config import MlflowConfig
from .._tracking import Tracker

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
    return float((pred == y.cpu()).float().mean()) if len(y) else float("nan")


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
    dev = torch.device(device)
    tr_x, tr_y = data.train_x.to(dev), data.train_y.to(dev)
    va_x, va_y = data.val_x.to(dev), data.val_y.to(dev)
    te_x, te_y = data.test_x.to(dev), data.test_y.to(dev)
    mean, std = data.mean, data.std
    L = cfg.stages
    common = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
    curves: dict[str, dict[str, list[float]]] = {}

    def record(name: str, params: dict, metrics: dict, crv: dict, model: nn.Module | None) -> None:
        curves[name] = crv
        if on_net is not None:
            on_net(NetRecord(name, params, metrics, crv, model))

    def skip_pred(net: SkipCNN, x: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        def fwd(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return net(xb, None if depth is None else depth[idx])

        return predict_in_batches(net, fwd, x, mean, std, batch_size=1024)

    def plain_pred(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return predict_in_batches(net, lambda xb, idx: net(xb), x, mean, std)

    # --- CNN1 ---------------------------------------------------------------------------------
    spec = make_skip_spec(
        data.input_shape, data.num_classes, filters=cfg.filters, kernel=cfg.kernel, stages=L
    )
    torch.manual_seed(cfg.seed)
    cnn1 = SkipCNN(spec).to(dev)
    log(f"CNN1 {spec.summary()}: {count_params(spec):,} params, {count_macs(spec):,} MACs/image")

    def val_of(net: SkipCNN, depth: Callable[[], torch.Tensor | None]) -> Callable:
        def on_epoch(epoch: int, m: dict[str, float]) -> dict[str, float]:
            val = _acc(skip_pred(net, va_x, depth()), va_y)
            log(
                f"  epoch {epoch + 1}: train_loss {m['train_loss']:.4f} "
                f"train_acc {m['train_acc']:.4f} val_acc {val:.4f} ({m['epoch_seconds']:.1f}s)"
            )
            return {"val_acc": val}

        return on_epoch

    c1 = train_rmsprop(
        cnn1, lambda xb, idx: cnn1(xb), tr_x, tr_y, mean, std, seed=cfg.seed,
        on_epoch=val_of(cnn1, lambda: None), **common,
    )  # fmt: skip
    cnn1_acc = _acc(skip_pred(cnn1, te_x, None), te_y)
    log(f"CNN1 test accuracy {cnn1_acc:.4f}")
    record(
        "cnn1",
        {"role": "CNN1", "arch": spec.summary(), **common},
        {"test_acc": cnn1_acc, "params": count_params(spec), "macs": count_macs(spec)},
        c1,
        cnn1,
    )
    macs_table = list(depth_macs(spec))

    # --- labels: the seed's activation rule ------------------------------------------------------
    def activation_labels(x: torch.Tensor) -> torch.Tensor:
        scores = activation_scores(cnn1.stage_outputs, cnn1, x, mean, std, maps=cfg.maps)
        return strongest_activation_labels(scores, top=min(cfg.top, len(x)))

    act_labels = {"train": activation_labels(tr_x), "test": activation_labels(te_x)}

    # --- labels: the earliest correct exit ---------------------------------------------------
    for p in cnn1.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed + 1)
    exits = _Exits(cnn1).to(dev)

    def exit_correct(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        exits.eval()
        cols = []
        with torch.no_grad():
            norm_m = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
            norm_s = torch.tensor(std, device=dev).view(1, -1, 1, 1)
            for i in range(0, len(x), 1024):
                logits = exits((x[i : i + 1024].float() - norm_m) / norm_s)
                yb = y[i : i + 1024]
                cols.append(torch.stack([lg.argmax(1) == yb for lg in logits], 1).cpu())
        return torch.cat(cols)

    def exit_forward(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # The last logits are CNN1's own (frozen) head: only the new exits train.
        return torch.cat(exits(xb)[:-1])

    ex_curves = train_rmsprop(
        exits, exit_forward, tr_x, tr_y, mean, std, seed=cfg.seed + 1, heads=L - 1, **common
    )
    te_correct = exit_correct(te_x, te_y)
    exit_acc = te_correct.float().mean(0).tolist()
    log("exit classifiers' test accuracy: " + ", ".join(f"{a:.4f}" for a in exit_acc))
    record(
        "exits",
        {"role": "exit classifiers on frozen CNN1", **common},
        {f"exit{k + 1}_test_acc": a for k, a in enumerate(exit_acc)},
        ex_curves,
        None,
    )
    exit_labels = {
        "train": earliest_correct(exit_correct(tr_x, tr_y)),
        "test": earliest_correct(te_correct),
    }
    for p in cnn1.parameters():
        p.requires_grad_(True)

    # --- per variant: router, then CNN3 ------------------------------------------------------
    rspec = make_router_spec(data.input_shape, L, filters=cfg.router_filters)
    router_macs = count_macs(rspec)
    variants = []
    for vi, (vname, labels) in enumerate((("activation", act_labels), ("exit", exit_labels))):
        train_lab = labels["train"]
        counts = [int((train_lab == k).sum()) for k in range(L)] + [int((train_lab < 0).sum())]
        log(f"[{vname}] training labels per depth 1..{L}: {counts[:L]}, unlabelled {counts[L]}")
        keep = (train_lab >= 0).nonzero().squeeze(1)
        torch.manual_seed(cfg.seed + 10 + vi)
        router = build(rspec).to(dev)
        rx, ry = tr_x[keep.to(dev)], train_lab[keep].to(dev)
        rc = train_rmsprop(
            router, lambda xb, idx, r=router: r(xb), rx, ry, mean, std,
            epochs=cfg.router_passes, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed + 10 + vi,
        )  # fmt: skip
        test_lab = labels["test"]
        has = (test_lab >= 0).nonzero().squeeze(1)
        test_routes = plain_pred(router, te_x)
        router_acc = _acc(test_routes[has], test_lab[has])
        log(f"[{vname}] router test accuracy {router_acc:.4f} on {len(has)} labelled test images")
        record(
            f"router-{vname}",
            {"role": "CNN2 (router)", "labels": vname, "arch": rspec.summary(),
             "epochs": cfg.router_passes, "batch_size": cfg.batch_size, "lr": cfg.lr},
            {"test_acc": router_acc, "test_images": len(has), "train_images": len(keep),
             "params": count_params(rspec), "macs": router_macs},
            rc,
            router,
        )  # fmt: skip

        # Depth per training image: its own label where the rule gave one, else the router's.
        train_routes = plain_pred(router, tr_x)
        train_depth = (torch.where(train_lab >= 0, train_lab, train_routes) + 1).to(dev)
        val_depth = (plain_pred(router, va_x) + 1).to(dev)
        test_depth = (test_routes + 1).to(dev)
        torch.manual_seed(cfg.seed + 20 + vi)
        cnn3 = SkipCNN(spec).to(dev)
        c3 = train_rmsprop(
            cnn3, lambda xb, idx, n=cnn3, d=train_depth: n(xb, d[idx]), tr_x, tr_y, mean, std,
            seed=cfg.seed + 20 + vi, on_epoch=val_of(cnn3, lambda d=val_depth: d), **common,
        )  # fmt: skip
        cnn3_acc = _acc(skip_pred(cnn3, te_x, test_depth), te_y)
        full_acc = _acc(skip_pred(cnn3, te_x, None), te_y)
        run_macs = executed_macs(spec, test_depth)
        share = [float((test_depth == d + 1).float().mean()) for d in range(L)]
        log(
            f"[{vname}] CNN3 test accuracy {cnn3_acc:.4f} routed, {full_acc:.4f} at full depth; "
            f"{run_macs:,.0f} MACs/image executed ({run_macs / count_macs(spec):.1%} of CNN1), "
            f"+ router {router_macs:,}"
        )
        v = VariantResult(
            name=vname,
            train_labels=counts,
            router_train_images=len(keep),
            router_acc=router_acc,
            router_test_images=len(has),
            router_macs=router_macs,
            depth_share=share,
            cnn3_acc=cnn3_acc,
            cnn3_full_depth_acc=full_acc,
            executed_macs=run_macs,
            total_macs=run_macs + router_macs,
        )
        variants.append(v)
        record(
            f"cnn3-{vname}",
            {"role": "CNN3", "labels": vname, "arch": spec.summary(), **common},
            {"test_acc": cnn3_acc, "full_depth_test_acc": full_acc, "executed_macs": run_macs,
             "total_macs": v.total_macs, "params": count_params(spec),
             **{f"depth{d + 1}_share": s for d, s in enumerate(share)}},
            c3,
            cnn3,
        )  # fmt: skip

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
        cnn1_params=count_params(spec),
        cnn1_macs=count_macs(spec),
        exit_acc=exit_acc,
        depth_macs=macs_table,
        variants=variants,
        curves=curves,
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
    lines += [
        "",
        "## Networks",
        "",
        "| network | test accuracy | params | MACs/image |",
        "|---|---:|---:|---:|",
        f"| CNN1 (all {L} layers) | {result.cnn1_acc:.4f} | {result.cnn1_params:,} | "
        f"{result.cnn1_macs:,} |",
    ]
    for k, a in enumerate(result.exit_acc[:-1]):
        lines.append(
            f"| exit classifier after conv{k + 1} (frozen CNN1) | {a:.4f} | | "
            f"{result.depth_macs[k]:,} |"
        )
    lines += [
        "",
        "## Labels (training images)",
        "",
        "| labelling | "
        + " | ".join(f"label {d} ({_convs(d + 1)})" for d in range(L))
        + " | unlabelled (router decides) |",
        "|---|" + "---:|" * (L + 1),
    ]
    for v in result.variants:
        lines.append(f"| {v.name} | " + " | ".join(str(c) for c in v.train_labels) + " |")
    lines += [
        "",
        "## Routed skipping (test set)",
        "",
        "| labels | router acc | CNN3 acc, routed | CNN3 acc, full depth | CNN1 acc | "
        + " | ".join(f"depth {d + 1}" for d in range(L))
        + " | executed MACs/image | + router | vs CNN1 |",
        "|---|" + "---:|" * (L + 7),
    ]
    for v in result.variants:
        lines.append(
            f"| {v.name} | {v.router_acc:.4f} ({v.router_test_images} img) | {v.cnn3_acc:.4f} | "
            f"{v.cnn3_full_depth_acc:.4f} | {result.cnn1_acc:.4f} | "
            + " | ".join(f"{s:.1%}" for s in v.depth_share)
            + f" | {_k(v.executed_macs)} | {_k(v.total_macs)} | "
            f"{v.total_macs / result.cnn1_macs:.1%} |"
        )
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
