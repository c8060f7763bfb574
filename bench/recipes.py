"""Training recipes compared on the same architectures and epochs: which one a study should use.

Part 1, the length of a search trial: architectures drawn from the CPU preset's space (seeded,
within its MAC budget), each trained with every recipe for the preset's epochs on its data
(Fashion-MNIST, 20,000 images: 18,000 train / 2,000 validation), scored on the validation split
and on the test split. The recipes:

- ``seed``: Adam 1e-3 with the learning rate halved on a validation plateau (the papers' recipe,
  cnnas's default until this benchmark);
- ``adamw-cosine``: AdamW 3e-3, weight decay 5e-4, 5% linear warm-up then a cosine to zero;
- ``onecycle``: AdamW to a peak of 4e-3 with PyTorch's one-cycle policy (25% warm-up);
- each of the two with label smoothing 0.1 (``-ls``);
- ``sgd-cosine``: SGD with Nesterov momentum 0.9, 0.05, the same cosine.

Part 2, the length of the final training: the best recipe of part 1 and ``seed`` on a few of the
same architectures, for ``--final-epochs`` on the whole training split, scored on the test split;
and the best recipe once more trained on train + validation (the final phase's choice of data).

Accuracy at a fixed number of epochs does not depend on the machine's load, so the figures hold
on a busy machine; the seconds do not. Fixed seeds: the same command gives the same numbers for
a given thread count.

    python bench/recipes.py                      # 6 architectures, 3 epochs; final: 3 x 8 epochs
    python bench/recipes.py --archs 3 --final-archs 0     # part 1 only, quick
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import optuna
import torch

from cnnas.models import ArchSpec, count_macs, count_params
from cnnas.objectives import ImageData, TrainConfig, evaluate, fit, load_dataset
from cnnas.search import load_preset, suggest_spec

RECIPES: dict[str, dict] = {
    "seed": {"optimizer": "adam", "lr": 1e-3, "schedule": "plateau"},
    "adamw-cosine": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup": 0.05,
    },
    "onecycle": {
        "optimizer": "adamw",
        "lr": 4e-3,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "warmup": 0.25,
    },
    "sgd-cosine": {
        "optimizer": "sgd",
        "lr": 0.05,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup": 0.05,
    },
}
RECIPES["adamw-cosine-ls"] = {**RECIPES["adamw-cosine"], "label_smoothing": 0.1}
RECIPES["onecycle-ls"] = {**RECIPES["onecycle"], "label_smoothing": 0.1}


# The CPU preset's space as this benchmark and bench/precision.py were measured (until
# 2026-12-06; the preset now offers block dropout up to 0.5 and 5M MACs): the same seed then
# draws the same architectures as the figures in docs/benchmarks.md.
MEASURED_SPACE = {"block_dropout": {"min": 0.0, "max": 0.3}}
MEASURED_MAX_MACS = 2_500_000


def architectures(
    n: int, data: ImageData, max_macs: int = MEASURED_MAX_MACS, seed: int = 0
) -> list[ArchSpec]:
    """``n`` distinct architectures of the CPU preset's space (as measured, MEASURED_SPACE)
    within a MAC budget, seeded."""
    space = load_preset("fashion-mnist-cpu").replace("space", **MEASURED_SPACE).space
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    out: dict[str, ArchSpec] = {}
    while len(out) < n:
        trial = study.ask()
        spec = suggest_spec(trial, space, data.input_shape, data.num_classes)
        study.tell(trial, 0.0)
        if count_macs(spec) <= max_macs:
            out.setdefault(spec.spec_hash(), spec)
    return list(out.values())


def score(spec: ArchSpec, data: ImageData, cfg: TrainConfig) -> tuple[float, float, float]:
    """(validation accuracy, test accuracy, seconds) of one fit."""
    result = fit(spec, data, cfg, seed=cfg.seed)
    _, test_acc = evaluate(result.model, data.test_x, data.test_y, data.mean, data.std)
    return result.val_acc, test_acc, result.seconds


def merged(data: ImageData) -> ImageData:
    """Train + validation as the training split (validation kept for the curves only)."""
    return dataclasses.replace(
        data,
        train_x=torch.cat([data.train_x, data.val_x]),
        train_y=torch.cat([data.train_y, data.val_y]),
    )


def part1(args: argparse.Namespace, base: TrainConfig) -> str:
    data = load_dataset("fashion-mnist", subset=20000, seed=0)
    specs = architectures(args.archs, data)
    sizes = f"{len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images"
    shown = f"{len(specs)} architectures x {len(RECIPES)} recipes, {args.epochs} epochs"
    print(f"part 1: {shown}, {sizes}")
    table: dict[str, list[tuple[float, float]]] = {name: [] for name in RECIPES}
    for i, spec in enumerate(specs):
        print(f"  arch {i}: {spec.summary()} ({count_params(spec):,} params)", flush=True)
        for name, recipe in RECIPES.items():
            cfg = dataclasses.replace(base, epochs=args.epochs, **recipe)
            val, test, secs = score(spec, data, cfg)
            table[name].append((val, test))
            print(f"    {name:<16} val {val:.4f}  test {test:.4f}  ({secs:.0f}s)", flush=True)
    print("\npart 1 summary (mean over architectures; rank 1 = best on that architecture)")
    ranks = {name: [] for name in RECIPES}
    for a in range(len(specs)):
        order = sorted(RECIPES, key=lambda n: -table[n][a][0])
        for r, name in enumerate(order, 1):
            ranks[name].append(r)
    rows = sorted(RECIPES, key=lambda n: -statistics.mean(v for v, _ in table[n]))
    print(f"  {'recipe':<16} {'val_acc':>8} {'test_acc':>8} {'mean rank':>9}")
    for name in rows:
        vals = [v for v, _ in table[name]]
        tests = [t for _, t in table[name]]
        print(
            f"  {name:<16} {statistics.mean(vals):8.4f} {statistics.mean(tests):8.4f} "
            f"{statistics.mean(ranks[name]):9.2f}"
        )
    return rows[0]


def part2(args: argparse.Namespace, base: TrainConfig, best: str) -> None:
    data = load_dataset("fashion-mnist", seed=0)
    specs = architectures(args.final_archs, load_dataset("fashion-mnist", subset=20000))
    print(f"\npart 2: final length, {args.final_epochs} epochs on {len(data.train_y)} train images "
          f"(+{len(data.val_y)} validation where said), test {len(data.test_y)}")  # fmt: skip
    runs = [("seed", data), (best, data), (f"{best} on train+val", merged(data))]
    results: dict[str, list[float]] = {label: [] for label, _ in runs}
    for spec in specs:
        print(f"  {spec.summary()} ({count_params(spec):,} params)", flush=True)
        for label, d in runs:
            recipe = RECIPES[label.split(" ")[0]]
            cfg = dataclasses.replace(base, epochs=args.final_epochs, **recipe)
            _, test, secs = score(spec, d, cfg)
            results[label].append(test)
            print(f"    {label:<28} test {test:.4f}  ({secs:.0f}s)", flush=True)
    print("\npart 2 summary (mean test accuracy over architectures)")
    for label, tests in results.items():
        print(f"  {label:<28} {statistics.mean(tests):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=6, help="architectures of part 1")
    p.add_argument("--epochs", type=int, default=3, help="epochs of part 1 (a trial's)")
    p.add_argument("--final-archs", type=int, default=3, help="architectures of part 2 (0: skip)")
    p.add_argument("--final-epochs", type=int, default=8, help="epochs of part 2")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = TrainConfig(batch_size=128, accelerator="cpu", seed=0)
    start = time.perf_counter()
    best = part1(args, base)
    print(f"\nbest at a trial's length: {best}")
    if args.final_archs:
        part2(args, base, best)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
