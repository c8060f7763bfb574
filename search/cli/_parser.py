"""Every ``cnnas`` command and option, and nothing else: this module imports only argparse, so
``cnnas --help`` and ``cnnas <command> --help`` answer without loading torch, Lightning, MLflow
or Optuna. Each command names the module and function that runs it (``command=``); ``main``
imports that module only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["COMPLEXITY_CHOICES", "PRESET_NAMES", "build_parser"]

# Checked against search._config.COMPLEXITY by the tests; kept here so that --help needs no
# import of the config module (which imports the layers below).
COMPLEXITY_CHOICES = ("params", "macs", "latency")
# The presets shipped in cnnas/search/presets (tests check that the two agree).
PRESET_NAMES = (
    "digits-quick",
    "fashion-mnist-cpu",
    "fashion-mnist-gpu",
    "seed000-fashion-mnist",
    "seed002-fashion-mnist",
    "seed003-fashion-mnist",
)

WORKFLOW = """\
a typical session:
  cnnas study start --preset digits-quick        search: trains and scores architectures
  cnnas dashboard digits-quick                   watch it live in optuna-dashboard
  cnnas pareto digits-quick                      the front: accuracy against size, test scores
  cnnas pull cnnas-digits-quick@champion --out model
  cnnas predict model image.png                  use the model on your images

