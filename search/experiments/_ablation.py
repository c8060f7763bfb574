"""Seed 003's manual architecture search: a one-factor-at-a-time ablation and a VGG baseline.

Every model is ``N conv layers -> global average pooling -> M dense layers -> softmax`` (seed
003's "Base model"), trained with the same split, epochs, Adam and learning-rate decay on a
plateau of validation accuracy. From one base (the seed's initial model: one conv layer of 64
filters, kernel 5, one dense layer of 1024 units) each variant changes exactly one factor group:
conv layers, dense layers, filters, kernel, or the regularisation combination (MaxPool after each
conv layer, BatchNorm after each conv, Dropout 0.2 on the dense layers -- "0.2 Dropout on FC").

The seed's "Ratio" column is train accuracy / (10 x parameters): its Model 0 has train accuracy
0.613503 and 79,624 parameters, and 0.613503 / 796,240 = 7.705007e-07, the value it prints.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import matplotlib.pyplot as plt
import torch

from cnnas.models import ArchSpec, ConvBlock, DenseLayer
from cnnas.objectives import ImageData, Predictor, TrainConfig

from .._space import max_pools
from ._common import (
    Column,
    ExperimentLog,
    ModelQueue,
    ModelRun,
    plot_curves,
    publish_report,
    scored_test_set,
    start_log,
    write_table,
)

__all__ = [
    "FACTORS",
    "REGULARISATIONS",
    "VGG_CONFIGS",
    "AblationBase",
    "AblationResult",
    "AblationSettings",
    "Variant",
    "ablation_grid",
    "ablation_spec",
    "run_ablation",
    "seed_ratio",
    "vgg_spec",
]

# The seed's regularisation rows, in its order.
REGULARISATIONS: tuple[tuple[str, ...], ...] = (
    ("maxpool",),
    ("dropout",),
    ("batchnorm",),
    ("maxpool", "dropout"),
    ("maxpool", "batchnorm"),
    ("maxpool", "batchnorm", "dropout"),
)
# Factor groups and the seed's values for each.
FACTORS: dict[str, tuple[Any, ...]] = {
    "conv_layers": (1, 2, 4, 8),
    "dense_layers": (1, 2, 4),
    "filters": (32, 64, 128, 256),
    "kernel": (3, 5, 7, 9),
    "regularisation": ((), *REGULARISATIONS),
}
# Convolutions per stage of VGG11/16/19 (Simonyan & Zisserman 2014, configurations A, D, E);
# the five stages have 64, 128, 256, 512, 512 filters and a 2x2 max pool after each.
VGG_CONFIGS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_VGG_FILTERS = (64, 128, 256, 512, 512)
DROPOUT = 0.2


def seed_ratio(train_acc: float, params: int) -> float:
    """Seed 003's "Ratio": train accuracy / (10 x parameters)."""
    return train_acc / (10 * params)


@dataclass(frozen=True)
class AblationBase:
    """The architecture every variant starts from (defaults: seed 003's initial model)."""

    # Conv layers, each followed by ReLU (and MaxPool / BatchNorm when regularised).
    conv_layers: int = 1
    # Dense layers of ``dense_width`` units between the GAP and the softmax.
    dense_layers: int = 1
    # Filters of every conv layer.
    filters: int = 64
    # Square kernel of every conv layer.
    kernel: int = 5
    # Units of every dense layer.
    dense_width: int = 1024
    # Regularisation applied: a subset of {"maxpool", "batchnorm", "dropout"}.
    regularisation: tuple[str, ...] = ()

    def get(self, factor: str) -> Any:
        return getattr(self, factor)


@dataclass(frozen=True)
class Variant:
    """One model of the ablation: the base with ``factor`` set to ``value``."""

    name: str
    # The factor group changed, or "base".
    factor: str
    value: Any
    settings: AblationBase


def _value_text(factor: str, value: Any) -> str:
    if factor == "regularisation":
        return "+".join(value) if value else "none"
    return str(value)


