"""Search quality: hypervolume after N trials for TPE, NSGA-II and random at equal budget.

Each sampler (``search.make_sampler(name, seed)``, the study's own) runs several seeds of N
trials with the two objectives of a study: accuracy (maximised) and parameters (minimised). The
quality of a run is the 2-D hypervolume of its front in (accuracy, log10(parameters)) against
the reference point (accuracy 0, log10(parameters) = ``--ref-log-params``, 8.0: 100M parameters;
the default space's largest networks reach about 10^8.3 and add nothing): the area the front
dominates, larger is better. It is computed here (sort by complexity, sum rectangles) and
cross-checked against Optuna's own ``optuna._hypervolume.compute_hypervolume`` on every run.

Two modes:

``--mode surrogate`` (default) does NOT train anything. Architectures are sampled through real
Optuna studies from the real search space (``search.suggest_spec`` on a preset's
``SpaceConfig``, for 1x28x28 images and 10 classes), and each is scored by a cheap,
deterministic surrogate of Fashion-MNIST accuracy computed from its spec alone::

    x = log10(params), m = log10(MACs per image)
    capacity = 1 / (1 + exp(-(x - 3.0) / 0.35))      # saturates near 10k parameters
    compute  = 1 / (1 + exp(-(m - 6.0) / 0.5))       # more MACs per parameter help a little
    acc = 0.10 + 0.80 * capacity * (0.93 + 0.07 * compute)
          + 0.005 if BatchNorm
          - 0.02 * max(0, block dropout - 0.3)        # heavy dropout underfits a short budget
          - 0.01 * max(0, x - 6.5)                    # too big to train in a short budget
          + N(0, 0.004) drawn from a generator seeded by the spec's hash and --noise-seed

clipped to [0, 1]. The same spec always gets the same score, so samplers are compared on the
same landscape; the noise stands for seed-to-seed variation of real training. It is a stand-in
for a sampler comparison on a 2-core CPU, not a measurement of real accuracies. The default run
takes about 15 seconds.

``--mode train`` trains every trial for real through ``search.prepare`` / ``search.run_study``
with configs/digits-quick.yaml's space on scikit-learn's 8x8 digits, ``--epochs`` (default 2)
per trial, into a temporary project folder (Optuna journal + MLflow); ``study.seed`` is the run's
seed, so it also changes the data split and the training seeds. Slow: about 1 s per trial,
so 3 samplers x 3 seeds x 30 trials take about 5 minutes (the defaults, 900 trials, ~20).

    python bench/samplers.py                                # surrogate, default space, 5 seeds x 60
    python bench/samplers.py --seeds 2 --trials 30          # a quick check
    python bench/samplers.py --preset seed002 --seeds 10
    python bench/samplers.py --mode train --seeds 3 --trials 30
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from cnnas import search
from cnnas.models import ArchSpec, count_macs, count_params

SAMPLERS = ("tpe", "nsga2", "random")
INPUT_SHAPE, NUM_CLASSES = (1, 28, 28), 10
DIGITS_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits-quick.yaml"

# A run: its points (accuracy, log10(parameters)) in trial order.
Points = list[tuple[float, float]]


# --- hypervolume ----------------------------------------------------------------------------


def hypervolume_2d(points: Points, ref_c: float, ref_acc: float = 0.0) -> float:
    """Area dominated by ``points`` (accuracy up, complexity down) up to (ref_acc, ref_c).

    Sorted by complexity, each point's best accuracy so far holds from its complexity to the
    next point's: a sum of rectangles. Dominated points add nothing.
    """
    inside = sorted((c, a) for a, c in points if a > ref_acc and c < ref_c)
    area, best = 0.0, ref_acc
    for i, (c, a) in enumerate(inside):
        best = max(best, a)
        c_next = inside[i + 1][0] if i + 1 < len(inside) else ref_c
        area += (c_next - c) * (best - ref_acc)
    return area


def optuna_hypervolume(points: Points, ref_c: float) -> float | None:
    """The same area from Optuna's implementation (minimisation: -accuracy), if it has one."""
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:
        return None
    inside = [(-a, c) for a, c in points if a > 0.0 and c < ref_c]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.array(inside), np.array([0.0, ref_c])))


