"""``cnnas experiment ablation`` and ``cnnas experiment heads``.

Each ``add_*_parser`` adds one subcommand to the ``experiment`` group's subparsers and sets
``func``. A preset gives every setting; an option given on the command line overrides it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives import DATASETS, TrainConfig, load_dataset

from ._ablation import (
    FACTORS,
    REGULARISATIONS,
    VGG_CONFIGS,
    AblationBase,
    AblationSettings,
    run_ablation,
)
from ._common import ExperimentLog
from ._heads import HeadsSettings, run_heads

__all__ = ["ABLATION_PRESETS", "HEADS_PRESETS", "add_ablation_parser", "add_heads_parser"]

PRESETS = ("small", "full")

# "full" is the seed's own setting (100 epochs, every factor value, VGG11/16/19 at full width);
# "small" shrinks widths, data and epochs so the whole table trains in minutes on two CPU cores.
ABLATION_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "epochs": 100,
        "subset": None,
        "batch_size": 128,
        "test_limit": None,
        "base_conv_layers": 1,
        "base_dense_layers": 1,
        "base_filters": 64,
        "base_kernel": 5,
        "dense_width": 1024,
        "conv_layers": FACTORS["conv_layers"],
        "dense_layers": FACTORS["dense_layers"],
        "filters": FACTORS["filters"],
        "kernels": FACTORS["kernel"],
        "factors": tuple(FACTORS),
        "vgg": (11, 16, 19),
        "vgg_width": 1.0,
        "vgg_dense": 4096,
    },
    "small": {
        "epochs": 3,
        "subset": 3000,
        "batch_size": 64,
        "test_limit": 2000,
        "base_conv_layers": 1,
        "base_dense_layers": 1,
        "base_filters": 16,
        "base_kernel": 5,
        "dense_width": 128,
        "conv_layers": (1, 2, 4),
        "dense_layers": (1, 2),
        "filters": (8, 16, 32),
        "kernels": (3, 5, 7),
        "factors": tuple(FACTORS),
        "vgg": (11,),
        "vgg_width": 0.125,
        "vgg_dense": 128,
    },
}
HEADS_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "epochs": 20,
        "subset": None,
        "batch_size": 128,
        "test_limit": None,
        "seeds": 5,
        "filters": (32, 64),
        "dense_width": 128,
        "rank_widths": (8, 16, 32, 64),
    },
    "small": {
        "epochs": 3,
        "subset": 4000,
        "batch_size": 64,
        "test_limit": 2000,
        "seeds": 2,
        "filters": (16, 32),
        "dense_width": 64,
        "rank_widths": (8, 16, 32),
    },
}


def _usage(message: str) -> Exception:
    # Imported here: search.cli imports this module to build its parser.
    from ..cli import UsageError

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


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="full",
        help="small: minutes on a CPU; full: the seed's settings (default)",
    )
    p.add_argument(
        "--dataset",
        default="fashion-mnist",
        help=f"one of {', '.join(DATASETS)} (default fashion-mnist)",
    )
    p.add_argument("--data-dir", help="folder of the dataset files")
    p.add_argument("--data-path", help="the file or folder of an npz or image-folder dataset")
    p.add_argument("--image-size", help="resize an image-folder dataset to HxW (e.g. 32x32)")
    p.add_argument("--epochs", type=int, help="epochs per model (overrides the preset)")
    p.add_argument("--subset", type=int, help="training-pool images used (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per step (overrides the preset)")
    p.add_argument("--test-limit", type=int, help="test images scored per epoch (default: preset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and training (default 0)")
    p.add_argument(
        "--accelerator", choices=("auto", "cpu", "gpu"), default="auto", help="where to train"
    )
    p.add_argument("--out", help=f"report folder (default <project-dir>/experiments/{name})")
    p.add_argument(
        "--project-dir",
        default="cnnas-runs",
        help="folder of the local MLflow store (default cnnas-runs)",
    )
    p.add_argument("--mlflow-config", help="mlflow.yml to read (default ./mlflow.yml if present)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides mlflow.yml)")
    p.add_argument(
        "--experiment",
        default=f"cnnas-{name}",
        help=f"MLflow experiment (default cnnas-{name})",
    )


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
        if key == "func" or value is None or defaults.get(key, object()) == value:
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


def add_ablation_parser(experiment_sub: Any) -> argparse.ArgumentParser:
    """Adds ``ablation`` (seed 003) to the ``cnnas experiment`` subparsers."""
    p = experiment_sub.add_parser(
        "ablation",
        help="seed 003: one-factor-at-a-time ablation from a base CNN, with a VGG baseline",
        description=(
            "Seed 003's manual architecture search: conv layers -> GAP -> dense layers, one "
            "factor changed at a time from a base model, VGG11/16/19 as the literature "
            "baseline; writes the summary table (Markdown, CSV), plots and a report, and logs "
            "every model to MLflow."
        ),
    )
    _common(p, "ablation")
    p.add_argument("--base-conv-layers", type=int, help="conv layers of the base (full: 1)")
    p.add_argument("--base-dense-layers", type=int, help="dense layers of the base (full: 1)")
    p.add_argument("--base-filters", type=int, help="filters of the base (full: 64)")
    p.add_argument("--base-kernel", type=int, help="kernel size of the base (full: 5)")
    p.add_argument("--dense-width", type=int, help="units of every dense layer (full: 1024)")
    p.add_argument(
        "--factors",
        help=f"factor groups to vary, comma-separated (default all: {','.join(FACTORS)})",
    )
    p.add_argument("--conv-layers", help="values of the conv-layers factor (full: 1,2,4,8)")
    p.add_argument("--dense-layers", help="values of the dense-layers factor (full: 1,2,4)")
    p.add_argument("--filters", help="values of the filters factor (full: 32,64,128,256)")
    p.add_argument("--kernels", help="values of the kernel factor (full: 3,5,7,9)")
    p.add_argument("--vgg", help="VGG depths of the baseline, e.g. 11,19, or none (full: 11,16,19)")
    p.add_argument("--vgg-width", type=float, help="VGG filter multiplier (full: 1, small: 0.125)")
    p.add_argument("--vgg-dense", type=int, help="units of VGG's two dense layers (full: 4096)")
    p.set_defaults(func=cmd_ablation)
    return p


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


def add_heads_parser(experiment_sub: Any) -> argparse.ArgumentParser:
    """Adds ``heads`` (seed 000) to the ``cnnas experiment`` subparsers."""
    p = experiment_sub.add_parser(
        "heads",
        help="seed 000: multi-scale flatten vs plain flatten vs three heads, redundancy",
        description=(
            "Seed 000's experiment: three variants of one network (multi-scale flatten with "
            "one softmax, without the pooled sections, three heads) over several seeds at 1/4 "
            "and all of the training data, with the effective rank of the representation and "
            "the linear CKA between the multi-scale sections; writes a report and logs every "
            "model to MLflow."
        ),
    )
    _common(p, "heads")
    p.add_argument("--seeds", type=int, help="training seeds per variant and fraction (full: 5)")
    p.add_argument("--filters", help="filters of the conv stages, comma-separated (full: 32,64)")
    p.add_argument("--dense-width", type=int, help="units of the dense layer (full: 128)")
    p.add_argument(
        "--rank-widths",
        help="dense widths tried for the effective rank, or none (full: 8,16,32,64)",
    )
    p.add_argument(
        "--rank-tolerance",
        type=float,
        default=0.01,
        help="accuracy a narrower layer may lose and still count (default 0.01)",
    )
    p.add_argument(
        "--cka-images", type=int, default=1000, help="validation images for CKA (default 1000)"
    )
    p.set_defaults(func=cmd_heads)
    return p
