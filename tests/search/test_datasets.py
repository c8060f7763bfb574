"""Short studies on every dataset format, bad data through the CLI, and `cnnas data fetch`."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from optuna.trial import TrialState

from cnnas.objectives._fetch import REMOTES, Remote
from cnnas.search import StudyConfig, cli, prepare, run_study
from tests.objectives.datasets import (
    IDX_STEMS,
    emnist_stems,
    idx_bytes,
    make_cifar,
    make_idx_dir,
    make_image_folder,
)

SPACE = {
    "blocks": [1],
    "convs": [1],
    "base_filters": [4],
    "kernels": [3],
    "pools": ["max"],
    "aggregations": ["gap"],
    "dense_layers": {"min": 0, "max": 0},
    "dense_width": [8],
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNAS_DATA_DIR", raising=False)
    monkeypatch.delenv("CNNAS_DATA_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)


def study_cfg(tmp_path: Path, data: dict, name: str) -> StudyConfig:
    return StudyConfig.from_dict(
        {
            "study": {"name": name, "trials": 1, "project_dir": str(tmp_path / "runs")},
            "data": data,
            "train": {"epochs": 1, "batch_size": 32, "accelerator": "cpu"},
            "space": SPACE,
            "registry": {"register": False},
        }
    )


def _npz(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    x = (rng.integers(0, 60, (60, 24, 32, 3)) + 150 * y[:, None, None, None]).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.where(y == 1, "yes", "no"))
    return {"dataset": "npz", "path": str(tmp_path / "d.npz")}


# (name, builder of the data section, expected input shape, classes)
CASES = {
    "mnist-gz": (
        lambda t: (
            make_idx_dir(t / "data" / "mnist", n_train=40)
            and {"dataset": "mnist", "data_dir": str(t / "data")}
        ),
        (1, 28, 28),
        10,
    ),
    "kmnist-plain-nonsquare": (
        lambda t: (
            make_idx_dir(t / "k", gz=False, size=(20, 12), n_train=40)
            and {"dataset": "kmnist", "path": str(t / "k")}
        ),
        (1, 20, 12),
        10,
    ),
    "emnist-letters": (
        lambda t: (
            make_idx_dir(
                t / "emnist", emnist_stems("letters"), classes=26, first_label=1, n_train=60
            )
            and {"dataset": "emnist-letters", "data_dir": str(t), "val_fraction": 0.45}
        ),
        (1, 28, 28),
        26,
    ),
    "cifar-10-tarball": (
        lambda t: (
            make_cifar(t / "c", tarball=True, per_batch=10)
            and {"dataset": "cifar-10", "data_dir": str(t / "c")}
        ),
        (3, 32, 32),
        10,
    ),
    "cifar-100-coarse-folder": (
        lambda t: (
            make_cifar(t / "c", "cifar-100", tarball=False, per_batch=10)
            and {"dataset": "cifar-100-coarse", "data_dir": str(t / "c"), "height": 16, "width": 16}
        ),
        (3, 16, 16),
        20,
    ),
    "image-folder-rgb-nonsquare-binary": (
        lambda t: (
            make_image_folder(t / "pets", per_class=15)
            and {"dataset": "image-folder", "path": str(t / "pets"), "height": 24, "width": 32}
        ),
        (3, 24, 32),
        2,
    ),
    "image-folder-gray-square": (
        lambda t: (
            make_image_folder(t / "g", ("a", "b", "c"), rgb=False, sizes=((16, 16),))
            and {"dataset": "image-folder", "path": str(t / "g")}
        ),
        (1, 16, 16),
        3,
    ),
    "npz-rgb-nonsquare-binary": (_npz, (3, 24, 32), 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_short_study_on_each_format(tmp_path: Path, seed_mlflow, case: str) -> None:
    build, shape, n_classes = CASES[case]
    seed_mlflow(tmp_path / "runs")
    run = prepare(study_cfg(tmp_path, build(tmp_path), "s"))
    assert run.data.input_shape == shape and run.data.num_classes == n_classes
    study = run_study(run)
    (trial,) = study.get_trials(states=(TrialState.COMPLETE,))
    spec = trial.user_attrs["spec"]
    assert tuple(spec["input_shape"]) == shape and spec["num_classes"] == n_classes
    # The class names travel with the model, for reports and `cnnas predict`.
    assert run.model_extra(trial.number)["classes"] == list(run.data.classes)


def test_image_folder_study_starts_from_the_cache(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "pets", per_class=8)
    data = {"dataset": "image-folder", "path": str(tmp_path / "pets"), "height": 8, "width": 8}
    data["cache_dir"] = str(tmp_path / "cache")
    first = prepare(study_cfg(tmp_path, data, "a")).data
    (cache,) = (tmp_path / "cache").iterdir()
    mtime = cache.stat().st_mtime_ns
    second = prepare(study_cfg(tmp_path, data, "b")).data
    assert cache.stat().st_mtime_ns == mtime
    assert first.classes == second.classes == ("cat", "dog")


# --- bad data through `cnnas study start`: exit status 2, a message, nothing created ----------


def _bad_mnist_count(t: Path) -> dict:
    d = make_idx_dir(t / "m", gz=False)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(59, np.uint8)))
    return {"dataset": "mnist", "path": str(d)}


def _bad_mnist_truncated(t: Path) -> dict:
    d = make_idx_dir(t / "m", gz=True)
    f = d / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-40])
    return {"dataset": "mnist", "path": str(d)}


def _bad_magic(t: Path) -> dict:
    d = make_idx_dir(t / "m", gz=False)
    (d / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04" * 20)
    return {"dataset": "kmnist", "path": str(d)}


def _one_class(t: Path) -> dict:
    make_image_folder(t / "p", ("cat",))
    return {"dataset": "image-folder", "path": str(t / "p"), "height": 8, "width": 8}


def _unreadable(t: Path) -> dict:
    make_image_folder(t / "p", per_class=5)
    (t / "p" / "dog" / "x.png").write_bytes(b"nope")
    return {"dataset": "image-folder", "path": str(t / "p"), "height": 8, "width": 8}


def _cifar_keys(t: Path) -> dict:
    import pickle

    folder = make_cifar(t / "c", tarball=False, per_batch=4)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}))
    return {"dataset": "cifar-10", "path": str(folder)}


def _npz_mismatch(t: Path) -> dict:
    np.savez(t / "d.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(9) % 2)
    return {"dataset": "npz", "path": str(t / "d.npz")}


def _no_path(t: Path) -> dict:
    return {"dataset": "image-folder"}


BAD = {
    "count-mismatch": (_bad_mnist_count, "60 images but"),
    "truncated": (_bad_mnist_truncated, "corrupt or truncated gzip"),
    "wrong-magic": (_bad_magic, "not an IDX file"),
    "one-class": (_one_class, "at least two classes"),
    "unreadable": (_unreadable, "data.max_unreadable"),
    "cifar-keys": (_cifar_keys, "missing key(s) ['labels']"),
    "npz-mismatch": (_npz_mismatch, "10 images in x but 9 labels"),
    "no-path": (_no_path, "data.path"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_exits_2_with_its_message(tmp_path: Path, capsys, case: str) -> None:
    build, message = BAD[case]
    config = {"study": {"project_dir": str(tmp_path / "runs")}, "data": build(tmp_path)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["study", "start", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "runs").exists()


def test_height_without_width_is_a_config_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"height": 32}}))
    assert cli.main(["study", "start", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "data.width: data.height is set" in capsys.readouterr().err


# --- cnnas data fetch -------------------------------------------------------------------------


def data_cli(argv: list[str]) -> int:
    """The `data` commands through cnnas's main() (DatasetError -> exit status 2)."""
    return cli.main(argv)


