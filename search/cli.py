"""The ``cnnas`` command line.

Exit status: 0 on success, 2 on bad input (config, dataset, architecture, study name) with a
message naming what is wrong, 1 when a study stops because its trials keep failing.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import optuna
import torch
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from models import (
    ArchSpec,
    ModelFileError,
    SpecError,
    count_macs,
    count_params,
    infer_shapes,
    load_model,
    read_metadata,
)
from objectives import DatasetError, load_dataset

from ._cli_args import add_study_ref
from ._config import ConfigError, StudyConfig, load_config, load_mlflow_config
from ._data_cli import add_parsers as add_data_parsers
from ._plots import pareto_plot
from ._registry import (
    RegistryError,
    confusion_matrix,
    front_trials,
    pull,
    register_front,
    test_accuracy,
)
from ._report import dashboard_artifact_store, write_report
from ._report_cli import add_parsers as add_report_parsers
from ._study import (
    StudyFailing,
    StudyMismatch,
    StudyRun,
    check_storage,
    front_point,
    jsonable,
    open_storage,
    pareto_front,
    prepare,
    replace_cfg,
    run_study,
    state_counts,
    storage_location,
    trial_spec,
    worker_id,
)
from ._tracking import tracking_uri
from ._workers import plan_workers, run_workers
from .experiments import add_ablation_parser, add_heads_parser, add_layer_skip_parser

__all__ = ["main"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class UsageError(Exception):
    """Bad input found by the CLI itself (exit status 2)."""


# --- formatting -------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def front_table(trials: Sequence[FrozenTrial], test_acc: dict[int, float] | None = None) -> str:
    """Seed 003's columns for each trial, one row each (test accuracy once evaluated)."""
    test_acc = test_acc or {}
    head = (
        f"{'trial':>5}  {'val_acc':>7}  {'train_acc':>9}  {'val_loss':>8}  {'train_loss':>10}  "
        f"{'params':>8}  {'MACs':>8}  {'ratio':>9}  {'secs':>6}  "
        + (f"{'test_acc':>8}  " if test_acc else "")
        + "architecture"
    )
    rows = [head]
    for t in trials:
        a = t.user_attrs
        spec = trial_spec(t)
        rows.append(
            f"{t.number:>5}  {a.get('val_acc', float('nan')):>7.4f}  "
            f"{a.get('train_acc', float('nan')):>9.4f}  {a.get('val_loss', float('nan')):>8.4f}  "
            f"{a.get('train_loss', float('nan')):>10.4f}  {_human(a.get('params', 0)):>8}  "
            f"{_human(a.get('macs', 0)):>8}  {a.get('ratio', float('nan')):>9.3e}  "
            f"{a.get('seconds', float('nan')):>6.1f}  "
            + (f"{test_acc.get(t.number, float('nan')):>8.4f}  " if test_acc else "")
            + (spec.summary() if spec else "?")
        )
    return "\n".join(rows)


def _state_line(study: optuna.Study) -> str:
    counts = state_counts(study)
    shown = [f"{int(v)} {k.removeprefix('trials_')}" for k, v in counts.items() if v]
    return ", ".join(shown) or "no trials"


def _print_front(study: optuna.Study, out: TextIO) -> None:
    front = pareto_front(study)
    names = study.metric_names or ["val_acc", "complexity"]
    print(
        f"\nPareto front of study {study.study_name!r} ({names[0]} up, {names[1]} down): "
        f"{len(front)} trial(s); {_state_line(study)}",
        file=out,
    )
    if front:
        print(front_table(front), file=out)


def _look_further(cfg: StudyConfig, config_arg: str | None, mlflow_uri: str, out: TextIO) -> None:
    cfg_flag = f" --config {config_arg}" if config_arg else ""
    name = cfg.study.name
    print(
        "\nLook further:\n"
        f"  cnnas study status {name}{cfg_flag}      # trials and the front\n"
        f"  cnnas pareto {name}{cfg_flag}            # front with test accuracy, plots\n"
        f"  cnnas dashboard {name}{cfg_flag}         # optuna-dashboard on 127.0.0.1:8080\n"
        + (
            f"  open {mlflow_uri}                                  # MLflow: runs, curves, specs"
            if mlflow_uri.startswith(("http://", "https://"))
            else f"  mlflow ui --backend-store-uri {mlflow_uri} --port 5000   # runs, curves, specs"
        ),
        file=out,
    )


