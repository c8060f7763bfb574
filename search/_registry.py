"""The Pareto front as the study's result: held-out evaluation, the MLflow model registry, pulling.

A trained trial's MLflow run holds its network twice: under the run's ``model/`` (spec.json,
model.safetensors, metadata.json, manifest.json) and as the run's MLflow Model, a LoggedModel whose
``artifacts/model`` holds the same four files next to the MLmodel of its pickle-free pyfunc.
Registering makes that LoggedModel a model version (so ``mlflow.pyfunc.load_model("models:/...")``
and ``mlflow models serve`` work) and records the manifest, the sha256 of every file, as a version
tag. Pulling downloads the files, checks each against the tag before anything is written, and
rebuilds the network from the spec, so no step on the way unpickles anything. No retraining is
needed at any point.
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

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cnnas.models import (
    MANIFEST_FILE,
    META_FILE,
    MODEL_FILES,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    check_manifest,
    load_model,
    read_manifest,
    read_metadata,
    sha256_file,
    write_manifest,
)
from cnnas.objectives import Predictor

from ._aliases import ChampionRule, assign_aliases
from ._final import final_runs, stand_in
from ._mlflow_model import MODEL_ARTIFACT_DIR, log_logged_model, quiet_artifacts
from ._records import TrialRecord, members
from ._records import front as study_front
from ._study import StudyRun
from .errors import RegistryError

__all__ = [
    "MANIFEST_TAG",
    "MODEL_ARTIFACT",
    "MODEL_ID_TAG",
    "load",
    "load_predictor",
    "parse_model_ref",
    "pull",
    "register_front",
    "registered_model_name",
    "test_accuracy",
]

MODEL_ARTIFACT = "model"
TEST_ACC_ATTR = "test_accuracy"  # study user attr: {trial number: test accuracy}
# Version tags: the sha256 of every model file recorded at registration (JSON), and the
# LoggedModel the version is (the SQL registry stores no model id of its own).
MANIFEST_TAG = "cnnas.manifest"
MODEL_ID_TAG = "cnnas.model_id"


def registered_model_name(template: str, study: str) -> str:
    """mlflow.yml's ``registered_model`` with ``{study}`` replaced by the study's name."""
    return template.replace("{study}", study)


# --- the front ------------------------------------------------------------------------------------


def download_model(client: MlflowClient, run_id: str, dst: Path) -> Path:
    """The run's ``model/`` folder, downloaded under ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    with quiet_artifacts():
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
        predictor = Predictor.from_dir(download_model(run.tracker.client, trial.run_id, Path(tmp)))
    loss, acc = predictor.evaluate(run.data.test_x, run.data.test_y)
    # Also the trial's MLflow Model's metrics, so the logged models can be compared by them.
    run.tracker.log_metrics(
        trial.run_id,
        {"test_acc": acc, "test_loss": loss},
        model_id=run.tracker.model_id(trial.run_id),
    )
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
    predictor = Predictor(result.model, data.mean, data.std, data.classes)
    loss, acc = predictor.evaluate(data.test_x, data.test_y)
    run.tracker.log_metrics(
        run_id, {"test_acc": acc, "test_loss": loss}, model_id=meta.get("model_id")
    )
    meta["test_acc"] = acc
    return run_id, meta


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"cnnas": "true"})


def _versions(client: MlflowClient, name: str) -> list:
    return list(client.search_model_versions(f"name = '{name}'"))


def _logged_model(run: StudyRun, run_id: str) -> Any:
    """The MLflow Model a run logged; for a run from before cnnas logged one (its network only
    under ``model/``), one is logged now from those files."""
    tracker = run.tracker
    model_id = tracker.model_id(run_id)
    if model_id is None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = download_model(tracker.client, run_id, Path(tmp))
            if not (folder / MANIFEST_FILE).exists():
                _add_manifest(folder, run_id)
            name = tracker.client.get_run(run_id).info.run_name or f"run-{run_id}"
            model_id = log_logged_model(
                tracker.client, tracker.experiment_id, run_id, folder, name=name
            )
    return tracker.client.get_logged_model(model_id)


