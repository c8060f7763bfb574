"""The Pareto front as the study's result: held-out evaluation, the MLflow model registry, pulling.

A trial's MLflow run holds its trained network under ``model/`` (spec.json, model.safetensors,
metadata.json with the weights' sha256). Registering points a model version at that folder, so no
retraining is needed; pulling downloads it, checks the sha256 and rebuilds the network from the
spec, so no step on the way unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cnnas.models import (
    META_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    load_model,
    read_metadata,
    sha256_file,
)
from cnnas.objectives import evaluate

from ._aliases import ChampionRule, assign_aliases
from ._records import TrialRecord, members
from ._records import front as study_front
from ._study import StudyRun
from .errors import RegistryError

__all__ = [
    "MODEL_ARTIFACT",
    "load",
    "parse_model_ref",
    "pull",
    "register_front",
    "registered_model_name",
    "test_accuracy",
]

MODEL_ARTIFACT = "model"
TEST_ACC_ATTR = "test_accuracy"  # study user attr: {trial number: test accuracy}


def registered_model_name(template: str, study: str) -> str:
    """mlflow.yml's ``registered_model`` with ``{study}`` replaced by the study's name."""
    return template.replace("{study}", study)


# --- the front ------------------------------------------------------------------------------------


def download_model(client: MlflowClient, run_id: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, MODEL_ARTIFACT, str(dst)))


def test_accuracy(run: StudyRun, trial: TrialRecord) -> float:
    """The trial's accuracy on the held-out test split, measured once and recorded.

    The test split never chooses an architecture: it is read only here, for front members,
    after the search. The value goes to the study (user attribute) and the trial's run.
    """
    recorded = run.study.user_attrs.get(TEST_ACC_ATTR, {})
    if str(trial.number) in recorded:
        return float(recorded[str(trial.number)])
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(download_model(run.tracker.client, trial.run_id, Path(tmp)))
    data = run.data
    loss, acc = evaluate(model, data.test_x, data.test_y, data.mean, data.std)
    run.tracker.log_metrics(trial.run_id, {"test_acc": acc, "test_loss": loss})
    # Re-read before writing: another worker may have recorded other trials meanwhile.
    recorded = dict(run.study.user_attrs.get(TEST_ACC_ATTR, {}))
    recorded[str(trial.number)] = acc
    run.study.set_user_attr(TEST_ACC_ATTR, recorded)
    return acc


# --- registering ----------------------------------------------------------------------------------


def _refit(run: StudyRun, trial: TrialRecord, epochs: int) -> tuple[str, dict[str, Any]]:
    """Retrains a front member on train + validation; returns its new run id and metadata."""
    data = run.data
    merged = dataclasses.replace(
        data,
        train_x=torch.cat([data.train_x, data.val_x]),
        train_y=torch.cat([data.train_y, data.val_y]),
    )
    spec = trial.spec
    cfg = run.cfg
    train_cfg = dataclasses.replace(
        cfg.train.to_train_config(cfg.study.seed, trial.augment), epochs=epochs
    )
    result = run.trainer(spec, merged, train_cfg, seed=cfg.study.seed + trial.number)
    run_id = run.tracker.start_trial(
        run.parent_run_id,
        cfg.study.name,
        trial.number,
        spec,
        run_name=f"{cfg.study.name}-trial-{trial.number}-refit",
        extra_tags={"cnnas.refit_of": str(trial.number)},
    )
    run.tracker.end_fit(run_id, result)
    meta = run.tracker.log_model(run_id, result.model, run.model_extra(trial.number, epochs))
    loss, acc = evaluate(result.model, data.test_x, data.test_y, data.mean, data.std)
    run.tracker.log_metrics(run_id, {"test_acc": acc, "test_loss": loss})
    meta["test_acc"] = acc
    return run_id, meta


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"cnnas": "true"})


def _versions(client: MlflowClient, name: str) -> list:
    return list(client.search_model_versions(f"name = '{name}'"))


def register_front(
    run: StudyRun,
    rule: ChampionRule,
    *,
    complexity: str = "params",
    refit_epochs: int | None = None,
) -> dict[str, Any]:
    """Registers every front member once and points the aliases at the right versions.

    Idempotent: a trial already registered keeps its version. Aliases are set again each time,
    so they move when the front has changed.
    """
    client = run.tracker.client
    name = registered_model_name(run.mlflow_cfg.registered_model, run.cfg.study.name)
    _ensure_registered_model(client, name)
    front = study_front(run.records(), complexity)
    existing = {
        (v.tags.get("cnnas.study"), v.tags.get("cnnas.trial"), v.tags.get("cnnas.refit", "0")): v
        for v in _versions(client, name)
    }
    versions: dict[int, Any] = {}
    test_accs: dict[int, float] = {}
    for trial in front:
        key = (run.cfg.study.name, str(trial.number), "1" if refit_epochs else "0")
        version = existing.get(key)
        if version is None:
            source_run = trial.run_id
            if refit_epochs:
                source_run, meta = _refit(run, trial, refit_epochs)
                acc = float(meta["test_acc"])
            else:
                acc = test_accuracy(run, trial)
                with tempfile.TemporaryDirectory() as tmp:
                    meta = read_metadata(download_model(client, source_run, Path(tmp)))
            tags = {
                "cnnas.study": run.cfg.study.name,
                "cnnas.trial": str(trial.number),
                "cnnas.refit": "1" if refit_epochs else "0",
                "cnnas.spec_hash": trial.spec_hash,
                "cnnas.sha256": meta["sha256"],
                "val_acc": f"{trial.val_acc:.6f}",
                "test_acc": f"{acc:.6f}",
                "params": str(trial.params),
                "macs": str(trial.macs),
                "ratio": f"{trial.ratio:.6e}",
            }
            if refit_epochs:
                tags["refit_epochs"] = str(refit_epochs)
            source = f"{client.get_run(source_run).info.artifact_uri}/{MODEL_ARTIFACT}"
            version = client.create_model_version(name, source, run_id=source_run, tags=tags)
        versions[trial.number] = version
        test_accs[trial.number] = float(version.tags.get("test_acc", "nan"))

    aliases = assign_aliases(members(front), rule, complexity)
    for alias, member in aliases.items():
        client.set_registered_model_alias(name, alias, versions[member.trial].version)
    # An alias the rules no longer give (a champion limit nobody meets) must not linger.
    current = client.get_registered_model(name).aliases
    for alias in set(current) - set(aliases):
        if alias in ("most-accurate", "smallest", "best-ratio", "knee", "champion"):
            client.delete_registered_model_alias(name, alias)
    return {
        "name": name,
        "versions": {n: v.version for n, v in versions.items()},
        "aliases": {a: (m.trial, versions[m.trial].version) for a, m in aliases.items()},
        "test_acc": test_accs,
    }


# --- pulling and loading --------------------------------------------------------------------------

_REF = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[\w.-]+)|/(?P<version>\d+))?$")


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` (``models:/`` optional) -> parts."""
    m = _REF.match(ref)
    if not m:
        raise RegistryError(
            f"cannot read model reference {ref!r}; use NAME, NAME@ALIAS or NAME/VERSION"
        )
    return m["name"], m["alias"], m["version"]


