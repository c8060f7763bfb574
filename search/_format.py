"""How numbers and durations read in tables, progress lines and reports."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["AXIS_NAMES", "duration", "human", "num", "size"]


def human(n: float) -> str:
    """``56873`` -> ``56.87k``: sizes of networks span six orders of magnitude."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def size(value: float, axis: str) -> str:
    """A network's size on a complexity axis: ``56.87k`` parameters or MACs, ``0.21 ms``."""
    return f"{value:.2f} ms" if axis == "latency" else human(value)


AXIS_NAMES = {"params": "params", "macs": "MACs", "latency": "latency"}


def duration(seconds: float) -> str:
    """``3725`` -> ``1h 02m 05s``; under an hour ``2m 05s``."""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def num(value: Any, fmt: str) -> str:
    """``value`` formatted, or a dash when it is missing or not finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return format(v, fmt) if math.isfinite(v) else "–"