def check_hypervolume(points: Points, ref_c: float) -> bool:
    """Asserts that ours equals Optuna's; False when Optuna's is not available."""
    theirs = optuna_hypervolume(points, ref_c)
    if theirs is None:
        return False
    ours = hypervolume_2d(points, ref_c)
    assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12), (ours, theirs)
    return True


# --- surrogate mode -------------------------------------------------------------------------


def surrogate_accuracy(spec: ArchSpec, noise_seed: int) -> float:
    """A deterministic stand-in for Fashion-MNIST accuracy (see the module docstring)."""
    x = math.log10(count_params(spec))
    m = math.log10(max(count_macs(spec), 1))
    capacity = 1.0 / (1.0 + math.exp(-(x - 3.0) / 0.35))
    compute = 1.0 / (1.0 + math.exp(-(m - 6.0) / 0.5))
    acc = 0.10 + 0.80 * capacity * (0.93 + 0.07 * compute)
    if spec.blocks and spec.blocks[0].batch_norm:
        acc += 0.005
    dropout = statistics.fmean(b.dropout for b in spec.blocks) if spec.blocks else 0.0
    acc -= 0.02 * max(0.0, dropout - 0.3)
    acc -= 0.01 * max(0.0, x - 6.5)
    rng = np.random.default_rng([int(spec.spec_hash(), 16), noise_seed])
    acc += float(rng.normal(0.0, 0.004))
    return min(1.0, max(0.0, acc))


def run_surrogate(
    sampler: str, seed: int, trials: int, space: search.SpaceConfig, noise_seed: int
) -> Points:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        spec = search.suggest_spec(trial, space, INPUT_SHAPE, NUM_CLASSES)
        return surrogate_accuracy(spec, noise_seed), float(count_params(spec))

    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=search.make_sampler(sampler, seed)
    )
    study.optimize(objective, n_trials=trials)
    return _points(study)


# --- train mode -----------------------------------------------------------------------------


def run_train(
    sampler: str, seed: int, trials: int, epochs: int, project_dir: str
) -> tuple[Points, float]:
    """A real study on digits; returns its points and the training seconds of its trials."""
    cfg = search.load_config(DIGITS_CONFIG)
    cfg = cfg.replace(
        "study",
        name=f"search-{sampler}-{seed}",
        trials=trials,
        timeout=None,
        sampler=sampler,
        seed=seed,
        project_dir=project_dir,
    )
    cfg = cfg.replace("train", epochs=epochs, accelerator="cpu")
    study = search.run_study(search.prepare(cfg))
    trials = search.records(study.get_trials(deepcopy=False))
    seconds = sum(r.seconds or 0.0 for r in trials if r.candidate)
    return _points(study), seconds


def _points(study: optuna.Study) -> Points:
    """(accuracy, log10(parameters)) of the complete trials, in trial order."""
    done = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number
    )
    return [(float(t.values[0]), math.log10(max(float(t.values[1]), 1.0))) for t in done]


