"""``cnnas export``: a trained network as one file that other runtimes load, preprocessing inside.

The exported graph is :meth:`cnnas.objectives.Predictor.graph`: uint8 images ``(N, C, H, W)``,
any batch size, in; class probabilities ``(N, classes)`` out; the normalisation and the softmax
are part of it. Three formats:

- ``onnx``: ``torch.onnx.export`` with the ``torch.export``-based exporter (the legacy
  TorchScript-based one traces a single path through the network and freezes it); one
  self-contained file, read with onnxruntime. Needs the ``export`` extra (onnx, onnxscript,
  onnxruntime).
- ``exported-program``: ``torch.export`` saved as ``.pt2``; ``torch.export.load(f).module()``.
- ``torchscript``: ``torch.jit.trace`` saved with ``torch.jit.save``; ``torch.jit.load(f)``.
  PyTorch deprecates TorchScript; it is here for runtimes that still need it.

An adaptive-depth network is exported by running every stage and picking each image's exit by
the confidence rule (see ``Predictor.graph``), which gives the predictions the network gives in
PyTorch; a graph cannot contain the per-image early stop itself. Every export is loaded back and
compared with the PyTorch predictor before the command reports success: a file whose
probabilities differ by more than :data:`TOLERANCE`, or whose classes differ, is deleted and the
export refused, so a silently different export cannot be written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnas.models import CnnasError
from cnnas.objectives import Predictor

__all__ = ["FORMATS", "TOLERANCE", "ExportError", "ExportReport", "export", "load_exported"]

FORMATS = ("onnx", "torchscript", "exported-program")
# Largest difference of a probability allowed between the export and PyTorch.
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# Metadata stored in the file (ONNX metadata_props, a .pt2's or a TorchScript file's extra file).
META_KEY = "cnnas.json"
_EXTRA = "export"  # pyproject's extra with the ONNX packages


class ExportError(CnnasError, ValueError):
    """An export failed, needs a package that is missing, or differs from PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote and how it compared with the PyTorch predictor."""

    format: str
    path: Path
    bytes: int
    # Images the export was checked on, and the largest |probability difference| there.
    checked: int
    max_abs_diff: float


def _example(predictor: Predictor, n: int = 3) -> torch.Tensor:
    # More than one image: an exporter may specialise a dimension of size 1 to a constant.
    return torch.zeros((n, *predictor.input_shape), dtype=torch.uint8)


def _check_images(predictor: Predictor, n: int = 17) -> np.ndarray:
    """Noise, black, white and mid-grey images, at a batch size unlike the example's (the
    dynamic batch is exercised)."""
    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(n, *predictor.input_shape), dtype=np.uint8)
    x[0], x[1], x[2] = 0, 255, 128
    return x


def _metadata(predictor: Predictor, fmt: str) -> dict[str, Any]:
    spec = predictor.model.spec
    return {
        "format": fmt,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", *predictor.input_shape]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", predictor.num_classes]},
        "classes": list(predictor.classes),
        "mean": list(predictor.mean),
        "std": list(predictor.std),
        "spec_hash": spec.spec_hash(),
        "architecture": spec.summary(),
        "adaptive_depth": bool(spec.adaptive_depth),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress on stdout, log about their own internals (torchvision
    operators they skip) and warn (TorchScript about its deprecation); the command prints one
    line of its own. Errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1)


def _write_onnx(graph: torch.nn.Module, example: torch.Tensor, out: Path, meta: dict) -> None:
    # Imported here, so that a missing package gets a message naming the extra.
    try:
        import onnx
        import onnxscript  # noqa: F401 -- the exporter imports it; checked before it runs
    except ImportError as e:
        raise ExportError(
            f"--format onnx needs the onnx and onnxscript packages ({e.name} is missing): "
            f"pip install 'cnnas[{_EXTRA}]'"
        ) from None

    with _quiet():
        torch.onnx.export(
            graph,
            (example,),
            str(out),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: _batch_dim()}},
            # One file: the weights of a network this small need no external data file.
            external_data=False,
        )
    model = onnx.load(str(out))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)
    onnx.save(model, str(out))


def _write_exported_program(
    graph: torch.nn.Module, example: torch.Tensor, out: Path, meta: dict
) -> None:
    with _quiet():
        program = torch.export.export(graph, (example,), dynamic_shapes={"x": {0: _batch_dim()}})
        torch.export.save(program, str(out), extra_files={META_KEY: json.dumps(meta)})


def _write_torchscript(
    graph: torch.nn.Module, example: torch.Tensor, out: Path, meta: dict
) -> None:
    with _quiet():
        # trace, not script: the graph has no data-dependent branch for tracing to freeze (see
        # the module docstring), and script cannot compile the spec dataclasses.
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={META_KEY: json.dumps(meta)})


def load_exported(path: str | os.PathLike, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 images -> probabilities over an exported file, in the runtime the
    format is meant for (onnxruntime, ``torch.export.load``, ``torch.jit.load``)."""
    path = str(path)
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ExportError(
                f"checking an ONNX export needs onnxruntime: pip install 'cnnas[{_EXTRA}]'"
            ) from None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with _quiet():
        module = torch.export.load(path).module() if fmt == "exported-program" else None
        if fmt == "torchscript":
            module = torch.jit.load(path)
    if module is None:
        raise ExportError(f"--format: unknown format {fmt!r}; known: {', '.join(FORMATS)}")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run


