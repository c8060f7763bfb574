"""Pareto-aware pruning: the same multi-objective study with and without it.

For each seed, two real studies run with the same config, sampler seed and trial count, one
with ``pruning.method: pareto`` and one without. Printed per seed and in total: the epochs
actually trained (pruned trials count the epochs they ran) and the hypervolume of the front
(validation accuracy up, log10 parameters down, reference point accuracy 0 / 10^8 parameters).
The last line gives the epochs ratio and the hypervolume ratio; the target is at most 50% of the
epochs for a hypervolume within 2%.

    python bench/pruning.py                                  # digits, 30 trials, 8 epochs, 3 seeds
    python bench/pruning.py --dataset fashion-mnist --subset 6000 --trials 30 --epochs 6
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time

import optuna
from optuna.trial import TrialState
from samplers import hypervolume_2d

import search

REF_LOG_PARAMS = 8.0


def study_config(args: argparse.Namespace, seed: int, pruning: bool, root: str) -> dict:
    return {
        "study": {
            "name": f"{'pruned' if pruning else 'full'}-{seed}",
            "trials": args.trials,
            "seed": seed,
            "project_dir": f"{root}/{'pruned' if pruning else 'full'}-{seed}",
        },
        "data": {"dataset": args.dataset, "subset": args.subset},
        "train": {"epochs": args.epochs, "batch_size": 64},
        "pruning": {
            "method": "pareto" if pruning else "none",
            "margin": args.margin,
            "min_better": args.min_better,
            "warmup_epochs": args.warmup,
        },
        "space": {
            "blocks": {"min": 1, "max": 3},
            "convs": [1],
            "base_filters": [4, 8, 16, 32],
            "kernels": [3, 5],
            "pools": ["max", "none"],
            "aggregations": ["flatten", "gap"],
            "dense_layers": {"min": 0, "max": 1},
            "dense_width": {"min": 16, "max": 128},
        },
    }


def measure(cfg: dict) -> tuple[int, float, float]:
    """Epochs trained, front hypervolume and wall seconds of one study."""
    run = search.prepare(search.StudyConfig.from_dict(cfg))
    start = time.perf_counter()
    study = search.run_study(run)
    seconds = time.perf_counter() - start
    epochs = sum(len(t.user_attrs.get("curves", {}).get("val_acc", [])) for t in study.trials)
    points = [
        (t.user_attrs["val_acc"], math.log10(max(t.user_attrs["params"], 1.0)))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "val_acc" in t.user_attrs and "duplicate_of" not in t.user_attrs
    ]
    return epochs, hypervolume_2d(points, REF_LOG_PARAMS), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--margin", type=float, default=0.02)
    p.add_argument("--min-better", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    print(
        f"{args.dataset}, {args.trials} trials x {args.epochs} epochs, seeds 0..{args.seeds - 1}; "
        f"pareto pruning margin {args.margin}, min_better {args.min_better}, warm-up "
        f"{args.warmup}"
    )
    print(
        f"{'seed':>4}  {'epochs full':>11}  {'epochs pruned':>13}  {'HV full':>8}  "
        f"{'HV pruned':>9}  {'s full':>7}  {'s pruned':>8}"
    )
    totals = [0, 0, 0.0, 0.0]
    with tempfile.TemporaryDirectory() as root:
        for seed in range(args.seeds):
            e_full, hv_full, s_full = measure(study_config(args, seed, False, root))
            e_pruned, hv_pruned, s_pruned = measure(study_config(args, seed, True, root))
            print(
                f"{seed:>4}  {e_full:>11}  {e_pruned:>13}  {hv_full:>8.4f}  {hv_pruned:>9.4f}"
                f"  {s_full:>7.1f}  {s_pruned:>8.1f}"
            )
            for i, v in enumerate((e_full, e_pruned, hv_full, hv_pruned)):
                totals[i] += v
    epochs_ratio = totals[1] / totals[0]
    hv_ratio = totals[3] / totals[2]
    print(
        f"pruning: {100 * epochs_ratio:.1f}% of the epochs for {100 * hv_ratio:.1f}% of the "
        "front hypervolume (target: <= 50% of the epochs, hypervolume within 2%)"
    )


if __name__ == "__main__":
    main()
