"""Seed 000's redundancy experiment: multi-scale flatten, plain flatten, three heads.

Three variants of one base network (conv stages with max pooling -> aggregation -> one dense layer
-> softmax) differ only in the aggregation and the heads:

* ``multiscale``: the flatten concatenates the last map with its 2x2 and 4x4 max-pooled versions,
  one softmax (the seed's 'road sign' network; its green and blue curves);
* ``flatten``: the pooled sections removed (its red curve, claimed worst);
* ``three-heads``: the multiscale network with a softmax on each pooled section as well, the
  three losses summed (its black curve, claimed best).

Each is trained over several seeds on 1/4 of the training images and on all of them (the seed's
Figure 4: "increasing the training data four times effectively removes the redundancy effect"),
always scored on the same validation and test images. Two redundancy measures follow the seed's
definition ("a model architecture that needs longer representation can be viewed as redundant"):
the effective rank, the smallest dense width that keeps the accuracy, and the linear CKA between
the multi-scale sections (similar sections carry the same information twice).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import matplotlib.pyplot as plt
import torch

from cnnas.models import (
    ArchSpec,
    ConvBlock,
    DenseLayer,
    Layer,
    MultiScale,
    infer_shapes,
    multiscale_sections,
)
from cnnas.objectives import ImageData, TrainConfig, stratified_split

from .._space import max_pools
from ._common import (
    Column,
    ExperimentLog,
    ModelQueue,
    ModelRun,
    publish_report,
    start_log,
    write_table,
)

__all__ = [
    "VARIANTS",
    "HeadsResult",
    "HeadsSettings",
    "effective_rank",
    "head_spec",
    "linear_cka",
    "run_heads",
    "section_activations",
]

VARIANTS = ("multiscale", "flatten", "three-heads")


def head_spec(
    variant: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    filters: Sequence[int] = (32, 64),
    dense_width: int = 128,
) -> ArchSpec:
    """The base network as ``variant``: one 3x3 conv stage with 2x2 max pooling per entry of
    ``filters`` (pooling stops where the map would get too small), then the variant's
    aggregation, one dense layer of ``dense_width`` and the classifier."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    pools = max_pools(input_shape[1], input_shape[2])
    blocks = tuple(
        ConvBlock(f, 3, pool="max" if i < pools else "none") for i, f in enumerate(filters)
    )
    return ArchSpec(
        input_shape,
        num_classes,
        blocks,
        aggregation="flatten" if variant == "flatten" else "multiscale",
        dense=(DenseLayer(dense_width),),
        heads="multi" if variant == "three-heads" else "single",
    )


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same n examples.

    ``x`` is (n, p), ``y`` is (n, q). 1 for representations that are equal up to an orthogonal
    transform and an isotropic scaling, near 0 for unrelated ones (for large n).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need (n, p) and (n, q) matrices, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    # Both forms are the same number; the cheaper one has the smaller inner dimension.
    if n < max(p, q):
        k, m = x @ x.T, y @ y.T
        hsic_xy, hsic_xx, hsic_yy = (k * m).sum(), (k * k).sum(), (m * m).sum()
    else:
        hsic_xy = (y.T @ x).square().sum()
        hsic_xx, hsic_yy = (x.T @ x).square().sum(), (y.T @ y).square().sum()
    denom = torch.sqrt(hsic_xx * hsic_yy)
    if denom == 0:
        return float("nan")
    return float(hsic_xy / denom)


