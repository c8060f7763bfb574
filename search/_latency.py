"""Every trial's latency, measured once per architecture and machine and kept in the project.

The timing (``cnnas.objectives.measure_latency``) depends on the network, the machine, the
thread count, the batch and the runtime, not on the weights; a JSON file in the project folder
keeps it under all of these, so a repeated architecture, a resumed study or a second study on
the same machine reads it instead of timing again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import secrets
from pathlib import Path

from cnnas.models import ArchSpec
from cnnas.objectives import Latency, measure_latency

from ._config import LatencySection

__all__ = ["LATENCY_FILE", "latency_of"]

LATENCY_FILE = "latency-cache.json"


def _machine() -> str:
    # The processor as the OS names it, with the core count: a timing holds for that machine.
    return f"{platform.node()}/{platform.processor() or platform.machine()}/{os.cpu_count()}"


def _key(spec: ArchSpec, cfg: LatencySection) -> str:
    return f"{spec.spec_hash()}|{cfg.backend}|{cfg.threads}|{cfg.batch_size}|{_machine()}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged cache is only a cache: time again
    return data if isinstance(data, dict) else {}


def latency_of(spec: ArchSpec, cfg: LatencySection, project_dir: Path | None) -> Latency:
    """The network's latency on this machine with ``cfg``'s settings, from the cache or timed."""
    path = Path(project_dir) / LATENCY_FILE if project_dir is not None else None
    key = _key(spec, cfg)
    if path is not None:
        hit = _read(path).get(key)
        if isinstance(hit, dict):
            try:
                return Latency(**hit)
            except TypeError:
                pass
    found = measure_latency(
        spec, threads=cfg.threads, batch=cfg.batch_size, backend=cfg.backend, budget=cfg.budget
    )
    if path is not None:
        data = _read(path)
        data[key] = dataclasses.asdict(found)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, path)  # other workers read the old file or the new one, whole
        except OSError:
            tmp.unlink(missing_ok=True)
    return found