def ablation_grid(
    base: AblationBase, factors: Mapping[str, Sequence[Any]] | None = None
) -> list[Variant]:
    """The base first, then every value of every factor that differs from the base's.

    Each variant differs from the base in exactly one factor group, so the table reads as a
    one-factor-at-a-time ablation; a value equal to the base's is the base itself and is not
    trained twice.
    """
    factors = FACTORS if factors is None else factors
    unknown = sorted(set(factors) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown factor(s) {unknown}; known: {sorted(FACTORS)}")
    out = [Variant("base", "base", None, base)]
    for factor, values in factors.items():
        for value in values:
            if factor == "regularisation":
                value = tuple(sorted(value))
            if value == base.get(factor):
                continue
            settings = dataclasses.replace(base, **{factor: value})
            out.append(Variant(f"{factor}={_value_text(factor, value)}", factor, value, settings))
    return out


def ablation_spec(
    settings: AblationBase, input_shape: tuple[int, int, int], num_classes: int
) -> ArchSpec:
    """``settings`` as an ArchSpec: conv layers -> GAP -> dense layers -> classifier.

    MaxPool follows each conv layer while the map is large enough (``search.max_pools``), so
    eight pooled layers on a 28x28 image pool three times instead of collapsing the map.
    """
    reg = set(settings.regularisation)
    unknown = sorted(reg - {"maxpool", "batchnorm", "dropout"})
    if unknown:
        raise ValueError(f"unknown regularisation(s) {unknown}; known: batchnorm, dropout, maxpool")
    pools = max_pools(input_shape[1], input_shape[2]) if "maxpool" in reg else 0
    blocks = tuple(
        ConvBlock(
            settings.filters,
            settings.kernel,
            batch_norm="batchnorm" in reg,
            pool="max" if i < pools else "none",
        )
        for i in range(settings.conv_layers)
    )
    dropout = DROPOUT if "dropout" in reg else 0.0
    dense = tuple(
        DenseLayer(settings.dense_width, dropout=dropout) for _ in range(settings.dense_layers)
    )
    return ArchSpec(input_shape, num_classes, blocks, "gap", dense)


def vgg_spec(
    depth: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: float = 1.0,
    dense_width: int = 4096,
) -> ArchSpec:
    """VGG11/16/19 adapted to the input: 3x3 conv stages, max pool after a stage only while the
    map allows one (``search.max_pools``), flatten, two dense layers with dropout 0.5.

    ``width`` scales every stage's filters (at least 1), for a CPU-sized baseline.
    """
    if depth not in VGG_CONFIGS:
        raise ValueError(f"unknown VGG depth {depth}; known: {sorted(VGG_CONFIGS)}")
    pools = max_pools(input_shape[1], input_shape[2])
    blocks = tuple(
        ConvBlock(max(1, round(f * width)), 3, convs=n, pool="max" if i < pools else "none")
        for i, (n, f) in enumerate(zip(VGG_CONFIGS[depth], _VGG_FILTERS, strict=True))
    )
    dense = (DenseLayer(dense_width, dropout=0.5), DenseLayer(dense_width, dropout=0.5))
    return ArchSpec(input_shape, num_classes, blocks, "flatten", dense)


def describe(settings: AblationBase) -> str:
    """The seed's model names: ``4 Conv 256 filters 5 kernel size 2 dense 1024 neurons ...``."""
    text = (
        f"{settings.conv_layers} Conv {settings.filters} filters {settings.kernel} kernel size "
        f"{settings.dense_layers} dense {settings.dense_width} neurons"
    )
    names = {
        "maxpool": "MaxPooling",
        "batchnorm": "BatchNorm",
        "dropout": f"{DROPOUT} Dropout on FC",
    }
    if settings.regularisation:
        text += " with " + ", ".join(names[r] for r in sorted(settings.regularisation))
    return text


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationSettings:
    """Everything one ``cnnas experiment ablation`` invocation does."""

    base: AblationBase = field(default_factory=AblationBase)
    factors: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: dict(FACTORS))
    # VGG depths trained as the literature baseline; empty: none.
    vgg: tuple[int, ...] = (11, 16, 19)
    vgg_width: float = 1.0
    vgg_dense: int = 4096
    train: TrainConfig = field(default_factory=TrainConfig)
    # Test images scored per epoch (None: all).
    test_limit: int | None = None
    # Accuracy tolerance of the "competitive with VGG" criterion.
    tolerance: float = 0.01


@dataclass(frozen=True)
class AblationResult:
    runs: tuple[ModelRun, ...]
    rows: tuple[dict[str, Any], ...]
    best: str
    verdicts: tuple[str, ...]
    report: Path


