"""The registry hands out MLflow Models: a study on a real local store (SQLite, file artifacts)
found through ``$MLFLOW_TRACKING_URI``, its champion loaded with ``mlflow.pyfunc.load_model`` by
alias and served by a real ``mlflow models serve`` on 127.0.0.1, both answering what
``cnnas predict`` prints; MLflow's run conventions; a running trial's curve read from MLflow while
the trial still runs.

One tiny digits study (three trials of two epochs) is built once; the model server starts as soon
as it exists, so its start-up overlaps the other tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from PIL import Image

from cnnas.objectives import fit
from cnnas.search import cli, load_config, prepare, run_study
from cnnas.search._tracking import Tracker

NAME = "mlm"
MODEL = f"cnnas-{NAME}"
CONFIG = {
    "study": {"name": NAME, "trials": 3, "seed": 3},
    "data": {"dataset": "digits"},
    "train": {"epochs": 2, "batch_size": 64, "accelerator": "cpu"},
    "space": {
        "blocks": [1, 2],
        "convs": [1],
        "base_filters": [4, 8],
        "growth": ["constant"],
        "kernels": [3],
        "batch_norm": [True],
        "block_dropout": [0.0],
        "dense_dropout": [0.0],
        "pools": ["max"],
        "aggregations": ["gap", "flatten"],
        "dense_layers": [0],
    },
}


def cnnas(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Built:
    root: Path
    config: Path
    uri: str  # the store $MLFLOW_TRACKING_URI named
    start_out: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built(tmp_path_factory, mlflow_db_template) -> Built:
    """``cnnas study start`` with ``$MLFLOW_TRACKING_URI`` naming a store outside the project."""
    root = tmp_path_factory.mktemp("mlflow-models")
    store = root / "elsewhere" / "mlflow.db"
    store.parent.mkdir()
    shutil.copy(mlflow_db_template, store)
    uri = f"sqlite:///{store}"
    cfg = json.loads(json.dumps(CONFIG))
    cfg["study"]["project_dir"] = str(root / "runs")
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        rc, out, err = cnnas("study", "start", "--config", config, "--no-report")
    assert rc == 0, err
    return Built(root, config, uri, out)


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: Path
    started: float


@pytest.fixture(scope="module")
def _server(built, tmp_path_factory):
    """``mlflow models serve -m models:/NAME@champion --env-manager local`` on 127.0.0.1, started
    as soon as the study is registered and stopped when the module ends."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": built.uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The server runs `uvicorn` from PATH: the one installed next to this interpreter.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=built.root, start_new_session=True
        )
    try:
        yield Served(f"http://127.0.0.1:{port}", proc, log, time.monotonic())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the CLI and uvicorn
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def server(_server) -> Served:
    deadline = time.monotonic() + 180
    while True:
        assert _server.proc.poll() is None, _server.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{_server.url}/ping", timeout=1) as r:
                if r.status == 200:
                    return _server
        except OSError:
            pass
        assert time.monotonic() < deadline, _server.log.read_text()[-3000:]
        time.sleep(0.25)


