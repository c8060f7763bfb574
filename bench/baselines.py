"""What a study hands over against the standard networks a user would have trained instead.

In one run, with the same data and the same trainer: a real study (``cnnas study start
--preset fashion-mnist-cpu --timeout T``: its search and its final training together take the
budget T), and each standard network trained alone for T seconds on the same training pool as
the study's final phase (train + validation, the whole of it), with the same final recipe. Every
network is scored once on the held-out test split. A baseline is dominated when a registered
network of the study has at least its test accuracy with at most its parameters.

The baselines (cnnas.models' builders): LeNet-5 (6c5-pool-16c5-pool-120-84), a small GAP CNN
(16-16-pool-32-32-pool-64-gap), the rules-of-thumb net (32-32-pool-64-64-pool-dense128, BN,
dropout 0.4), a MobileNet-style depthwise-separable net and a ResNet-8-style net. A baseline's
epochs come from timing it: a short probe fit (not counted in T) gives its seconds per epoch
and the first plan; the fit then re-plans the epochs that fit T at the pace it meets (as the
final phase's networks do: ``TrainConfig.time_budget``), so its schedule ends annealed within
T, and it stops at T whatever happens.

Timings matter here: run it on an otherwise idle machine. Figures vary with the load; the
verdict (dominated or not) much less.

    python bench/baselines.py --budget 600             # the CPU preset, 10 minutes: ~1 hour
    python bench/baselines.py --budget 1800 --trials 400 --no-baselines   # 30 minutes
    python bench/baselines.py --budget 240 --device cuda --preset fashion-mnist-gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from cnnas.models import (
    ArchSpec,
    count_macs,
    count_params,
    gap_cnn,
    lenet5,
    mobilenet_small,
    resnet8,
    rules_cnn,
)
from cnnas.objectives import (
    ImageData,
    TrainConfig,
    epoch_seconds,
    evaluate,
    fit,
    load_dataset,
)
from cnnas.search import load_preset

BASELINES = {
    "LeNet-5": lenet5,
    "GAP CNN": gap_cnn,
    "rules net": rules_cnn,
    "MobileNet-style": mobilenet_small,
    "ResNet-8-style": resnet8,
}


def run_study(
    budget: float, project: Path, source: list[str], name: str, trials: int | None = None
) -> tuple[list[dict], float, str]:
    """Runs the study as a user would (``source``: ``--preset NAME`` or ``--config FILE``;
    ``trials``: ``--trials``, else the preset's); returns its registered versions, its wall
    seconds and what it printed."""
    command = [
        sys.executable, "-m", "cnnas", "study", "start", *source, "--name", name,
        "--timeout", str(budget), "--project-dir", str(project), "--no-report",
        *(["--trials", str(trials)] if trials else []),
    ]  # fmt: skip
    print("study:", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the study failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr}")
    lines = [
        ln for ln in done.stdout.splitlines() if "final training" in ln or "test accuracy" in ln
    ]
    print("\n".join(f"  {ln.strip()}" for ln in lines))
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    model = f"cnnas-{name}"
    versions = []
    for v in client.search_model_versions(f"name = '{model}'"):
        aliases = [a for a, ver in client.get_registered_model(model).aliases.items()
                   if str(ver) == str(v.version)]  # fmt: skip
        versions.append(
            {
                "version": int(v.version),
                "trial": int(v.tags["cnnas.trial"]),
                "params": int(v.tags["params"]),
                "test_acc": float(v.tags["test_acc"]),
                "val_acc_search": float(v.tags["val_acc"]),
                "fidelity": v.tags.get("cnnas.refit", "0"),
                "epochs": v.tags.get("final_epochs", "-"),
                "aliases": ",".join(sorted(aliases)),
            }
        )
    return sorted(versions, key=lambda v: v["params"]), seconds, done.stdout


def final_data(preset: str) -> tuple[ImageData, TrainConfig]:
    """The study's final-phase data (the whole pool, train + validation) and recipe."""
    cfg = load_preset(preset)
    data = load_dataset(cfg.data.dataset, **{**cfg.data.load_kwargs(), "subset": None}, seed=0)
    merged = dataclasses.replace(
        data,
        train_x=torch.cat([data.train_x, data.val_x]),
        train_y=torch.cat([data.train_y, data.val_y]),
    )
    train = dataclasses.replace(
        cfg.train.to_train_config(cfg.study.seed), schedule=cfg.final.schedule
    )
    return merged, train


def train_baseline(
    name: str, spec: ArchSpec, data: ImageData, cfg: TrainConfig, budget: float
) -> dict:
    per_epoch = epoch_seconds(spec, data, cfg)
    epochs = max(int(budget / per_epoch), 1)
    # Trained to the deadline as the final phase trains: the schedule re-plans its epochs at
    # the pace it meets and ends annealed within T (a time limit alone once cut a baseline's
    # cycle at 19 of its 20 planned epochs); T stays the hard limit.
    run_cfg = dataclasses.replace(cfg, epochs=epochs, time_budget=budget, max_seconds=budget)
    result = fit(spec, data, run_cfg, seed=0)
    _, acc = evaluate(result.model, data.test_x, data.test_y, data.mean, data.std)
    row = {
        "name": name,
        "params": count_params(spec),
        "macs": count_macs(spec),
        "epochs": result.epochs,
        "planned_epochs": epochs,
        "epoch_seconds": per_epoch,  # the probe's: the machine's speed, for --baselines-from
        "seconds": result.seconds,
        "test_acc": acc,
        "arch": spec.summary(),
    }
    print(
        f"  {name:<16} {row['params']:>8,} params  {result.epochs:>3}/{epochs} epochs in "
        f"{result.seconds:5.0f} s  test {acc:.4f}",
        flush=True,
    )
    return row


def speed_check(rows: list[dict], preset: str) -> None:
    """Baselines from another run are a fair comparison only on a machine of the same speed:
    times a GAP CNN epoch now against the same probe of that run and prints the ratio (a study
    on a machine 1.5x slower trains two thirds of the networks and epochs its baselines did)."""
    then = next((r.get("epoch_seconds") for r in rows if r["name"] == "GAP CNN"), None)
    if not then:
        print("  (no GAP CNN epoch time in that file: the machines' speeds are not compared)")
        return
    data, cfg = final_data(preset)
    now = epoch_seconds(gap_cnn(data.input_shape, data.num_classes), data, cfg)
    print(
        f"  machine speed: a GAP CNN epoch takes {now:.1f} s now, {then:.1f} s in that run "
        f"({then / now:.2f}x its speed; a fair comparison wants about 1)"
    )


def dominated(baseline: dict, versions: list[dict]) -> dict | None:
    """The smallest registered network at least as accurate and no larger, or None."""
    better = [
        v
        for v in versions
        if v["params"] <= baseline["params"] and v["test_acc"] >= baseline["test_acc"]
    ]
    return min(better, key=lambda v: v["params"]) if better else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--budget", type=float, default=600, help="seconds T for the study and each baseline"
    )
    p.add_argument("--preset", default="fashion-mnist-cpu")
    p.add_argument(
        "--trials",
        type=int,
        help="the study's trial count (default: the preset's; a longer budget wants more, "
        "or the search stops at the preset's count and the final phase gets the rest)",
    )
    p.add_argument("--no-baselines", action="store_true", help="run the study only")
    p.add_argument("--no-study", action="store_true", help="train the baselines only")
    p.add_argument(
        "--baselines-from",
        help="a JSON this script wrote (--out): its baselines, not trained again",
    )
    p.add_argument("--out", help="write every figure to this JSON file too")
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="the study's project directory, kept (for cnnas pareto/report); default: a "
        "temporary one",
    )
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    versions, study_seconds = [], 0.0
    if not args.no_study:
        with tempfile.TemporaryDirectory(prefix="cnnas-baselines-") as tmp:
            name = f"baselines-{int(args.budget)}"
            source = ["--preset", args.preset]
            project = Path(args.keep) if args.keep else Path(tmp) / "runs"
            versions, study_seconds, _ = run_study(args.budget, project, source, name, args.trials)
    print(
        f"\nthe study's registered networks ({study_seconds:.0f} s for budget {args.budget:.0f} s):"
    )
    for v in versions:
        print(
            f"  version {v['version']:>2}  trial {v['trial']:>3}  {v['params']:>8,} params  "
            f"test {v['test_acc']:.4f}  (search val {v['val_acc_search']:.4f}, "
            f"{v['epochs']} final epochs)  {v['aliases']}"
        )
    rows = []
    if args.baselines_from:
        rows = json.loads(Path(args.baselines_from).read_text())["baselines"]
        print(f"\nbaselines from {args.baselines_from} (trained for its budget):")
        for row in rows:
            print(f"  {row['name']:<16} {row['params']:>8,} params  test {row['test_acc']:.4f}")
        speed_check(rows, args.preset)
    elif not args.no_baselines:
        data, cfg = final_data(args.preset)
        print(
            f"\nbaselines, each trained alone for {args.budget:.0f} s "
            f"on {len(data.train_y):,} images:"
        )
        for name, builder in BASELINES.items():
            rows.append(
                train_baseline(
                    name, builder(data.input_shape, data.num_classes), data, cfg, args.budget
                )
            )
    if rows and versions:
        print(f"\n{'baseline':<16} {'params':>9} {'test_acc':>9}  dominated by")
        count = 0
        for row in rows:
            by = dominated(row, versions)
            count += by is not None
            shown = (f"version {by['version']} ({by['params']:,} params, {by['test_acc']:.4f})"
                     if by else "-")  # fmt: skip
            print(f"{row['name']:<16} {row['params']:>9,} {row['test_acc']:>9.4f}  {shown}")
        print(f"\ndominated {count} of {len(rows)}")
    best = [v for v in versions if v["params"] <= 50_000]
    top = max(best, key=lambda v: v["test_acc"]) if best else None
    if top:
        print(
            f"best registered network at <= 50k params: {top['test_acc']:.4f} "
            f"({top['params']:,} params)"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "budget": args.budget,
                    "study_seconds": study_seconds,
                    "versions": versions,
                    "baselines": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