def _add_manifest(folder: Path, run_id: str) -> None:
    """A network saved before manifests recorded only its weights' sha256 (in metadata.json):
    that is checked, then the folder gets its manifest."""
    recorded = read_metadata(folder).get("sha256")
    actual = sha256_file(folder / WEIGHTS_FILE)
    if recorded != actual:
        raise ModelFileError(
            f"run {run_id}: {MODEL_ARTIFACT}/{WEIGHTS_FILE} has sha256 {actual}, its "
            f"{META_FILE} records {recorded!r}; refusing to register it"
        )
    write_manifest(folder)


def _create_version(run: StudyRun, name: str, run_id: str, tags: dict[str, str]) -> Any:
    """Registers the run's MLflow Model as a version of ``name``, with the manifest of its files
    (checked first: a model whose files disagree with their manifest is never registered)."""
    client = run.tracker.client
    model = _logged_model(run, run_id)
    with tempfile.TemporaryDirectory() as tmp, quiet_artifacts():
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location}/{MODEL_ARTIFACT_DIR}",
                dst_path=tmp,
                tracking_uri=client.tracking_uri,
            )
        )
        load_model(local)  # the manifest, metadata and spec hash all agree
        manifest = read_manifest(local)
    tags = {
        **tags,
        "cnnas.sha256": manifest[WEIGHTS_FILE],
        MANIFEST_TAG: json.dumps(manifest, sort_keys=True),
        MODEL_ID_TAG: model.model_id,
    }
    # The LoggedModel's own folder: a models:/m-... source would be resolved by MLflow through
    # the process-wide tracking URI, not this client's.
    version = client.create_model_version(
        name, model.artifact_location, run_id=run_id, tags=tags, model_id=model.model_id
    )
    # The MLflow UI links a logged model to its registered versions through this tag (the one
    # mlflow.register_model writes).
    linked = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
    linked.append({"name": name, "version": str(version.version)})
    client.set_logged_model_tags(model.model_id, {"mlflow.modelVersions": json.dumps(linked)})
    return version


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
    recs = run.records()
    front = study_front(recs, complexity)
    # After a final phase the registered versions are its fully trained networks (the members
    # it trained); their search-fidelity runs stay with the trials.
    finals = final_runs(run.study)
    kind = "final" if finals else ("1" if refit_epochs else "0")
    registered = [t for t in front if t.number in finals] if finals else front
    # The references it trained (final.references: the study.start_from networks) too, on the
    # front or not: the yardstick the search's networks are compared with.
    references = sorted(
        (r for r in recs if r.number in finals and finals[r.number].reference),
        key=lambda r: (r.start_point if r.start_point is not None else 0, r.number),
    )
    registered += [r for r in references if r not in registered]
    existing = {
        (v.tags.get("cnnas.study"), v.tags.get("cnnas.trial"), v.tags.get("cnnas.refit", "0")): v
        for v in _versions(client, name)
    }
    versions: dict[int, Any] = {}
    test_accs: dict[int, float] = {}
    for trial in registered:
        key = (run.cfg.study.name, str(trial.number), kind)
        version = existing.get(key)
        if version is None:
            source_run, acc, meta = _version_source(run, trial, finals, refit_epochs)
            tags = _version_tags(run, trial, kind, meta, acc)
            if refit_epochs and not finals:
                tags["refit_epochs"] = str(refit_epochs)
            if finals:
                tags["final_epochs"] = str(finals[trial.number].epochs)
                tags["trained_on"] = finals[trial.number].data
            version = _create_version(run, name, source_run, tags)
        versions[trial.number] = version
        test_accs[trial.number] = float(version.tags.get("test_acc", "nan"))

    # Aliases are chosen on the search's validation scores over the whole front, never on test
    # accuracy. An alias whose member the final phase left out for a barely larger, better one
    # (search._final.stand_in) points at that one; one whose member has no version here for
    # another reason (final.members: champion) is left out.
    by_number = {r.number: r for r in recs}
    kept = [by_number[n] for n in versions]
    aliases = {}
    for a, m in assign_aliases(members(front), rule, complexity).items():
        if m.trial not in versions and finals:
            other = stand_in(by_number[m.trial], kept, complexity)
            m = members([other])[0] if other is not None else m
        if m.trial in versions:
            aliases[a] = m
    for i, member in enumerate(members(references)):
        aliases[reference_alias(i)] = member
    for alias, member in aliases.items():
        client.set_registered_model_alias(name, alias, versions[member.trial].version)
    # An alias the rules no longer give (a champion limit nobody meets) must not linger.
    current = client.get_registered_model(name).aliases
    for alias in set(current) - set(aliases):
        if alias in ALIASES or re.fullmatch(r"start(-\d+)?", alias):
            client.delete_registered_model_alias(name, alias)
    return {
        "name": name,
        "versions": {n: v.version for n, v in versions.items()},
        "aliases": {a: (m.trial, versions[m.trial].version) for a, m in aliases.items()},
        "test_acc": test_accs,
    }


