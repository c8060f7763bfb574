"""Pickle-free save and load of a trained network.

A saved model is a directory of three files: ``spec.json`` (the architecture, the one structural
input of the network), ``model.safetensors`` (the state_dict) and ``metadata.json`` (the weights'
sha256, the spec hash, the model's size and whatever the caller adds). Loading rebuilds the network
from the spec with :func:`build` and fills it from the weights, the way nanoGPT stores its model
args next to the weights instead of a pickled module: nothing on the load path can run code, so a
model pulled from a tracking server or a colleague's disk is safe to open.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import safetensors.torch
import torch

from ._build import CNN, build
from ._errors import CnnasError, SpecError
from ._shapes import count_macs, count_params
from ._spec import ArchSpec

__all__ = [
    "META_FILE",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "ModelFileError",
    "load_model",
    "read_metadata",
    "save_model",
    "sha256_file",
]

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "metadata.json"

# Keys save_model writes into metadata.json itself; `extra` may not shadow them, or a caller's
# {"sha256": ...} would silently disarm the integrity check.
_RESERVED = ("sha256", "spec_hash", "params", "macs")
# Key of the spec hash inside the safetensors header: the weights file names the network it
# belongs to even when metadata.json is lost.
_HEADER_SPEC_HASH = "cnnas_spec_hash"


class ModelFileError(CnnasError, ValueError):
    """A saved model is missing, corrupt or tampered with; the message names the file and what is
    wrong."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks so a large file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``.

    The temp file sits in the same directory, because ``os.replace`` is atomic only within one
    file system. It is created with O_EXCL under a random name (two savers never share it) and
    mode 0o666, so the umask gives the final file the same permissions as any other new file
    (``mkstemp`` would leave it readable by its owner only).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # On disk before the rename: otherwise a power cut can leave the new name pointing at
            # an empty file on some file systems.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable. Directories cannot be opened on Windows; there the
    # rename is as durable as the platform makes it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(
    model: torch.nn.Module, directory: str | os.PathLike, *, extra: dict | None = None
) -> dict:
    """Saves ``model`` (a :class:`CNN`) to ``directory`` and returns the metadata it wrote.

    Writes ``spec.json`` (``model.spec.to_json()``), ``model.safetensors`` (the state_dict,
    BatchNorm buffers included, contiguous and on the CPU, with ``{"format": "pt",
    "cnnas_spec_hash": ...}`` in its header) and ``metadata.json`` (``{"sha256", "spec_hash",
    "params", "macs", **extra}``). The directory is created if needed. Each file is written
    atomically, so a crash never leaves a half-written file under its final name; an existing save
    in ``directory`` is overwritten.

    Raises TypeError when ``model`` is not a CNN, ValueError when ``extra`` uses a reserved key,
    and TypeError when ``extra`` is not JSON-serialisable (before any file is written).
    """
    # Only a CNN can be rebuilt from its spec; anything else would save weights no loader can use.
    if not isinstance(model, CNN) or not isinstance(getattr(model, "spec", None), ArchSpec):
        raise TypeError(f"save_model() takes a models.CNN, got {type(model).__name__}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra may not set the reserved metadata key(s) {clash}")
    spec = model.spec
    spec_hash = spec.spec_hash()
    # safetensors refuses non-contiguous tensors and stores bytes, not devices; detach so a
    # tensor that requires grad serialises as plain data.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(
        tensors, metadata={"format": "pt", _HEADER_SPEC_HASH: spec_hash}
    )
    metadata = {
        "sha256": hashlib.sha256(weights).hexdigest(),
        "spec_hash": spec_hash,
        "params": count_params(spec),
        "macs": count_macs(spec),
        **extra,
    }
    # Serialise everything before touching the disk: an unserialisable `extra` then fails with
    # the directory unchanged.
    spec_text = spec.to_json() + "\n"
    meta_text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # metadata.json last: it records the sha256 of the weights, so while an overwrite is half
    # done the old metadata disagrees with the new weights and a verifying load refuses the mix.
    _write_atomic(out / WEIGHTS_FILE, weights)
    _write_atomic(out / SPEC_FILE, spec_text.encode())
    _write_atomic(out / META_FILE, meta_text.encode())
    _fsync_dir(out)
    return metadata


