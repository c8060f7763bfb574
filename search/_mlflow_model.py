"""A trained network as an MLflow Model: a pyfunc that loads without pickle, as a LoggedModel.

MLflow's "models from code": the model is a small Python file (:data:`MODEL_CODE`) that MLflow
runs at load time, plus the saved network (spec.json, model.safetensors, metadata.json and
manifest.json) as an artifact. The file builds :class:`CnnasClassifier`, which loads the network
with :meth:`cnnas.objectives.Predictor.from_dir` (JSON and safetensors, checked against the
manifest); nothing is pickled or unpickled. So ``mlflow.pyfunc.load_model``, ``mlflow models
serve`` and the MLflow UI see an ordinary model, with a signature (uint8 images in, float32
probabilities out), an input example, the class names and the requirements.

The model is written with an explicit client, never through MLflow's process-wide tracking URI or
active run: ``mlflow.pyfunc.log_model`` and ``Model.log`` resolve the store from the global URI
and would end (or re-open) the trial's run. The steps are those of ``Model.log``: create the
LoggedModel in the run's experiment, save the model folder locally, upload it, link it to the run
as an output at the trial's last epoch, give it that epoch's metrics, and mark it READY.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from cnnas.objectives import Predictor

__all__ = [
    "MODEL_ARTIFACT_DIR",
    "MODEL_CODE",
    "CnnasClassifier",
    "input_example",
    "log_logged_model",
    "quiet_artifacts",
    "requirements",
    "signature",
]

# The folder under a LoggedModel's artifacts/ that holds the saved network.
MODEL_ARTIFACT_DIR = "artifacts/model"
# The artifacts key MLflow hands the model's local folder under.
_ARTIFACT_KEY = "model"
_CODE_FILE = "cnnas_model.py"

# The file MLflow runs to load the model. It only names the class: everything else is in the
# installed cnnas, which the requirements name.
MODEL_CODE = '''\
"""A cnnas image classifier: rebuilt from spec.json and model.safetensors, never unpickled.

MLflow runs this file to load the model ("models from code"); the network, its normalisation
and class names are the files under artifacts/model, checked against their manifest.
"""

import mlflow

from cnnas.search._mlflow_model import CnnasClassifier

mlflow.models.set_model(CnnasClassifier())
'''

# Distributions the model needs at load time, pinned to the versions it was logged with.
_REQUIRED = ("cnnas", "mlflow", "torch", "pytorch-lightning", "safetensors", "numpy", "pillow")


class CnnasClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc: a batch of uint8 images ``(N, C, H, W)`` -> float32 probabilities
    ``(N, classes)``, in the order of the MLmodel's ``metadata.cnnas_classes``."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.from_dir(context.artifacts[_ARTIFACT_KEY])

    # The np.ndarray hint: MLflow warns about a predict without one; it infers no schema from
    # it, so the logged signature applies.
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        return self.predictor.predict_proba(np.asarray(model_input)).numpy().astype(np.float32)


def signature(predictor: Predictor) -> ModelSignature:
    """uint8 images of the network's input shape, any batch size -> float32 probabilities."""
    c, h, w = predictor.input_shape
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, c, h, w))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, predictor.num_classes))]),
    )


def input_example(predictor: Predictor) -> np.ndarray:
    """Two images of the training data's mean grey level: a valid request, small in JSON."""
    c, h, w = predictor.input_shape
    level = np.clip(np.round(np.asarray(predictor.mean)), 0, 255).astype(np.uint8)
    return np.broadcast_to(level.reshape(1, c, 1, 1), (2, c, h, w)).copy()


def _version(dist: str) -> str | None:
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    # A local version label (torch's "+cpu") is not on any index; "==2.13.0" matches it anyway.
    return re.sub(r"\+.*$", "", v)


