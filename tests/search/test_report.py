"""The study report: ``cnnas report STUDY`` on a tiny real study (scikit-learn digits).

The study is run once through ``cnnas study start`` against real stores (Optuna journal file,
MLflow SQLite and file artifacts) with a parameter budget that rejects some architectures, so the
budget counts have something to count; tests that only read it share it. Every test that needs a
study is marked slow: the shared one takes 20-50 s to train and report on two busy cores.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import re
import shutil
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pytest
import torch
import yaml
from mlflow import MlflowClient

from cnnas.search import cli
from cnnas.search.report import DASHBOARD_ARTIFACTS, SECTIONS, dashboard_artifact_store
from tests.search._helpers import front_of

SPACE = {
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
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Networks this small train fastest, and steadily on a busy machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subcommands(p: argparse.ArgumentParser) -> Any:
    # argparse has no public way to list a parser's subcommands or options.
    (sub,) = [a for a in p._actions if a.choices and isinstance(a.choices, dict)]  # noqa: SLF001
    return sub


def options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}  # noqa: SLF001


def cnnas(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write_config(root: Path, name: str, **study) -> Path:
    cfg = {
        "study": {"name": name, "trials": 6, "seed": 1, "project_dir": str(root / "runs"), **study},
        "data": {"dataset": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "accelerator": "cpu"},
        "space": SPACE,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def open_study(project_dir: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project_dir / "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mlflow_db_template) -> tuple[Path, Path]:
    """A finished six-trial study, nothing registered: (root, config)."""
    root = tmp_path_factory.mktemp("report")
    (root / "runs").mkdir()
    shutil.copy(mlflow_db_template, root / "runs" / "mlflow.db")
    # 3,000 parameters: seed 1 draws architectures on both sides of it.
    config = write_config(root, "rep", max_params=3000)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        rc, _out, err = cnnas("study", "start", "--config", config, "--no-register")
    assert rc == 0, err
    return root, config


@pytest.fixture(scope="module")
def reported(finished) -> tuple[Path, Path, str]:
    """``cnnas report rep`` once: (report folder, config, stdout)."""
    root, config = finished
    rc, out, err = cnnas("report", "rep", "--config", config)
    assert rc == 0, err
    return root / "runs" / "reports" / "rep", config, out


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid!r}"
    return html.unescape(m.group(1))


def embedded_pngs(fragment: str) -> list[bytes]:
    return [
        base64.b64decode(b)
        for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment)
    ]


# --- the page -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_has_every_part_with_its_plot_embedded(reported, finished) -> None:
    folder, _, out = reported
    page = (folder / "report.html").read_text()
    for sid, heading in SECTIONS.items():
        body = section(page, sid)
        assert f"<h2>{heading}</h2>" in body
        if sid in ("budget", "front"):
            assert "<table>" in body
        else:
            (png,) = embedded_pngs(body)  # one plot per section, inside the page itself
            assert png.startswith(PNG_MAGIC)
            assert png == (folder / f"{sid}.png").read_bytes()
    # Self-contained: nothing is fetched when the page opens.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page
    assert (folder / "report.html").stat().st_size < 3_000_000
    assert f"page:    {folder / 'report.html'}" in out


@pytest.mark.slow
def test_the_front_table_lists_each_member_with_test_accuracy_and_aliases(
    reported, finished
) -> None:
    folder, _, _ = reported
    root, _ = finished
    study = open_study(root / "runs", "rep")
    front = front_of(study)
    assert front
    tests = study.user_attrs["test_accuracy"]
    body = section((folder / "report.html").read_text(), "front")
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)[1:]
    assert len(rows) == len(front)
    for row, t in zip(rows, front, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[0] == str(t.number)
        assert cells[1] == f"{t.user_attrs['val_acc']:.4f}"
        assert cells[2] == f"{tests[str(t.number)]:.4f}"
    assert "most-accurate" in body and "champion" in body


@pytest.mark.slow
def test_the_budget_counts_states_infeasible_trials_and_time_by_device(reported, finished) -> None:
    folder, _, _ = reported
    root, _ = finished
    study = open_study(root / "runs", "rep")
    trials = study.get_trials()
    infeasible = sum("infeasible" in t.user_attrs for t in trials)
    assert 0 < infeasible < len(trials), "the fixture's budget should reject some trials"
    body = section((folder / "report.html").read_text(), "budget")
    assert f"<td class=l>complete</td><td>{len(trials)}</td>" in body
    assert (
        f"<td class=l>  of which infeasible (over budget, not trained)</td><td>{infeasible}</td>"
        in body
    )
    assert "<td class=l>pruned</td><td>0</td>" in body
    assert "<td class=l>failed</td><td>0</td>" in body
    # The study trains on the CPU (train.accelerator: cpu), so all its time is CPU time.
    assert f"<td class=l>CPU</td><td>{len(trials)}</td>" in body


@pytest.mark.slow
def test_the_markdown_summary_has_the_table_the_counts_and_links_to_the_pngs(
    reported, finished
) -> None:
    folder, _, _ = reported
    root, _ = finished
    md = (folder / "report.md").read_text()
    front = front_of(open_study(root / "runs", "rep"))
    assert "| trial | val_acc | test_acc |" in md
    for t in front:
        assert re.search(rf"^\| {t.number} \| {t.user_attrs['val_acc']:.4f} \|", md, re.M)
    assert re.search(r"^\| complete \| 6 \|$", md, re.M)
    assert "| CPU | 6 |" in md
    for sid in ("pareto", "history", "importances", "curves", "confusion"):
        assert f"![{SECTIONS[sid]}]({sid}.png)" in md
        assert (folder / f"{sid}.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_the_champion_is_the_rule_pick_when_nothing_is_registered(reported, finished) -> None:
    folder, _, out = reported
    root, _ = finished
    front = front_of(open_study(root / "runs", "rep"))
    best = max(front, key=lambda t: (t.user_attrs["val_acc"], -t.user_attrs["params"]))
    said = f"trial {best.number}, picked by the champion rule 'most_accurate'"
    assert said in out
    assert said in section((folder / "report.html").read_text(), "confusion")


@pytest.mark.slow
def test_the_files_are_logged_to_the_parent_run(reported, finished) -> None:
    root, _ = finished
    study = open_study(root / "runs", "rep")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    parent = study.user_attrs["mlflow_parent_run_id"]
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "report")}
    assert {"report.html", "report.md", "pareto.html"} <= logged
    assert {f"{sid}.png" for sid in ("pareto", "history", "importances", "curves")} <= logged
    assert "confusion.png" in logged


@pytest.mark.slow
def test_the_dashboard_note_shows_the_plots_from_its_artifact_store(reported, finished) -> None:
    root, _ = finished
    study = open_study(root / "runs", "rep")
    note = optuna_dashboard.get_note(study)
    assert "## Front members" in note and "| trial | val_acc |" in note
    metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert {"report.html", "pareto.png", "confusion.png"} <= set(metas)
    store = dashboard_artifact_store(root / "runs")
    for name in ("pareto.png", "confusion.png"):
        artifact_id = metas[name].artifact_id
        # The note links the artifacts where optuna-dashboard serves them.
        study_id = study._study_id  # noqa: SLF001 -- the dashboard's URLs carry Optuna's id
        assert f"](/artifacts/{study_id}/{artifact_id})" in note
        with store.open_reader(artifact_id) as f:
            assert f.read() == (root / "runs" / "reports" / "rep" / name).read_bytes()
    assert (root / "runs" / DASHBOARD_ARTIFACTS).is_dir()


@pytest.mark.slow
def test_a_second_report_replaces_the_dashboard_files_and_uses_the_registered_champion(
    finished, tmp_path
) -> None:
    root, config = finished
    work = tmp_path / "copy"
    shutil.copytree(root, work)
    cfg = yaml.safe_load(config.read_text())
    cfg["study"]["project_dir"] = str(work / "runs")
    copy_config = work / "rep.yaml"
    copy_config.write_text(yaml.safe_dump(cfg))
    # The MLflow artifact location recorded in the copied database still points at the
    # original project folder; registering reads the weights from there, which is fine.
    rc, _, err = cnnas("register", "rep", "--config", copy_config)
    assert rc == 0, err
    study = open_study(work / "runs", "rep")
    before = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}
    rc, out, err = cnnas("report", "rep", "--config", copy_config, "--out", tmp_path / "again")
    assert rc == 0, err
    after = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert after == before  # same ids: overwritten, not piled up
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'runs' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("cnnas-rep", "champion")
    said = f"registered model 'cnnas-rep' @champion: version {version.version}"
    assert said in out
    page = (tmp_path / "again" / "report.html").read_text()
    assert said in section(page, "confusion")


# --- parts that cannot be drawn, and bad input ------------------------------------------------


@pytest.mark.slow
def test_without_test_evaluation_the_page_says_why_the_matrix_is_missing(
    finished, tmp_path
) -> None:
    _root, config = finished
    rc, _out, err = cnnas(
        "report", "rep", "--config", config, "--out", tmp_path, "--no-test", "--no-log"
    )
    assert rc == 0, err
    page = (tmp_path / "report.html").read_text()
    body = section(page, "confusion")
    assert not embedded_pngs(body)
    assert "held-out test evaluation was skipped" in body
    assert "test_acc" not in section(page, "front")
    assert not (tmp_path / "confusion.png").exists()


@pytest.mark.slow
def test_a_study_with_one_trained_trial_explains_the_missing_importances(
    tmp_path, seed_mlflow
) -> None:
    seed_mlflow(tmp_path / "runs")
    config = write_config(tmp_path, "one", trials=1)
    rc, _, err = cnnas("study", "start", "--config", config, "--no-register")
    assert rc == 0, err
    rc, out, err = cnnas("report", "one", "--config", config)
    assert rc == 0, err
    page = (tmp_path / "runs" / "reports" / "one" / "report.html").read_text()
    body = section(page, "importances")
    assert "parameter importances cannot be computed" in body
    assert not embedded_pngs(body)
    assert "not shown (importances)" in out
    for sid in ("pareto", "curves", "confusion"):
        assert len(embedded_pngs(section(page, sid))) == 1


@pytest.mark.slow
def test_an_unknown_study_exits_2_and_names_the_known_ones(finished) -> None:
    root, config = finished
    rc, _out, err = cnnas("report", "nope", "--config", config)
    assert rc == 2
    assert "no study named 'nope'" in err and "'rep'" in err
    assert not (root / "runs" / "reports" / "nope").exists()


@pytest.mark.slow
def test_a_project_without_a_study_storage_exits_2(tmp_path) -> None:
    rc, _, err = cnnas("report", "rep", "--project-dir", tmp_path / "empty")
    assert rc == 2
    assert "no study storage" in err
    assert not (tmp_path / "empty").exists()


def test_the_report_parser_takes_the_same_study_reference_as_pareto() -> None:
    p = cli.build_parser()
    args = p.parse_args(["report", "s", "--complexity", "macs", "--out", "x", "--no-test"])
    assert (args.name, args.complexity, args.out, args.no_test, args.no_log) == (
        "s",
        "macs",
        "x",
        True,
        False,
    )
    pareto = subcommands(cli.build_parser()).choices["pareto"]
    pareto_opts = options(pareto) - {"--json"}
    report = subcommands(p).choices["report"]
    report_opts = options(report)
    assert pareto_opts <= report_opts
    with pytest.raises(SystemExit):
        p.parse_args(["report", "s", "--complexity", "flops"])


@pytest.mark.slow
def test_the_sections_come_in_order_and_the_page_parses_as_html(reported) -> None:
    from html.parser import HTMLParser

    folder, _, _ = reported
    ids: list[str] = []

    class Ids(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "section":
                ids.extend(v for k, v in attrs if k == "id")

    Ids().feed((folder / "report.html").read_text())
    assert ids == list(SECTIONS)


@pytest.mark.slow
def test_optuna_dashboard_serves_the_plots_the_note_links(reported, finished) -> None:
    from wsgiref.util import setup_testing_defaults

    root, _ = finished
    study = open_study(root / "runs", "rep")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / "runs" / "optuna.journal"))
    )
    app = optuna_dashboard.wsgi(storage, artifact_store=dashboard_artifact_store(root / "runs"))
    (link,) = re.findall(
        r"\]\((/artifacts/[^)]+)\)",
        optuna_dashboard.get_note(study).split("## Confusion matrix")[1],
    )
    environ: dict = {"PATH_INFO": link}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, *a: status.append(s)))
    assert status == ["200 OK"]
    assert body == (root / "runs" / "reports" / "rep" / "confusion.png").read_bytes()


@pytest.mark.slow
def test_a_study_with_nothing_trained_gets_a_report_that_says_so(tmp_path, seed_mlflow) -> None:
    seed_mlflow(tmp_path / "runs")
    config = write_config(tmp_path, "none", trials=2, max_params=10)
    rc, _, err = cnnas("study", "start", "--config", config, "--no-register")
    assert rc == 0, err
    rc, out, err = cnnas("report", "none", "--config", config)
    assert rc == 0, err
    page = (tmp_path / "runs" / "reports" / "none" / "report.html").read_text()
    assert not embedded_pngs(page)
    assert "no trial has been trained yet" in section(page, "pareto")
    assert "the front is empty" in section(page, "confusion")
    assert "<td class=l>  of which infeasible (over budget, not trained)</td><td>2</td>" in section(
        page, "budget"
    )
    assert "champion: the front is empty" in out


@pytest.mark.parametrize(
    ("recorded", "configured", "shown"),
    [
        ("cpu", "auto", "CPU"),
        ("cuda:0", "auto", "GPU"),
        ("NVIDIA H100 80GB HBM3", "gpu", "GPU (NVIDIA H100 80GB HBM3)"),
        (None, "cpu", "CPU"),
        (None, "gpu", "GPU"),
        (None, "auto", "not recorded (train.accelerator: auto)"),
    ],
)
def test_a_trials_device_is_the_recorded_one_else_the_configured(
    recorded, configured, shown
) -> None:
    from cnnas.search._records import TrialRecord
    from cnnas.search.report._collect import _device_of

    attrs = {"device": recorded} if recorded else {}
    trial = optuna.trial.create_trial(value=0.5, user_attrs=attrs)
    assert _device_of(TrialRecord.from_trial(trial), configured) == shown