@pytest.fixture
def env_uri(built, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", built.uri)
    monkeypatch.chdir(built.root)
    return built.uri


@pytest.fixture(scope="module")
def pulled(built, _server, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pulled") / "champion"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", built.uri)
        rc, _, err = cnnas("pull", f"{MODEL}@champion", "--out", out, "--config", built.config)
    assert rc == 0, err
    return out


def images(digits, n: int = 6) -> np.ndarray:
    return digits.test_x[:n].numpy()


def predict_json(folder: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """What ``cnnas predict --json`` prints for the images, as a probability matrix."""
    paths = []
    for i, image in enumerate(x):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image[0]).save(path)  # PNG keeps uint8 exactly
        paths.append(path)
    rc, out, err = cnnas("predict", folder, *paths, "--json")
    assert rc == 0, err
    rows = json.loads(out)["predictions"]
    classes = list(rows[0]["probabilities"])
    return np.array([[r["probabilities"][c] for c in classes] for r in rows])


# --- MLFLOW_TRACKING_URI --------------------------------------------------------------------------


def test_study_register_and_pull_honour_mlflow_tracking_uri(built, pulled, tmp_path, monkeypatch):
    assert f"MLflow {built.uri}" in built.start_out
    assert f"registered model '{MODEL}'" in built.start_out
    assert not (built.root / "runs" / "mlflow.db").exists(), "nothing in the project's default"
    client = built.client
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert versions and client.get_model_version_by_alias(MODEL, "champion")
    assert (pulled / "manifest.json").is_file()

    monkeypatch.chdir(built.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", built.uri)
    rc, _, err = cnnas("register", NAME, "--config", built.config)
    assert rc == 0, err
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == len(versions)
    pull = ("pull", f"{MODEL}@smallest", "--config", built.config, "--out")
    rc, _, err = cnnas(*pull, tmp_path / "a")
    assert rc == 0, err
    # Without the variable the local default (PROJECT/mlflow.db) is used, and it does not exist.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    rc, _, err = cnnas(*pull, tmp_path / "b")
    assert rc == 2 and "no MLflow store" in err
    assert not (built.root / "runs" / "mlflow.db").exists()


def test_an_explicit_tracking_uri_in_mlflow_yml_beats_the_variable(built, tmp_path, monkeypatch):
    (tmp_path / "mlflow.yml").write_text(f"tracking_uri: {built.uri}\n")
    cfg = yaml.safe_load(built.config.read_text())
    cfg["mlflow"] = str(tmp_path / "mlflow.yml")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-this.db'}")
    rc, _, err = cnnas("pull", f"{MODEL}@champion", "--out", tmp_path / "m", "--config", config)
    assert rc == 0, err
    assert not (tmp_path / "not-this.db").exists()


# --- the MLflow Model ---------------------------------------------------------------------------


def test_pyfunc_by_alias_predicts_what_cnnas_predict_prints(
    built, pulled, env_uri, digits, tmp_path
):
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    x = images(digits)
    got = model.predict(x)
    assert got.dtype == np.float32 and got.shape == (len(x), 10)
    want = predict_json(pulled, x, tmp_path)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # The registered version is the champion trial's own network.
    version = built.client.get_model_version_by_alias(MODEL, "champion")
    assert model.metadata.run_id == version.run_id
    assert model.metadata.model_id == version.tags["cnnas.model_id"]
    assert model.metadata.metadata["cnnas_classes"] == [str(i) for i in range(10)]
    info = mlflow.models.get_model_info(f"models:/{MODEL}@champion")
    (inp,) = info.signature.inputs.inputs
    assert inp.type == np.dtype(np.uint8) and inp.shape == (-1, 1, 8, 8)
    assert info.signature.outputs.inputs[0].shape == (-1, 10)


def test_export_of_a_registered_model_predicts_like_the_pyfunc(built, env_uri, digits, tmp_path):
    out = tmp_path / "champion.pt2"
    rc, stdout, err = cnnas(
        "export",
        f"{MODEL}@champion",
        "--format",
        "exported-program",
        "--out",
        out,
        "--config",
        built.config,
    )
    assert rc == 0, err
    assert "checked on" in stdout and "same classes" in stdout
    x = digits.test_x.numpy()
    with torch.no_grad():
        got = torch.export.load(str(out)).module()(torch.from_numpy(x)).numpy()
    want = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(x)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert float(np.abs(got - want).max()) <= 1e-4


def test_the_model_holds_no_pickle_and_names_its_requirements(built, env_uri, tmp_path):
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path))
    )
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert {
        "MLmodel",
        "cnnas_model.py",
        "input_example.json",
        "requirements.txt",
        "artifacts/model/spec.json",
        "artifacts/model/model.safetensors",
        "artifacts/model/metadata.json",
        "artifacts/model/manifest.json",
    } <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin"))]
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc  # the cloudpickled-object form
    requirements = (local / "requirements.txt").read_text().split()
    for dist in ("cnnas", "mlflow", "torch", "safetensors"):
        assert any(r.startswith(f"{dist}==") for r in requirements), requirements
    assert not [r for r in requirements if "+" in r], "no local version labels (torch+cpu)"


