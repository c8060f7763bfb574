"""Tests for models._io: pickle-free save and load of a trained network."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from cnnas import models
from cnnas.models import (
    CNN,
    MANIFEST_FILE,
    META_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ArchSpec,
    ConvBlock,
    DenseLayer,
    ModelFileError,
    build,
    count_macs,
    count_params,
    load_model,
    read_manifest,
    read_metadata,
    save_model,
    sha256_file,
    write_manifest,
)

ALL_FILES = sorted([SPEC_FILE, WEIGHTS_FILE, META_FILE, MANIFEST_FILE])

# BatchNorm everywhere (its buffers must round-trip), a factorised 5x5, a learnable conv pool,
# dropout, and a multi-scale aggregation with one head per section, predicting their mean.
BN_MULTIHEAD = ArchSpec(
    input_shape=(1, 16, 16),
    num_classes=3,
    blocks=(
        ConvBlock(4, kernel=5, factorize=True, batch_norm=True, pool="conv"),
        ConvBlock(6, batch_norm=True, activation="gelu", pool="max", dropout=0.1),
    ),
    aggregation="multiscale",
    dense=(DenseLayer(8, dropout=0.2),),
    heads="multi",
    aux_weight=0.5,
    predict="mean",
)
# The plainest network: biases, no buffers.
PLAIN = ArchSpec(
    input_shape=(3, 8, 8),
    num_classes=2,
    blocks=(ConvBlock(3, pool="avg"), ConvBlock(5, padding="valid")),
    aggregation="gap",
)
SPECS = pytest.mark.parametrize("spec", [BN_MULTIHEAD, PLAIN], ids=["bn-multihead", "plain"])


def trained(spec: ArchSpec, seed: int = 0) -> CNN:
    """``build(spec)`` after one SGD step, in eval mode: no weight or buffer at its init value."""
    torch.manual_seed(seed)
    model = build(spec).train()
    x = torch.randn(8, *spec.input_shape)
    y = torch.randint(0, spec.num_classes, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = sum(F.cross_entropy(h, y) for h in model.forward_heads(x))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return model.eval()


def batch(spec: ArchSpec) -> torch.Tensor:
    return torch.randn(4, *spec.input_shape, generator=torch.Generator().manual_seed(1))


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def flip_byte(path: Path, tensor: str | None = None) -> str:
    """Inverts one byte of tensor data in a safetensors file; returns the tensor's name.

    With no ``tensor``, the file's last byte: the top (sign and exponent) byte of the last float
    of the tensor stored last. Otherwise the top byte of ``tensor``'s first float32 element.
    """
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    if tensor is None:
        tensor = max(header, key=lambda k: header[k]["data_offsets"][1])
        pos = len(data) - 1
    else:
        assert header[tensor]["dtype"] == "F32"
        pos = 8 + n + header[tensor]["data_offsets"][0] + 3
    assert 8 + n <= pos < len(data)
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    return tensor


# --- round trip -------------------------------------------------------------------------------


@SPECS
def test_save_load_round_trip(tmp_path, spec):
    model = trained(spec)
    if spec is BN_MULTIHEAD:
        # The BN buffers moved off their init values, so the round trip really carries them.
        bn = model.features[0].bn0
        assert bn.num_batches_tracked.item() == 1
        assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")

    assert type(loaded) is CNN
    assert loaded.spec == spec
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    assert_same_state(model, loaded)
    x = batch(spec)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        for a, b in zip(model.forward_heads(x), loaded.forward_heads(x), strict=True):
            assert torch.equal(a, b)


def test_spec_file_round_trips_and_weights_header_names_the_spec(tmp_path):
    save_model(trained(BN_MULTIHEAD), tmp_path)
    text = (tmp_path / SPEC_FILE).read_text()
    assert ArchSpec.from_json(text) == BN_MULTIHEAD
    assert json.loads(text) == BN_MULTIHEAD.to_dict()
    with safe_open(tmp_path / WEIGHTS_FILE, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "cnnas_spec_hash": BN_MULTIHEAD.spec_hash()}


def test_map_location_accepts_a_device(tmp_path):
    save_model(trained(PLAIN), tmp_path)
    loaded = load_model(tmp_path, map_location=torch.device("cpu"))
    assert {p.device for p in loaded.parameters()} == {torch.device("cpu")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_model_saves_to_cpu_tensors_and_loads_onto_the_gpu(tmp_path):
    model = trained(BN_MULTIHEAD).cuda()
    save_model(model, tmp_path)
    with safe_open(tmp_path / WEIGHTS_FILE, framework="pt") as f:
        assert all(f.get_tensor(k).device.type == "cpu" for k in f.keys())  # noqa: SIM118
    loaded = load_model(tmp_path, map_location="cuda")
    assert all(t.is_cuda for t in loaded.state_dict().values())
    x = batch(BN_MULTIHEAD).cuda()
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x))


# --- metadata ---------------------------------------------------------------------------------


def test_metadata_records_hashes_sizes_and_extra(tmp_path):
    model = trained(BN_MULTIHEAD)
    extra = {"val_acc": 0.875, "trial": 7, "tags": ["a", "b"]}
    meta = save_model(model, tmp_path, extra=extra)

    weights = (tmp_path / WEIGHTS_FILE).read_bytes()
    assert (
        meta["sha256"]
        == hashlib.sha256(weights).hexdigest()
        == sha256_file(tmp_path / WEIGHTS_FILE)
    )
    assert meta["spec_hash"] == BN_MULTIHEAD.spec_hash()
    assert meta["params"] == count_params(BN_MULTIHEAD)
    assert meta["params"] == sum(p.numel() for p in model.parameters())
    assert meta["macs"] == count_macs(BN_MULTIHEAD)
    assert {k: meta[k] for k in extra} == extra
    assert read_metadata(tmp_path) == meta
    assert json.loads((tmp_path / META_FILE).read_text()) == meta


def test_extra_may_not_shadow_recorded_keys_and_must_be_json(tmp_path):
    model = trained(PLAIN)
    with pytest.raises(ValueError, match="sha256"):
        save_model(model, tmp_path / "a", extra={"sha256": "0" * 64})
    with pytest.raises(TypeError):
        save_model(model, tmp_path / "b", extra={"when": object()})
    # Both failed before writing anything.
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_read_metadata_without_file_is_empty_and_only_an_unverified_load_works(tmp_path):
    # Changed with the manifest: metadata.json holds the normalisation, so a verified load
    # refuses a folder that lost it (before, only the weights were covered).
    model = trained(PLAIN)
    save_model(model, tmp_path)
    (tmp_path / META_FILE).unlink()
    assert read_metadata(tmp_path) == {}
    with pytest.raises(ModelFileError, match=rf"{META_FILE}: missing, but {MANIFEST_FILE} lists"):
        load_model(tmp_path)
    assert_same_state(model, load_model(tmp_path, verify=False))


def test_invalid_metadata_json_is_refused(tmp_path):
    save_model(trained(PLAIN), tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match=META_FILE):
        read_metadata(tmp_path)
    with pytest.raises(ModelFileError, match=META_FILE):
        load_model(tmp_path)
    load_model(tmp_path, verify=False)  # the escape hatch skips metadata altogether
    (tmp_path / META_FILE).write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="JSON object"):
        read_metadata(tmp_path)
    (tmp_path / META_FILE).write_text('{"spec_hash": "x"}')
    with pytest.raises(ModelFileError, match=f"{META_FILE}: sha256 .* differs"):
        load_model(tmp_path)
    write_manifest(tmp_path)  # recorded as it is now: metadata.json's own check still refuses
    with pytest.raises(ModelFileError, match="no sha256"):
        load_model(tmp_path)


# --- tampering and corruption -----------------------------------------------------------------


# The file's last byte, near the end as a bit rot or a careless edit would be; and the classifier
# bias, which every output depends on (a weight of a dead ReLU unit could change no output).
@pytest.mark.parametrize("target", [None, "classifier.bias"], ids=["last-byte", "classifier"])
def test_flipped_weight_byte_is_refused(tmp_path, target):
    model = trained(BN_MULTIHEAD)
    save_model(model, tmp_path)
    name = flip_byte(tmp_path / WEIGHTS_FILE, target)
    with pytest.raises(ModelFileError, match=r"sha256.*refusing to load") as err:
        load_model(tmp_path)
    assert WEIGHTS_FILE in str(err.value)

    # Without metadata nothing records the hash: the file still parses, so the load goes through
    # with a weight that differs from the saved one.
    (tmp_path / META_FILE).unlink()
    try:
        loaded = load_model(tmp_path, verify=False)
    except ModelFileError:
        return
    assert not torch.equal(loaded.state_dict()[name], model.state_dict()[name])
    if target == "classifier.bias":
        x = batch(BN_MULTIHEAD)
        with torch.no_grad():
            assert not torch.equal(loaded(x), model(x))


def test_unparsable_weights_are_a_model_file_error(tmp_path):
    save_model(trained(PLAIN), tmp_path)
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(tmp_path)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_model(tmp_path, verify=False)
    path.write_bytes(b"\x80\x04\x95 a pickle, not safetensors")
    with pytest.raises(ModelFileError, match=WEIGHTS_FILE):
        load_model(tmp_path, verify=False)


def _edit_spec(directory: Path, **block0) -> None:
    data = json.loads((directory / SPEC_FILE).read_text())
    data["blocks"][0].update(block0)
    (directory / SPEC_FILE).write_text(json.dumps(data))


def test_tampered_filter_count_is_refused(tmp_path):
    save_model(trained(BN_MULTIHEAD), tmp_path)
    _edit_spec(tmp_path, filters=5)
    # The manifest names the edited file (before it, the spec hash in metadata.json did).
    with pytest.raises(ModelFileError, match=rf"{SPEC_FILE}: sha256 .* refusing to load"):
        load_model(tmp_path)
    # Unverified, the weights no longer fit the network; every mismatch is listed.
    with pytest.raises(ModelFileError, match="shape mismatch") as err:
        load_model(tmp_path, verify=False)
    assert "features.0.conv0.weight" in str(err.value)
    assert "features.0.bn0.running_mean" in str(err.value)


def test_shape_preserving_spec_edit_is_caught_by_the_weights_header(tmp_path):
    # gelu for relu changes the network but no tensor shape. The manifest notices first; with
    # the manifest and metadata.json rewritten to match the edit, the spec hash in the
    # safetensors header still does.
    save_model(trained(BN_MULTIHEAD), tmp_path)
    _edit_spec(tmp_path, activation="tanh")
    with pytest.raises(ModelFileError, match=f"{SPEC_FILE}: sha256 .* refusing to load"):
        load_model(tmp_path)
    meta = read_metadata(tmp_path)
    meta["spec_hash"] = ArchSpec.from_json((tmp_path / SPEC_FILE).read_text()).spec_hash()
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    write_manifest(tmp_path)
    with pytest.raises(ModelFileError, match=r"weights were saved for spec hash.*refusing to load"):
        load_model(tmp_path)
    assert load_model(tmp_path, verify=False).spec.blocks[0].activation == "tanh"


def test_invalid_spec_wraps_the_spec_error(tmp_path):
    save_model(trained(PLAIN), tmp_path)
    _edit_spec(tmp_path, kernel=4)
    with pytest.raises(ModelFileError, match=r"spec\.json: invalid spec: blocks\[0\]\.kernel"):
        load_model(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{truncated")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / SPEC_FILE).write_text("[]")
    with pytest.raises(ModelFileError, match="invalid spec"):
        load_model(tmp_path)


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    model = trained(BN_MULTIHEAD)
    save_model(model, tmp_path)
    (tmp_path / META_FILE).unlink()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["classifier.bias"], state["features.1.bn0.running_var"]
    state["extra.weight"] = torch.zeros(2)
    (tmp_path / WEIGHTS_FILE).write_bytes(st_save(state))
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path, verify=False)
    msg = str(err.value)
    assert "missing tensors ['classifier.bias', 'features.1.bn0.running_var']" in msg
    assert "unexpected tensors ['extra.weight']" in msg


def test_missing_files_are_named(tmp_path):
    save_model(trained(PLAIN), tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_FILE}: missing") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / SPEC_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"{SPEC_FILE}: missing"):
        load_model(tmp_path)
    with pytest.raises(ModelFileError, match=SPEC_FILE) as err:
        load_model(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)


def test_only_a_cnn_can_be_saved(tmp_path):
    impostor = nn.Sequential(nn.Linear(2, 2))
    impostor.spec = PLAIN
    for module in (nn.Linear(2, 2), impostor):
        with pytest.raises(TypeError, match=r"models\.CNN"):
            save_model(module, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- safety and atomicity ---------------------------------------------------------------------


def test_load_never_unpickles(tmp_path, monkeypatch):
    model = trained(BN_MULTIHEAD)
    save_model(model, tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_model unpickled something")

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            forbidden()

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    loaded = load_model(tmp_path)
    monkeypatch.undo()
    assert_same_state(model, loaded)


def test_save_leaves_exactly_the_four_files_and_overwrites_cleanly(tmp_path):
    out = tmp_path / "deep" / "er"
    save_model(trained(PLAIN), out)
    assert files(out) == ALL_FILES
    other = trained(BN_MULTIHEAD, seed=3)
    save_model(other, out)
    assert files(out) == ALL_FILES
    assert_same_state(other, load_model(out))


def test_crash_mid_save_keeps_the_old_files_and_leaves_no_temp_file(tmp_path, monkeypatch):
    old = trained(PLAIN)
    save_model(old, tmp_path)
    real_replace = os.replace

    def crash_on(name):
        def replace(src, dst):
            if Path(dst).name == name:
                raise OSError("simulated crash")
            real_replace(src, dst)

        return replace

    # A crash before the new weights land: the old save is untouched and still loads.
    monkeypatch.setattr(os, "replace", crash_on(WEIGHTS_FILE))
    with pytest.raises(OSError, match="simulated crash"):
        save_model(trained(BN_MULTIHEAD), tmp_path)
    assert files(tmp_path) == ALL_FILES
    assert_same_state(old, load_model(tmp_path))

    # A crash after the new weights and metadata, before the new manifest: a verified load
    # refuses the mix (and a crash before the new metadata, the same).
    for last in (MANIFEST_FILE, META_FILE):
        monkeypatch.setattr(os, "replace", crash_on(last))
        with pytest.raises(OSError, match="simulated crash"):
            save_model(trained(PLAIN, seed=5), tmp_path)
        assert files(tmp_path) == ALL_FILES
        with pytest.raises(ModelFileError, match="refusing to load"):
            load_model(tmp_path)


def test_public_names_are_exported():
    for name in (
        "MANIFEST_FILE",
        "META_FILE",
        "MODEL_FILES",
        "SPEC_FILE",
        "WEIGHTS_FILE",
        "ModelFileError",
        "check_manifest",
        "load_model",
        "read_manifest",
        "read_metadata",
        "save_model",
        "sha256_file",
        "write_manifest",
    ):
        assert name in models.__all__
        # The re-export must be the very object of the defining module.
        assert getattr(models, name) is getattr(models._io, name)  # noqa: SLF001


# --- the manifest and deterministic bytes -----------------------------------------------------


def test_the_manifest_records_the_sha256_of_every_file(tmp_path):
    save_model(trained(BN_MULTIHEAD), tmp_path, extra={"mean": [1.0], "std": [2.0]})
    recorded = json.loads((tmp_path / MANIFEST_FILE).read_text())["sha256"]
    assert recorded == {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in (SPEC_FILE, WEIGHTS_FILE, META_FILE)
    }
    assert read_manifest(tmp_path) == recorded


@pytest.mark.parametrize(
    "content",
    [None, "", "{}", '{"sha256": {}}', "[]", '{"sha256": {"spec.json": "ab"}}'],
    ids=["missing", "blank", "empty-object", "empty-map", "list", "incomplete"],
)
def test_a_missing_or_empty_manifest_is_refused_unless_unverified(tmp_path, content):
    model = trained(PLAIN)
    save_model(model, tmp_path)
    if content is None:
        (tmp_path / MANIFEST_FILE).unlink()
    else:
        (tmp_path / MANIFEST_FILE).write_text(content)
    with pytest.raises(ModelFileError, match=MANIFEST_FILE) as err:
        load_model(tmp_path)
    assert "verify=False" in str(err.value) or "not valid JSON" in str(err.value)
    assert_same_state(model, load_model(tmp_path, verify=False))


def test_edited_metadata_is_refused(tmp_path):
    # The normalisation decides every prediction: an edit is as bad as one in the weights.
    save_model(trained(PLAIN), tmp_path, extra={"mean": [10.0, 20.0, 30.0], "std": [1, 1, 1]})
    meta = read_metadata(tmp_path)
    meta["mean"] = [0.0, 0.0, 0.0]
    (tmp_path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ModelFileError, match=f"{META_FILE}: sha256 .* refusing to load"):
        load_model(tmp_path)
    load_model(tmp_path, verify=False)
    write_manifest(tmp_path)  # recorded on purpose (as cnnas pull does): accepted again
    load_model(tmp_path)


def test_the_same_weights_always_give_the_same_bytes(tmp_path):
    model = trained(BN_MULTIHEAD)
    extra = {"mean": [1.0], "std": [2.0], "classes": ["a", "b", "c"]}
    for i in range(4):
        save_model(model, tmp_path / str(i), extra=extra)
    # Another process: safetensors orders its header by a hash map seeded per process.
    code = (
        "import sys, torch; from cnnas.models import load_model, save_model; "
        "save_model(load_model(sys.argv[1]), sys.argv[2], extra="
        f"{extra!r})"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "0"), str(tmp_path / "other")], check=True
    )
    for name in (WEIGHTS_FILE, SPEC_FILE, META_FILE, MANIFEST_FILE):
        contents = {(tmp_path / d / name).read_bytes() for d in ("0", "1", "2", "3", "other")}
        assert len(contents) == 1, name
    assert sha256_file(tmp_path / "other" / WEIGHTS_FILE) == read_metadata(tmp_path / "0")["sha256"]
    # Still an ordinary safetensors file, with sorted keys in its header.
    data = (tmp_path / "0" / WEIGHTS_FILE).read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0
    keys = list(json.loads(data[8 : 8 + n]))
    assert keys == sorted(keys)
    with safe_open(tmp_path / "0" / WEIGHTS_FILE, "pt") as f:
        assert sorted(f.keys()) == sorted(model.state_dict())
    assert_same_state(model, load_model(tmp_path / "other"))


def test_different_weights_give_different_bytes(tmp_path):
    save_model(trained(PLAIN, seed=0), tmp_path / "a")
    save_model(trained(PLAIN, seed=1), tmp_path / "b")
    assert sha256_file(tmp_path / "a" / WEIGHTS_FILE) != sha256_file(tmp_path / "b" / WEIGHTS_FILE)