def _resolve(client: MlflowClient, ref: str) -> Any:
    name, alias, version = parse_model_ref(ref)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        latest = sorted(_versions(client, name), key=lambda v: int(v.version))
        if not latest:
            raise RegistryError(f"registered model {name!r} has no versions")
        return latest[-1]
    except MlflowException as e:
        known = [m.name for m in client.search_registered_models()]
        raise RegistryError(
            f"no model {ref!r} in the registry ({e.message.splitlines()[0]}); "
            f"registered models: {sorted(known)}"
        ) from None


def pull(client: MlflowClient, ref: str, out: str | os.PathLike) -> dict[str, Any]:
    """Downloads a registered version into ``out``: spec.json, weights, metadata.json.

    The weights' sha256 is checked against the one recorded at registration before anything is
    written to ``out``; a mismatch leaves ``out`` untouched.
    """
    version = _resolve(client, ref)
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cnnas-pull-", dir=out.parent))
    try:
        try:
            # Versions point at their run's model/ folder, so the run's artifact repository
            # (local files or a tracking server's proxy) serves them.
            local = download_model(client, version.run_id, staging / "download")
        except (MlflowException, OSError) as e:
            raise RegistryError(
                f"{version.name} version {version.version}: its files cannot be downloaded "
                f"from run {version.run_id} ({str(e).splitlines()[0]})"
            ) from None
        expected = version.tags.get("cnnas.sha256")
        actual = sha256_file(local / WEIGHTS_FILE)
        if expected and actual != expected:
            raise ModelFileError(
                f"{version.name} version {version.version}: downloaded weights have sha256 "
                f"{actual}, the registry recorded {expected}; refusing to write them"
            )
        meta = read_metadata(local)
        meta.update(
            {
                "registered_model": version.name,
                "version": str(version.version),
                "alias": parse_model_ref(ref)[1],
                "source_run": version.run_id,
                "source": version.source,
                "metrics": {k: v for k, v in version.tags.items() if not k.startswith("cnnas.")},
                "sha256": actual,
            }
        )
        final = staging / "final"
        final.mkdir()
        for f in (SPEC_FILE, WEIGHTS_FILE):
            shutil.copy2(local / f, final / f)
        (final / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        load_model(final)  # the pulled folder must load before it replaces anything
        if out.exists():  # an earlier pull (checked above): swap it out, then delete it
            old = staging / "old"
            os.replace(out, old)
        os.replace(final, out)
        return meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)


PULLED_FILES = {SPEC_FILE, WEIGHTS_FILE, META_FILE}


def _check_replaceable(out: Path) -> None:
    """``out`` may be new, an empty folder, or an earlier pull; anything else is not ours."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RegistryError(f"--out {out} is a file; name a folder")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    if entries <= PULLED_FILES and "registered_model" in _quiet_metadata(out):
        return
    raise RegistryError(
        f"--out {out} holds other files ({', '.join(sorted(entries)[:5])}); "
        "pull into a new or empty folder, or into an earlier pull's folder"
    )


def _quiet_metadata(directory: Path) -> dict:
    try:
        return read_metadata(directory)
    except ModelFileError:
        return {}


def load(ref: str | os.PathLike, *, tracking_uri: str | None = None) -> torch.nn.Module:
    """A network in eval mode from a pulled folder or a registry reference (``models:/N@alias``).

    Never unpickles: the network is rebuilt from its spec and the safetensors weights are checked
    against their recorded sha256 first.
    """
    path = Path(ref)
    if path.is_dir():
        return load_model(path)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        pull(client, str(ref), Path(tmp) / "model")
        return load_model(Path(tmp) / "model")