def test_the_registered_version_is_the_runs_logged_model_with_its_metrics(built, env_uri):
    client = built.client
    version = client.get_model_version_by_alias(MODEL, "champion")
    model = client.get_logged_model(version.tags["cnnas.model_id"])
    assert model.status == LoggedModelStatus.READY
    assert model.source_run_id == version.run_id
    assert version.source == model.artifact_location
    run = client.get_run(version.run_id)
    assert model.model_id in [o.model_id for o in run.outputs.model_outputs]
    linked = json.loads(model.tags["mlflow.modelVersions"])
    assert {"name": MODEL, "version": str(version.version)} in linked
    metrics = {m.key: m for m in model.metrics}
    history = client.get_metric_history(version.run_id, "val_acc")
    last = max(history, key=lambda m: m.step)
    assert metrics["val_acc"].value == last.value and metrics["val_acc"].step == last.step
    assert len(history) == last.step + 1, "linking the model added no point to the run's curve"
    assert metrics["params"].value == run.data.metrics["params"]
    assert metrics["test_acc"].value == run.data.metrics["test_acc"]
    # Every run with a trained network logged it as a model, not only the registered ones (a
    # repeat of an earlier trial trains nothing and has none).
    exp = run.info.experiment_id
    runs = client.search_runs([exp])  # the trials', and the final phase's
    trained = {r.info.run_id for r in runs if client.list_artifacts(r.info.run_id, "model")}
    logged = client.search_logged_models([exp])
    assert len(trained) >= 2 and trained == {m.source_run_id for m in logged}
    manifest = json.loads(version.tags["cnnas.manifest"])
    assert set(manifest) == {"spec.json", "model.safetensors", "metadata.json"}


# --- MLflow's conventions -------------------------------------------------------------------------


def test_runs_carry_mlflow_standard_tags_and_no_none_params(built, env_uri):
    client = built.client
    exp = client.get_experiment_by_name("cnnas")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    assert runs
    commit = None
    if shutil.which("git"):
        here = Path(__file__).resolve().parent
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=False
        )
        commit = done.stdout.strip() if done.returncode == 0 else None
    for run in runs:
        tags = run.data.tags
        assert tags.get("mlflow.user") and tags["mlflow.user"] != "unknown"
        assert tags.get("mlflow.source.name") and tags.get("mlflow.source.type") == "LOCAL"
        if commit:
            assert tags.get("mlflow.source.git.commit") == commit
        assert "None" not in run.data.params.values(), {
            k: v for k, v in run.data.params.items() if v == "None"
        }
    tracker = Tracker(load_config(built.config).mlflow_config(), built.root / "runs")
    (ui,) = [line for line in tracker.ui_commands() if line.startswith("open ")]
    assert ui.endswith(f"/#/experiments/{exp.experiment_id}?workflowType=machine_learning")