COLUMNS = (
    Column("id", "Model"),
    Column("description", "Description"),
    Column("factor", "Factor"),
    Column("train_acc", "Train Accuracy", "{:.4f}"),
    Column("test_acc", "Test Accuracy", "{:.4f}"),
    Column("train_loss", "Train Loss", "{:.4f}"),
    Column("test_loss", "Test Loss", "{:.4f}"),
    Column("val_acc", "Val Accuracy", "{:.4f}"),
    Column("params", "Num. Params", "{:,}"),
    Column("macs", "MACs", "{:,}"),
    Column("ratio", "Ratio", "{:.3e}"),
    Column("seconds", "Seconds", "{:.1f}"),
)
RATIO_FOOTER = (
    "Ratio = train accuracy / (10 x parameters), seed 003's formula (its Model 0: "
    "0.613503 / (10 x 79,624) = 7.705e-07). Train accuracy and loss are the running means over "
    "the last training epoch (dropout on, as Keras reports them); test values are the model after "
    "the last epoch on the test split; validation accuracy drives the learning-rate decay and "
    "picks the best model. Parameters are trainable ones (BatchNorm running statistics excluded)."
)


def _row(index: int, run: ModelRun) -> dict[str, Any]:
    r = run.result
    return {
        "id": f"Model {index}",
        "name": run.name,
        "description": run.labels.get("description", run.spec.summary()),
        "factor": run.labels.get("factor", ""),
        "value": run.labels.get("value", ""),
        "train_acc": r.train_acc,
        "test_acc": run.test_acc,
        "train_loss": r.train_loss,
        "test_loss": run.test_loss,
        "val_acc": r.val_acc,
        "params": r.params,
        "macs": r.macs,
        "ratio": seed_ratio(r.train_acc, r.params),
        "seconds": r.seconds,
        "architecture": run.spec.summary(),
    }


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    m = matrix.numpy()
    ax.imshow(m, cmap="Blues")
    for i in range(n):
        for j in range(n):
            color = "white" if m[i, j] > m.max() / 2 else "black"
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_misclassified(
    model: torch.nn.Module, data: ImageData, path: Path, *, limit: int | None, count: int = 24
) -> tuple[Path, int]:
    """A gallery of the first ``count`` misclassified test images: true -> predicted."""
    x, y = scored_test_set(data, limit)
    c = x.shape[1]
    pred = Predictor(model, data.mean, data.std, data.classes).predict(x).indices
    wrong = (pred != y).nonzero().flatten()[:count]
    cols = 8
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist(), strict=False):
        img = x[i].permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if c == 1 else img, cmap="gray" if c == 1 else None)
        ax.set_title(
            f"{data.classes[int(y[i])][:10]}\n-> {data.classes[int(pred[i])][:10]}", fontsize=6
        )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path, int((pred != y).sum())


def _verdicts(rows: Sequence[dict[str, Any]], tolerance: float) -> list[str]:
    """The seed's conclusions, each checked against this run's numbers with a stated criterion."""
    out = []
    custom = [r for r in rows if r["factor"] != "literature"]
    vgg = [r for r in rows if r["factor"] == "literature"]
    if vgg and custom:
        best_c = max(custom, key=lambda r: r["val_acc"])
        best_v = max(vgg, key=lambda r: r["val_acc"])
        held = best_c["test_acc"] >= best_v["test_acc"] - tolerance
        out.append(
            f'**Compact custom model vs VGG** (seed: "our custom model achieves competitive '
            f'results in comparison with the well-known VGG19"; criterion: the custom model with '
            f"the best validation accuracy is within {tolerance:.1%} test accuracy of the best "
            f"VGG): {'HELD' if held else 'NOT HELD'}. {best_c['name']}: test "
            f"{best_c['test_acc']:.4f} with {best_c['params']:,} parameters; {best_v['name']}: "
            f"test {best_v['test_acc']:.4f} with {best_v['params']:,} parameters "
            f"(Ratio {best_c['ratio']:.3e} vs {best_v['ratio']:.3e})."
        )
    base = next((r for r in rows if r["factor"] == "base"), None)
    regs = [r for r in rows if r["factor"] == "regularisation"]
    if base and regs:
        best_r = max(regs, key=lambda r: r["test_acc"])
        held = "batchnorm" in str(best_r["value"]) and best_r["test_acc"] > base["test_acc"]
        out.append(
            f"**BatchNorm (with MaxPool/Dropout) gives the best regularised model** (seed: "
            f"MaxPooling + BatchNorm + Dropout 0.889715 and MaxPooling + BatchNorm 0.887237 "
            f"top its table; criterion: the regularisation variant with the highest test "
            f"accuracy uses BatchNorm and beats the unregularised base): "
            f"{'HELD' if held else 'NOT HELD'}. Best: {best_r['name']} test "
            f"{best_r['test_acc']:.4f}; base {base['test_acc']:.4f}."
        )
    conv = [r for r in rows if r["factor"] in ("conv_layers", "base")]
    if base and len(conv) > 1:
        best = max(conv, key=lambda r: r["test_acc"])
        held = best["name"] != "base" and "conv_layers" in best["name"]
        out.append(
            f"**More conv layers help, up to a point** (seed: 1 -> 4 layers raise test accuracy "
            f"0.656 -> 0.850, 8 layers 0.843; criterion: some deeper variant beats the base on "
            f"test accuracy): {'HELD' if held else 'NOT HELD'}. Best depth: {best['name']} "
            f"test {best['test_acc']:.4f}."
        )
    return out


