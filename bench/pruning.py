"""Pareto-aware pruning: the same multi-objective study with and without it.

For each seed, two real studies run with the same config, sampler seed and trial count, one
with ``pruning.method: pareto`` and one without. Printed per seed and in total: the epochs
actually trained (pruned trials count the epochs they ran) and the hypervolume of the front
(validation accuracy up, log10 parameters down, reference point accuracy 0 / 10^8 parameters).

Two comparisons come out of these runs:

* **live**: the pruned study against the full one. Both are real, but after the sampler's
  start-up trials they propose different architectures (the sampler learns from what pruning
  left), so their fronts also differ by the luck of the search.
* **replay**: the rule's own decisions on the full study's trials: trial by trial, in the order
  they ran, the rule is applied at every epoch of the recorded curve against the trials before
  it that it would have let finish; a stopped trial counts the epochs up to its stop and leaves
  the front. Same trials, same curves, so the difference is the rule's alone.

The last line gives the epochs ratio and the hypervolume ratio of both; the target is at most
50% of the epochs for a hypervolume within 2%.

    python bench/pruning.py                  # digits, 40 trials x 10 epochs, 4 seeds, the defaults
    python bench/pruning.py --margin 0.02 --min-better 3 --warmup 1     # another rule
    python bench/pruning.py --dataset fashion-mnist --subset 6000 --trials 30 --epochs 6
    python bench/pruning.py --seeds 6 --jobs 2   # seeds in 2 processes, 1 CPU thread each

Training is deterministic under a seed and a number of CPU threads: the same command gives the
same epochs and hypervolumes. The thread count changes floating-point sums, so a run with
``--jobs 2`` (one thread a process on 2 cores) repeats itself but not a serial run on 2 threads.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import optuna
import torch
from samplers import hypervolume_2d

from cnnas import search
from cnnas.search._pruning import PruneRule, Reference, prune_reason

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


def measure(cfg: dict) -> tuple[int, float, float, optuna.Study]:
    """Epochs trained, front hypervolume and wall seconds of one study, and the study."""
    run = search.prepare(search.StudyConfig.from_dict(cfg))
    start = time.perf_counter()
    study = search.run_study(run)
    seconds = time.perf_counter() - start
    trials = search.records(study.get_trials(deepcopy=False))
    # A repeated architecture takes its twin's result (and curve) without training.
    epochs = sum(len(r.curves.get("val_acc", [])) for r in trials if r.duplicate_of is None)
    points = [(r.val_acc, math.log10(max(r.params, 1.0))) for r in trials if r.candidate]
    return epochs, hypervolume_2d(points, REF_LOG_PARAMS), seconds, study


def replay(study: optuna.Study, rule: PruneRule) -> tuple[int, float]:
    """Epochs and front hypervolume had ``rule`` judged the trials of the unpruned ``study``."""
    refs: list[Reference] = []
    epochs, points = 0, []
    for r in search.records(study.get_trials(deepcopy=False)):
        # A repeat takes its twin's result without training.
        if not r.candidate or not r.curves.get("val_acc"):
            continue
        curve = r.curves["val_acc"]
        # as in ParetoPruner: the last epoch is never judged (nothing left to save)
        stop = next(
            (
                e
                for e in range(len(curve) - 1)
                if prune_reason(e, curve[e], float(r.params), refs, rule) is not None
            ),
            None,
        )
        if stop is None:
            epochs += len(curve)
            refs.append(Reference(r.number, float(r.params), tuple(curve)))
            points.append((curve[-1], math.log10(max(r.params, 1.0))))
        else:
            epochs += stop + 1
    return epochs, hypervolume_2d(points, REF_LOG_PARAMS)


def one_seed(args: argparse.Namespace, seed: int, threads: int) -> dict[str, float]:
    """The full study, the replay and (unless --no-live) the pruned study of one seed."""
    torch.set_num_threads(threads)
    _quiet()
    rule = PruneRule(args.margin, args.min_better, args.warmup)
    with tempfile.TemporaryDirectory() as root:
        e_full, hv_full, s_full, study = measure(study_config(args, seed, False, root))
        e_replay, hv_replay = replay(study, rule)
        e_live = hv_live = s_live = math.nan
        if not args.no_live:
            e_live, hv_live, s_live, _ = measure(study_config(args, seed, True, root))
    return {
        "e_full": e_full,
        "hv_full": hv_full,
        "s_full": s_full,
        "e_replay": e_replay,
        "hv_replay": hv_replay,
        "e_live": e_live,
        "hv_live": hv_live,
        "s_live": s_live,
    }


def all_seeds(args: argparse.Namespace, seeds: list[int]) -> Iterator[dict[str, float]]:
    """Each seed's results in seed order, from ``--jobs`` processes sharing the CPU threads."""
    if args.jobs == 1:
        yield from (one_seed(args, seed, torch.get_num_threads()) for seed in seeds)
        return
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs) as pool:
        yield from pool.map(one_seed, [args] * len(seeds), seeds, [threads] * len(seeds))


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    defaults = search.StudyConfig().pruning
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes")
    p.add_argument("--margin", type=float, default=defaults.margin)
    p.add_argument("--min-better", type=int, default=defaults.min_better)
    p.add_argument("--warmup", type=int, default=defaults.warmup_epochs)
    p.add_argument("--no-live", action="store_true", help="replay only: no pruned studies")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    _quiet()

    print(
        f"{args.dataset}, {args.trials} trials x {args.epochs} epochs, seeds 0..{args.seeds - 1}; "
        f"pareto pruning margin {args.margin}, min_better {args.min_better}, warm-up "
        f"{args.warmup}",
        flush=True,
    )
    print(
        f"{'seed':>4}  {'epochs full':>11}  {'HV full':>8}  {'epochs replay':>13}  "
        f"{'HV replay':>9}  {'epochs live':>11}  {'HV live':>8}  {'s full':>7}  {'s live':>7}",
        flush=True,
    )
    totals = {"full": [0, 0.0], "replay": [0, 0.0], "live": [0, 0.0]}
    seeds = list(range(args.seeds))
    for seed, r in zip(seeds, all_seeds(args, seeds), strict=True):
        print(
            f"{seed:>4}  {r['e_full']:>11}  {r['hv_full']:>8.4f}  {r['e_replay']:>13}  "
            f"{r['hv_replay']:>9.4f}  {r['e_live']:>11}  {r['hv_live']:>8.4f}  "
            f"{r['s_full']:>7.1f}  {r['s_live']:>7.1f}",
            flush=True,
        )
        for key in totals:
            totals[key][0] += r[f"e_{key}"]
            totals[key][1] += r[f"hv_{key}"]

    def ratio(key: str) -> str:
        e, hv = totals[key]
        return (
            f"{100 * e / totals['full'][0]:.1f}% of the epochs for "
            f"{100 * hv / totals['full'][1]:.1f}% of the front hypervolume"
        )

    live = "" if args.no_live else f"; live: {ratio('live')}"
    print(
        f"pruning, replay: {ratio('replay')}{live} "
        "(target: <= 50% of the epochs, hypervolume within 2%)"
    )


if __name__ == "__main__":
    main()
