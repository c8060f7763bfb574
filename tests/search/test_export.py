"""``cnnas export``: ONNX, TorchScript and torch.export files that take uint8 images and return
probabilities, checked in their own runtimes (onnxruntime, ``torch.jit.load``,
``torch.export.load``) against the PyTorch predictor on the real digits test images.

Three small networks trained on the digits for a second: a static one, seed 000's three heads
predicting their mean, and an adaptive-depth one whose test images stop at every depth.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch

from cnnas.models import save_model
from cnnas.objectives import Predictor
from cnnas.search import cli
from cnnas.search._export import FORMATS, ExportError, export
from tests.objectives._nets import (
    ADAPTIVE,
    MULTI_HEAD,
    STATIC,
    exits_at_every_depth,
    normalised,
    trained,
)

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def networks(digits) -> dict[str, Predictor]:
    adaptive = exits_at_every_depth(trained(ADAPTIVE, digits), normalised(digits.test_x, digits))
    nets = {"static": trained(STATIC, digits), "multi-head": trained(MULTI_HEAD, digits)}
    nets["adaptive"] = adaptive
    return {k: Predictor(v, digits.mean, digits.std, digits.classes) for k, v in nets.items()}


def run_file(path, fmt: str, x: np.ndarray) -> np.ndarray:
    """The exported file in the runtime its users load it with, not through cnnas."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert inp.type == "tensor(uint8)" and isinstance(inp.shape[0], str), inp
        return session.run(None, {inp.name: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        module = torch.jit.load(str(path)) if fmt == "torchscript" else None
    if fmt == "exported-program":
        module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def cnnas(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_the_adaptive_network_stops_at_every_depth(networks, digits) -> None:
    net = networks["adaptive"].model
    with torch.no_grad():
        _, depths = net.adaptive_forward(normalised(digits.test_x, digits))
    counts = torch.bincount(depths, minlength=4)[1:]
    assert (counts >= 5).all(), counts


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["static", "multi-head", "adaptive"])
def test_export_matches_pytorch_on_every_test_image(networks, digits, tmp_path, name, fmt):
    predictor = networks[name]
    out = tmp_path / f"{name}{SUFFIX[fmt]}"
    report = export(predictor, fmt, out)
    assert report.path == out and out.is_file() and report.max_abs_diff <= 1e-4
    # All 359 test images in one batch and again one by one: the batch dimension is dynamic.
    x = digits.test_x.numpy()
    want = predictor.predict_proba(x).numpy()
    got = run_file(out, fmt, x)
    assert got.shape == want.shape == (359, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert float(np.abs(got - want).max()) <= 1e-4
    single = np.concatenate([run_file(out, fmt, x[i : i + 1]) for i in range(0, 359, 60)])
    assert float(np.abs(single - want[::60]).max()) <= 1e-4
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        meta = json.loads(props["cnnas.json"])
        assert meta["classes"] == list(digits.classes)
        assert meta["spec_hash"] == predictor.model.spec.spec_hash()


def test_a_graph_that_freezes_one_path_is_refused(networks, digits, tmp_path, monkeypatch):
    """What the legacy ONNX exporter does to adaptive depth (every image through the last exit)
    must never be written: the check on images that stop early finds it."""
    predictor = networks["adaptive"]

    class LastExitOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = (x.float() - self.inner.mean) / self.inner.std
            return self.inner.net.forward_exits(z)[-1].softmax(1)

    real_graph = Predictor.graph
    monkeypatch.setattr(Predictor, "graph", lambda self: LastExitOnly(real_graph(self)).eval())
    out = tmp_path / "frozen.pt2"
    with pytest.raises(ExportError, match=r"differs from PyTorch.*nothing written"):
        export(predictor, "exported-program", out, check_images=digits.test_x.numpy())
    assert not out.exists()


def test_the_command_exports_a_pulled_folder(networks, digits, tmp_path) -> None:
    predictor = networks["adaptive"]
    folder = tmp_path / "model"
    save_model(
        predictor.model,
        folder,
        extra={"mean": list(digits.mean), "std": list(digits.std), "classes": digits.classes},
    )
    out = tmp_path / "adaptive.onnx"
    rc, stdout, err = cnnas("export", folder, "--format", "onnx", "--out", out)
    assert rc == 0, err
    assert "uint8 images (N, 1, 8, 8)" in stdout and "same classes" in stdout
    x = digits.test_x.numpy()
    assert np.array_equal(run_file(out, "onnx", x).argmax(1), predictor.predict(x).indices.numpy())

    rc, _, err = cnnas("export", folder, "--format", "exported-program", "--out", tmp_path / "a.pt")
    assert rc == 2 and "*.pt2" in err
    (folder / "metadata.json").write_text("{}")  # tampered: refused before anything is exported
    rc, _, err = cnnas("export", folder, "--out", tmp_path / "b.onnx")
    assert rc == 2 and "sha256" in err and not (tmp_path / "b.onnx").exists()
    rc, _, err = cnnas("export", tmp_path / "nowhere" / "x", "--out", tmp_path / "c.onnx")
    assert rc == 2 and err.startswith("error: ")
