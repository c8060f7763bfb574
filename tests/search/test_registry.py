"""The Pareto front as a result: registering, aliases, pulling, evaluating and predicting.

Tiny real studies on scikit-learn digits (five trials of two epochs, about a second each) run
through ``cnnas`` itself against the real stores: an Optuna journal file, MLflow SQLite tracking
and registry, MLflow's file artifact store; the last tests do the same against an ``mlflow server``
subprocess. ``alpha`` is built once and only read; a test that changes a registry builds its own.
The ``digits`` fixture (tests/conftest.py) gives the test split the CLI evaluates on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from cnnas import models, search
from cnnas.objectives import confusion_matrix
from cnnas.search import cli
from cnnas.search._aliases import ChampionRule, assign_aliases
from tests.search import _fs
from tests.search._helpers import front_of, members_of

ALIASES = ("most-accurate", "smallest", "best-ratio", "knee", "champion")

TINY = {
    "study": {"trials": 5, "seed": 1},
    "data": {"dataset": "digits"},
    "train": {"epochs": 2, "batch_size": 64},
    # No final phase: these tests register the search's own networks (the final phase's are
    # registered by the same code, from its runs; tests/search/test_mlflow_models.py has them).
    "final": {"share": 0},
    "space": {
        "blocks": [1, 2],
        "convs": [1],
        "base_filters": [4, 8, 16],
        "growth": ["constant"],
        "kernels": [3],
        "batch_norm": [True],
        "block_dropout": [0.0],
        "dense_dropout": [0.0],
        "pools": ["max", "none"],
        "aggregations": ["flatten", "gap"],
        "dense_layers": [0, 1],
        "dense_width": {"min": 8, "max": 32},
    },
}

readonly_dir = _fs.readonly_dir  # a fixture


# --- helpers --------------------------------------------------------------------------------------


def cnnas(*argv: str) -> tuple[int, str, str]:
    """Runs the CLI in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write_config(root: Path, name: str, **sections) -> Path:
    """A study config in ``root`` with ``study.project_dir`` = ``root/runs``."""
    cfg = json.loads(json.dumps(TINY))
    cfg["study"]["name"] = name
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    cfg["study"]["project_dir"] = str(root / "runs")
    path = root / f"{name}-{len(list(root.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def open_study(project_dir: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project_dir / "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def versions(client: MlflowClient, name: str) -> dict[str, object]:
    """Version number -> ModelVersion of a registered model."""
    return {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}


