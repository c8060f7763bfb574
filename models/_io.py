"""Pickle-free save and load of a trained network.

A saved model is a directory of four files: ``spec.json`` (the architecture, the one structural
input of the network), ``model.safetensors`` (the state_dict), ``metadata.json`` (the weights'
sha256, the spec hash, the model's size and whatever the caller adds: normalisation, class names)
and ``manifest.json`` (the sha256 of each of the other three). Loading rebuilds the network from
the spec with :func:`build` and fills it from the weights, the way nanoGPT stores its model args
next to the weights instead of a pickled module: nothing on the load path can run code, so a model
pulled from a tracking server or a colleague's disk is safe to open. A verified load refuses a
folder without a manifest, or with any file that differs from it: metadata.json decides how
images are normalised, so an edit there changes every prediction as surely as one in the weights.

The same weights always give the same bytes (and so the same sha256): safetensors writes its
header from a hash map whose order changes from run to run, so the header is rewritten with sorted
keys before anything is hashed or written.
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
]

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
# The files a saved model consists of; the manifest records the sha256 of each.
MODEL_FILES = (SPEC_FILE, WEIGHTS_FILE, META_FILE)

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


def _canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, so that equal tensors and
    metadata always give equal bytes.

    Only the header changes: the data offsets are relative to the end of the header, so the
    tensor bytes stay as they are. The header is padded with spaces to a multiple of 8 bytes, as
    safetensors itself pads it, so the tensor data stays aligned.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


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
    "cnnas_spec_hash": ...}`` in its header; the same weights always give the same bytes),
    ``metadata.json`` (``{"sha256", "spec_hash", "params", "macs", **extra}``) and
    ``manifest.json`` (the sha256 of the other three). The directory is created if needed. Each
    file is written atomically, so a crash never leaves a half-written file under its final name;
    an existing save in ``directory`` is overwritten.

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
    state = model.state_dict()
    tensors = {k: state[k].detach().to("cpu").contiguous() for k in sorted(state)}
    weights = _canonical_safetensors(
        safetensors.torch.save(tensors, metadata={"format": "pt", _HEADER_SPEC_HASH: spec_hash})
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
    contents = {
        WEIGHTS_FILE: weights,
        SPEC_FILE: (spec.to_json() + "\n").encode(),
        META_FILE: (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode(),
    }
    manifest = _manifest_bytes({k: hashlib.sha256(v).hexdigest() for k, v in contents.items()})

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # manifest.json last: it records the sha256 of the others, so while an overwrite is half
    # done the old manifest disagrees with the new files and a verifying load refuses the mix.
    for name, data in contents.items():
        _write_atomic(out / name, data)
    _write_atomic(out / MANIFEST_FILE, manifest)
    _fsync_dir(out)
    return metadata


def _manifest_bytes(sums: dict[str, str]) -> bytes:
    return (json.dumps({"sha256": sums}, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """Records the sha256 of the model files in ``directory`` in its ``manifest.json``.

    For a folder whose files were changed on purpose (``cnnas pull`` adds where the model came
    from to ``metadata.json``, after checking the downloaded files). Returns ``{file: sha256}``.
    Raises ModelFileError naming a model file that is missing.
    """
    directory = Path(directory)
    sums = {}
    for name in MODEL_FILES:
        try:
            sums[name] = sha256_file(directory / name)
        except FileNotFoundError:
            raise ModelFileError(f"{directory / name}: missing; cannot record its sha256") from None
    _write_atomic(directory / MANIFEST_FILE, _manifest_bytes(sums))
    _fsync_dir(directory)
    return sums


def read_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """``{file: sha256}`` from ``manifest.json``.

    Raises ModelFileError when the manifest is missing, not valid JSON, empty, or does not cover
    every model file (spec, weights and metadata).
    """
    path = Path(directory) / MANIFEST_FILE
    hint = "pass verify=False (cnnas: --no-verify) to load it unchecked"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(
            f"{path}: missing; nothing records the sha256 of the model's files, so they cannot "
            f"be checked; refusing to load ({hint})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: not valid JSON: {e}") from None
    sums = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(sums, dict) or not sums:
        raise ModelFileError(
            f"{path}: empty; it must map each model file to its sha256, as "
            f'{{"sha256": {{"{SPEC_FILE}": "<hex>", ...}}}}; refusing to load ({hint})'
        )
    missing = [name for name in MODEL_FILES if not isinstance(sums.get(name), str)]
    if missing:
        raise ModelFileError(f"{path}: records no sha256 for {missing}; refusing to load ({hint})")
    return {str(k): str(v).lower() for k, v in sums.items()}


def check_manifest(
    directory: str | os.PathLike,
    expected: dict[str, str],
    *,
    contents: dict[str, bytes] | None = None,
    recorded_in: str = MANIFEST_FILE,
    refusing: str = "refusing to load",
    shown_as: str | None = None,
) -> None:
    """Checks that every file named in ``expected`` (``{file: sha256}``) has that sha256.

    ``contents`` holds bytes already read (hashed instead of reading the file again, so a file
    cannot change between the check and its use). ``recorded_in`` names where ``expected`` came
    from, ``refusing`` what is not done and ``shown_as`` the folder (default: its path), for the
    message. Raises ModelFileError naming the first file that is missing or differs.
    """
    directory = Path(directory)
    contents = contents or {}
    for name, recorded in sorted(expected.items()):
        path = directory / name
        shown = f"{shown_as}: {name}" if shown_as else str(path)
        if name in contents:
            actual = hashlib.sha256(contents[name]).hexdigest()
        else:
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                raise ModelFileError(
                    f"{shown}: missing, but {recorded_in} lists it; {refusing}"
                ) from None
            except OSError as e:
                raise ModelFileError(f"{shown}: cannot read: {e}") from None
        if actual != recorded.lower():
            raise ModelFileError(
                f"{shown}: sha256 {actual} differs from the one {recorded_in} records "
                f"({recorded}): the file was changed or damaged; {refusing}"
            )


def read_metadata(directory: str | os.PathLike) -> dict:
    """The content of ``metadata.json``; ``{}`` when the directory has none.

    Raises ModelFileError when the file is not valid JSON or not a JSON object.
    """
    path = Path(directory) / META_FILE
    data = _read_optional(path)
    return {} if data is None else _parse_metadata(path, data)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None


def _parse_metadata(path: Path, data: bytes) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: must be a JSON object, got {type(meta).__name__}")
    return meta


def _read_spec(directory: Path) -> tuple[ArchSpec, bytes]:
    """The spec and the bytes it was parsed from (the ones the manifest check hashes)."""
    path = directory / SPEC_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing; {directory} holds no saved model spec") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    try:
        return ArchSpec.from_json(data.decode("utf-8")), data
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
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

    With ``verify`` (the default): ``manifest.json`` must exist and record the sha256 of
    ``spec.json``, ``model.safetensors`` and ``metadata.json``, and each file must have it;
    ``metadata.json``'s own ``sha256`` must be the weights' and its ``spec_hash`` the rebuilt
    spec's, and the spec hash in the weights header must match too. ``verify=False`` skips these
    checks, to salvage a model whose manifest or metadata was lost or edited; the name and shape
    checks still run.

    Raises ModelFileError (a ValueError) naming the file and the problem when a file is missing,
    unreadable, corrupt, inconsistent with the others or tampered with.
    """
    directory = Path(directory)
    spec, spec_bytes = _read_spec(directory)
    weights_path = directory / WEIGHTS_FILE
    data = _read_weights(directory)
    if verify:
        _verify(directory, spec, spec_bytes, data)
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


