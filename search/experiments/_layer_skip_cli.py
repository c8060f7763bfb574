"""``cnnas experiment layer-skip``: seed 001's layer skipping, with its report and MLflow runs."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any

import torch

from objectives import load_dataset

from .._config import load_mlflow_config
from ._layer_skip import (
    LAYER_SKIP_EXPERIMENT,
    LAYER_SKIP_PRESETS,
    LayerSkipConfig,
    LayerSkipTracker,
    run_layer_skip,
    write_report,
)

__all__ = ["add_layer_skip_parser", "cmd_layer_skip"]

_DEFAULT_PROJECT_DIR = "cnnas-runs"


def add_layer_skip_parser(experiment_sub: Any) -> argparse.ArgumentParser:
    """Adds ``layer-skip`` to the subparsers of the ``cnnas experiment`` group."""
    p = experiment_sub.add_parser(
        "layer-skip",
        help="seed 001: skip conv layers per image (CNN1, activation labels, router, CNN3)",
        description=(
            "Seed 001's layer skipping: train CNN1, label images by their strongest activations, "
            "train a router on the labels, train CNN3 with per-image skipping; the same with "
            "labels from the earliest correct exit classifier. Writes report.md, layer-skip.png "
            f"and results.json, and logs to the MLflow experiment {LAYER_SKIP_EXPERIMENT!r}."
        ),
    )
    p.add_argument(
        "--preset",
        choices=sorted(LAYER_SKIP_PRESETS),
        default="full",
        help="full: the seed's settings (32 maps, 20 epochs, all images); "
        "small: minutes on a CPU (12,000 images, 3 epochs, 12 maps). Default: full",
    )
    p.add_argument(
        "--dataset",
        help="a dataset objectives.load_dataset reads (default: the preset's, fashion-mnist)",
    )
    p.add_argument("--data-dir", help="folder of the dataset files")
    p.add_argument("--subset", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--epochs", type=int, help="epochs of CNN1, CNN3 and the exit classifiers")
    p.add_argument("--router-epochs", type=int, help="epochs of the routers (default: --epochs)")
    p.add_argument("--filters", type=int, help="feature maps of every conv layer")
    p.add_argument("--seed", type=int, help="random seed (data split and initialisation)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--out", help="folder for the report (default: <project-dir>/reports/layer-skip/...)"
    )
    p.add_argument(
        "--project-dir", help=f"folder of the local stores (default {_DEFAULT_PROJECT_DIR})"
    )
    p.add_argument("--mlflow", help="path of mlflow.yml (default: ./mlflow.yml if present)")
    p.add_argument("--no-mlflow", action="store_true", help="write the report only")
    p.set_defaults(func=cmd_layer_skip)
    return p


def _config(args: argparse.Namespace) -> LayerSkipConfig:
    from ..cli import UsageError  # here, not at import: search.cli imports this module

    changes = {
        name: getattr(args, name)
        for name in ("dataset", "data_dir", "subset", "epochs", "router_epochs", "filters", "seed")
        if getattr(args, name, None) is not None
    }
    try:
        return dataclasses.replace(LAYER_SKIP_PRESETS[args.preset], **changes)
    except ValueError as e:
        option = str(e).split(" ", 1)[0].replace("_", "-")
        raise UsageError(f"--{option}: {e}") from None


def _device(name: str) -> torch.device:
    from ..cli import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"--device: unknown device {name!r}; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device on this machine; use cpu or auto")
    return dev


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, for the report."""
    words = ["cnnas", "experiment", "layer-skip", "--preset", args.preset]
    for name in ("dataset", "subset", "epochs", "router_epochs", "filters", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words)


def cmd_layer_skip(args: argparse.Namespace) -> int:
    cfg = _config(args)
    device = _device(args.device)
    data = load_dataset(
        cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction, subset=cfg.subset,
        seed=cfg.seed,
    )  # fmt: skip
    project_dir = Path(args.project_dir or _DEFAULT_PROJECT_DIR)
    out = Path(args.out) if args.out else project_dir / "reports" / "layer-skip"
    out = out if args.out else out / f"{cfg.dataset}-{args.preset}"
    command = _command(args)

    print(f"layer-skip ({args.preset} preset) on {data!r}, device {device}", flush=True)
    tracker = None
    if not args.no_mlflow:
        tracker = LayerSkipTracker(load_mlflow_config(args.mlflow), project_dir)
        tracker.start(cfg, args.preset)
    try:
        result = run_layer_skip(
            cfg,
            data,
            device=device,
            log=lambda line: print(line, flush=True),
            on_net=tracker.child if tracker else None,
        )
        files = write_report(result, out, command=command)
    except BaseException as e:
        if tracker is not None:
            tracker.fail(f"{type(e).__name__}: {e}")
        raise
    if tracker is not None:
        tracker.finish(result, files)
        print(
            f"MLflow: experiment {LAYER_SKIP_EXPERIMENT!r}, run {tracker.parent} at {tracker.uri}"
        )
    print(f"report: {files[0]}")
    print(files[0].read_text())
    return 0