@pytest.fixture
def mirror(tmp_path: Path):
    served = tmp_path / "served"
    make_idx_dir(served / "mnist")
    make_cifar(served / "cifar-10", tarball=True, per_batch=4)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def test_data_fetch_checksum_mismatch_exits_2_and_leaves_nothing(tmp_path, mirror, capsys):
    url, _ = mirror
    # The fixture tarball is not the real CIFAR-10, so its MD5 cannot match the official one.
    status = data_cli(["data", "fetch", "cifar-10", "--dir", str(tmp_path / "d"), "--mirror", url])
    assert status == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and REMOTES["cifar-10"].files[0][1] in err
    assert not (tmp_path / "d" / "cifar-10").exists()


def test_data_fetch_then_study_config(tmp_path, mirror, capsys, monkeypatch):
    url, served = mirror
    import hashlib

    files = tuple(
        (f"{s}.gz", hashlib.md5((served / "mnist" / f"{s}.gz").read_bytes()).hexdigest())
        for s in IDX_STEMS
    )
    monkeypatch.setitem(REMOTES, "mnist", Remote("mnist", "http://unused.invalid/", files))
    monkeypatch.setenv("CNNAS_DATA_MIRROR", url)
    monkeypatch.setenv("CNNAS_DATA_DIR", str(tmp_path / "data"))
    assert data_cli(["data", "fetch", "mnist"]) == 0
    out, err = capsys.readouterr()
    assert "MD5 ok" in err and "dataset: mnist" in out
    run = prepare(study_cfg(tmp_path, {"dataset": "mnist"}, "m"))
    assert run.data.source == str(tmp_path / "data" / "mnist")


def test_data_fetch_unknown_name(capsys) -> None:
    assert data_cli(["data", "fetch", "npz"]) == 2
    assert "downloadable: mnist" in capsys.readouterr().err


def test_config_round_trip_of_the_data_keys(tmp_path: Path) -> None:
    cfg = study_cfg(
        tmp_path, {"dataset": "image-folder", "path": "x", "height": 9, "width": 7}, "r"
    )
    again = StudyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.data == cfg.data and again.data.image_size() == (9, 7)
