"""Numerics and tensor layout on the CPU: how fast each trains, and whether accuracy holds.

Part 1, speed: every standard network of bench/baselines.py and three architectures of the CPU
preset's space, each timed with the real trainer (``objectives.epoch_seconds``: three short
epochs, the fastest of the last two, scaled to the training split) in four settings, one after
the other for each network so that a change in the machine's load hits all four alike:

- ``fp32``: 32-bit floats, NCHW tensors (cnnas's CPU default until this benchmark);
- ``fp32-nhwc``: 32-bit floats, channels_last tensors;
- ``bf16``: bf16 autocast (``train.precision: bf16-mixed``), NCHW;
- ``bf16-nhwc``: both.

It prints seconds an epoch and each setting's speed as a ratio to ``fp32``.

Part 2, accuracy: a few of the same networks trained for ``--epochs`` on the whole
Fashion-MNIST training split with ``fp32`` and with what ``auto`` picks on this machine, scored
on the test split: the faster numerics are only worth having if the accuracy at a given number
of epochs stays. Fixed seeds.

bf16 pays only on a CPU that runs it natively (AVX512-BF16 or AMX; ``cpu_has_bf16()``); the
first line says whether this one does.

    python bench/precision.py                    # part 1, then 3 networks x 5 epochs
    python bench/precision.py --epochs 0         # part 1 only, a minute or two
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

from cnnas.models import (
    ArchSpec,
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
    cpu_has_bf16,
    epoch_seconds,
    evaluate,
    fit,
    load_dataset,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark
from recipes import architectures

SETTINGS: dict[str, dict[str, str]] = {
    "fp32": {"precision": "32-true", "memory_format": "contiguous"},
    "fp32-nhwc": {"precision": "32-true", "memory_format": "channels_last"},
    "bf16": {"precision": "bf16-mixed", "memory_format": "contiguous"},
    "bf16-nhwc": {"precision": "bf16-mixed", "memory_format": "channels_last"},
}


def searched(n: int, data: ImageData) -> list[tuple[str, ArchSpec]]:
    """``n`` architectures of the CPU preset's space (bench/recipes.py's draw, another seed)."""
    return [(f"searched {i}", s) for i, s in enumerate(architectures(n, data, seed=1))]


def networks(data: ImageData, n_searched: int) -> list[tuple[str, ArchSpec]]:
    shape, k = data.input_shape, data.num_classes
    standard = [
        ("LeNet-5", lenet5(shape, k)),
        ("GAP CNN", gap_cnn(shape, k)),
        ("rules net", rules_cnn(shape, k)),
        ("MobileNet-style", mobilenet_small(shape, k)),
        ("ResNet-8-style", resnet8(shape, k)),
    ]
    return standard + searched(n_searched, data)


def part1(data: ImageData, base: TrainConfig, nets: list[tuple[str, ArchSpec]]) -> None:
    print(f"part 1: seconds an epoch of {len(data.train_y):,} images, and speed against fp32")
    print(f"  {'network':<16} {'params':>8}  " + "  ".join(f"{s:>15}" for s in SETTINGS))
    ratios: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for name, spec in nets:
        secs = {
            s: epoch_seconds(spec, data, dataclasses.replace(base, **v))
            for s, v in SETTINGS.items()
        }
        for s in SETTINGS:
            ratios[s].append(secs["fp32"] / secs[s])
        cells = "  ".join(f"{secs[s]:6.1f} s {secs['fp32'] / secs[s]:5.2f}x" for s in SETTINGS)
        print(f"  {name:<16} {count_params(spec):>8,}  {cells}  {spec.summary()}", flush=True)
    means = "  ".join(f"{'':>8} {statistics.geometric_mean(ratios[s]):5.2f}x" for s in SETTINGS)
    print(f"  {'geometric mean':<16} {'':>8}  {means}")


def part2(data: ImageData, base: TrainConfig, nets: list[tuple[str, ArchSpec]], epochs: int):
    auto = dataclasses.replace(base, precision="auto", memory_format="auto")
    print(
        f"\npart 2: {epochs} epochs on {len(data.train_y):,} images, test on "
        f"{len(data.test_y):,}; fp32 against auto"
    )
    for name, spec in nets:
        row = []
        for label, cfg in (("fp32", base), ("auto", auto)):
            result = fit(spec, data, dataclasses.replace(cfg, epochs=epochs), seed=0)
            _, acc = evaluate(result.model, data.test_x, data.test_y, data.mean, data.std)
            row.append((label, acc, result.seconds))
        (_, a32, s32), (_, a_auto, s_auto) = row
        print(
            f"  {name:<16} {count_params(spec):>8,}  fp32 test {a32:.4f} in {s32:5.0f} s   "
            f"auto test {a_auto:.4f} in {s_auto:5.0f} s   ({a_auto - a32:+.4f}, "
            f"{s32 / s_auto:.2f}x the speed)",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searched", type=int, default=3, help="networks of the space in part 1")
    p.add_argument("--epochs", type=int, default=5, help="epochs of part 2 (0: skip it)")
    p.add_argument(
        "--accuracy-nets",
        default="GAP CNN,ResNet-8-style,searched 0",
        help="comma-separated networks of part 2",
    )
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_bf16()}"
    )
    data = load_dataset("fashion-mnist", seed=0)
    base = TrainConfig(accelerator="cpu", seed=0, **SETTINGS["fp32"])
    nets = networks(data, args.searched)
    known = dict(nets)
    wanted = [n.strip() for n in args.accuracy_nets.split(",")] if args.epochs else []
    missing = [n for n in wanted if n not in known]
    if missing:
        p.error(f"--accuracy-nets: unknown {missing}; known: {', '.join(known)}")
    part1(data, base, nets)
    if wanted:
        part2(data, base, [(n, known[n]) for n in wanted], args.epochs)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