def alias_versions(client: MlflowClient, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def front_numbers(study: optuna.Study) -> set[int]:
    return {t.number for t in front_of(study)}


def source_path(version) -> Path:
    """The folder on disk of a model version's files (spec, weights, metadata, manifest): the
    ``artifacts/model`` folder of the LoggedModel its file:// source names."""
    parsed = urlparse(version.source)
    assert parsed.scheme == "file", version.source
    return Path(urllib.request.url2pathname(parsed.path)) / "artifacts" / "model"


def flip_byte(path: Path, offset: int = -1) -> bytes:
    """Flips the low bit of one byte of ``path``; returns the original content."""
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def normalised(x: torch.Tensor, meta: dict) -> torch.Tensor:
    c = x.shape[1]
    mean = torch.tensor(meta["mean"]).view(1, c, 1, 1)
    std = torch.tensor(meta["std"]).view(1, c, 1, 1)
    return (x.float() - mean) / std


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Built:
    """A study run through ``cnnas study start`` (which registered its front)."""

    root: Path
    config: Path
    name: str
    uri: str
    start_out: str

    @property
    def project_dir(self) -> Path:
        return self.root / "runs"

    @property
    def model(self) -> str:
        return f"cnnas-{self.name}"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def study(self) -> optuna.Study:
        return open_study(self.project_dir, self.name)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Networks this small train fastest on one thread, and steadily on a busy machine (two
    threads on two loaded cores stall for seconds per trial)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created (MLflow's migrations take seconds)."""
    path = tmp_path_factory.mktemp("mlflow-empty") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def build(empty_mlflow_db):
    """``build(root, name, *start_args, **config_sections)``: runs a study from the CLI."""

    def run(root: Path, name: str, *start_args: str, **sections) -> Built:
        (root / "runs").mkdir(parents=True, exist_ok=True)
        shutil.copy(empty_mlflow_db, root / "runs" / "mlflow.db")
        config = write_config(root, name, **sections)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            rc, out, err = cnnas("study", "start", "--config", config, *start_args)
        assert rc == 0, err
        return Built(root, config, name, f"sqlite:///{root / 'runs' / 'mlflow.db'}", out)

    return run


@pytest.fixture(scope="module")
def alpha(build, tmp_path_factory) -> Built:
    """Five trials, registered at the end of ``study start``; tests using it only read."""
    return build(tmp_path_factory.mktemp("alpha"), "alpha")


@pytest.fixture(scope="module")
def pulled(alpha, tmp_path_factory) -> tuple[Path, str]:
    """``cnnas pull cnnas-alpha@champion`` into a folder; (folder, stdout)."""
    out = tmp_path_factory.mktemp("pulled") / "champion"
    rc, stdout, err = cnnas(
        "pull", f"{alpha.model}@champion", "--out", out, "--config", alpha.config
    )
    assert rc == 0, err
    return out, stdout


# --- 1. the done-when path ------------------------------------------------------------------------


def test_start_registers_every_front_member_once_with_its_metrics(alpha, tmp_path) -> None:
    study, client = alpha.study(), alpha.client
    assert f"registered model '{alpha.model}'" in alpha.start_out
    front = front_of(study)
    registered = versions(client, alpha.model)
    assert sorted(int(v.tags["cnnas.trial"]) for v in registered.values()) == sorted(
        t.number for t in front
    )
    recorded = study.user_attrs["test_accuracy"]
    for t in front:
        (v,) = [v for v in registered.values() if v.tags["cnnas.trial"] == str(t.number)]
        a = t.user_attrs
        assert v.run_id == a["mlflow_run_id"]
        # The version is the run's MLflow Model (a LoggedModel of that run).
        logged = client.get_logged_model(v.tags["cnnas.model_id"])
        assert logged.source_run_id == v.run_id and v.source == logged.artifact_location
        assert v.tags["cnnas.study"] == "alpha" and v.tags["cnnas.refit"] == "0"
        assert v.tags["cnnas.spec_hash"] == a["spec_hash"]
        assert v.tags["val_acc"] == f"{a['val_acc']:.6f}"
        assert v.tags["params"] == str(int(a["params"])) and v.tags["macs"] == str(int(a["macs"]))
        assert v.tags["test_acc"] == f"{recorded[str(t.number)]:.6f}"
        # The sha256 the registry recorded is the one of the weights in the run's artifacts,
        # and its manifest that of every file.
        weights = source_path(v) / models.WEIGHTS_FILE
        assert v.tags["cnnas.sha256"] == models.sha256_file(weights)
        manifest = json.loads(v.tags["cnnas.manifest"])
        assert manifest == {
            name: models.sha256_file(source_path(v) / name)
            for name in (models.SPEC_FILE, models.WEIGHTS_FILE, models.META_FILE)
        }
        run_files = Path(client.download_artifacts(v.run_id, "model", str(tmp_path / v.run_id)))
        assert models.sha256_file(run_files / models.WEIGHTS_FILE) == manifest[models.WEIGHTS_FILE]
    # Default rule: the champion is the most accurate member; aliases follow the alias rules.
    expected = assign_aliases(members_of(front), ChampionRule())
    by_trial = {v.tags["cnnas.trial"]: k for k, v in registered.items()}
    assert alias_versions(client, alpha.model) == {
        a: by_trial[str(m.trial)] for a, m in expected.items()
    }
    assert set(expected) == set(ALIASES)


def test_pulled_champion_predicts_exactly_like_the_trials_own_network(
    alpha, pulled, digits, tmp_path
) -> None:
    folder, stdout = pulled
    client = alpha.client
    version = client.get_model_version_by_alias(alpha.model, "champion")
    trial = alpha.study().trials[int(version.tags["cnnas.trial"])]
    run_id = trial.user_attrs["mlflow_run_id"]
    assert f"pulled {alpha.model} version {version.version} (study alpha, trial " in stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [models.SPEC_FILE, models.WEIGHTS_FILE, models.META_FILE, models.MANIFEST_FILE]
    )
    meta = models.read_metadata(folder)
    assert meta["registered_model"] == alpha.model
    assert str(meta["version"]) == str(version.version)
    assert meta["alias"] == "champion" and meta["source_run"] == run_id
    assert meta["trial"] == trial.number and meta["dataset"] == "digits"
    assert meta["sha256"] == models.sha256_file(folder / models.WEIGHTS_FILE)
    assert meta["sha256"] == version.tags["cnnas.sha256"]

    logged = models.load_model(client.download_artifacts(run_id, "model", str(tmp_path)))
    x = normalised(digits.test_x, meta)
    with torch.no_grad():
        expected = logged(x)
        for model in (models.load_model(folder), search.load(folder)):
            assert not model.training
            assert torch.equal(model(x), expected)


def test_recorded_test_accuracy_is_what_evaluate_prints(alpha, pulled, digits) -> None:
    folder, _ = pulled
    client = alpha.client
    version = client.get_model_version_by_alias(alpha.model, "champion")
    number = version.tags["cnnas.trial"]
    study = alpha.study()
    run = client.get_run(study.trials[int(number)].user_attrs["mlflow_run_id"])

    meta = models.read_metadata(folder)
    acc, matrix = confusion_matrix(
        models.load_model(folder), digits.test_x, digits.test_y, meta["mean"], meta["std"], 10
    )
    assert int(matrix.sum()) == len(digits.test_y) == 359
    assert acc == int(matrix.diag().sum()) / 359
    assert study.user_attrs["test_accuracy"][number] == acc
    assert run.data.metrics["test_acc"] == acc
    assert version.tags["test_acc"] == f"{acc:.6f}"

    rc, out, err = cnnas("evaluate", folder, "--split", "test")
    assert rc == 0, err
    printed = re.search(r"digits test split: 359 images, accuracy (0\.\d{4})\n", out)
    assert printed, out
    assert printed[1] == f"{acc:.4f}"
    assert "confusion matrix (rows: true class, columns: predicted)" in out
    # One row per class, named, and then exactly that row of the matrix.
    rows = [line.split() for line in out.splitlines() if re.fullmatch(r"\s*\d( +\d+){10}", line)]
    assert [r[0] for r in rows] == [str(k) for k in range(10)]
    assert [[int(v) for v in r[1:]] for r in rows] == matrix.tolist()
    rc, out, err = cnnas("evaluate", folder, "--split", "test", "--json")
    assert rc == 0, err
    document = json.loads(out)
    assert document["accuracy"] == acc and document["images"] == 359
    assert document["confusion_matrix"] == matrix.tolist()
    assert document["classes"] == [str(k) for k in range(10)]


def test_status_and_pareto_json_list_the_same_front(alpha) -> None:
    rc, out, err = cnnas("study", "status", alpha.name, "--config", alpha.config, "--json")
    assert rc == 0, err
    status = json.loads(out)
    assert status["study"] == alpha.name and status["complexity"] == "params"
    assert status["trials"]["planned"] == status["trials"]["counted"] == 5
    front = {t["number"] for t in status["front"]}
    assert front == front_numbers(alpha.study())
    rc, out, err = cnnas("pareto", alpha.name, "--config", alpha.config, "--json")
    assert rc == 0, err
    pareto = json.loads(out)
    assert {t["number"] for t in pareto["front"]} == front
    recorded = alpha.study().user_attrs["test_accuracy"]
    for t in pareto["front"]:
        assert t["test_acc"] == recorded[str(t["number"])]
        assert set(t) >= {"val_acc", "params", "macs", "architecture", "spec_hash", "mlflow_run_id"}
    assert Path(pareto["plot"]["png"]).is_file()


def test_predict_warns_about_an_image_unlike_the_training_data(pulled, digits, tmp_path) -> None:
    from PIL import Image

    folder, _ = pulled
    real, inverted = tmp_path / "real.png", tmp_path / "inverted.png"
    Image.fromarray(digits.test_x[0, 0].numpy()).save(real)
    Image.fromarray(255 - digits.test_x[0, 0].numpy()).save(inverted)
    rc, out, err = cnnas("predict", folder, real, inverted)
    assert rc == 0, err
    assert f"warning: {inverted} looks unlike the images the model was trained on" in err
    assert str(real) not in err
    rc, out, err = cnnas("predict", folder, real, inverted, "--json")
    rows = json.loads(out)["predictions"]
    assert rows[0]["unlike_training"] == [] and rows[1]["unlike_training"]


def test_predict_json_gives_every_class_probability(pulled, tmp_path) -> None:
    from PIL import Image

    folder, _ = pulled
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    rc, out, err = cnnas("predict", folder, image, image, "--json")
    assert rc == 0, err
    rows = json.loads(out)["predictions"]
    assert [r["image"] for r in rows] == [str(image)] * 2
    for r in rows:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert (
            r["probabilities"][r["label"]] == r["probability"] == max(r["probabilities"].values())
        )


def test_predict_scales_16_bit_images_rather_than_clipping_them(pulled, digits, tmp_path) -> None:
    """A 16-bit PNG of a digit predicts what its 8-bit original does; clipped at 255, it would
    be a white square."""
    from PIL import Image

    folder, _ = pulled
    eight, sixteen = tmp_path / "eight.png", tmp_path / "sixteen.png"
    pixels = digits.test_x[0, 0].numpy()
    Image.fromarray(pixels).save(eight)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(sixteen)  # 255 * 257 = 65535
    assert Image.open(sixteen).mode.startswith("I")
    rc, out, err = cnnas("predict", folder, eight, sixteen, "--json")
    assert rc == 0, err
    a, b = json.loads(out)["predictions"]
    assert a["label"] == b["label"]
    for name, p in a["probabilities"].items():
        assert b["probabilities"][name] == pytest.approx(p, abs=1e-6)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature and a header: enough for Pillow to open it and read its
    size, as a decompression bomb's few bytes are."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 40_000])  # Pillow warns past 89M pixels, raises past 2x
def test_predict_refuses_a_decompression_bomb_in_one_line(pulled, tmp_path, side) -> None:
    folder, _ = pulled
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(side, side))
    rc, out, err = cnnas("predict", folder, bomb)
    assert rc == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read image {bomb}"), err
    assert "too many pixels" in lines[0] and len(lines[0]) < 400


