"""Machine-speed calibration: time a fixed reference workload and derive a scale factor.

A budget written on a laptop is too tight on a shared CI runner that is 1.6x slower. The
reference workload (pure-Python integer, dict and string work, no I/O, no allocation
storms) is timed several times in the running process and its minimum is compared with
the time it takes on the reference machine; budgets multiplied by the factor then mean
"this fast on the reference machine". The factor is printed wherever a budget is judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["REFERENCE_SECONDS", "Calibration", "calibrate", "reference_workload"]

#: Minimum time of :func:`reference_workload` on the reference machine (the project's CI
#: runner, CPython 3.11). A factor of 2.0 means this machine ran it twice as slowly.
REFERENCE_SECONDS = 0.0016


def reference_workload() -> int:
    """A fixed, deterministic CPU-bound workload (~1.6 ms on the reference machine)."""
    total = 0
    table: dict[int, str] = {}
    for i in range(12_000):
        total += (i * 7) % 13
        if i % 3 == 0:
            table[i] = str(i)
    total += sum(len(v) for v in table.values())
    words = ["perf", "kit", "budget"] * 500
    total += len("-".join(words))
    return total


@dataclass(frozen=True)
class Calibration:
    """Result of a calibration: the reference minimum here and the scale factor."""

    seconds: float
    factor: float
    runs: int

    def describe(self) -> str:
        return (f"x{self.factor:.2f} (reference workload {self.seconds * 1e3:.2f}ms, "
                f"{self.runs} runs)")


def calibrate(runs: int = 15) -> Calibration:
    """Time the reference workload ``runs`` times (after one warm-up) and keep the minimum."""
    if runs < 1:
        raise ValueError(f"runs: must be >= 1, got {runs!r}")
    reference_workload()
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        reference_workload()
        best = min(best, time.perf_counter() - started)
    return Calibration(seconds=best, factor=best / REFERENCE_SECONDS, runs=runs)