class _Progress:
    """One line per finished trial; per-epoch lines too when the output is a terminal."""

    def __init__(self, total: int, out: TextIO, verbose: bool) -> None:
        self.total, self.out, self.verbose = total, out, verbose
        self.epochs = 0

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        if self.verbose:
            print(
                f"        epoch {epoch + 1:>3}  train_loss {values.get('train_loss', 0):.4f}  "
                f"val_acc {values.get('val_acc', 0):.4f}  ({values.get('epoch_seconds', 0):.1f}s)",
                file=self.out,
                flush=True,
            )

    def trial(self, run: StudyRun, trial: FrozenTrial) -> None:
        done = run.finished_count()
        front = pareto_front(run.study)
        complexity = run.cfg.study.complexity
        best = max(front, key=lambda t: t.values[0]) if front else None
        a = trial.user_attrs
        if trial.state == TrialState.COMPLETE and "infeasible" in a:
            what = f"infeasible, not trained: {a['infeasible']}"
        elif trial.state == TrialState.COMPLETE:
            what = (
                f"val_acc {a['val_acc']:.4f}  params {_human(a['params']):>7}  "
                f"MACs {_human(a['macs']):>7}  {a['seconds']:6.1f}s"
            )
            if "duplicate_of" in a:
                what += f"  (same as trial {a['duplicate_of']}: not trained again)"
        elif trial.state == TrialState.PRUNED:
            what = f"PRUNED: {a.get('pruned', '')[:140]}"
        else:
            reason = trial.user_attrs.get("fail_reason", "")
            what = f"{trial.state.name}" + (f": {reason.splitlines()[-1][:120]}" if reason else "")
        best_text = (
            f"  | front {len(front)}, best {best.values[0]:.4f} @ "
            f"{_human(front_point(best, complexity)[1])}"
            if best
            else ""
        )
        print(
            f"[{done:>3}/{self.total}] trial {trial.number:<4} {what}{best_text}",
            file=self.out,
            flush=True,
        )


# --- commands ---------------------------------------------------------------------------------


def _load_cfg(args: argparse.Namespace) -> StudyConfig:
    cfg = load_config(args.config)
    if getattr(args, "project_dir", None):
        cfg = cfg.replace("study", project_dir=args.project_dir)
    return cfg