_WRITERS = {
    "onnx": _write_onnx,
    "exported-program": _write_exported_program,
    "torchscript": _write_torchscript,
}


def compare(
    predictor: Predictor, run: Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> tuple[float, int]:
    """``(max |probability difference|, images whose class differs)`` of an export against the
    PyTorch predictor on uint8 ``images``."""
    expected = predictor.predict_proba(images).numpy()
    got = np.asarray(run(images), dtype=np.float32)
    if got.shape != expected.shape:
        raise ExportError(f"the export returns shape {got.shape}, PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max()) if len(got) else 0.0
    return diff, int((got.argmax(1) != expected.argmax(1)).sum())


def export(
    predictor: Predictor,
    fmt: str,
    out: str | os.PathLike,
    *,
    check_images: np.ndarray | None = None,
) -> ExportReport:
    """Writes the predictor's graph to ``out`` in format ``fmt`` (one of :data:`FORMATS`), loads
    it back and compares it with the predictor on ``check_images`` (default: noise and flat
    images at an odd batch size).

    Raises ExportError, with ``out`` removed, when the exporter fails, a package is missing, or
    the export differs from PyTorch (a class, or a probability by more than TOLERANCE).
    """
    if fmt not in _WRITERS:
        raise ExportError(f"--format: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; name the file to write")
    if fmt == "exported-program" and out.suffix != ".pt2":
        # torch.export.load refuses (with a warning first) an archive named otherwise.
        raise ExportError(f"--out {out}: an exported program is a .pt2 file; name it *.pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = predictor.graph()
    images = _check_images(predictor) if check_images is None else check_images
    try:
        try:
            _WRITERS[fmt](graph, _example(predictor), out, _metadata(predictor, fmt))
        except ExportError:
            raise
        except Exception as e:  # the exporters raise many types; any of them means no file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ExportError(
                f"{fmt} export of {predictor.model.spec.summary()} failed: "
                f"{type(e).__name__}: {first[:300]}"
            ) from e
        diff, wrong = compare(predictor, load_exported(out, fmt), images)
        if wrong or not diff <= TOLERANCE:
            raise ExportError(
                f"the {fmt} export differs from PyTorch on {len(images)} check images "
                f"(max |probability difference| {diff:.2e}, tolerance {TOLERANCE:g}; "
                f"{wrong} image(s) change class); nothing written"
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return ExportReport(fmt, out, out.stat().st_size, len(images), diff)
