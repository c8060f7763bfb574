"""How a study should spend a fixed budget: more trials at lower fidelity, fewer at higher,
pruning, and how much of it goes to the final training.

Each variant is the CPU preset (``--preset fashion-mnist-cpu``) with a few keys changed, run as a
real study with the same total budget T (search and final training together), one after the
other. What counts is what the user gets: the registered networks (trained in the final phase),
scored on the held-out test split. Per variant the benchmark prints the trials the search ran,
the registered networks' test accuracy against their parameters, the best of them at <= 50k
parameters, and the hypervolume of their test-accuracy front (accuracy x decades of parameters
below 10^7, the larger the better).

The variants:

- ``preset``: 3 epochs on 20,000 images per trial, networks of up to 5M MACs, seed 002's rules
  of thumb at half width tried first, half the budget for the final training;
- ``unseeded``: the preset without that first network;
- ``narrow``: the preset until 2026-12-06: up to 2.5M MACs and 60 trials, block dropout up to
  0.3, no first network;
- ``short``: 2 epochs on 10,000 images (about three times the trials);
- ``long-pruned``: 6 epochs on 20,000 images, Pareto-aware pruning stopping the hopeless early;
- ``search-70``: 70% of the budget for the search (``final.share 0.3``);
- ``final-70``: 70% for the final training (``final.share 0.7``);
- ``champion``: the final phase trains the champion alone (``final.members: champion``);
- ``champion-75``: the champion trains for at least 75% of the final phase, the other members
  share the rest (``final.champion_share: 0.75``);
- ``blocks``: the space also offers separable, residual and inverted blocks, squeeze-and-
  excitation and stride-2 convolutions (``space.block_types``, ``se_ratio``, ``pools``);
- ``seeded``: the search tries three generic small CNNs first instead (16-32-64, 8x2-16x2-32x2 and
  8-16-32-64 with batch norm, max pooling and GAP; ``study.start_from``), then samples;
- ``workers-2``: the search runs in two worker processes of one CPU thread each
  (``--workers 2``): two processes of one thread train more epochs a second than one of two,
  but measured here they completed fewer trials (docs/benchmarks.md).

With ``--baselines-from FILE`` (written by ``bench/baselines.py --out``) each variant's line also
says how many of those baselines its registered networks dominate.

Wall-time budgets make this depend on the machine's load: run it on an idle machine.

    python bench/search_budget.py                 # T = 600 s, every variant: ~100 minutes
    python bench/search_budget.py --budget 300 --variants preset,short
    python bench/search_budget.py --variants narrow,unseeded,preset    # 2026-12-06: ~30 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import yaml

from cnnas.search import SpaceConfig, load_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark
from baselines import dominated, run_study
from recipes import MEASURED_MAX_MACS, MEASURED_SPACE

# What the seeded variant's three starting networks share: 3x3 convs with batch norm, max
# pooling after each block while the map allows, doubling widths, global average pooling.
_SEED = {
    "growth": "doubling", "kernel": 3, "batch_norm": True, "block_dropout": 0.1,
    "pool_0": "max", "pool_1": "max", "pool_2": "max", "aggregation": "gap", "dense_layers": 0,
}  # fmt: skip
SEEDS = [
    {**_SEED, "blocks": 3, "convs": 1, "base_filters": 16},  # 16-32-64: 24.1k params
    {**_SEED, "blocks": 3, "convs": 2, "base_filters": 8},  # 8x2-16x2-32x2: 18.5k
    {**_SEED, "blocks": 4, "convs": 1, "base_filters": 8},  # 8-16-32-64: 25.2k
]
# The preset until 2026-12-06: 2.5M MACs, 60 trials, block dropout up to 0.3, no start.
_NARROW = {
    "study": {"max_macs": MEASURED_MAX_MACS, "trials": 60, "start_from": None},
    "space": MEASURED_SPACE,
}
VARIANTS: dict[str, dict] = {
    "preset": {},
    "short": {"train": {"epochs": 2}, "data": {"subset": 10000}},
    "long-pruned": {"train": {"epochs": 6}, "pruning": {"method": "pareto"}},
    "search-70": {"final": {"share": 0.3}},
    "final-70": {"final": {"share": 0.7}},
    "champion": {"final": {"members": "champion"}},
    "champion-75": {"final": {"champion_share": 0.75}},
    # The efficient blocks (separable, residual, inverted, squeeze-and-excitation, stride-2).
    "blocks": {"space": dict(SpaceConfig.EFFICIENT)},
    "workers-2": {},  # the preset, with VARIANT_ARGS below
    # The search tries three generic small CNNs first (study.start_from) instead of the
    # preset's one start, then samples.
    "seeded": {"study": {"start_from": SEEDS}},
    # The preset without its start (seed 002's rules of thumb at half width).
    "unseeded": {"study": {"start_from": None}},
    "narrow": _NARROW,
}
# Command-line options of a variant (those that are no config keys).
VARIANT_ARGS: dict[str, list[str]] = {"workers-2": ["--workers", "2"]}
REF_LOG_PARAMS = 7.0  # 10 million parameters: the hypervolume's far end


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by (accuracy up, log10 params down) points, up to REF_LOG_PARAMS."""
    area, best = 0.0, 0.0
    for acc, logp in sorted(points, key=lambda p: p[1]):
        if acc > best:
            area += (acc - best) * (REF_LOG_PARAMS - logp)
            best = acc
    return area


def variant_config(name: str, tmp: Path) -> Path:
    cfg = load_preset("fashion-mnist-cpu").to_json_dict()
    for section, values in VARIANTS[name].items():
        cfg[section] = {**cfg[section], **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=600)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--baselines-from", help="bench/baselines.py's --out JSON, for domination")
    args = p.parse_args()
    baselines = (
        json.loads(Path(args.baselines_from).read_text())["baselines"]
        if args.baselines_from
        else []
    )
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="cnnas-budget-") as tmp:
            config = variant_config(name, Path(tmp))
            versions, seconds, out = run_study(
                args.budget,
                Path(tmp) / "runs",
                ["--config", str(config), *VARIANT_ARGS.get(name, [])],
                f"budget-{name}",
            )
        trials = next((ln for ln in out.splitlines() if "Pareto front of study" in ln), "")
        points = [(v["test_acc"], math.log10(max(v["params"], 1))) for v in versions]
        small = [v["test_acc"] for v in versions if v["params"] <= 50_000]
        rows.append((name, seconds, trials.split(";")[-1].strip(), versions, points, small))
        print(f"{name}: {seconds:.0f} s, {len(versions)} registered", flush=True)
    head = f"{'variant':<12} {'seconds':>7} {'hypervolume':>11} {'best<=50k':>9} {'dominated':>9}"
    print(f"\n{head}  trials; registered")
    for name, seconds, trials, versions, points, small in rows:
        shown = ", ".join(f"{v['params'] / 1000:.1f}k:{v['test_acc']:.4f}" for v in versions)
        best = f"{max(small):.4f}" if small else "-"
        won = sum(dominated(b, versions) is not None for b in baselines)
        dom = f"{won} of {len(baselines)}" if baselines else "-"
        hv = hypervolume(points)
        print(f"{name:<12} {seconds:7.0f} {hv:11.4f} {best:>9} {dom:>9}  {trials}; {shown}")


if __name__ == "__main__":
    main()