# The aliases the front's rules give (search._aliases).
ALIASES = ("most-accurate", "smallest", "best-ratio", "knee", "champion")


def reference_alias(index: int) -> str:
    """The alias of the ``index``-th reference (0-based): start, start-2, start-3, ..."""
    return "start" if index == 0 else f"start-{index + 1}"


def _version_source(
    run: StudyRun, trial: TrialRecord, finals: dict, refit_epochs: int | None
) -> tuple[str, float, dict[str, Any]]:
    """The run a version of ``trial`` is made from, its test accuracy and its metadata: the
    final phase's run when there is one, else a refit, else the trial's own run."""
    if finals:
        source_run, acc = finals[trial.number].run_id, finals[trial.number].test_acc
    elif refit_epochs:
        source_run, meta = _refit(run, trial, refit_epochs)
        return source_run, float(meta["test_acc"]), meta
    else:
        source_run, acc = trial.run_id, test_accuracy(run, trial)
    with tempfile.TemporaryDirectory() as tmp:
        meta = read_metadata(download_model(run.tracker.client, source_run, Path(tmp)))
    return source_run, acc, meta


def _version_tags(
    run: StudyRun, trial: TrialRecord, kind: str, meta: dict[str, Any], acc: float
) -> dict[str, str]:
    return {
        "cnnas.study": run.cfg.study.name,
        "cnnas.trial": str(trial.number),
        "cnnas.refit": kind,
        "cnnas.spec_hash": trial.spec_hash,
        "cnnas.sha256": meta["sha256"],
        "val_acc": f"{trial.val_acc:.6f}",
        "test_acc": f"{acc:.6f}",
        "params": str(trial.params),
        "macs": str(trial.macs),
        "ratio": f"{trial.ratio:.6e}",
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


def _download_version(client: MlflowClient, version: Any, dst: Path) -> Path:
    """The version's model files: its LoggedModel's ``artifacts/model``, or, for a version
    registered before cnnas logged MLflow Models, the run's ``model/`` folder it points at."""
    uri = (
        f"{version.source}/{MODEL_ARTIFACT_DIR}"
        if version.tags.get(MODEL_ID_TAG)
        else version.source
    )
    try:
        with quiet_artifacts():
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(dst), tracking_uri=client.tracking_uri
                )
            )
    except (MlflowException, OSError) as e:
        raise RegistryError(
            f"{version.name} version {version.version}: its files cannot be downloaded "
            f"from {uri} ({str(e).splitlines()[0]})"
        ) from None