def cmd_study_start(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.devices is not None and not all(d.strip().isdigit() for d in args.devices.split(",")):
        raise UsageError(f"--devices takes GPU indices like 0,1,2; got {args.devices!r}")
    cfg = replace_cfg(_load_cfg(args), name=args.name, trials=args.trials, timeout=args.timeout)
    run = prepare(cfg, data_dir=args.data_dir)  # raises on bad input; nothing written yet
    cfg = run.cfg
    out = sys.stdout
    run.open()
    done = run.finished_count()
    data = run.data
    print(
        f"study {cfg.study.name!r}: {done} of {cfg.study.trials} trials done; "
        f"dataset {data.name} {data.input_shape}, {len(data.train_y)} train / "
        f"{len(data.val_y)} validation images; storage {storage_location(cfg)}; "
        f"MLflow {run.tracker.uri} (parent run {run.parent_run_id})",
        file=out,
        flush=True,
    )
    progress = _Progress(cfg.study.trials, out, verbose=args.verbose or out.isatty())
    failing = None
    plans = plan_workers(args.workers, args.devices.split(",") if args.devices else None)
    try:
        if len(plans) > 1 or plans[0].device is not None:
            where = ", ".join(f"GPU {p.device}" if p.device else "CPU" for p in plans)
            print(f"{len(plans)} worker process(es): {where}", file=out, flush=True)
            start = time.perf_counter()
            codes = run_workers(jsonable(cfg.to_dict()), plans, args.data_dir)
            bad = [f"worker {i} exited {c}" for i, c in enumerate(codes) if c != 0]
            if bad:
                print("warning: " + "; ".join(bad), file=sys.stderr)
            counts = state_counts(run.study)
            counts["wall_seconds"] = time.perf_counter() - start
            run.tracker.end_parent(run.parent_run_id, counts, "FINISHED")
        else:
            run_study(run, on_trial=progress.trial, on_epoch=progress.epoch)
    except StudyFailing as e:
        failing = e
    except KeyboardInterrupt:
        print("\ninterrupted: the study is saved; run the same command to resume", file=out)
        return 130
    _print_front(run.study, out)
    if cfg.registry.register and not args.no_register and front_trials(run.study):
        _register(run, cfg.study.complexity, refit=False, out=out)
    if not args.no_report and run.finished_count():
        report = write_report(run, complexity=cfg.study.complexity)
        print(f"\nreport: {report.html}\n        {report.markdown}", file=out)
    _look_further(cfg, args.config, run.tracker.uri, out)
    if failing is not None:
        print(f"\nerror: {failing}", file=sys.stderr)
        return 1
    return 0


def _existing_storage(
    cfg: StudyConfig, name: str | None = None
) -> str | optuna.storages.BaseStorage:
    """The study storage, refusing to create a journal file, a SQLite file or Optuna's tables
    in a database where there are none."""
    location = storage_location(cfg)
    url = cfg.study.storage
    study = f"no study named {name!r}: " if name else ""
    # Opening a missing journal file or SQLite database would create it.
    path = (
        location
        if not url
        else url.removeprefix("sqlite:///")
        if url.startswith("sqlite:///")
        else None
    )
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{study}no study storage at {location}; start a study first")
    if url and path is None:
        check_storage(cfg)
        if not _has_optuna_tables(url):
            raise UsageError(f"{study}the database {location} holds no Optuna studies yet")
    return open_storage(cfg)


def _has_optuna_tables(url: str) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _existing_study(cfg: StudyConfig, name: str) -> optuna.Study:
    location = storage_location(cfg)
    storage = _existing_storage(cfg, name)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UsageError(f"no study named {name!r} in {location}; studies there: {sorted(names)}")
    return optuna.load_study(study_name=name, storage=storage)


def cmd_worker(args: argparse.Namespace) -> int:
    if args.device is not None:
        if not args.device.strip().isdigit():
            raise UsageError(f"--device takes one GPU index like 0; got {args.device!r}")
        # Before anything initialises CUDA: this process sees its one GPU as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device.strip()
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = _load_cfg(args).replace("study", name=args.study)
    run = prepare(cfg, data_dir=args.data_dir)  # config, storage reachable, dataset
    _existing_study(run.cfg, args.study)  # a worker joins; it never creates a study
    me = worker_id()
    # Each worker samples from its own seed: the same seed would propose the same architectures.
    seed = (run.cfg.study.seed + zlib.crc32(me.encode())) % (2**31 - 1)
    run.cfg = run.cfg.replace("study", seed=seed)
    if args.device is not None:
        run.cfg = run.cfg.replace("train", accelerator="gpu")
    run.open(reopen_parent=False)
    out = sys.stdout
    print(
        f"worker {me} joined study {args.study!r} ({run.finished_count()} of "
        f"{run.cfg.study.trials} trials done); storage {storage_location(run.cfg)}; "
        f"MLflow {run.tracker.uri} (parent run {run.parent_run_id})",
        file=out,
        flush=True,
    )
    progress = _Progress(run.cfg.study.trials, out, verbose=args.verbose or out.isatty())
    try:
        run_study(run, on_trial=progress.trial, on_epoch=progress.epoch, shared=True)
    except StudyFailing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: this worker's trial is recorded as failed; the study goes on")
        return 130
    print(f"worker {me}: the study has its {run.cfg.study.trials} trials", file=out)
    return 0


def cmd_tracking_server(args: argparse.Namespace) -> int:
    """``mlflow server`` with cnnas's defaults: loopback only, artifacts served by the server."""
    cfg = _load_cfg(args)
    project = Path(cfg.study.project_dir)
    backend = args.backend_store_uri or f"sqlite:///{project / 'mlflow.db'}"
    artifacts = args.artifacts_destination or str(project / "mlartifacts")
    if args.host not in LOCAL_HOSTS:
        print(
            f"warning: the MLflow server has no authentication; binding to {args.host} lets "
            "anyone who can reach this machine read, change and delete runs and models",
            file=sys.stderr,
        )
    command = tracking_server_command(backend, artifacts, args.host, args.port, args.workers)
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    print(
        f"MLflow tracking server at http://{args.host}:{args.port} (backend {backend}, "
        f"artifacts {artifacts}); set tracking_uri: http://<this host>:{args.port} in mlflow.yml",
        flush=True,
    )
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def tracking_server_command(
    backend: str, artifacts: str, host: str, port: int, workers: int = 2
) -> list[str]:
    """The ``mlflow server`` command line ``cnnas tracking-server`` runs."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def cmd_study_status(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    study = _existing_study(cfg, args.name)
    _print_front(study, sys.stdout)
    if args.all:
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        print("\nAll complete trials:", file=sys.stdout)
        print(front_table(sorted(done, key=lambda t: t.number)), file=sys.stdout)
    mlflow_uri = tracking_uri(load_mlflow_config(cfg.mlflow), Path(cfg.study.project_dir))
    _look_further(cfg.replace("study", name=args.name), args.config, mlflow_uri, sys.stdout)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    cfg = _load_cfg(args)
    storage = _existing_storage(cfg)
    path = "/dashboard"
    if args.name:
        study = _existing_study(cfg, args.name)
        path += f"/studies/{study._storage.get_study_id_from_name(args.name)}"
    if args.host not in LOCAL_HOSTS:
        print(
            f"warning: optuna-dashboard has no authentication; binding to {args.host} lets "
            "anyone who can reach this machine read and edit the studies",
            file=sys.stderr,
        )
    print(f"optuna-dashboard at http://{args.host}:{args.port}{path} (Ctrl-C to stop)", flush=True)
    # The study report's plots, linked from the study's note, are served from this store.
    optuna_dashboard.run_server(
        storage,
        host=args.host,
        port=args.port,
        artifact_store=dashboard_artifact_store(cfg.study.project_dir),
    )
    return 0


def _attach(args: argparse.Namespace) -> StudyRun:
    """An existing study with its data, tracker and parent run; creates nothing."""
    cfg = _load_cfg(args)
    study = _existing_study(cfg, args.name)
    stored = study.user_attrs.get("config")
    if stored and not args.config:
        # The study's own settings (dataset, split, training) unless a config is given.
        cfg = StudyConfig.from_dict(
            {
                **stored,
                "study": {
                    **stored["study"],
                    "project_dir": cfg.study.project_dir,
                    "storage": cfg.study.storage,
                },
            }
        )
    cfg = replace_cfg(cfg, name=args.name)
    run = prepare(cfg, data_dir=getattr(args, "data_dir", None))
    run.open(reopen_parent=False)
    if getattr(args, "complexity", None) is None:
        args.complexity = run.cfg.study.complexity
    return run


def _register(run: StudyRun, complexity: str, refit: bool, out: TextIO) -> dict:
    reg = run.cfg.registry
    epochs = (reg.refit_epochs or 2 * run.cfg.train.epochs) if refit else None
    info = register_front(run, reg.rule(), complexity=complexity, refit_epochs=epochs)
    print(f"\nregistered model {info['name']!r}: {len(info['versions'])} version(s)", file=out)
    for alias, (trial, version) in sorted(info["aliases"].items()):
        print(f"  @{alias:<14} version {version:>3}  (trial {trial})", file=out)
    if "champion" in info["aliases"]:
        print(f"pull one: cnnas pull {info['name']}@champion --out ./model", file=out)
    return info


def cmd_pareto(args: argparse.Namespace) -> int:
    run = _attach(args)
    front = front_trials(run.study, args.complexity)
    tests = {} if args.no_test else {t.number: test_accuracy(run, t) for t in front}
    label = "params" if args.complexity == "params" else "MACs"
    print(
        f"Pareto front of {run.cfg.study.name!r}: val_acc up, {label} down; "
        f"{len(front)} trial(s); {_state_line(run.study)}"
    )
    print(front_table(front, tests))
    trained = [
        t
        for t in run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "val_acc" in t.user_attrs and "infeasible" not in t.user_attrs
    ]
    out_dir = Path(args.out) if args.out else run.project_dir / "reports" / run.cfg.study.name
    png, html = pareto_plot(
        trained,
        front,
        args.complexity,
        out_dir,
        f"{run.cfg.study.name}: validation accuracy vs {label}",
    )
    for path in (png, html):
        run.tracker.client.log_artifact(run.parent_run_id, str(path), "pareto")
    print(f"\nplot: {png}\ninteractive: {html}\n(also in the study's MLflow parent run)")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    run = _attach(args)
    _register(run, args.complexity, args.refit, sys.stdout)
    return 0


def _tracking_client(args: argparse.Namespace) -> MlflowClient:
    cfg = _load_cfg(args)
    uri = tracking_uri(load_mlflow_config(cfg.mlflow), Path(cfg.study.project_dir))
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
    print(f"{dataset} {args.split} split: {len(y)} images, accuracy {acc:.4f}")
    names = meta.get("classes") or list(data.classes)
    width = max(6, *(len(str(n)) for n in names))
    print("\nconfusion matrix (rows: true class, columns: predicted)")
    print(" " * width + "".join(f"{str(n)[:5]:>6}" for n in names))
    for i, row in enumerate(matrix.tolist()):
        print(f"{names[i]!s:>{width}}" + "".join(f"{v:>6}" for v in row) + f"   {i}")
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
    for path, p in zip(args.images, probs, strict=True):
        k = int(p.argmax())
        print(f"{path}: {names[k]} ({float(p[k]):.3f})")
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


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnas",
        description="Multi-objective architecture search for image-classification CNNs.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    study = sub.add_parser("study", help="start, resume or inspect a study")
    study_sub = study.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    start = study_sub.add_parser("start", help="create a study, or resume it, and run its trials")
    start.add_argument("--config", help="study config (YAML); default: built-in defaults")
    start.add_argument("--name", help="study name (overrides study.name)")
    start.add_argument("--trials", type=int, help="trials in total (overrides study.trials)")
    start.add_argument("--timeout", type=float, help="seconds before no new trial starts")
    start.add_argument("--data-dir", help="folder of the dataset files (overrides data.data_dir)")
    start.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    start.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    start.add_argument(
        "--workers",
        type=int,
        help="worker processes on the CPU sharing the study (default 1)",
    )
    start.add_argument(
        "--devices",
        help="GPUs to use, one worker each: e.g. 0,1,2,3 (trials never share a GPU)",
    )
    start.add_argument(
        "--no-register",
        action="store_true",
        help="do not register the front in the model registry at the end (registry.register)",
    )
    start.add_argument(
        "--no-report",
        action="store_true",
        help="do not write the study report (cnnas report) at the end",
    )
    start.set_defaults(func=cmd_study_start)

    status = study_sub.add_parser("status", help="a study's trials and Pareto front")
    status.add_argument("name", help="study name")
    status.add_argument("--config", help="the study's config (for its storage)")
    status.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    status.add_argument("--all", action="store_true", help="also list every complete trial")
    status.set_defaults(func=cmd_study_status)

    worker = sub.add_parser(
        "worker", help="join an existing study from any machine and run its trials"
    )
    worker.add_argument("--study", required=True, help="name of the study to join")
    worker.add_argument("--config", help="the study's config (its storage and MLflow server)")
    worker.add_argument("--data-dir", help="folder of the dataset files (overrides data.data_dir)")
    worker.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    worker.add_argument("--device", help="the one GPU this worker trains on, e.g. 0")
    worker.add_argument("--threads", type=int, help="CPU threads for training")
    worker.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    worker.set_defaults(func=cmd_worker)

    server = sub.add_parser(
        "tracking-server", help="an MLflow tracking server for many workers (mlflow server)"
    )
    server.add_argument("--config", help="study config (for project_dir)")
    server.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    server.add_argument(
        "--backend-store-uri",
        help="runs database, e.g. postgresql://user@db/mlflow (default: SQLite in project_dir)",
    )
    server.add_argument(
        "--artifacts-destination",
        help="where the server keeps artifacts: a shared folder or s3://... "
        "(default: project_dir/mlartifacts)",
    )
    server.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    server.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    server.set_defaults(func=cmd_tracking_server)

    dash = sub.add_parser("dashboard", help="optuna-dashboard on the study storage")
    dash.add_argument("name", nargs="?", help="study to open (default: the list of studies)")
    dash.add_argument("--config", help="the study's config (for its storage)")
    dash.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    dash.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    dash.set_defaults(func=cmd_dashboard)

    pareto = sub.add_parser("pareto", help="the Pareto front: table, test accuracy, plots")
    add_study_ref(pareto)
    pareto.add_argument("--out", help="folder for pareto.png / pareto.html")
    pareto.add_argument("--no-test", action="store_true", help="skip the held-out test evaluation")
    pareto.set_defaults(func=cmd_pareto)

    register = sub.add_parser("register", help="register the front in the MLflow model registry")
    add_study_ref(register)
    register.add_argument(
        "--refit", action="store_true", help="retrain each new member on train + validation first"
    )
    register.set_defaults(func=cmd_register)

    pull_p = sub.add_parser("pull", help="download a registered model: spec, weights, metadata")
    pull_p.add_argument("ref", help="NAME, NAME@ALIAS or NAME/VERSION")
    pull_p.add_argument("--out", required=True, help="folder to write")
    pull_p.add_argument("--config", help="a study config (for mlflow.yml and project_dir)")
    pull_p.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")
    pull_p.set_defaults(func=cmd_pull)

    ev = sub.add_parser("evaluate", help="accuracy and confusion matrix of a pulled model")
    ev.add_argument("dir", help="a folder written by cnnas pull")
    ev.add_argument("--dataset", help="dataset (default: the one the model was trained on)")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test")
    ev.add_argument("--data-dir", help="folder of the dataset files")
    ev.set_defaults(func=cmd_evaluate)

    pred = sub.add_parser("predict", help="class and probability of image files")
    pred.add_argument("dir", help="a folder written by cnnas pull")
    pred.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    pred.set_defaults(func=cmd_predict)

    spec = sub.add_parser("spec", help="architecture specs")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True, metavar="ACTION")
    check = spec_sub.add_parser("check", help="validate a spec.json; print shapes, params, MACs")
    check.add_argument("file", help="path of a spec.json")
    check.set_defaults(func=cmd_spec_check)
    experiment = sub.add_parser(
        "experiment", help="rerun a source document's experiment on your data"
    )
    experiment_sub = experiment.add_subparsers(
        dest="experiment_command", required=True, metavar="EXPERIMENT"
    )
    for add in (add_ablation_parser, add_heads_parser, add_layer_skip_parser):
        add(experiment_sub)
    add_data_parsers(sub)
    add_report_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow draws a progress bar for every artifact download; a CLI line says enough.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Optuna announces every trial and MLflow every schema migration at INFO; the CLI prints its
    # own progress, one line a trial.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (
        ConfigError,
        DatasetError,
        SpecError,
        StudyMismatch,
        UsageError,
        RegistryError,
        ModelFileError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m search.cli`: run the package's own copy of this module, so the error classes
    # the other modules import from search.cli are the ones main() catches.
    from search.cli import main as package_main

    sys.exit(package_main())