def test_a_run_from_before_mlflow_models_is_registered_from_its_files(
    tmp_path, seed_mlflow, digits
):
    """A run that logged only its model/ folder, without a manifest (cnnas 0.2): registering it
    checks the weights against metadata.json's sha256, then logs its MLflow Model."""
    from types import SimpleNamespace

    from cnnas.models import ArchSpec, ConvBlock, ModelFileError, build, save_model
    from cnnas.objectives import Predictor
    from cnnas.search._config import MlflowConfig
    from cnnas.search._registry import _logged_model

    project = tmp_path / "runs"
    seed_mlflow(project)
    tracker = Tracker(MlflowConfig(), project)
    parent = tracker.parent_run("old", None, {})
    spec = ArchSpec(digits.input_shape, 10, (ConvBlock(4),), "gap")
    extra = {"mean": list(digits.mean), "std": list(digits.std), "classes": list(digits.classes)}
    runs = []
    for i in range(2):
        torch.manual_seed(i)
        folder = tmp_path / f"old{i}"
        save_model(build(spec), folder, extra=extra)
        (folder / "manifest.json").unlink()
        if i == 1:  # the weights no longer match their recorded sha256
            data = bytearray((folder / "model.safetensors").read_bytes())
            data[-1] ^= 1
            (folder / "model.safetensors").write_bytes(bytes(data))
        run_id = tracker.start_trial(parent, "old", i, spec)
        tracker.client.log_artifacts(run_id, str(folder), "model")
        tracker.end_trial(run_id, "FINISHED")
        runs.append(run_id)
    study_run = SimpleNamespace(tracker=tracker)
    model = _logged_model(study_run, runs[0])  # type: ignore[arg-type]
    assert model.source_run_id == runs[0] and tracker.model_id(runs[0]) == model.model_id
    loaded = mlflow.pyfunc.load_model(model.artifact_location)
    x = digits.test_x[:8].numpy()
    want = Predictor.from_dir(tmp_path / "old0", verify=False).predict_proba(x).numpy()
    np.testing.assert_allclose(loaded.predict(x), want, rtol=0, atol=1e-6)
    with pytest.raises(ModelFileError, match=r"sha256.*refusing to register"):
        _logged_model(study_run, runs[1])  # type: ignore[arg-type]
    assert tracker.model_id(runs[1]) is None


# --- live curves ----------------------------------------------------------------------------------


def test_a_running_trials_curve_is_in_mlflow_before_the_trial_ends(tmp_path, seed_mlflow):
    """While the trial trains, another client reads its run: RUNNING, with one val_acc point per
    finished epoch."""
    seen: list[tuple[int, str, list[int]]] = []

    class Reader(pytorch_lightning_callback()):
        def on_train_epoch_end(self, trainer, module) -> None:
            client = MlflowClient(tracking_uri=uri)  # a client of its own: what the UI sees
            exp = client.get_experiment_by_name("cnnas")
            (run,) = client.search_runs(
                [exp.experiment_id], "tags.`cnnas.role` = 'trial' and attributes.status = 'RUNNING'"
            )
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
            seen.append((trainer.current_epoch, run.info.status, sorted(steps)))

    def trainer(spec, data, cfg, *, seed=None, callbacks=()):
        # After the study's own callbacks, which log the epoch to MLflow.
        return fit(spec, data, cfg, seed=seed, callbacks=[*callbacks, Reader()])

    project = tmp_path / "runs"
    seed_mlflow(project)
    cfg = json.loads(json.dumps(CONFIG))
    cfg["study"].update(name="live", trials=1, project_dir=str(project))
    cfg["train"]["epochs"] = 3
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    run = prepare(load_config(path), trainer=trainer)
    run_study(run)
    assert [(e, s) for e, s, _ in seen] == [(0, "RUNNING"), (1, "RUNNING"), (2, "RUNNING")]
    assert [steps for _, _, steps in seen] == [[0], [0, 1], [0, 1, 2]]
    (trial,) = run.study.trials
    finished = MlflowClient(tracking_uri=uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert finished.info.status == "FINISHED"
    history = MlflowClient(tracking_uri=uri).get_metric_history(finished.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert len({m.timestamp for m in history}) == 3, "each epoch logged when it ended"


def pytorch_lightning_callback():
    import pytorch_lightning as pl

    return pl.Callback


# --- last, so that the server's start-up overlaps the tests above ------------------------------


def test_mlflow_models_serve_answers_with_the_same_predictions(
    built, server, env_uri, digits, pulled, tmp_path
):
    x = images(digits)
    body = json.dumps({"inputs": x.tolist()}).encode()
    request = urllib.request.Request(
        f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200
        served = np.array(json.loads(r.read())["predictions"])
    want = predict_json(pulled, x, tmp_path)
    assert served.shape == want.shape
    np.testing.assert_allclose(served, want, rtol=0, atol=1e-6)
    assert np.array_equal(served.argmax(1), want.argmax(1))
    # A request the signature refuses is a 400, not a crash.
    bad = urllib.request.Request(
        f"{server.url}/invocations",
        data=json.dumps({"inputs": x[:, 0].tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=60)
    assert err.value.code == 400