def _verify(directory: Path, spec: ArchSpec, spec_bytes: bytes, weights: bytes) -> None:
    """The manifest, then metadata.json's own records, over the bytes that are loaded."""
    # The hashes are taken over the same bytes that are parsed, not a second read of the files,
    # so a file cannot change between the check and the load.
    meta_path = directory / META_FILE
    meta_bytes = _read_optional(meta_path)
    contents = {SPEC_FILE: spec_bytes, WEIGHTS_FILE: weights}
    if meta_bytes is not None:
        contents[META_FILE] = meta_bytes
    check_manifest(directory, read_manifest(directory), contents=contents)
    meta = _parse_metadata(meta_path, meta_bytes) if meta_bytes is not None else {}
    recorded = meta.get("sha256")
    if not isinstance(recorded, str):
        raise ModelFileError(f"{meta_path}: has no sha256; refusing to load")
    actual = hashlib.sha256(weights).hexdigest()
    if actual != recorded.lower():
        raise ModelFileError(
            f"{directory / WEIGHTS_FILE}: weights do not match the sha256 recorded in "
            f"{META_FILE} (recorded {recorded}, file {actual}); refusing to load"
        )
    if meta.get("spec_hash") != spec.spec_hash():
        raise ModelFileError(
            f"{directory / SPEC_FILE}: spec hash {spec.spec_hash()} does not match "
            f"{META_FILE}'s spec_hash {meta.get('spec_hash')!r}; refusing to load"
        )
