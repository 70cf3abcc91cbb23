"""Parse durations and sizes written by people ("50ms", "1.5 s", "20MB", "512KiB").

Budgets come from markers, ini files, environment variables and the command line, so
they arrive as numbers or strings. Both parsers reject negative values, NaN, unknown
units and booleans with an error that names the parameter, never a silent default.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*$")

_DURATION_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "us": 1e-6, "µs": 1e-6, "usec": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "ns": 1e-9, "nanosecond": 1e-9, "nanoseconds": 1e-9,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
}

_SIZE_UNITS = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
}


def _number(value: object, name: str) -> float | None:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number or a string with a unit, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number) or math.isinf(number) or number < 0:
            raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        return number
    return None


def _finite(number: float, value: object, name: str) -> float:
    """``number`` read from ``value``; a string such as ``"1e999"`` overflows to infinity."""
    if not math.isfinite(number):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return number


def parse_duration(value: object, name: str = "duration") -> float:
    """Seconds from ``0.05``, ``"50ms"``, ``"50 ms"``, ``"200us"``, ``"1.5s"``, ``"2min"``.

    A bare number (or a bare numeric string) means seconds.
    """
    number = _number(value, name)
    if number is not None:
        return number
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected seconds or a string like '50ms', got {value!r}")
    match = _NUMBER_UNIT.match(value)
    if match is None:
        raise ValueError(
            f"{name}: cannot read {value!r} as a duration (use e.g. '50ms', '1.5s', '200us')"
        )
    unit = match.group(2).lower() if match.group(2) != "µs" else "µs"
    if unit not in _DURATION_UNITS:
        raise ValueError(
            f"{name}: unknown duration unit {match.group(2)!r} in {value!r} "
            "(accepted: ns, us, ms, s, min)"
        )
    return _finite(float(match.group(1)) * _DURATION_UNITS[unit], value, name)


def parse_size(value: object, name: str = "size") -> int:
    """Bytes from ``1024``, ``"20MB"`` (10^6), ``"20MiB"`` (2^20), ``"512KiB"``, ``"1.5GB"``.

    ``K``/``M``/``G`` without ``B`` are binary (like ``ulimit``); ``KB``/``MB``/``GB`` decimal.
    """
    number = _number(value, name)
    if number is not None:
        return int(number)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected bytes or a string like '20MB', got {value!r}")
    match = _NUMBER_UNIT.match(value)
    if match is None:
        raise ValueError(f"{name}: cannot read {value!r} as a size (use e.g. '20MB', '512KiB')")
    unit = match.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(
            f"{name}: unknown size unit {match.group(2)!r} in {value!r} "
            "(accepted: B, KB, MB, GB, KiB, MiB, GiB)"
        )
    return int(_finite(float(match.group(1)) * _SIZE_UNITS[unit], value, name))


def format_duration(seconds: float) -> str:
    """Short human form: ``12.3ms``, ``850us``, ``1.20s``."""
    if seconds >= 1:
        return f"{seconds:.2f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f}ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.0f}us"
    return f"{seconds * 1e9:.0f}ns"


def format_size(size: float) -> str:
    """Short binary form: ``1.5MiB``, ``640KiB``, ``12B``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(size) >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{int(size)}B"