# --- 2. tampering ---------------------------------------------------------------------------------


def test_a_tampered_pulled_model_is_refused(pulled, tmp_path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(pulled[0], folder)
    flip_byte(folder / models.WEIGHTS_FILE)
    with pytest.raises(models.ModelFileError, match="sha256"):
        models.load_model(folder)
    with pytest.raises(models.ModelFileError, match="sha256"):
        search.load(folder)
    rc, out, err = cnnas("evaluate", folder)
    assert rc == 2
    assert "sha256" in err and "Traceback" not in err and "accuracy" not in out
    rc, out, err = cnnas("predict", folder, folder / models.SPEC_FILE)
    assert rc == 2 and "sha256" in err


@pytest.mark.parametrize("fix_metadata", [False, True], ids=["weights", "weights+metadata"])
def test_pull_refuses_weights_tampered_in_the_artifact_store(alpha, tmp_path, fix_metadata) -> None:
    client = alpha.client
    version = client.get_model_version_by_alias(alpha.model, "smallest")
    stored = source_path(version)
    weights, meta_file = stored / models.WEIGHTS_FILE, stored / models.META_FILE
    original_meta = meta_file.read_bytes()
    original = flip_byte(weights)
    try:
        if fix_metadata:
            # An attacker who also rewrites metadata.json still cannot match the registry's tag.
            meta = json.loads(original_meta)
            meta["sha256"] = models.sha256_file(weights)
            meta_file.write_text(json.dumps(meta))
        out = tmp_path / "sub" / "model"
        rc, stdout, err = cnnas(
            "pull", f"{alpha.model}/{version.version}", "--out", out, "--config", alpha.config
        )
        assert rc == 2, stdout
        assert "sha256" in err and "refusing" in err
        assert not out.exists()
        assert list(out.parent.iterdir()) == [], "no staging folder left behind"
        with pytest.raises(models.ModelFileError):
            search.pull(client, f"{alpha.model}@smallest", out)
        assert not out.exists()
    finally:
        weights.write_bytes(original)
        meta_file.write_bytes(original_meta)
    assert models.sha256_file(weights) == version.tags["cnnas.sha256"]


def test_a_failed_pull_leaves_an_earlier_pull_in_place(alpha, pulled, tmp_path) -> None:
    out = tmp_path / "model"
    shutil.copytree(pulled[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    stored = source_path(alpha.client.get_model_version_by_alias(alpha.model, "champion"))
    original = flip_byte(stored / models.WEIGHTS_FILE)
    try:
        rc, _, err = cnnas(
            "pull", f"{alpha.model}@champion", "--out", out, "--config", alpha.config
        )
    finally:
        (stored / models.WEIGHTS_FILE).write_bytes(original)
    assert rc == 2 and "sha256" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_pull_and_evaluate_refuse_a_tampered_metadata_file(alpha, pulled, tmp_path) -> None:
    """metadata.json says how images are normalised: an edit changes every prediction, so it is
    refused like one in the weights, in the artifact store and in a pulled folder."""
    version = alpha.client.get_model_version_by_alias(alpha.model, "smallest")
    meta_file = source_path(version) / models.META_FILE
    original = meta_file.read_bytes()
    meta = json.loads(original)
    meta["mean"] = [m + 1.0 for m in meta["mean"]]
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    out = tmp_path / "stored"
    try:
        rc, _, err = cnnas(
            "pull", f"{alpha.model}@smallest", "--out", out, "--config", alpha.config
        )
    finally:
        meta_file.write_bytes(original)
    assert rc == 2 and f"{models.META_FILE}: sha256" in err and "refusing" in err
    assert not out.exists()

    folder = tmp_path / "pulled"
    shutil.copytree(pulled[0], folder)
    meta = models.read_metadata(folder)
    meta["std"] = [s * 2 for s in meta["std"]]
    (folder / models.META_FILE).write_text(json.dumps(meta))
    for argv in (("evaluate", folder), ("predict", folder, folder / models.SPEC_FILE)):
        rc, out_text, err = cnnas(*argv)
        assert rc == 2 and f"{models.META_FILE}: sha256" in err, err
        assert "accuracy" not in out_text
    rc, out_text, err = cnnas("evaluate", folder, "--no-verify")
    assert rc == 0 and "accuracy" in out_text, err


def test_a_version_without_its_manifest_is_refused_unless_no_verify(alpha, tmp_path) -> None:
    """A version whose manifest tag is gone (deleted, or registered before there was one): pull
    refuses it, even with untouched files, and refuses tampered ones just the same; --no-verify
    pulls either, into a folder without a manifest, which loads only with --no-verify."""
    client = alpha.client
    original = client.get_model_version_by_alias(alpha.model, "smallest")
    copy = "cnnas-alpha-copy"  # a registered model of its own: alpha's registry stays as it is
    client.create_registered_model(copy)
    try:
        _pull_without_manifest(client, copy, original, alpha, tmp_path)
    finally:
        client.delete_registered_model(copy)


def _pull_without_manifest(client, copy, original, alpha, tmp_path) -> None:
    version = client.create_model_version(
        copy, original.source, run_id=original.run_id, tags=original.tags
    )
    client.delete_model_version_tag(copy, version.version, "cnnas.manifest")
    ref = f"{copy}/{version.version}"
    rc, _, err = cnnas("pull", ref, "--out", tmp_path / "a", "--config", alpha.config)
    assert rc == 2 and "no manifest" in err and "--no-verify" in err
    assert not (tmp_path / "a").exists()

    weights = source_path(version) / models.WEIGHTS_FILE
    original_weights = flip_byte(weights)
    try:
        rc, _, err = cnnas("pull", ref, "--out", tmp_path / "b", "--config", alpha.config)
        assert rc == 2 and "no manifest" in err
        assert not (tmp_path / "b").exists()
        rc, out, err = cnnas(
            "pull", ref, "--out", tmp_path / "c", "--config", alpha.config, "--no-verify"
        )
    finally:
        weights.write_bytes(original_weights)
    assert rc == 0 and "not verified" in out, err
    assert not (tmp_path / "c" / models.MANIFEST_FILE).exists()
    assert models.read_metadata(tmp_path / "c")["verified"] is False
    rc, _, err = cnnas("evaluate", tmp_path / "c")
    assert rc == 2 and f"{models.MANIFEST_FILE}: missing" in err and "--no-verify" in err
    with pytest.raises(models.ModelFileError, match="manifest"):
        search.load(tmp_path / "c")
    search.load(tmp_path / "c", verify=False)


# --- 3. no pickle on the pull-and-load path -------------------------------------------------------


def test_pull_and_load_never_unpickle(alpha, pulled, tmp_path, monkeypatch, digits) -> None:
    calls: list[str] = []

    def forbidden(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called on the pull-and-load path")

        return refuse

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden(f"pickle.{name}"))
    monkeypatch.setattr(torch, "load", forbidden("torch.load"))

    client = MlflowClient(tracking_uri=alpha.uri, registry_uri=alpha.uri)
    meta = search.pull(client, f"{alpha.model}@champion", tmp_path / "model")
    from_folder = models.load_model(tmp_path / "model")
    from_registry = search.load(f"models:/{alpha.model}@champion", tracking_uri=alpha.uri)
    monkeypatch.undo()
    assert calls == []
    assert meta["sha256"] == models.read_metadata(pulled[0])["sha256"]
    x = normalised(digits.test_x[:32], meta)
    with torch.no_grad():
        assert torch.equal(from_folder(x), from_registry(x))
        assert torch.equal(from_folder(x), models.load_model(pulled[0])(x))


# --- 4. idempotent registration, aliases that move ------------------------------------------------

SMALLEST_ARCH = {
    "blocks": 1,
    "base_filters": 4,
    "pool_0": "max",
    "aggregation": "gap",
    "dense_layers": 0,
}
# Two unpooled 16-filter blocks: more accurate than any of the first five trials here (0.94
# against 0.91 validation accuracy), so @most-accurate has to move to it.
LARGE_ARCH = {
    "blocks": 2,
    "base_filters": 16,
    "pool_0": "none",
    "pool_1": "none",
    "aggregation": "flatten",
    "dense_layers": 0,
}


def test_registering_again_is_idempotent_and_aliases_follow_the_front(
    build, tmp_path, monkeypatch
) -> None:
    b = build(tmp_path, "beta")
    monkeypatch.chdir(tmp_path)
    client = b.client
    first = versions(client, b.model)
    first_aliases = alias_versions(client, b.model)
    first_front = front_numbers(b.study())
    first_most_accurate = int(first[first_aliases["most-accurate"]].tags["cnnas.trial"])
    for _ in range(2):
        rc, out, err = cnnas("register", "beta", "--config", b.config)
        assert rc == 0, err
        assert f"registered model 'cnnas-beta': {len(first_front)} version(s)" in out
        again = versions(client, b.model)
        assert {k: v.tags["cnnas.trial"] for k, v in again.items()} == {
            k: v.tags["cnnas.trial"] for k, v in first.items()
        }
        assert alias_versions(client, b.model) == first_aliases

    # The study gains trials: the smallest architecture of the space (fewer parameters than any
    # trial so far, so it joins the front) and a large one (the most accurate, if it beats them).
    study = b.study()
    done = {t.user_attrs["spec_hash"] for t in study.trials}
    study.enqueue_trial(SMALLEST_ARCH)
    study.enqueue_trial(LARGE_ARCH)
    rc, _, err = cnnas("study", "start", "--config", b.config, "--trials", "7", "--no-register")
    assert rc == 0, err
    study = b.study()
    new = study.trials[5:]
    assert [t.state for t in new] == [TrialState.COMPLETE] * 2
    assert not {t.user_attrs["spec_hash"] for t in new} & done
    assert {t.params["base_filters"] for t in new} == {4, 16}
    front = front_of(study)
    now_front = {t.number for t in front}
    assert now_front != first_front
    assert 5 in now_front, "the smallest network is always on the front"
    assert versions(client, b.model).keys() == first.keys(), "--no-register registered nothing"

    rc, out, err = cnnas("register", "beta", "--config", b.config)
    assert rc == 0, err
    after = versions(client, b.model)
    assert {k: v.tags["cnnas.trial"] for k, v in after.items() if k in first} == {
        k: v.tags["cnnas.trial"] for k, v in first.items()
    }
    added = {int(v.tags["cnnas.trial"]) for k, v in after.items() if k not in first}
    assert added == now_front - first_front
    version_of = {int(v.tags["cnnas.trial"]): k for k, v in after.items()}
    aliases = alias_versions(client, b.model)
    assert set(aliases) == set(ALIASES)
    for alias, v in aliases.items():
        assert int(after[v].tags["cnnas.trial"]) in now_front, alias
    most_accurate = min(front, key=lambda t: (-t.user_attrs["val_acc"], t.number))
    assert aliases["most-accurate"] == version_of[most_accurate.number]
    if most_accurate.number != first_most_accurate:
        assert aliases["most-accurate"] != first_aliases["most-accurate"]
        assert most_accurate.number == 6, "only the large newcomer can have overtaken"
    assert aliases["champion"] == version_of[most_accurate.number]
    assert aliases["smallest"] == version_of[5]
    expected = assign_aliases(members_of(front), ChampionRule())
    assert aliases == {a: version_of[m.trial] for a, m in expected.items()}


# --- 5. refit -------------------------------------------------------------------------------------


def test_refit_registers_retrained_versions_and_moves_the_aliases(
    build, tmp_path, monkeypatch
) -> None:
    b = build(tmp_path, "gamma", study={"trials": 3}, registry={"refit_epochs": 1})
    monkeypatch.chdir(tmp_path)
    client = b.client
    plain = versions(client, b.model)
    front = front_numbers(b.study())
    assert {int(v.tags["cnnas.trial"]) for v in plain.values()} == front

    rc, _, err = cnnas("register", "gamma", "--config", b.config, "--refit")
    assert rc == 0, err
    after = versions(client, b.model)
    refits = {k: v for k, v in after.items() if k not in plain}
    assert {int(v.tags["cnnas.trial"]) for v in refits.values()} == front
    assert len(refits) == len(front)
    study = b.study()
    for v in refits.values():
        assert v.tags["cnnas.refit"] == "1" and v.tags["refit_epochs"] == "1"
        trial = study.trials[int(v.tags["cnnas.trial"])]
        assert v.run_id != trial.user_attrs["mlflow_run_id"]
        run = client.get_run(v.run_id)
        assert run.data.tags["cnnas.refit_of"] == v.tags["cnnas.trial"]
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
        assert run.data.metrics["epochs"] == 1
        assert v.tags["test_acc"] == f"{run.data.metrics['test_acc']:.6f}"
        assert v.tags["cnnas.sha256"] == models.sha256_file(source_path(v) / models.WEIGHTS_FILE)
    aliases = alias_versions(client, b.model)
    assert set(aliases) == set(ALIASES)
    assert set(aliases.values()) <= set(refits), "every alias points at a refit version"

    rc, _, err = cnnas("register", "gamma", "--config", b.config, "--refit")
    assert rc == 0, err
    assert versions(client, b.model).keys() == after.keys(), "a second --refit retrains nothing"

    out_dir = tmp_path / "model"
    rc, _, err = cnnas("pull", "cnnas-gamma@champion", "--out", out_dir, "--config", b.config)
    assert rc == 0, err
    meta = models.read_metadata(out_dir)
    assert meta["refit_epochs"] == 1 and str(meta["version"]) == aliases["champion"]
    models.load_model(out_dir)


# --- 6. alias rules from the config ---------------------------------------------------------------


def test_champion_follows_the_configured_rule_and_a_stale_one_is_removed(
    build, tmp_path, monkeypatch
) -> None:
    b = build(tmp_path, "delta", study={"trials": 4})
    monkeypatch.chdir(tmp_path)
    client = b.client
    front = sorted(front_of(b.study()), key=lambda t: t.user_attrs["params"])
    assert len(front) >= 2, [t.user_attrs for t in front]
    version_of = {int(v.tags["cnnas.trial"]): k for k, v in versions(client, b.model).items()}
    registered = set(version_of.values())
    assert alias_versions(client, b.model)["champion"] == version_of[front[-1].number]

    def register(**registry) -> tuple[int, str, str]:
        config = write_config(tmp_path, "delta", study={"trials": 4}, registry=registry)
        return cnnas("register", "delta", "--config", config)

    limit = int(front[-2].user_attrs["params"] + front[-1].user_attrs["params"]) // 2
    rc, out, err = register(champion="most_accurate", champion_max_params=limit)
    assert rc == 0, err
    within = [t for t in front if t.user_attrs["params"] <= limit]
    best = max(within, key=lambda t: (t.user_attrs["val_acc"], -t.user_attrs["params"]))
    aliases = alias_versions(client, b.model)
    assert aliases["champion"] == version_of[best.number] != aliases["most-accurate"]
    assert f"@champion       version {version_of[best.number]:>3}  (trial {best.number})" in out

    rc, _, err = register(champion="smallest_within", champion_within=1.0)
    assert rc == 0, err
    aliases = alias_versions(client, b.model)
    assert aliases["champion"] == aliases["smallest"] == version_of[front[0].number]

    # A limit no member meets: no champion, and the one registered before is gone.
    smallest = int(front[0].user_attrs["params"])
    rc, out, err = register(champion="most_accurate", champion_max_params=smallest - 1)
    assert rc == 0, err
    aliases = alias_versions(client, b.model)
    assert "champion" not in aliases and "  @champion" not in out
    assert set(aliases) == set(ALIASES) - {"champion"}
    assert set(versions(client, b.model)) == registered, "alias changes add no versions"
    rc, _, err = cnnas(
        "pull", "cnnas-delta@champion", "--out", tmp_path / "m", "--config", b.config
    )
    assert rc == 2 and "champion" in err
    assert not (tmp_path / "m").exists()


def test_registering_a_macs_study_again_changes_nothing(build, tmp_path, monkeypatch) -> None:
    b = build(tmp_path, "mu", study={"complexity": "macs"})
    monkeypatch.chdir(tmp_path)
    study = b.study()
    by_macs = {t.number for t in front_of(study, "macs")}
    if by_macs == {t.number for t in front_of(study, "params")}:
        pytest.skip("this study's params and MACs fronts happen to agree")
    before = versions(b.client, b.model)
    assert {int(v.tags["cnnas.trial"]) for v in before.values()} == by_macs
    aliases = alias_versions(b.client, b.model)
    rc, _, err = cnnas("register", "mu", "--config", b.config)
    assert rc == 0, err
    assert versions(b.client, b.model).keys() == before.keys()
    assert alias_versions(b.client, b.model) == aliases


# --- 7. the pareto command ------------------------------------------------------------------------


def test_pareto_prints_the_front_with_test_accuracy_and_writes_plots(
    alpha, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    study = alpha.study()
    front = front_of(study)
    rc, out, err = cnnas("pareto", "alpha", "--config", alpha.config)
    assert rc == 0, err
    header = next(line for line in out.splitlines() if line.startswith("trial"))
    assert "test_acc" in header.split() and "val_acc" in header.split()
    recorded = study.user_attrs["test_accuracy"]
    col = header.split().index("test_acc")
    rows = {
        int(line.split()[0]): line.split() for line in out.splitlines() if re.match(r" +\d", line)
    }
    assert sorted(rows) == sorted(t.number for t in front)
    for number, cells in rows.items():
        assert cells[col] == f"{recorded[str(number)]:.4f}"

    reports = alpha.project_dir / "reports" / "alpha"
    png, html = reports / "pareto.png", reports / "pareto.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in html.read_text()
    parent = study.user_attrs["mlflow_parent_run_id"]
    logged = {Path(f.path).name for f in alpha.client.list_artifacts(parent, "pareto")}
    assert {"pareto.png", "pareto.html"} <= logged

    other = tmp_path / "macs"
    rc, out, err = cnnas("pareto", "alpha", "--config", alpha.config, "--complexity", "macs")
    rc2, out2, err2 = cnnas(
        "pareto", "alpha", "--config", alpha.config, "--complexity", "macs", "--out", other
    )
    assert rc == 0 and rc2 == 0, err + err2
    assert "val_acc up, MACs down" in out2
    macs_front = {t.number for t in front_of(study, "macs")}
    rows = {int(line.split()[0]) for line in out2.splitlines() if re.match(r" +\d", line)}
    assert rows == macs_front
    assert (other / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "plotly" in (other / "pareto.html").read_text()

    rc, out, err = cnnas("pareto", "alpha", "--config", alpha.config, "--no-test")
    assert rc == 0, err
    assert "test_acc" not in out


# --- 8. predict -----------------------------------------------------------------------------------


def test_predict_prints_the_class_and_probability_of_each_image(pulled, digits, tmp_path) -> None:
    from PIL import Image

    folder, _ = pulled
    model, meta = models.load_model(folder), models.read_metadata(folder)
    images = digits.test_x[:3]
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"{'abc'[i]}.png"
        Image.fromarray(image[0].numpy()).save(path)
        paths.append(path)
    rc, out, err = cnnas("predict", folder, *paths)
    assert rc == 0, err
    with torch.no_grad():
        probs = model(normalised(images, meta)).softmax(1)
    lines = out.splitlines()
    assert len(lines) == 3
    for path, line, p in zip(paths, lines, probs, strict=True):
        m = re.fullmatch(r"(.+): (\S+) \((\d\.\d{3})\)", line)
        assert m, line
        assert m[1] == str(path)
        assert m[2] == meta["classes"][int(p.argmax())]
        assert 0 < float(m[3]) <= 1
        assert float(m[3]) == pytest.approx(float(p.max()), abs=5e-4)

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    rc, out, err = cnnas("predict", folder, paths[0], bad)
    assert rc == 2 and "cannot read image" in err and str(bad) in err
    rc, _, err = cnnas("predict", folder, tmp_path / "missing.png")
    assert rc == 2 and "cannot read image" in err
    rc, _, err = cnnas("predict", tmp_path / "nofolder", paths[0])
    assert rc == 2 and "cnnas pull" in err


# --- 9. bad references ----------------------------------------------------------------------------


def test_pulling_a_model_that_does_not_exist_lists_the_registered_ones(
    alpha, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    project = ("--project-dir", alpha.project_dir)
    rc, _, err = cnnas("pull", "nosuch@champion", "--out", "d", *project)
    assert rc == 2
    assert "nosuch@champion" in err and "registered models: ['cnnas-alpha']" in err
    assert not (tmp_path / "d").exists()
    for ref in (f"{alpha.model}@nosuchalias", f"{alpha.model}/999", "nosuch", "bad ref!"):
        rc, _, err = cnnas("pull", ref, "--out", "d", *project)
        assert rc == 2, ref
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert not (tmp_path / "d").exists()
    # A project folder with no MLflow store: told so, and no store is created.
    rc, _, err = cnnas("pull", f"{alpha.model}@champion", "--out", "d", "--project-dir", "empty")
    assert rc == 2 and "no MLflow store" in err
    assert not (tmp_path / "empty").exists()
    # NAME alone is the latest version; NAME/VERSION a given one, replacing an earlier pull.
    latest = max(int(v) for v in versions(alpha.client, alpha.model))
    rc, _, err = cnnas("pull", alpha.model, "--out", "m", *project)
    assert rc == 0, err
    assert str(models.read_metadata(tmp_path / "m")["version"]) == str(latest)
    rc, _, err = cnnas("pull", f"models:/{alpha.model}/1", "--out", "m", *project)
    assert rc == 0, err
    assert str(models.read_metadata(tmp_path / "m")["version"]) == "1"
    assert len(list((tmp_path / "m").iterdir())) == 4
    models.load_model(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no staging folder left behind"


def test_pull_refuses_an_out_that_cannot_take_the_model(alpha, tmp_path, readonly_dir) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    ref = f"{alpha.model}@champion"
    for out, says in (
        (taken, "is a file"),
        (taken / "model", "inside"),
        (readonly_dir / "model", "not writable"),
    ):
        rc, out_text, err = cnnas("pull", ref, "--out", out, "--config", alpha.config)
        assert rc == 2 and out_text == "", err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --out: ") and says in err, err
    assert taken.read_text() == "mine"
    assert list(readonly_dir.iterdir()) == []


@pytest.mark.parametrize("where", ["folder", "cwd"])
def test_pull_never_deletes_files_it_did_not_write(alpha, tmp_path, monkeypatch, where) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "notes.txt").write_text("mine")
    (sandbox / "data").mkdir()
    (sandbox / "data" / "keep.csv").write_text("1,2\n")
    monkeypatch.chdir(sandbox)
    assert Path.cwd() == sandbox
    out = sandbox if where == "folder" else "."
    try:
        rc, _, _ = cnnas("pull", f"{alpha.model}@champion", "--out", out, "--config", alpha.config)
    finally:
        monkeypatch.chdir(tmp_path)
    assert rc in (0, 2)
    assert (sandbox / "notes.txt").read_text() == "mine"
    assert (sandbox / "data" / "keep.csv").is_file()


def test_pull_of_a_version_whose_artifacts_are_gone_exits_2(alpha, tmp_path) -> None:
    stored = source_path(alpha.client.get_model_version_by_alias(alpha.model, "smallest"))
    moved = stored.with_name("moved-away")
    stored.rename(moved)
    try:
        rc, _, err = cnnas(
            "pull", f"{alpha.model}@smallest", "--out", tmp_path / "m", "--config", alpha.config
        )
    finally:
        moved.rename(stored)
    assert rc == 2 and err.startswith("error: ")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("a@b", ("a", "b", None)),
        ("a/3", ("a", None, "3")),
        ("models:/a@b", ("a", "b", None)),
        ("models:/cnnas-x.y_z@most-accurate", ("cnnas-x.y_z", "most-accurate", None)),
        ("models:/a/12", ("a", None, "12")),
        ("a", ("a", None, None)),
    ],
)
def test_parse_model_ref(ref, parts) -> None:
    assert search.parse_model_ref(ref) == parts


@pytest.mark.parametrize(
    "ref", ["", "a@", "a/", "a/b", "a/3/4", "a@b@c", "@b", "models:/", "a@b/3"]
)
def test_parse_model_ref_refuses_malformed_references(ref) -> None:
    with pytest.raises(search.RegistryError, match="NAME@ALIAS"):
        search.parse_model_ref(ref)


# --- 10. against an MLflow tracking server --------------------------------------------------------


@dataclass
class Server:
    uri: str
    root: Path
    proc: subprocess.Popen | None  # None: the server binary could not be run
    error: str = ""


@pytest.fixture(scope="module", autouse=True)
def _server_process(request, tmp_path_factory, empty_mlflow_db):
    """Starts ``mlflow server`` when the module begins, if a selected test needs it.

    Its start (some ten seconds of imports) then overlaps the other tests; it is stopped when the
    module ends. A free local port, a SQLite store, artifacts served by the server itself.
    """
    if not any("mlflow_server" in getattr(i, "fixturenames", ()) for i in request.session.items):
        yield None
        return
    root = tmp_path_factory.mktemp("server")
    shutil.copy(empty_mlflow_db, root / "server.db")  # already migrated: starts faster
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]
    cmd += [
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as log:
        try:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
            )
        except OSError as e:
            yield Server(uri, root, None, f"{cmd[0]}: {e}")
            return
    try:
        yield Server(uri, root, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(_server_process) -> Server:
    """The running server, once /health answers (60 s at most)."""
    server = _server_process
    if server.proc is None:
        pytest.skip(f"mlflow server cannot start: {server.error}")
    log = server.root / "server.log"
    deadline = time.monotonic() + 60
    while True:
        if server.proc.poll() is not None:
            pytest.skip(f"mlflow server exited at start: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.25)


@pytest.fixture(scope="module")
def served(mlflow_server, tmp_path_factory) -> Built:
    """A study whose runs, models and registry live on the server (mlflow.yml's tracking_uri)."""
    root = tmp_path_factory.mktemp("served")
    (root / "mlflow.yml").write_text(f"tracking_uri: {mlflow_server.uri}\n")
    config = write_config(root, "served", study={"trials": 3}, mlflow="mlflow.yml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        rc, out, err = cnnas("study", "start", "--config", config)
    assert rc == 0, err
    return Built(root, config, "served", mlflow_server.uri, out)


def test_register_and_pull_against_a_tracking_server(served, tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    assert f"MLflow {served.uri}" in served.start_out
    assert "registered model 'cnnas-served'" in served.start_out
    assert not (served.project_dir / "mlflow.db").exists(), "nothing went to a local store"
    client = served.client
    registered = versions(client, served.model)
    assert {int(v.tags["cnnas.trial"]) for v in registered.values()} == front_numbers(
        served.study()
    )
    assert set(alias_versions(client, served.model)) == set(ALIASES)

    out = tmp_path / "d"
    rc, _, err = cnnas("pull", f"{served.model}@champion", "--out", out, "--config", served.config)
    assert rc == 0, err
    version = client.get_model_version_by_alias(served.model, "champion")
    model = models.load_model(out)
    meta = models.read_metadata(out)
    assert (
        str(meta["version"]) == str(version.version)
        and meta["sha256"] == version.tags["cnnas.sha256"]
    )
    from_registry = search.load(f"models:/{served.model}@champion", tracking_uri=served.uri)
    x = normalised(digits.test_x, meta)
    with torch.no_grad():
        assert torch.equal(model(x), from_registry(x))
    rc, _, err = cnnas("pull", "nosuch@champion", "--out", "e", "--config", served.config)
    assert rc == 2 and "registered models: ['cnnas-served']" in err


def test_a_machine_sharing_only_the_server_can_pull(served, tmp_path):
    client = MlflowClient(tracking_uri=served.uri, registry_uri=served.uri)
    local = served.project_dir / "mlartifacts"
    away = served.root / "elsewhere"
    # The training machine's own disk is not reachable from the machine that pulls.
    if local.exists():
        local.rename(away)
    try:
        search.pull(client, f"{served.model}@champion", tmp_path / "model")
        models.load_model(tmp_path / "model")
    finally:
        if away.exists():
            away.rename(local)