def _group_best(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    base = next(r for r in rows if r["factor"] == "base")
    groups = dict.fromkeys(r["factor"] for r in rows if r["factor"] not in ("base",))
    for g in groups:
        members = (
            [base] + [r for r in rows if r["factor"] == g]
            if g != "literature"
            else [r for r in rows if r["factor"] == g]
        )
        best = max(members, key=lambda r: r["test_acc"])
        top_ratio = max(members, key=lambda r: r["ratio"])
        lines.append(
            f"| {g} | {best['name']} ({best['test_acc']:.4f}) | {top_ratio['name']} "
            f"({top_ratio['ratio']:.3e}) |"
        )
    return ["| factor group | best test accuracy | best Ratio |", "|---|---|---|", *lines]


# One model to train: its name, spec and the labels its child run carries.
_Job = tuple[str, ArchSpec, dict[str, Any]]


def run_ablation(
    data: ImageData,
    settings: AblationSettings,
    out_dir: Path,
    log: ExperimentLog | None,
    *,
    command: str = "",
    out: TextIO = sys.stdout,
) -> AblationResult:
    """Trains the grid and the VGG baselines; writes table, plots and report into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(data, settings)
    start_log(log, "ablation", data, _log_config(data, settings))
    queue = ModelQueue(len(jobs), settings.train, log, test_limit=settings.test_limit, out=out)
    runs = [
        queue.train(name, spec, data, labels=labels, sizes=True, metrics=_ratio_metric)
        for name, spec, labels in jobs
    ]
    rows = [_row(i, run) for i, run in enumerate(runs)]
    table_md = _write_summary(runs, rows, data, out_dir)
    best = _inspect_best(runs, data, settings.test_limit, out_dir)
    verdicts = _verdicts(rows, settings.tolerance)
    report = publish_report(
        out_dir,
        _report(data, settings, rows, table_md, best, verdicts, command),
        verdicts,
        log,
        {"models": len(runs), "best_val_acc": best.val_acc, "best_test_acc": best.test_acc},
        out,
    )
    return AblationResult(tuple(runs), tuple(rows), best.name, tuple(verdicts), report)


def _jobs(data: ImageData, settings: AblationSettings) -> list[_Job]:
    """``(name, spec, labels)`` of every model in training order: the grid, then the VGGs."""
    shape, n_cls = data.input_shape, data.num_classes
    jobs: list[_Job] = []
    for v in ablation_grid(settings.base, settings.factors):
        labels = {
            "factor": v.factor,
            "value": _value_text(v.factor, v.value) if v.factor != "base" else "",
            "description": describe(v.settings),
        }
        jobs.append((v.name, ablation_spec(v.settings, shape, n_cls), labels))
    w = "" if settings.vgg_width == 1 else f" (width x{settings.vgg_width:g})"
    for depth in settings.vgg:
        spec = vgg_spec(
            depth, shape, n_cls, width=settings.vgg_width, dense_width=settings.vgg_dense
        )
        labels = {"factor": "literature", "value": f"VGG{depth}", "description": f"VGG{depth}{w}"}
        jobs.append((f"VGG{depth}", spec, labels))
    return jobs


def _log_config(data: ImageData, settings: AblationSettings) -> dict[str, Any]:
    """The parent run's parameters besides the dataset's."""
    return {
        "test_images": settings.test_limit or len(data.test_y),
        "base": dataclasses.asdict(settings.base),
        "factors": {k: [str(v) for v in vs] for k, vs in settings.factors.items()},
        "vgg": list(settings.vgg),
        "train": dataclasses.asdict(settings.train),
    }


def _ratio_metric(run: ModelRun) -> dict[str, float]:
    """The seed's Ratio, logged with each child run."""
    return {"seed_ratio": seed_ratio(run.result.train_acc, run.result.params)}


def _write_summary(
    runs: Sequence[ModelRun], rows: Sequence[dict[str, Any]], data: ImageData, out_dir: Path
) -> str:
    """Writes the summary table, the per-epoch curves and accuracy against size; returns the
    table as Markdown."""
    _, _, table_md = write_table(rows, COLUMNS, out_dir, "summary", footer=RATIO_FOOTER)
    plot_curves(
        runs,
        (
            ("train_loss", "Train Loss"),
            ("train_acc", "Train Accuracy"),
            ("test_loss", "Test Loss"),
            ("test_acc", "Test Accuracy"),
        ),
        out_dir / "summary.png",
        title=f"Seed 003 ablation on {data.name}",
    )
    _plot_acc_params(rows, out_dir / "accuracy_vs_params.png")
    return table_md


@dataclass(frozen=True)
class _Best:
    """The model with the best validation accuracy, looked at closely on the test images."""

    name: str
    val_acc: float
    # Accuracy on the scored test images, how many of them it got wrong, how many were scored.
    test_acc: float
    wrong: int
    tested: int


def _inspect_best(
    runs: Sequence[ModelRun], data: ImageData, limit: int | None, out_dir: Path
) -> _Best:
    """Draws the confusion matrix and the misclassified gallery of the best model."""
    # Chosen on validation accuracy: choosing on test would overstate it.
    best = max(runs, key=lambda r: r.result.val_acc)
    model = best.result.model
    assert model is not None
    tx, ty = scored_test_set(data, limit)
    acc, matrix = Predictor(model, data.mean, data.std).confusion_matrix(tx, ty)
    plot_confusion(
        matrix, data.classes, out_dir / "confusion_matrix.png", f"{best.name}: test acc {acc:.4f}"
    )
    _, wrong = plot_misclassified(model, data, out_dir / "misclassified.png", limit=limit)
    return _Best(best.name, best.result.val_acc, acc, wrong, len(ty))


def _plot_acc_params(rows: Sequence[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in rows:
        marker = "s" if r["factor"] == "literature" else ("*" if r["factor"] == "base" else "o")
        ax.scatter(r["params"], r["test_acc"], marker=marker, s=40)
        ax.annotate(
            r["name"],
            (r["params"], r["test_acc"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy against size (seed 003's trade-off)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _report(
    data: ImageData,
    settings: AblationSettings,
    rows: Sequence[dict[str, Any]],
    table_md: str,
    best: _Best,
    verdicts: Sequence[str],
    command: str,
) -> str:
    t, n_test = settings.train, best.tested
    lines = [
        "# Seed 003 ablation: manual architecture search",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Dataset `{data.name}`: {len(data.train_y):,} training, {len(data.val_y):,} validation "
        f"images; {n_test:,} test images scored. Every model: {t.epochs} epochs, batch "
        f"{t.batch_size}, Adam lr {t.lr:g}, learning rate x{t.lr_factor:g} after {t.lr_patience} "
        f"epoch(s) without a better validation accuracy, seed {t.seed}.",
        "",
        f"Base: {describe(settings.base)}, global average pooling, softmax. Each variant changes "
        "one factor group of the base (one factor at a time); VGG rows are the literature "
        "baseline (3x3 stages, max pooling only while the map allows it, flatten, two dense "
        "layers with dropout 0.5).",
        "",
        "## Summary",
        "",
        table_md,
        "## Best per factor group",
        "",
        *_group_best(rows),
        "",
        "## Does the seed's claim hold here?",
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "## Plots",
        "",
        "- `summary.png`: train/test loss and accuracy per epoch, one line per model (the seed's "
        '"Summary" figures).',
        "- `accuracy_vs_params.png`: test accuracy against parameters.",
        f"- `confusion_matrix.png`, `misclassified.png`: the best model by validation accuracy, "
        f"{best.name} (test accuracy {best.test_acc:.4f}, {best.wrong} of {n_test} test images "
        "wrong; the gallery shows the first 24 as true -> predicted).",
        "",
        "![summary](summary.png)",
        "",
        "![accuracy vs params](accuracy_vs_params.png)",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![misclassified](misclassified.png)",
        "",
        "## Differences from the seed",
        "",
        "- The seed ran its factor groups in a chain (conv layers from the initial model, the "
        "others from 4 conv / 2 dense / 256 filters); here every variant starts from the same base "
        "so each row changes one thing. Pass `--base-conv-layers 4 --base-dense-layers 2 "
        "--base-filters 256` to start from the seed's later base.",
        "- BatchNorm follows each conv layer only (the seed's parameter counts show BatchNorm on "
        "its dense layers too; cnnas specs have none there), and a conv layer with BatchNorm has "
        "no bias.",
        "- MaxPool (2x2) follows each conv layer while the map stays at least 4 pixels wide.",
    ]
    return "\n".join(lines) + "\n"