def _check_version_files(version: Any, local: Path) -> None:
    """Every downloaded file against the manifest the registry recorded at registration."""
    label = f"{version.name} version {version.version}"
    recorded = version.tags.get(MANIFEST_TAG)
    if not recorded:
        raise RegistryError(
            f"{label}: the registry records no manifest of its files (tag {MANIFEST_TAG}; "
            "versions registered before cnnas 0.3 have none), so they cannot be checked; "
            "refusing to pull it (--no-verify pulls it unchecked)"
        )
    try:
        expected = json.loads(recorded)
    except json.JSONDecodeError:
        expected = None
    if not isinstance(expected, dict) or not set(MODEL_FILES) <= set(expected):
        raise RegistryError(
            f"{label}: its {MANIFEST_TAG} tag is not a manifest of {list(MODEL_FILES)} "
            f"({recorded[:80]!r}); refusing to pull it (--no-verify pulls it unchecked)"
        )
    check_manifest(
        local,
        expected,
        recorded_in=f"the registry's tag {MANIFEST_TAG}",
        refusing="refusing to write it",
        shown_as=label,
    )


def pull(
    client: MlflowClient, ref: str, out: str | os.PathLike, *, verify: bool = True
) -> dict[str, Any]:
    """Downloads a registered version into ``out``: spec.json, model.safetensors, metadata.json
    (with where the model came from) and manifest.json.

    Every file is checked against the sha256 the registry recorded at registration before
    anything is written to ``out``: a version without that record, or any file that differs
    from it, is refused (ModelFileError, RegistryError) and leaves ``out`` untouched.
    ``verify=False`` (``--no-verify``) skips the checks; the folder it writes then has no
    manifest, so loading it needs ``verify=False`` too.
    """
    version = _resolve(client, ref)
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cnnas-pull-", dir=out.parent))
    try:
        local = _download_version(client, version, staging / "download")
        if verify:
            _check_version_files(version, local)
        meta = read_metadata(local)
        meta.update(
            {
                "registered_model": version.name,
                "version": str(version.version),
                "alias": parse_model_ref(ref)[1],
                "source_run": version.run_id,
                "source": version.source,
                "metrics": {k: v for k, v in version.tags.items() if not k.startswith("cnnas.")},
                "verified": verify,
            }
        )
        if version.tags.get(MODEL_ID_TAG):
            meta["model_id"] = version.tags[MODEL_ID_TAG]
        final = staging / "final"
        final.mkdir()
        for f in (SPEC_FILE, WEIGHTS_FILE):
            shutil.copy2(local / f, final / f)
        (final / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if verify:
            # The metadata now says where the model came from: the folder's own manifest
            # records the files as pulled, after they were checked against the registry's.
            write_manifest(final)
        load_model(final, verify=verify)  # the pulled folder must load before it replaces anything
        # What was written, whatever metadata.json recorded (they agree unless --no-verify).
        meta["sha256"] = sha256_file(final / WEIGHTS_FILE)
        if out.exists():  # an earlier pull (checked above): swap it out, then delete it
            old = staging / "old"
            os.replace(out, old)
        os.replace(final, out)
        return meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)


PULLED_FILES = {SPEC_FILE, WEIGHTS_FILE, META_FILE, MANIFEST_FILE}


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


def load(
    ref: str | os.PathLike, *, tracking_uri: str | None = None, verify: bool = True
) -> torch.nn.Module:
    """A network in eval mode from a pulled folder or a registry reference (``models:/N@alias``).

    Never unpickles: the network is rebuilt from its spec, and every file is checked against its
    recorded sha256 first (``verify=False`` skips that). The network takes normalised input; for
    one that takes images, use :func:`load_predictor`.
    """
    return load_predictor(ref, tracking_uri=tracking_uri, verify=verify).model


def load_predictor(
    ref: str | os.PathLike, *, tracking_uri: str | None = None, verify: bool = True
) -> Predictor:
    """A :class:`cnnas.objectives.Predictor` (images in, probabilities and labels out) from a
    pulled folder or a registry reference, checked as :func:`load` checks it. Without
    ``tracking_uri``, MLflow's own (``$MLFLOW_TRACKING_URI``)."""
    path = Path(ref)
    if path.is_dir():
        return Predictor.from_dir(path, verify=verify)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        pull(client, str(ref), Path(tmp) / "model", verify=verify)
        return Predictor.from_dir(Path(tmp) / "model", verify=verify)