def read_metadata(directory: str | os.PathLike) -> dict:
    """The content of ``metadata.json``; ``{}`` when the directory has none.

    Raises ModelFileError when the file is not valid JSON or not a JSON object.
    """
    path = Path(directory) / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: must be a JSON object, got {type(data).__name__}")
    return data


def _read_spec(directory: Path) -> ArchSpec:
    path = directory / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing; {directory} holds no saved model spec") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    try:
        return ArchSpec.from_json(text)
    except SpecError as e:
        raise ModelFileError(f"{path}: invalid spec: {e}") from None
    except (TypeError, ValueError) as e:
        # A spec whose fields have the wrong JSON shape (a list for a mapping, say) can fail
        # inside a dataclass constructor before the spec's own checks name it.
        raise ModelFileError(f"{path}: invalid spec: {e}") from None


def _read_weights(directory: Path) -> bytes:
    path = directory / WEIGHTS_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing; {directory} holds no saved weights") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None


def _header_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors blob that has already parsed (so the header is sound).

    Read by hand because safetensors exposes the header only through ``safe_open`` on a path,
    and reopening the file would check bytes other than the ones that were hashed and loaded.
    """
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _check_state(
    path: Path, expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]
) -> None:
    """Strict key and shape check, with every problem listed (load_state_dict stops at shapes)."""
    problems = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    shapes = [
        f"{k}: file {list(got[k].shape)}, spec {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(got))
        if got[k].shape != expected[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches [{'; '.join(shapes)}]")
    if problems:
        raise ModelFileError(
            f"{path}: weights do not fit the network of {SPEC_FILE}: {'; '.join(problems)}"
        )


def load_model(
    directory: str | os.PathLike,
    *,
    verify: bool = True,
    map_location: str | torch.device = "cpu",
) -> CNN:
    """Rebuilds the network saved in ``directory``, in eval mode, on ``map_location``.

    The network is built from ``spec.json`` and filled from ``model.safetensors``: every tensor
    name and shape must match (BatchNorm buffers included). Only JSON and safetensors are read;
    nothing is unpickled, so a hostile directory cannot run code.

    With ``verify`` (the default): when ``metadata.json`` exists, the weights file's sha256 must
    equal its ``sha256`` and its ``spec_hash`` must equal the rebuilt spec's; when the weights
    header records a spec hash, that must match too. ``verify=False`` skips these checks, to
    salvage a model whose metadata was lost or edited; the name and shape checks still run.

    Raises ModelFileError (a ValueError) naming the file and the problem when a file is missing,
    unreadable, corrupt, inconsistent with the others or tampered with.
    """
    directory = Path(directory)
    spec = _read_spec(directory)
    weights_path = directory / WEIGHTS_FILE
    data = _read_weights(directory)
    if verify:
        # The hash is taken over the same bytes that are parsed below, not a second read of the
        # file, so the file cannot change between the check and the load.
        meta = read_metadata(directory)
        if meta:
            recorded = meta.get("sha256")
            if not isinstance(recorded, str):
                raise ModelFileError(f"{directory / META_FILE}: has no sha256; refusing to load")
            actual = hashlib.sha256(data).hexdigest()
            if actual != recorded.lower():
                raise ModelFileError(
                    f"{weights_path}: weights do not match the sha256 recorded in {META_FILE} "
                    f"(recorded {recorded}, file {actual}); refusing to load"
                )
            if meta.get("spec_hash") != spec.spec_hash():
                raise ModelFileError(
                    f"{directory / SPEC_FILE}: spec hash {spec.spec_hash()} does not match "
                    f"{META_FILE}'s spec_hash {meta.get('spec_hash')!r}; refusing to load"
                )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:
        # SafetensorError covers a malformed header; the conversion to torch tensors can raise
        # other types on odd input. Any failure to parse this file means the file is bad.
        raise ModelFileError(f"{weights_path}: not a valid safetensors file: {e}") from None
    if verify:
        recorded = _header_metadata(data).get(_HEADER_SPEC_HASH)
        if recorded is not None and recorded != spec.spec_hash():
            raise ModelFileError(
                f"{weights_path}: weights were saved for spec hash {recorded}, but "
                f"{SPEC_FILE} has spec hash {spec.spec_hash()}; refusing to load"
            )

    model = build(spec)
    _check_state(weights_path, model.state_dict(), tensors)
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location).eval()