@torch.no_grad()
def section_activations(
    model: torch.nn.Module, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> list[torch.Tensor]:
    """The last feature map and its 2x2 and 4x4 max-pooled versions, flattened, for uint8 ``x``.

    Computed the same way for every variant (a flatten network's map is pooled here), so the
    similarity of its sections is measured like the multi-scale ones'.
    """
    model.eval()
    spec: ArchSpec = model.spec
    c = x.shape[1]
    m = torch.tensor(mean).view(1, c, 1, 1)
    s = torch.tensor(std).view(1, c, 1, 1)
    pool = MultiScale(multiscale_sections(_aggregate(spec).in_shape))
    parts = [pool(model.features((xb.float() - m) / s)) for xb in x.split(512)]
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def _aggregate(spec: ArchSpec) -> Layer:
    """The aggregation layer of ``spec``'s shape table."""
    return next(la for la in infer_shapes(spec) if la.kind == "aggregate")


def effective_rank(
    widths_acc: Sequence[tuple[int, float]], full_acc: float, tolerance: float
) -> int:
    """The smallest width whose accuracy is at least ``full_acc - tolerance``."""
    for width, acc in sorted(widths_acc):
        if acc >= full_acc - tolerance:
            return width
    return max(w for w, _ in widths_acc)


@dataclass(frozen=True)
class HeadsSettings:
    """Everything one ``cnnas experiment heads`` invocation does."""

    filters: tuple[int, ...] = (32, 64)
    dense_width: int = 128
    seeds: int = 5
    # Fractions of the training images; the seed's Figure 4 compares 1/4 with all.
    fractions: tuple[float, ...] = (0.25, 1.0)
    # Dense widths tried for the effective rank (the full width is added); empty: skip it.
    rank_widths: tuple[int, ...] = (8, 16, 32, 64)
    # Accuracy a narrower representation may lose and still count as enough.
    rank_tolerance: float = 0.01
    cka_images: int = 1000
    train: TrainConfig = field(default_factory=TrainConfig)
    test_limit: int | None = None


@dataclass(frozen=True)
class HeadsResult:
    runs: tuple[ModelRun, ...]
    rows: tuple[dict[str, Any], ...]
    redundancy: tuple[dict[str, Any], ...]
    verdicts: tuple[str, ...]
    report: Path


def _fraction_data(data: ImageData, fraction: float, seed: int) -> ImageData:
    """``data`` with a stratified ``fraction`` of its training images (the same for a seed)."""
    if fraction >= 1:
        return data
    _, part = stratified_split(data.train_y, fraction, seed)
    return dataclasses.replace(data, train_x=data.train_x[part], train_y=data.train_y[part])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


SUMMARY_COLUMNS = (
    Column("fraction", "Training data", "{:g}"),
    Column("train_images", "Images"),
    Column("variant", "Variant"),
    Column("seeds", "Seeds"),
    Column("val_acc_mean", "Val acc (mean)", "{:.4f}"),
    Column("val_acc_std", "Val acc (std)", "{:.4f}"),
    Column("val_auc", "Mean val acc over epochs", "{:.4f}"),
    Column("test_acc_mean", "Test acc (mean)", "{:.4f}"),
    Column("test_acc_std", "Test acc (std)", "{:.4f}"),
    Column("params", "Params", "{:,}"),
)
REDUNDANCY_COLUMNS = (
    Column("variant", "Variant"),
    Column("representation", "Aggregated length"),
    Column("widths", "Dense width: val acc"),
    Column("effective_rank", "Effective rank"),
    Column("cka_1_2", "CKA map/2x2", "{:.3f}"),
    Column("cka_1_4", "CKA map/4x4", "{:.3f}"),
    Column("cka_2_4", "CKA 2x2/4x4", "{:.3f}"),
)


def run_heads(
    data: ImageData,
    settings: HeadsSettings,
    out_dir: Path,
    log: ExperimentLog | None,
    *,
    command: str = "",
    out: TextIO = sys.stdout,
) -> HeadsResult:
    """Trains the three variants per fraction and seed, then the width sweep; writes the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start_log(
        log,
        "heads",
        data,
        {
            "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "train"},
            "train": dataclasses.asdict(settings.train),
        },
    )
    queue = ModelQueue(
        _model_count(settings), settings.train, log, test_limit=settings.test_limit, out=out
    )
    grid = _train_grid(data, settings, queue)
    rows = _summary_rows(grid, data, settings)
    _, _, summary_md = write_table(rows, SUMMARY_COLUMNS, out_dir, "summary")
    _plot_convergence(grid, settings.fractions, out_dir / "convergence.png", data.name)
    vx = data.val_x[: settings.cka_images]
    redundancy = _redundancy(grid, data, vx, settings, queue)
    _, _, redundancy_md = write_table(redundancy, REDUNDANCY_COLUMNS, out_dir, "redundancy")
    verdicts = _verdicts(rows, redundancy, settings)
    report = publish_report(
        out_dir,
        _report(data, settings, summary_md, redundancy_md, verdicts, command, len(vx)),
        verdicts,
        log,
        {"models": len(queue.runs)},
        out,
    )
    return HeadsResult(tuple(queue.runs), tuple(rows), tuple(redundancy), tuple(verdicts), report)


def _model_count(s: HeadsSettings) -> int:
    """Models one run trains: every variant per fraction and seed, then the narrower widths."""
    widths = [w for w in s.rank_widths if w != s.dense_width]
    return len(s.fractions) * len(VARIANTS) * s.seeds + len(VARIANTS) * len(widths)


def _spec(variant: str, data: ImageData, s: HeadsSettings, dense_width: int) -> ArchSpec:
    """``variant`` of the settings' base network for ``data``, with ``dense_width`` units."""
    return head_spec(
        variant, data.input_shape, data.num_classes, filters=s.filters, dense_width=dense_width
    )


def _train_grid(
    data: ImageData, s: HeadsSettings, queue: ModelQueue
) -> dict[tuple[float, str], list[ModelRun]]:
    """Trains every variant on every fraction of the training images, once per seed."""
    specs = {v: _spec(v, data, s, s.dense_width) for v in VARIANTS}
    grid: dict[tuple[float, str], list[ModelRun]] = {}
    for fraction in s.fractions:
        part = _fraction_data(data, fraction, s.train.seed)
        for variant in VARIANTS:
            for i in range(s.seeds):
                seed = s.train.seed + i
                labels = {"variant": variant, "fraction": fraction, "seed": seed}
                name = f"{variant} f={fraction:g} s={seed}"
                run = queue.train(name, specs[variant], part, seed=seed, labels=labels)
                grid.setdefault((fraction, variant), []).append(run)
    return grid


def _summary_rows(
    grid: dict[tuple[float, str], list[ModelRun]], data: ImageData, s: HeadsSettings
) -> list[dict[str, Any]]:
    """One row per fraction and variant: final and per-epoch accuracies, mean and spread."""
    rows = []
    for (fraction, variant), group in grid.items():
        n_ep = min(len(r.result.curves["val_acc"]) for r in group)
        mean_curve = [
            statistics.fmean(r.result.curves["val_acc"][e] for r in group) for e in range(n_ep)
        ]
        vm, vs = _mean_std([r.result.val_acc for r in group])
        tm, ts = _mean_std([r.test_acc for r in group])
        rows.append(
            {
                "fraction": fraction,
                "train_images": len(_fraction_data(data, fraction, s.train.seed).train_y),
                "variant": variant,
                "seeds": len(group),
                "val_acc_mean": vm,
                "val_acc_std": vs,
                "val_auc": statistics.fmean(mean_curve),
                "test_acc_mean": tm,
                "test_acc_std": ts,
                "params": group[0].result.params,
            }
        )
    return rows


def _redundancy(
    grid: dict[tuple[float, str], list[ModelRun]],
    data: ImageData,
    vx: torch.Tensor,
    s: HeadsSettings,
    queue: ModelQueue,
) -> list[dict[str, Any]]:
    """One row per variant, on all the data with the first seed: the width sweep's accuracies,
    the effective rank and the CKA between the sections on the images ``vx``."""
    full = max(s.fractions)
    part = _fraction_data(data, full, s.train.seed)
    rows = []
    for variant in VARIANTS:
        base_run = grid[(full, variant)][0]
        widths = _width_sweep(variant, base_run, part, full, s, queue)
        rank = (
            effective_rank(widths, base_run.result.val_acc, s.rank_tolerance)
            if len(widths) > 1
            else s.dense_width
        )
        assert base_run.result.model is not None
        rows.append(
            {
                "variant": variant,
                "representation": _aggregate(base_run.spec).out_shape[0],
                "widths": ", ".join(f"{w}: {a:.4f}" for w, a in sorted(widths)),
                "effective_rank": rank,
                **_section_cka(base_run.result.model, vx, data),
            }
        )
    return rows


def _width_sweep(
    variant: str,
    base_run: ModelRun,
    part: ImageData,
    fraction: float,
    s: HeadsSettings,
    queue: ModelQueue,
) -> list[tuple[int, float]]:
    """``(dense width, validation accuracy)``: the full width's from ``base_run``, then each
    narrower width's, trained with the first seed."""
    seed = s.train.seed
    widths = [(s.dense_width, base_run.result.val_acc)]
    for w in s.rank_widths:
        if w == s.dense_width:
            continue
        labels = {"variant": variant, "fraction": fraction, "seed": seed, "dense_width": w}
        spec = _spec(variant, part, s, w)
        run = queue.train(f"{variant} width={w}", spec, part, seed=seed, labels=labels)
        widths.append((w, run.result.val_acc))
    return widths


def _section_cka(model: torch.nn.Module, x: torch.Tensor, data: ImageData) -> dict[str, float]:
    """Linear CKA between each pair of sections on ``x``; NaN where the map has no such section."""
    sections = section_activations(model, x, data.mean, data.std)
    return {
        key: linear_cka(sections[a], sections[b]) if len(sections) > b else float("nan")
        for a, b, key in ((0, 1, "cka_1_2"), (0, 2, "cka_1_4"), (1, 2, "cka_2_4"))
    }


def _plot_convergence(
    grid: dict[tuple[float, str], list[ModelRun]],
    fractions: Sequence[float],
    path: Path,
    dataset: str,
) -> None:
    colors = {"multiscale": "tab:green", "flatten": "tab:red", "three-heads": "black"}
    fig, axes = plt.subplots(1, len(fractions), figsize=(5.2 * len(fractions), 3.6), squeeze=False)
    for ax, fraction in zip(axes.flat, fractions, strict=True):
        for variant in VARIANTS:
            group = grid[(fraction, variant)]
            n_ep = min(len(r.result.curves["val_acc"]) for r in group)
            curves = torch.tensor([r.result.curves["val_acc"][:n_ep] for r in group])
            mean = curves.mean(0)
            std = curves.std(0) if len(group) > 1 else torch.zeros_like(mean)
            ep = range(1, n_ep + 1)
            ax.plot(ep, mean, marker="o", markersize=3, color=colors[variant], label=variant)
            ax.fill_between(ep, mean - std, mean + std, color=colors[variant], alpha=0.15)
        ax.set_title(f"{fraction:g} of the training data")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Seed 000 on {dataset}: mean +- std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _verdicts(
    rows: Sequence[dict[str, Any]], redundancy: Sequence[dict[str, Any]], s: HeadsSettings
) -> list[str]:
    """HELD, NOT HELD, or INCONCLUSIVE where the differences are within the seed-to-seed spread
    (a ranking decided by noise supports no claim either way)."""
    by = {(r["fraction"], r["variant"]): r for r in rows}
    small, full = min(s.fractions), max(s.fractions)
    out = [_convergence_verdict(by, small, s)]
    if small < full:
        out.append(_more_data_verdict(by, small, full, s))
    out.append(_redundancy_verdict(redundancy, s))
    return out


# Summary rows by (fraction, variant).
_Rows = Mapping[tuple[float, str], Mapping[str, Any]]


def _spread(by: _Rows, fraction: float) -> float:
    """The largest seed-to-seed standard deviation of the final validation accuracy."""
    return max(by[(fraction, v)]["val_acc_std"] for v in VARIANTS)


def _gap(by: _Rows, fraction: float) -> float:
    """Best minus worst variant's final mean validation accuracy."""
    finals = [by[(fraction, v)]["val_acc_mean"] for v in VARIANTS]
    return max(finals) - min(finals)


def _convergence_verdict(by: _Rows, small: float, s: HeadsSettings) -> str:
    """Seed 000's Figure 1: three heads converge best, plain flatten worst."""
    auc = {v: by[(small, v)]["val_auc"] for v in VARIANTS}
    order = sorted(VARIANTS, key=lambda v: -auc[v])
    if order != ["three-heads", "multiscale", "flatten"]:
        verdict = "NOT HELD"
    elif s.seeds > 1 and max(auc.values()) - min(auc.values()) <= _spread(by, small):
        verdict = "INCONCLUSIVE"
    else:
        verdict = "HELD"
    shown = " > ".join(f"{v} {auc[v]:.4f}" for v in order)
    return (
        f"**Three heads converge best, plain flatten worst** (seed's Figure 1: black > green/blue "
        f"> red; criterion: the mean validation accuracy over epochs, averaged over seeds, at "
        f"{small:g} of the data ranks three-heads > multiscale > flatten; INCONCLUSIVE if it "
        f"does but the spread of the three is within the largest seed-to-seed standard "
        f"deviation, {_spread(by, small):.4f}): {verdict}. Ranking: {shown}."
    )


def _more_data_verdict(by: _Rows, small: float, full: float, s: HeadsSettings) -> str:
    """Seed 000's Figure 4: four times the data removes the gap between the variants."""
    g_small, g_full = _gap(by, small), _gap(by, full)
    if s.seeds > 1 and g_small <= _spread(by, small):
        verdict = "INCONCLUSIVE"
    elif g_full < g_small and g_full <= max(_spread(by, full), 0.005):
        verdict = "HELD"
    else:
        verdict = "NOT HELD"
    return (
        f"**4x more data removes the gap** (seed's Figure 4; criterion: the gap between the "
        f"variants' final mean validation accuracies is smaller with all the data than with "
        f"{small:g} of it and within the seed-to-seed standard deviation (at least 0.5 "
        f"points); INCONCLUSIVE if the gap at {small:g} is already within its seed-to-seed "
        f"standard deviation, so there is no gap to remove): {verdict}. Gap {g_small:.4f} "
        f"(std {_spread(by, small):.4f}) at {small:g} -> {g_full:.4f} "
        f"(std {_spread(by, full):.4f}) with all the data."
    )


def _redundancy_verdict(redundancy: Sequence[dict[str, Any]], s: HeadsSettings) -> str:
    """Seed 000's definition: the multi-scale sections carry the same information twice."""
    red = {r["variant"]: r for r in redundancy}
    ranks = ", ".join(f"{v} {red[v]['effective_rank']}" for v in VARIANTS)
    cka = red["multiscale"]
    # NaN marks a section the map is too small for.
    values = [cka[k] for k in ("cka_1_2", "cka_1_4", "cka_2_4") if cka[k] == cka[k]]
    mean_cka = statistics.fmean(values) if values else float("nan")
    held = mean_cka >= 0.5
    return (
        f'**The concatenated sections are redundant** (seed: "concatenating a signal with its '
        f'lower resolution level would be nearly equivalent to duplication"; criterion: mean '
        f"linear CKA between the multiscale network's sections >= 0.5): "
        f"{'HELD' if held else 'NOT HELD'}. Mean CKA {mean_cka:.3f}. Effective ranks (smallest "
        f"dense width within {s.rank_tolerance:.1%} validation accuracy of width "
        f"{s.dense_width}): {ranks}."
    )


def _report(
    data: ImageData,
    s: HeadsSettings,
    summary_md: str,
    redundancy_md: str,
    verdicts: Sequence[str],
    command: str,
    cka_images: int,
) -> str:
    t = s.train
    lines = [
        "# Seed 000: multi-scale flatten, redundancy and three heads",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Dataset `{data.name}`: {len(data.train_y):,} training images (the fraction rows use a "
        f"stratified part of them), {len(data.val_y):,} validation images, "
        f"{s.test_limit or len(data.test_y):,} test images. Base network: "
        + ", ".join(f"{f} 3x3 filters + 2x2 max pool" for f in s.filters)
        + f", aggregation, dense {s.dense_width}, softmax. {t.epochs} epochs, batch "
        f"{t.batch_size}, Adam lr {t.lr:g} with decay on a validation plateau, {s.seeds} seed(s) "
        f"from {t.seed}.",
        "",
        "Variants: `multiscale` = the map concatenated with its 2x2 and 4x4 max-pooled versions, "
        "one softmax; `flatten` = the pooled sections removed; `three-heads` = multiscale plus a "
        "softmax on each pooled section, losses summed, predicting with the main head.",
        "",
        "## Convergence (mean and spread over seeds)",
        "",
        summary_md,
        "![convergence](convergence.png)",
        "",
        "## Redundancy",
        "",
        f"Effective rank: the smallest dense width whose validation accuracy is within "
        f"{s.rank_tolerance:.1%} of the width-{s.dense_width} network's (all the data, first "
        f"seed). CKA: linear CKA between the last map and its 2x2 / 4x4 max-pooled versions on "
        f"{cka_images} validation images (1 = the same information up to rotation and scale).",
        "",
        redundancy_md,
        "## Does the seed's claim hold here?",
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "## Differences from the seed",
        "",
        "- The seed's 'road sign' Keras network is not given layer by layer; the base here is "
        "the conv stages above. Curves are validation accuracy per epoch.",
        "- A single seed per width sweeps the effective rank: differences below the seed-to-seed "
        "spread in the convergence table are noise.",
    ]
    return "\n".join(lines) + "\n"
