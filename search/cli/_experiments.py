"""``cnnas experiment ablation``, ``heads`` and ``layer-skip``: the source papers' experiments."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnas.objectives import DATASETS, TrainConfig, load_dataset

from .._config import load_mlflow_config
from ..errors import UsageError
from ..experiments._ablation import (
    FACTORS,
    REGULARISATIONS,
    VGG_CONFIGS,
    AblationBase,
    AblationSettings,
    run_ablation,
)
from ..experiments._common import ExperimentLog
from ..experiments._heads import HeadsSettings, run_heads
from ..experiments._layer_skip import (
    LAYER_SKIP_EXPERIMENT,
    LAYER_SKIP_PRESETS,
    LayerSkipConfig,
    LayerSkipTracker,
    run_layer_skip,
    write_report,
)
from ..experiments._presets import ABLATION_PRESETS, HEADS_PRESETS

__all__ = ["cmd_ablation", "cmd_heads", "cmd_layer_skip"]

_DEFAULT_PROJECT_DIR = "cnnas-runs"
# What the parser adds to every command's namespace: not an option the user typed.
_INTERNAL = frozenset({"command", "command_name", "experiment_command"})


def _usage(message: str) -> Exception:
    return UsageError(message)


def _int_list(option: str, text: str, lo: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise _usage(f"{option} takes comma-separated integers >= {lo}, got {text!r}") from None
    if not values or any(v < lo for v in values):
        raise _usage(f"{option} takes comma-separated integers >= {lo}, got {text!r}")
    return values


def _positive(option: str, value: int | float | None, lo: float = 1) -> None:
    if value is not None and value < lo:
        raise _usage(f"{option} must be at least {lo:g}, got {value}")


def _setting(args: argparse.Namespace, preset: dict[str, Any], key: str) -> Any:
    value = getattr(args, key, None)
    return preset[key] if value is None else value


def _check_common(args: argparse.Namespace) -> None:
    if args.dataset not in DATASETS:
        raise _usage(f"--dataset: unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
    _positive("--epochs", args.epochs)
    _positive("--batch-size", args.batch_size)
    _positive("--test-limit", args.test_limit)
    _positive("--seed", args.seed, 0)


def _command(name: str, args: argparse.Namespace) -> str:
    """The invocation, rebuilt from the options that differ from their defaults, for the report."""
    defaults = {
        "seed": 0,
        "accelerator": "auto",
        "project_dir": "cnnas-runs",
        "experiment": f"cnnas-{name}",
        "dataset": "fashion-mnist",
        "rank_tolerance": 0.01,
        "cka_images": 1000,
    }
    parts = ["cnnas", "experiment", name]
    for key, value in vars(args).items():
        if key in _INTERNAL or value is None or defaults.get(key, object()) == value:
            continue
        parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        size = tuple(int(v) for v in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise _usage(f"--image-size takes HxW or N (e.g. 32x32), got {text!r}")
    return (size[0], size[1])


def _setup(
    args: argparse.Namespace, name: str, preset: dict[str, Any]
) -> tuple[Any, TrainConfig, Path, ExperimentLog]:
    subset = _setting(args, preset, "subset")
    data = load_dataset(
        args.dataset,
        data_dir=args.data_dir,
        path=args.data_path,
        image_size=_image_size(args.image_size),
        subset=subset,
        seed=args.seed,
    )
    train = TrainConfig(
        epochs=_setting(args, preset, "epochs"),
        batch_size=_setting(args, preset, "batch_size"),
        seed=args.seed,
        accelerator=args.accelerator,
        # The papers' recipe (Adam with its defaults, the rate halved on a plateau), whatever
        # the study's default: these commands rerun the papers' experiments.
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="plateau",
    )
    project = Path(args.project_dir)
    out_dir = Path(args.out) if args.out else project / "experiments" / name
    log = ExperimentLog(
        args.experiment,
        project,
        mlflow_config=args.mlflow_config,
        tracking_uri=args.tracking_uri,
    )
    print(
        f"cnnas experiment {name} ({args.preset}): {data!r}\n"
        f"  MLflow {log.uri} experiment {args.experiment!r}; report in {out_dir}",
        flush=True,
    )
    return data, train, out_dir, log


# --- ablation ------------------------------------------------------------------------------------


def cmd_ablation(args: argparse.Namespace) -> int:
    _check_common(args)
    preset = ABLATION_PRESETS[args.preset]
    get: Callable[[str], Any] = lambda key: _setting(args, preset, key)  # noqa: E731
    for option in ("base_conv_layers", "base_dense_layers", "base_filters", "dense_width"):
        _positive("--" + option.replace("_", "-"), getattr(args, option))
    kernel = get("base_kernel")
    if kernel < 1 or kernel % 2 == 0:
        raise _usage(f"--base-kernel must be an odd integer >= 1, got {kernel}")
    factors_arg = get("factors")
    if isinstance(factors_arg, str):
        factors_arg = tuple(
            f.strip().replace("-", "_") for f in factors_arg.split(",") if f.strip()
        )
        unknown = sorted(set(factors_arg) - set(FACTORS))
        if unknown or not factors_arg:
            raise _usage(
                f"--factors: unknown factor group(s) {unknown or factors_arg}; "
                f"known: {', '.join(FACTORS)}"
            )
    grids = {
        "conv_layers": get("conv_layers"),
        "dense_layers": get("dense_layers"),
        "filters": get("filters"),
        "kernel": get("kernels"),
        "regularisation": ((), *REGULARISATIONS),
    }
    for option, key in (
        ("--conv-layers", "conv_layers"),
        ("--dense-layers", "dense_layers"),
        ("--filters", "filters"),
        ("--kernels", "kernels"),
    ):
        if isinstance(getattr(args, key), str):
            grids["kernel" if key == "kernels" else key] = _int_list(option, getattr(args, key))
    if any(k % 2 == 0 for k in grids["kernel"]):
        raise _usage(f"--kernels takes odd kernel sizes, got {grids['kernel']}")
    vgg = get("vgg")
    if isinstance(vgg, str):
        vgg = () if vgg == "none" else _int_list("--vgg", vgg)
        if any(d not in VGG_CONFIGS for d in vgg):
            raise _usage(
                f"--vgg takes depths from {sorted(VGG_CONFIGS)} or 'none', got {args.vgg!r}"
            )
    vgg_width = get("vgg_width")
    if not 0 < vgg_width <= 4:
        raise _usage(f"--vgg-width must be in (0, 4], got {vgg_width}")
    _positive("--vgg-dense", args.vgg_dense)

    data, train, out_dir, log = _setup(args, "ablation", preset)
    settings = AblationSettings(
        base=AblationBase(
            conv_layers=get("base_conv_layers"),
            dense_layers=get("base_dense_layers"),
            filters=get("base_filters"),
            kernel=kernel,
            dense_width=get("dense_width"),
        ),
        factors={f: grids[f] for f in factors_arg},
        vgg=tuple(vgg),
        vgg_width=vgg_width,
        vgg_dense=get("vgg_dense"),
        train=train,
        test_limit=get("test_limit"),
    )
    run_ablation(data, settings, out_dir, log, command=_command("ablation", args))
    return 0


# --- heads ---------------------------------------------------------------------------------------


def cmd_heads(args: argparse.Namespace) -> int:
    _check_common(args)
    preset = HEADS_PRESETS[args.preset]
    get: Callable[[str], Any] = lambda key: _setting(args, preset, key)  # noqa: E731
    filters = get("filters")
    if isinstance(filters, str):
        filters = _int_list("--filters", filters)
    widths = get("rank_widths")
    if isinstance(widths, str):
        widths = () if widths == "none" else _int_list("--rank-widths", widths)
    seeds = get("seeds")
    if seeds < 1:
        raise _usage(f"--seeds must be at least 1, got {seeds}")
    _positive("--dense-width", args.dense_width)
    if not 0 <= args.rank_tolerance < 1:
        raise _usage(f"--rank-tolerance must be in [0, 1), got {args.rank_tolerance}")
    _positive("--cka-images", args.cka_images, 2)

    data, train, out_dir, log = _setup(args, "heads", preset)
    settings = HeadsSettings(
        filters=tuple(filters),
        dense_width=get("dense_width"),
        seeds=seeds,
        rank_widths=tuple(widths),
        rank_tolerance=args.rank_tolerance,
        cka_images=args.cka_images,
        train=train,
        test_limit=get("test_limit"),
    )
    run_heads(data, settings, out_dir, log, command=_command("heads", args))
    return 0


# --- layer skipping ------------------------------------------------------------------------------


def _layer_skip_config(args: argparse.Namespace) -> LayerSkipConfig:
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


def _layer_skip_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, for the report."""
    words = ["cnnas", "experiment", "layer-skip", "--preset", args.preset]
    for name in ("dataset", "subset", "epochs", "router_epochs", "filters", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words)


def cmd_layer_skip(args: argparse.Namespace) -> int:
    cfg = _layer_skip_config(args)
    device = _device(args.device)
    data = load_dataset(
        cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction, subset=cfg.subset,
        seed=cfg.seed,
    )  # fmt: skip
    project_dir = Path(args.project_dir or _DEFAULT_PROJECT_DIR)
    out = Path(args.out) if args.out else project_dir / "reports" / "layer-skip"
    out = out if args.out else out / f"{cfg.dataset}-{args.preset}"
    command = _layer_skip_command(args)

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
