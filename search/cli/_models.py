"""``cnnas pull``, ``evaluate``, ``predict`` and ``spec check``: using a model."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from mlflow import MlflowClient

from cnnas.models import ArchSpec, count_macs, count_params, infer_shapes, load_model, read_metadata
from cnnas.objectives import confusion_matrix, load_dataset

from .._config import StudyConfig
from .._registry import pull
from .._tracking import tracking_uri
from ..errors import UsageError
from ._common import emit_json, study_config

__all__ = ["cmd_evaluate", "cmd_predict", "cmd_pull", "cmd_spec_check", "confusion_table"]


def _tracking_client(args: argparse.Namespace) -> MlflowClient:
    cfg = study_config(args)
    uri = tracking_uri(cfg.mlflow_config(), cfg.study.project_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no MLflow store at {uri} (study.project_dir); start a study first")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def cmd_pull(args: argparse.Namespace) -> int:
    meta = pull(_tracking_client(args), args.ref, args.out)
    print(
        f"pulled {meta['registered_model']} version {meta['version']} "
        f"(study {meta.get('study')}, trial {meta.get('trial')}) into {args.out}"
    )
    for k, v in sorted(meta.get("metrics", {}).items()):
        print(f"  {k:<9} {v}")
    print(f"  sha256    {meta['sha256']}")
    return 0


def _pulled(directory: str) -> tuple[torch.nn.Module, dict]:
    if not Path(directory).is_dir():
        raise UsageError(
            f"{directory} is not a folder; pull a model first: cnnas pull NAME --out DIR"
        )
    return load_model(directory), read_metadata(directory)


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
    model, meta = _pulled(args.dir)
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
    if data.input_shape != tuple(model.spec.input_shape):
        raise UsageError(
            f"{dataset} images are {data.input_shape}, the model takes "
            f"{tuple(model.spec.input_shape)}"
        )
    mean, std = meta.get("mean", data.mean), meta.get("std", data.std)
    x, y = getattr(data, f"{args.split}_x"), getattr(data, f"{args.split}_y")
    acc, matrix = confusion_matrix(model, x, y, mean, std, data.num_classes)
    names = list(meta.get("classes") or data.classes)
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

    model, meta = _pulled(args.dir)
    c, h, w = model.spec.input_shape
    names = meta.get("classes") or [str(i) for i in range(model.spec.num_classes)]
    mean = torch.tensor(meta.get("mean", [0.0] * c)).view(1, c, 1, 1)
    std = torch.tensor(meta.get("std", [255.0] * c)).view(1, c, 1, 1)
    images = []
    for path in args.images:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                array = torch.tensor(list(img.getdata()), dtype=torch.float32)
        except (OSError, UnidentifiedImageError) as e:
            raise UsageError(f"cannot read image {path}: {e}") from None
        images.append(array.view(h, w, c).permute(2, 0, 1))
    with torch.no_grad():
        probs = (
            model((torch.stack(images) - mean) / std).exp()
            if model.spec.predict == "mean" and model.spec.heads == "multi"
            else model((torch.stack(images) - mean) / std).softmax(1)
        )
    rows = []
    for path, p in zip(args.images, probs, strict=True):
        k = int(p.argmax())
        rows.append(
            {
                "image": path,
                "label": names[k],
                "index": k,
                "probability": float(p[k]),
                "probabilities": {str(n): float(v) for n, v in zip(names, p, strict=True)},
            }
        )
    if args.json:
        emit_json({"model": str(args.dir), "predictions": rows})
        return 0
    for row in rows:
        print(f"{row['image']}: {row['label']} ({row['probability']:.3f})")
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