@functools.cache
def requirements() -> tuple[str, ...]:
    """``pip`` requirements of the model, pinned to this environment's versions.

    Given explicitly: MLflow's inference of them runs the model in a subprocess (seconds per
    trial) and pins the local ``+cpu`` build of torch, which no index serves.
    """
    out = []
    for dist in _REQUIRED:
        v = _version(dist)
        out.append(f"{dist}=={v}" if v else dist)
    return tuple(out)


@functools.cache
def _conda_env() -> dict[str, Any]:
    """The environment file MLflow writes for pinned pip requirements, built once: passed as
    ``pip_requirements``, MLflow checks every pin against the installed versions on each call
    (a tenth of the time of logging a model)."""
    python = ".".join(map(str, sys.version_info[:3]))
    return {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": list(requirements())}],
    }


def log_logged_model(
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    model_dir: Path,
    *,
    name: str,
    step: int = 0,
    metrics: Sequence[Metric] = (),
    tags: Mapping[str, str] | None = None,
) -> str:
    """Logs the saved network in ``model_dir`` as the run's MLflow Model; returns its model id.

    ``model_dir`` is a folder written by ``save_model`` whose metadata records the
    normalisation. ``name`` must not be a folder of the run's artifacts: MLflow's download of a
    run folder also fetches the run's LoggedModel of that name, over it, and through the
    process-wide tracking URI (the run's own name is a good one).

    ``metrics`` are the run's metrics at ``step`` (the trial's last epoch) as they were logged:
    sent again with the model's id and the same timestamps, they become the LoggedModel's
    metrics and add no point to the run's history. A failure leaves the LoggedModel FAILED,
    never PENDING.
    """
    predictor = Predictor.from_dir(model_dir)  # checked: only a sound folder becomes a model
    lm = client.create_logged_model(
        experiment_id,
        name=name,
        source_run_id=run_id,
        tags=dict(tags or {}),
        model_type="image-classifier",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "mlmodel"
            code = Path(tmp) / _CODE_FILE
            code.write_text(MODEL_CODE)
            # MLflow stores an artifact folder under its own name; the network is always under
            # artifacts/model, where readers (cnnas pull) look for it.
            staged = Path(model_dir)
            if staged.name != _ARTIFACT_KEY:
                staged = Path(tmp) / _ARTIFACT_KEY
                shutil.copytree(model_dir, staged)
            mlflow_model = Model(
                artifact_path=lm.artifact_location,
                model_uuid=lm.model_id,
                run_id=run_id,
                model_id=lm.model_id,
                metadata=_metadata(predictor),
            )
            with quiet_artifacts():
                mlflow.pyfunc.save_model(
                    path=str(local),
                    python_model=str(code),
                    artifacts={_ARTIFACT_KEY: str(staged)},
                    signature=signature(predictor),
                    input_example=input_example(predictor),
                    conda_env=_conda_env(),
                    mlflow_model=mlflow_model,
                )
            client.log_model_artifacts(lm.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step)])
        if metrics:
            linked = [
                Metric(m.key, m.value, m.timestamp, m.step, model_id=lm.model_id) for m in metrics
            ]
            client.log_batch(run_id, metrics=linked)
    except BaseException:
        client.finalize_logged_model(lm.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    return lm.model_id


@contextlib.contextmanager
def quiet_artifacts() -> Iterator[None]:
    """No progress bar on stderr while MLflow copies or downloads artifacts (it draws one even
    for a local folder of four files), and none of its INFO lines (it announces the check of
    every input example); a study's output is one line per trial. MLflow sets its logger's
    level when it is imported, so the level is set here, around the calls."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _metadata(predictor: Predictor) -> dict[str, Any]:
    """What the MLmodel file tells a reader who has only MLflow: the classes in output order,
    the input and its normalisation (applied inside the model), and the network's hash."""
    spec = predictor.model.spec
    return {
        "cnnas_classes": list(predictor.classes),
        "cnnas_input_shape": list(predictor.input_shape),
        "cnnas_mean": list(predictor.mean),
        "cnnas_std": list(predictor.std),
        "cnnas_spec_hash": spec.spec_hash(),
        "cnnas_architecture": spec.summary(),
    }
