"""``cnnas pull``, ``evaluate``, ``predict``, ``export`` and ``spec check``: using a model.

Every command that runs a network goes through :class:`cnnas.objectives.Predictor`, which reads
the normalisation from the model's own files; none normalises by hand.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from mlflow import MlflowClient

from cnnas.models import ArchSpec, count_macs, count_params, infer_shapes, load_model, read_metadata
from cnnas.objectives import ImageData, Predictor, load_dataset, unfamiliar

from .._config import StudyConfig
from .._registry import pull
from .._tracking import tracking_uri
from ..errors import UsageError
from ._common import emit_json, out_folder, study_config

__all__ = [
    "cmd_evaluate",
    "cmd_export",
    "cmd_predict",
    "cmd_pull",
    "cmd_spec_check",
    "confusion_table",
]


def _tracking_client(args: argparse.Namespace) -> MlflowClient:
    cfg = study_config(args)
    uri = tracking_uri(cfg.mlflow_config(), cfg.study.project_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no MLflow store at {uri} (study.project_dir); start a study first")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def cmd_pull(args: argparse.Namespace) -> int:
    # A file, a folder inside a file, or a read-only folder: refused before anything is fetched.
    out_folder(args.out)
    meta = pull(_tracking_client(args), args.ref, args.out, verify=not args.no_verify)
    print(
        f"pulled {meta['registered_model']} version {meta['version']} "
        f"(study {meta.get('study')}, trial {meta.get('trial')}) into {args.out}"
    )
    for k, v in sorted(meta.get("metrics", {}).items()):
        print(f"  {k:<9} {v}")
    print(f"  sha256    {meta['sha256']}")
    if args.no_verify:
        print("  not verified (--no-verify): no manifest written; load it with --no-verify")
    return 0


def _check_folder(directory: str) -> None:
    if not Path(directory).is_dir():
        raise UsageError(
            f"{directory} is not a folder; pull a model first: cnnas pull NAME --out DIR"
        )


def _predictor(args: argparse.Namespace, data: ImageData | None = None) -> Predictor:
    """The pulled model of ``args.dir``, checked unless ``--no-verify``. A model whose metadata
    lacks the normalisation (saved by hand or by an experiment) takes ``data``'s, when the
    command has the dataset it was trained on."""
    _check_folder(args.dir)
    verify = not args.no_verify
    meta = read_metadata(args.dir)
    if data is not None and ("mean" not in meta or "std" not in meta):
        model = load_model(args.dir, verify=verify)
        return Predictor(model, data.mean, data.std, meta.get("classes") or data.classes)
    return Predictor.from_dir(args.dir, verify=verify)


def confusion_table(names: list[str], matrix: list[list[int]]) -> str:
    """Rows: true class, columns: predicted; every class name in full, columns aligned."""
    names = [str(n) for n in names]
    cell = max(6, *(len(n) for n in names), *(len(str(v)) for row in matrix for v in row)) + 1
    width = max(len(n) for n in names)
    lines = [" " * width + "".join(f"{n:>{cell}}" for n in names)]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"{name:>{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_folder(args.dir)
    # The files are checked before the dataset is read: a tampered model fails fast.
    load_model(args.dir, verify=not args.no_verify)
    meta = read_metadata(args.dir)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise UsageError("the model does not say which dataset it was trained on; pass --dataset")
    kwargs: dict = {"data_dir": args.data_dir}
    if meta.get("data") and not args.dataset:
        # The study's data section: the same file or folder, size and test split as in training.
        kwargs = StudyConfig.from_dict({"data": meta["data"]}).data.load_kwargs()
        if args.data_dir:
            kwargs["data_dir"] = args.data_dir
    data = load_dataset(dataset, **kwargs)
    predictor = _predictor(args, data)
    if data.input_shape != predictor.input_shape:
        raise UsageError(
            f"{dataset} images are {data.input_shape}, the model takes {predictor.input_shape}"
        )
    x, y = getattr(data, f"{args.split}_x"), getattr(data, f"{args.split}_y")
    acc, matrix = predictor.confusion_matrix(x, y)
    names = list(predictor.classes)
    if args.json:
        emit_json(
            {
                "dataset": dataset,
                "split": args.split,
                "images": len(y),
                "accuracy": acc,
                "classes": names,
                "confusion_matrix": matrix.tolist(),
            }
        )
        return 0
    print(f"{dataset} {args.split} split: {len(y)} images, accuracy {acc:.4f}")
    print("\nconfusion matrix (rows: true class, columns: predicted)")
    print(confusion_table(names, matrix.tolist()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    _check_folder(args.dir)
    predictor = _predictor(args)
    images = []
    for path in args.images:
        try:
            # An image beyond Pillow's pixel limit (a decompression bomb: a few KB of file that
            # decodes to gigabytes) is refused at its header, before anything is decoded; Pillow
            # only warns below twice the limit, so the warning is made an error too.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img.load()
                    images.append(img.copy())
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UsageError(
                f"cannot read image {path}: too many pixels for an image to classify "
                f"(Pillow's limit is {Image.MAX_IMAGE_PIXELS} pixels): {str(e)[:200]}"
            ) from None
        except (OSError, UnidentifiedImageError) as e:
            raise UsageError(f"cannot read image {path}: {e}") from None
    # Each image in the model's channels, resized to its input (bilinear, as Pillow does).
    batch = predictor.images(images, resize=True)
    result = predictor.predict(batch)
    meta = read_metadata(args.dir)
    names = predictor.classes
    rows = []
    for i, (path, p, k) in enumerate(
        zip(args.images, result.probabilities, result.indices, strict=True)
    ):
        k = int(k)
        notes = unfamiliar(
            batch[i].cpu(),
            meta.get("input_stats"),
            original_size=(images[i].size[1], images[i].size[0]),
            original_mode=images[i].mode,
            mean=meta.get("mean"),
            std=meta.get("std"),
        )
        rows.append(
            {
                "image": path,
                "label": names[k],
                "index": k,
                "probability": float(p[k]),
                "probabilities": {str(n): float(v) for n, v in zip(names, p, strict=True)},
                "unlike_training": notes,
            }
        )
    if args.json:
        emit_json({"model": str(args.dir), "predictions": rows})
        return 0
    for row in rows:
        print(f"{row['image']}: {row['label']} ({row['probability']:.3f})")
        if row["unlike_training"]:
            print(
                f"warning: {row['image']} looks unlike the images the model was trained on ("
                + "; ".join(row["unlike_training"])
                + "): the answer may mean little",
                file=sys.stderr,
            )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .._export import INPUT_NAME, OUTPUT_NAME, export
    from .._registry import load_predictor

    verify = not args.no_verify
    if Path(args.ref).is_dir():
        predictor = Predictor.from_dir(args.ref, verify=verify)
    elif Path(args.ref).exists():
        raise UsageError(f"{args.ref} is a file; give a pulled model's folder or NAME@ALIAS")
    else:
        client = _tracking_client(args)
        predictor = load_predictor(args.ref, tracking_uri=client.tracking_uri, verify=verify)
    report = export(predictor, args.format, args.out)
    c, h, w = predictor.input_shape
    print(
        f"exported {args.ref} ({predictor.model.spec.summary()}) as {report.format} to "
        f"{report.path} ({report.bytes:,} bytes)\n"
        f"  input  '{INPUT_NAME}': uint8 images (N, {c}, {h}, {w}), any N; normalised inside\n"
        f"  output '{OUTPUT_NAME}': float32 (N, {predictor.num_classes}), classes "
        f"{', '.join(predictor.classes)}\n"
        f"  checked on {report.checked} images against PyTorch: same classes, max |probability "
        f"difference| {report.max_abs_diff:.1e}"
    )
    return 0


def cmd_spec_check(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {args.file}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{args.file} is not UTF-8 text (a spec is JSON)") from None
    spec = ArchSpec.from_json(text)
    print(f"{'layer':<22} {'output':<16} {'params':>10} {'MACs':>12}")
    for layer in infer_shapes(spec):
        shape = "x".join(map(str, layer.out_shape))
        print(f"{layer.name:<22} {shape:<16} {layer.params:>10,} {layer.macs:>12,}")
    print(f"total: {count_params(spec):,} parameters, {count_macs(spec):,} MACs per image")
    print(f"spec hash {spec.spec_hash()}: {spec.summary()}")
    return 0