# --- report ---------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, min(values), max(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="surrogate", choices=("surrogate", "train"))
    p.add_argument("--trials", type=int, default=60, help="trials per run (the budget N)")
    p.add_argument("--seeds", type=int, default=5, help="runs per sampler (seeds 0..S-1)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    p.add_argument("--preset", default="default", help="surrogate mode: the space preset")
    p.add_argument("--noise-seed", type=int, default=0, help="surrogate mode: the noise's seed")
    p.add_argument("--epochs", type=int, default=2, help="train mode: epochs per trial")
    p.add_argument("--ref-log-params", type=float, default=8.0, help="reference log10(params)")
    p.add_argument(
        "--checkpoints", default="", help="trial counts to report HV at (default: N/3, 2N/3, N)"
    )
    args = p.parse_args()

    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    n = args.trials
    checkpoints = sorted(
        {int(c) for c in args.checkpoints.split(",") if c.strip()}
        or {max(1, round(n * k / 3)) for k in (1, 2, 3)}
    )
    checkpoints = [c for c in checkpoints if c <= n] or [n]
    ref = args.ref_log_params
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    # The hand-computed case first: rectangles 2 x 0.5 and 3 x 0.8; the dominated point adds 0.
    assert math.isclose(hypervolume_2d([(0.5, 3.0), (0.8, 5.0), (0.4, 6.0)], 8.0), 3.4)

    if args.mode == "surrogate":
        space = search.StudyConfig.from_dict({"space": {"preset": args.preset}}).space
        print(
            f"mode surrogate: accuracy is a SURROGATE computed from each spec (see the "
            f"docstring), nothing is trained; space preset {args.preset!r}, input "
            f"{'x'.join(map(str, INPUT_SHAPE))}, {NUM_CLASSES} classes"
        )
    else:
        print(
            f"mode train: real training on digits ({DIGITS_CONFIG.name}'s space), "
            f"{args.epochs} epochs per trial"
        )
    print(
        f"{len(samplers)} samplers x {args.seeds} seeds x {n} trials; hypervolume of "
        f"(accuracy, log10 params) against the reference (0, {ref:g})"
    )

    runs: dict[str, list[Points]] = {s: [] for s in samplers}
    checked = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnas-search-") as project_dir:
        for seed in range(args.seeds):
            for sampler in samplers:
                t0 = time.perf_counter()
                if args.mode == "surrogate":
                    points = run_surrogate(sampler, seed, n, space, args.noise_seed)
                    extra = ""
                else:
                    points, train_s = run_train(sampler, seed, n, args.epochs, project_dir)
                    extra = f", training {train_s:.1f}s"
                runs[sampler].append(points)
                checked += check_hypervolume(points, ref)
                hv = hypervolume_2d(points, ref)
                print(
                    f"  seed {seed} {sampler:<7} HV {hv:.4f}  best acc "
                    f"{max((a for a, _ in points), default=0.0):.4f}  "
                    f"({time.perf_counter() - t0:.1f}s{extra})"
                )
    elapsed = time.perf_counter() - start
    if checked:
        print(f"hypervolume cross-checked against optuna._hypervolume on {checked} runs: equal")
    else:
        print("optuna._hypervolume not available: no cross-check")

    head = f"{'sampler':<8} {'mean HV':>8} {'std':>7} {'min':>8} {'max':>8}  "
    head += "  ".join(f"{'@' + str(c):>7}" for c in checkpoints)
    print(f"\nhypervolume after {n} trials ({args.seeds} seed(s); @k: mean HV after k trials)")
    print(head)
    means: dict[str, float] = {}
    for sampler in samplers:
        final = [hypervolume_2d(pts, ref) for pts in runs[sampler]]
        mean, std, lo, hi = _stats(final)
        means[sampler] = mean
        at = [
            statistics.fmean(hypervolume_2d(pts[:c], ref) for pts in runs[sampler])
            for c in checkpoints
        ]
        row = f"{sampler:<8} {mean:8.4f} {std:7.4f} {lo:8.4f} {hi:8.4f}  "
        print(row + "  ".join(f"{v:7.4f}" for v in at))
    print(f"total {elapsed:.1f}s")

    best = max(means, key=means.get)
    ratio = f"{means[best] / means['random']:.2f}" if means.get("random") else "n/a"
    print(f"best sampler by mean hypervolume after {n} trials: {best} (ratio to random: {ratio})")


if __name__ == "__main__":
    main()
