"""Study overhead: a study's total wall time against the sum of its trials' pure training time.

A real study runs through the public API (``search.prepare`` then ``search.run_study``) into a
fresh temporary project folder: Optuna journal storage, TPE, an MLflow SQLite database with one
parent run and one child run per trial, each trained network saved as an artifact. The wall time
of ``run_study`` (``time.perf_counter``) is compared with the sum of each trained trial's
``seconds`` attribute (the wall time of Lightning's ``trainer.fit``, validation included).
Repeats (``duplicate_of``) and infeasible trials train nothing and add no training time. The
difference is what the product adds around training; target: at most 5% of the wall time.

The breakdown times the pieces by wrapping them with timers inside this script only (no package
code changes; the trainer is handed to the study, timed): the one-off set-up (``StudyRun.open``:
Optuna study, MLflow experiment and parent run, which creates the SQLite database) and closing the
parent run; Optuna outside the trials (ask/tell, storage); and inside each trial the architecture
sampling (``propose``, where TPE and NSGA-II do their work, lazily at the first suggestion),
``fit()`` outside ``trainer.fit`` (building the network and the Trainer), each ``Tracker`` call
(one ``log_epoch`` per epoch: the live curves), and the rest (trial attributes written to the
storage, the single ``record`` of the outcome). One untimed warm-up fit runs
first: the first fit in a process pays a one-off kernel selection and lazy imports that a long
study amortises. Trial times depend on the machine's load; the ratio is the figure to read.
The default takes the data and epochs of the CPU preset (``--preset fashion-mnist-cpu``:
Fashion-MNIST, 20,000 images, 3 epochs) and runs about 2.5 minutes on 2 idle CPU cores. The fixed
costs weigh most in short trials; ``--subset 6000 --epochs 2`` (2.5 s trials) is that worst case.

    python bench/overhead.py                     # Fashion-MNIST, 20,000 images, 3 epochs, 12 trials
    python bench/overhead.py --subset 6000 --epochs 2    # short trials: the fixed costs weigh most
    python bench/overhead.py --trials 4          # a quick check
    python bench/overhead.py --dataset digits --subset 0 --epochs 5 --trials 20
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnas import search
from cnnas.models import ArchSpec, ConvBlock
from cnnas.objectives import fit
from cnnas.search import _study as study_mod

# Seconds spent in each wrapped call, and how many calls.
TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start
            CALLS[name] += 1

    return wrapper


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Wraps the study's pieces with timers; puts the originals back afterwards."""
    targets = [
        (search.Tracker, "start_trial", "mlflow start_trial"),
        (search.Tracker, "log_epoch", "mlflow log_epoch"),
        (search.Tracker, "log_model", "mlflow log_model"),
        (search.Tracker, "end_trial", "mlflow end_trial"),
        (search.Tracker, "end_parent", "mlflow end_parent"),
        (search.Tracker, "__init__", "open: Tracker()"),
        (search.Tracker, "parent_run", "open: parent_run"),
        (search.StudyRun, "open", "open study + parent run"),
        (study_mod, "run_trial", "objective"),
        (study_mod, "propose", "suggest_spec"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
    for owner, attr, name in targets:
        setattr(owner, attr, _timed(name, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def make_config(args: argparse.Namespace, project_dir: str) -> search.StudyConfig:
    return search.StudyConfig.from_dict(
        {
            "study": {
                "name": "overhead",
                "trials": args.trials,
                "sampler": args.sampler,
                "seed": 0,
                "project_dir": project_dir,
            },
            "data": {"dataset": args.dataset, "subset": args.subset or None},
            "train": {"epochs": args.epochs, "batch_size": 128, "accelerator": "cpu"},
            "space": {
                "blocks": {"min": 1, "max": 3},
                "base_filters": [8, 16],
                "kernels": [3],
                "pools": ["max"],
                "aggregations": ["flatten", "gap"],
                "dense_layers": [0, 1],
                "dense_width": {"min": 16, "max": 128},
            },
        }
    )


def warm_up(run: search.StudyRun) -> None:
    """One short fit outside the timing: kernel selection, allocator, lazy imports."""
    data = run.data
    spec = ArchSpec(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        blocks=(ConvBlock(8, 3, batch_norm=True, pool="max"),),
        aggregation="gap",
    )
    cfg = dataclasses.replace(run.cfg.train.to_train_config(run.cfg.study.seed), epochs=1)
    fit(spec, data, cfg, seed=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--subset", type=int, default=20000, help="images before the split (0: all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    p.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"))
    args = p.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cnnas-overhead-") as project_dir:
        cfg = make_config(args, project_dir)
        start = time.perf_counter()
        run = search.prepare(cfg, trainer=_timed("fit()", fit))
        prepare_s = time.perf_counter() - start
        data = run.data
        print(
            f"dataset {data.name}: {len(data.train_y)} train / {len(data.val_y)} val images, "
            f"{args.epochs} epochs, {args.trials} trials, sampler {args.sampler}, CPU; "
            f"prepare (data loading, not counted) {prepare_s:.2f}s"
        )
        warm_up(run)
        with instrumented():
            start = time.perf_counter()
            study = search.run_study(run)
            wall = time.perf_counter() - start
        report(study, wall)


def report(study: optuna.Study, wall: float) -> None:
    trials = search.records(study.get_trials(deepcopy=False))
    trained = [r for r in trials if r.candidate and r.seconds is not None]
    train = sum(r.seconds for r in trained)
    n = len(trials)
    states = ", ".join(
        f"{sum(r.state == s for r in trials)} {s.name.lower()}"
        for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    )
    repeats = sum(r.duplicate_of is not None for r in trials)
    infeasible = sum(r.infeasible is not None for r in trials)
    print(
        f"trials: {n} ({states}; {len(trained)} trained, {repeats} repeats, "
        f"{infeasible} infeasible)"
    )
    print(f"wall time of run_study:       {wall:8.2f} s")
    print(f"sum of training (trainer.fit): {train:7.2f} s")
    over = wall - train
    print(f"overhead:                     {over:8.2f} s = {100 * over / wall:.1f}% of wall time")
    per_trial = 1000 * over / max(n, 1)
    print(f"per-trial overhead:           {per_trial:8.1f} ms = (wall - train) / trials")

    # The breakdown: the one-off pieces in seconds, the rest in ms per trial.
    def ms(seconds: float) -> str:
        return f"{1000 * seconds / max(n, 1):8.1f} ms/trial"

    opened, closed = TIMES["open study + parent run"], TIMES["mlflow end_parent"]
    objective, fit_total = TIMES["objective"], TIMES["fit()"]
    tracker = {
        k: v for k, v in TIMES.items() if k.startswith("mlflow ") and k != "mlflow end_parent"
    }
    print("breakdown:")
    print(f"  {'once: open the study + MLflow experiment and parent run':<58} {opened:8.2f} s")
    tracker_init, parent = TIMES["open: Tracker()"], TIMES["open: parent_run"]
    sub = [
        ("MLflow client, database and experiment (Tracker())", tracker_init),
        ("MLflow parent run with the config as params", parent),
        ("Optuna study and its attributes", opened - tracker_init - parent),
    ]
    for label, seconds in sub:
        print(f"    {label:<56} {seconds:8.2f} s")
    print(f"  {'once: close the parent run':<58} {closed:8.2f} s")
    rows = [
        ("optuna outside the trials (the loop, counting)", wall - objective - opened - closed),
        ("suggest_spec (the sampler's work + the space)", TIMES["suggest_spec"]),
        ("fit() outside trainer.fit (network, Trainer)", fit_total - train),
        *((f"{k} ({CALLS[k]} calls)", v) for k, v in sorted(tracker.items())),
        (
            "rest of each trial (ask/tell, attributes to the storage, record)",
            objective - TIMES["suggest_spec"] - fit_total - sum(tracker.values()),
        ),
    ]
    for label, seconds in rows:
        print(f"  {label:<58} {ms(seconds)}")
    recurring = over - opened - closed
    print(
        f"recurring per-trial overhead (without the one-off set-up): "
        f"{1000 * recurring / max(n, 1):.1f} ms = {100 * recurring / wall:.1f}% of wall time"
    )
    print(f"study overhead: {100 * over / wall:.1f}% of wall time (target <= 5%)")


if __name__ == "__main__":
    main()