cnnas config show --preset fashion-mnist-cpu > my.yaml writes a preset out to edit;
cnnas study start --config my.yaml runs it. Exit status: 0 done, 2 bad input, 1 failing study.
"""


def _presets(**_: Any) -> tuple[str, ...]:
    """What shell completion offers after --preset."""
    return PRESET_NAMES


def _cmd(p: argparse.ArgumentParser, module: str, function: str) -> None:
    p.set_defaults(command=(module, function))


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout instead of the tables (keys in the README)",
    )


def _project(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project-dir", help="folder of the local stores (study.project_dir)")


def add_study_ref(p: argparse.ArgumentParser) -> None:
    """The options that name an existing study: cnnas pareto, register, report."""
    p.add_argument("name", help="study name")
    p.add_argument("--config", help="the study's config (default: the one it was started with)")
    _project(p)
    p.add_argument("--data-dir", help="folder of the dataset files")
    p.add_argument(
        "--complexity",
        choices=COMPLEXITY_CHOICES,
        help="complexity axis of the front (default: the study's study.complexity)",
    )


def _study(sub: Any) -> None:
    study = sub.add_parser("study", help="start, resume or inspect a study")
    study_sub = study.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    start = study_sub.add_parser("start", help="create a study, or resume it, and run its trials")
    # --config and --preset exclude each other; checked when the command runs (argcomplete
    # cannot complete a parser with a mutually exclusive group on every Python).
    start.add_argument("--config", help="study config (YAML); default: built-in defaults")
    start.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a config shipped with cnnas: {', '.join(PRESET_NAMES)} (instead of --config)",
    ).completer = _presets
    start.add_argument("--name", help="study name (overrides study.name)")
    start.add_argument("--trials", type=int, help="trials in total (overrides study.trials)")
    start.add_argument("--timeout", type=float, help="seconds before no new trial starts")
    start.add_argument("--data-dir", help="folder of the dataset files (overrides data.data_dir)")
    _project(start)
    start.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    start.add_argument(
        "--workers",
        type=int,
        help="worker processes on the CPU sharing the study (overrides study.workers)",
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
        "--no-report", action="store_true", help="do not write the study report at the end"
    )
    _cmd(start, "_study", "cmd_study_start")

    status = study_sub.add_parser("status", help="a study's trials and Pareto front")
    status.add_argument("name", help="study name")
    status.add_argument("--config", help="the study's config (for its storage)")
    _project(status)
    status.add_argument("--all", action="store_true", help="also list every complete trial")
    _json(status)
    _cmd(status, "_study", "cmd_study_status")

    worker = sub.add_parser(
        "worker", help="join an existing study from any machine and run its trials"
    )
    worker.add_argument("--study", required=True, help="name of the study to join")
    worker.add_argument("--config", help="the study's config (its storage and MLflow server)")
    worker.add_argument("--data-dir", help="folder of the dataset files (overrides data.data_dir)")
    _project(worker)
    worker.add_argument("--device", help="the one GPU this worker trains on, e.g. 0")
    worker.add_argument("--threads", type=int, help="CPU threads for training")
    worker.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    _cmd(worker, "_study", "cmd_worker")


def _servers(sub: Any) -> None:
    server = sub.add_parser(
        "tracking-server", help="an MLflow tracking server for many workers (mlflow server)"
    )
    server.add_argument("--config", help="study config (for project_dir)")
    _project(server)
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
    _cmd(server, "_servers", "cmd_tracking_server")

    dash = sub.add_parser("dashboard", help="optuna-dashboard on the study storage")
    dash.add_argument("name", nargs="?", help="study to open (default: the list of studies)")
    dash.add_argument("--config", help="the study's config (for its storage)")
    _project(dash)
    dash.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    _cmd(dash, "_servers", "cmd_dashboard")


def _results(sub: Any) -> None:
    pareto = sub.add_parser("pareto", help="the Pareto front: table, test accuracy, plots")
    add_study_ref(pareto)
    pareto.add_argument("--out", help="folder for pareto.png / pareto.html")
    pareto.add_argument("--no-test", action="store_true", help="skip the held-out test evaluation")
    _json(pareto)
    _cmd(pareto, "_results", "cmd_pareto")

    register = sub.add_parser("register", help="register the front in the MLflow model registry")
    add_study_ref(register)
    register.add_argument(
        "--refit", action="store_true", help="retrain each new member on train + validation first"
    )
    _cmd(register, "_results", "cmd_register")

    report = sub.add_parser(
        "report",
        help="the study report: one HTML page and a Markdown summary, logged to the parent run",
    )
    add_study_ref(report)  # the same study reference as cnnas pareto / register
    report.add_argument(
        "--out",
        help="folder for report.html, report.md and the PNGs (default: PROJECT/reports/NAME)",
    )
    report.add_argument(
        "--no-test",
        action="store_true",
        help="skip the held-out test evaluation (no test accuracy, no confusion matrix)",
    )
    report.add_argument(
        "--no-log",
        action="store_true",
        help="write the files only: nothing to the MLflow parent run or optuna-dashboard",
    )
    _cmd(report, "_results", "cmd_report")


def _models(sub: Any) -> None:
    no_verify = (
        "use the model even if its files cannot be checked: no manifest, or a file that differs "
        "from it (a tampered or damaged model)"
    )
    pull = sub.add_parser(
        "pull", help="download a registered model: spec, weights, metadata, manifest"
    )
    pull.add_argument("ref", help="NAME, NAME@ALIAS or NAME/VERSION")
    pull.add_argument("--out", required=True, help="folder to write")
    pull.add_argument("--config", help="a study config (for mlflow.yml and project_dir)")
    _project(pull)
    pull.add_argument(
        "--no-verify",
        action="store_true",
        help="pull even a version whose files the registry records no sha256 for, or that "
        "differ from it; the folder then gets no manifest",
    )
    _cmd(pull, "_models", "cmd_pull")

    ev = sub.add_parser("evaluate", help="accuracy and confusion matrix of a pulled model")
    ev.add_argument("dir", help="a folder written by cnnas pull")
    ev.add_argument("--dataset", help="dataset (default: the one the model was trained on)")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test")
    ev.add_argument("--data-dir", help="folder of the dataset files")
    ev.add_argument("--no-verify", action="store_true", help=no_verify)
    _json(ev)
    _cmd(ev, "_models", "cmd_evaluate")

    pred = sub.add_parser("predict", help="class and probability of image files")
    pred.add_argument("dir", help="a folder written by cnnas pull")
    pred.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    pred.add_argument("--no-verify", action="store_true", help=no_verify)
    _json(pred)
    _cmd(pred, "_models", "cmd_predict")

    export = sub.add_parser(
        "export",
        help="write a model as ONNX, TorchScript or a torch.export program, preprocessing inside",
        description=(
            "Export a pulled model (a folder) or a registered one (NAME@ALIAS, NAME/VERSION) as "
            "one file that takes uint8 images (N, C, H, W), any N, and returns class "
            "probabilities; normalisation and softmax are in the graph. The file is loaded back "
            "and checked against PyTorch before the command succeeds."
        ),
    )
    export.add_argument("ref", metavar="REF_OR_DIR", help="a pulled folder, or NAME@ALIAS")
    export.add_argument(
        "--format",
        choices=("onnx", "torchscript", "exported-program"),
        default="onnx",
        help="onnx (onnxruntime; needs the 'export' extra), exported-program (torch.export, "
        "a .pt2 file) or torchscript (deprecated by PyTorch); default onnx",
    )
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--config", help="a study config (for mlflow.yml and project_dir)")
    _project(export)
    export.add_argument("--no-verify", action="store_true", help=no_verify)
    _cmd(export, "_models", "cmd_export")

    spec = sub.add_parser("spec", help="architecture specs")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True, metavar="ACTION")
    check = spec_sub.add_parser("check", help="validate a spec.json; print shapes, params, MACs")
    check.add_argument("file", help="path of a spec.json")
    _cmd(check, "_models", "cmd_spec_check")


def _configs(sub: Any) -> None:
    config = sub.add_parser("config", help="the presets shipped with cnnas, and config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    listing = config_sub.add_parser("list", help="the presets, one line each")
    _cmd(listing, "_configs", "cmd_config_list")
    show = config_sub.add_parser(
        "show",
        help="print a preset (or the defaults, or a config file) as YAML with every key",
    )
    show.add_argument(
        "--preset", metavar="NAME", help=f"one of: {', '.join(PRESET_NAMES)}"
    ).completer = _presets
    show.add_argument("--config", help="a config file: shown with every default filled in")
    _cmd(show, "_configs", "cmd_config_show")


def _data(sub: Any) -> None:
    data = sub.add_parser("data", help="download the public datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_sub.add_parser(
        "fetch",
        help="download a public dataset from its official source and verify its checksums",
        description=(
            "Download a public dataset into DIR/NAME/ and verify each file's MD5. Files "
            "already there (or, without --dir, in a system package's folder) are used."
        ),
    )
    fetch.add_argument(
        "name",
        metavar="NAME",
        help="fashion-mnist, mnist, kmnist, emnist, cifar-10 or cifar-100 (emnist-<split> and "
        "cifar-100-coarse also work)",
    )
    fetch.add_argument(
        "--dir",
        help="data folder to download into (default: $CNNAS_DATA_DIR or ~/.cache/cnnas/datasets)",
    )
    fetch.add_argument(
        "--mirror",
        help="base URL serving NAME/FILE in place of the official hosts "
        "(default: $CNNAS_DATA_MIRROR)",
    )
    _cmd(fetch, "_data", "cmd_data_fetch")


def _experiment_common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument(
        "--preset",
        choices=("small", "full"),
        default="full",
        help="small: minutes on a CPU; full: the seed's settings (default)",
    )
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    p.add_argument("--data-dir", help="folder of the dataset files")
    p.add_argument("--data-path", help="the file or folder of an npz or image-folder dataset")
    p.add_argument("--image-size", help="resize an image-folder dataset to HxW (e.g. 32x32)")
    p.add_argument("--epochs", type=int, help="epochs per model (overrides the preset)")
    p.add_argument("--subset", type=int, help="training-pool images used (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per step (overrides the preset)")
    p.add_argument("--test-limit", type=int, help="test images scored per epoch (default: preset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and training (default 0)")
    p.add_argument(
        "--accelerator", choices=("auto", "cpu", "gpu"), default="auto", help="where to train"
    )
    p.add_argument("--out", help=f"report folder (default <project-dir>/experiments/{name})")
    p.add_argument(
        "--project-dir",
        default="cnnas-runs",
        help="folder of the local MLflow store (default cnnas-runs)",
    )
    p.add_argument("--mlflow-config", help="mlflow.yml to read (default ./mlflow.yml if present)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides mlflow.yml)")
    p.add_argument(
        "--experiment", default=f"cnnas-{name}", help=f"MLflow experiment (default cnnas-{name})"
    )


def _ablation(experiment_sub: Any) -> None:
    p = experiment_sub.add_parser(
        "ablation",
        help="one-factor-at-a-time ablation from a base CNN, with a VGG baseline",
        description=(
            "A manual architecture search (conv layers -> GAP -> dense layers), one factor "
            "changed at a time from a base model, VGG11/16/19 as the literature baseline; "
            "writes the summary table (Markdown, CSV), plots and a report, and logs every "
            "model to MLflow."
        ),
    )
    _experiment_common(p, "ablation")
    p.add_argument("--base-conv-layers", type=int, help="conv layers of the base (full: 1)")
    p.add_argument("--base-dense-layers", type=int, help="dense layers of the base (full: 1)")
    p.add_argument("--base-filters", type=int, help="filters of the base (full: 64)")
    p.add_argument("--base-kernel", type=int, help="kernel size of the base (full: 5)")
    p.add_argument("--dense-width", type=int, help="units of every dense layer (full: 1024)")
    p.add_argument(
        "--factors",
        help="factor groups to vary, comma-separated (default all: "
        "conv_layers,dense_layers,filters,kernel,regularisation)",
    )
    p.add_argument("--conv-layers", help="values of the conv-layers factor (full: 1,2,4,8)")
    p.add_argument("--dense-layers", help="values of the dense-layers factor (full: 1,2,4)")
    p.add_argument("--filters", help="values of the filters factor (full: 32,64,128,256)")
    p.add_argument("--kernels", help="values of the kernel factor (full: 3,5,7,9)")
    p.add_argument("--vgg", help="VGG depths of the baseline, e.g. 11,19, or none (full: 11,16,19)")
    p.add_argument("--vgg-width", type=float, help="VGG filter multiplier (full: 1, small: 0.125)")
    p.add_argument("--vgg-dense", type=int, help="units of VGG's two dense layers (full: 4096)")
    _cmd(p, "_experiments", "cmd_ablation")


def _heads(experiment_sub: Any) -> None:
    p = experiment_sub.add_parser(
        "heads",
        help="multi-scale flatten vs plain flatten vs three heads, and redundancy",
        description=(
            "Three variants of one network (multi-scale flatten with one softmax, without the "
            "pooled sections, three heads) over several seeds at 1/4 and all of the training "
            "data, with the effective rank of the representation and the linear CKA between "
            "the multi-scale sections; writes a report and logs every model to MLflow."
        ),
    )
    _experiment_common(p, "heads")
    p.add_argument("--seeds", type=int, help="training seeds per variant and fraction (full: 5)")
    p.add_argument("--filters", help="filters of the conv stages, comma-separated (full: 32,64)")
    p.add_argument("--dense-width", type=int, help="units of the dense layer (full: 128)")
    p.add_argument(
        "--rank-widths",
        help="dense widths tried for the effective rank, or none (full: 8,16,32,64)",
    )
    p.add_argument(
        "--rank-tolerance",
        type=float,
        default=0.01,
        help="accuracy a narrower layer may lose and still count (default 0.01)",
    )
    p.add_argument(
        "--cka-images", type=int, default=1000, help="validation images for CKA (default 1000)"
    )
    _cmd(p, "_experiments", "cmd_heads")


def _layer_skip(experiment_sub: Any) -> None:
    p = experiment_sub.add_parser(
        "layer-skip",
        help="skip conv layers per image (CNN1, activation labels, router, CNN3)",
        description=(
            "Layer skipping: train CNN1, label images by their strongest activations, train a "
            "router on the labels, train CNN3 with per-image skipping; the same with labels "
            "from the earliest correct exit classifier. Writes report.md, layer-skip.png and "
            "results.json, and logs to the MLflow experiment 'cnnas-layer-skip'."
        ),
    )
    p.add_argument(
        "--preset",
        choices=("full", "small"),
        default="full",
        help="full: the paper's settings (32 maps, 20 epochs, all images); "
        "small: minutes on a CPU (12,000 images, 3 epochs, 12 maps). Default: full",
    )
    p.add_argument("--dataset", help="a dataset name (default: the preset's, fashion-mnist)")
    p.add_argument("--data-dir", help="folder of the dataset files")
    p.add_argument("--subset", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--epochs", type=int, help="epochs of CNN1, CNN3 and the exit classifiers")
    p.add_argument("--router-epochs", type=int, help="epochs of the routers (default: --epochs)")
    p.add_argument("--filters", type=int, help="feature maps of every conv layer")
    p.add_argument("--seed", type=int, help="random seed (data split and initialisation)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--out", help="folder for the report (default: <project-dir>/reports/layer-skip/...)"
    )
    p.add_argument("--project-dir", help="folder of the local stores (default cnnas-runs)")
    p.add_argument("--mlflow", help="path of mlflow.yml (default: ./mlflow.yml if present)")
    p.add_argument("--no-mlflow", action="store_true", help="write the report only")
    _cmd(p, "_experiments", "cmd_layer_skip")


def build_parser() -> argparse.ArgumentParser:
    from cnnas import __version__

    p = argparse.ArgumentParser(
        prog="cnnas",
        description="Multi-objective architecture search for image-classification CNNs:\n"
        "which network gives the most accuracy for its size, on your data, in your budget.",
        epilog=WORKFLOW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"cnnas {__version__}")
    sub = p.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    _study(sub)
    _results(sub)
    _models(sub)
    _servers(sub)
    experiment = sub.add_parser("experiment", help="rerun a source paper's experiment on your data")
    experiment_sub = experiment.add_subparsers(
        dest="experiment_command", required=True, metavar="EXPERIMENT"
    )
    for add in (_ablation, _heads, _layer_skip):
        add(experiment_sub)
    _data(sub)
    _configs(sub)
    return p
