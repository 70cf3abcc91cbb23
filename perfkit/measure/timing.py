"""Time one call of the code under test without garbage-collection pauses in the window.

A full collection landing inside a measured call was the largest single cause of false
latency failures on this project's CI (a ~40 ms gen-2 pass in a fresh process). So a
measurement collects first, then times the call while summing every collector pause that
still happens inside it (``gc.callbacks``) and reports wall time with those pauses taken
out, and the pause itself, so nothing is hidden.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["CallTimer", "Timing"]


@dataclass
class Timing:
    """One measured call: wall seconds (GC pauses removed), CPU seconds, GC pause seconds."""

    wall: float = 0.0
    cpu: float = 0.0
    gc_pause: float = 0.0
    excluded: float = 0.0  # time spent by perfkit itself inside the window (e.g. EXPLAIN)


@dataclass
class CallTimer:
    """Context manager timing the code inside it; ``collect=True`` runs ``gc.collect()`` first.

    ``exclude(seconds)`` removes time that perfkit's own instrumentation spent in the window.
    """

    collect: bool = True
    timing: Timing = field(default_factory=Timing)
    _gc_started: float = 0.0
    _wall0: float = 0.0
    _cpu0: float = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.timing.gc_pause += time.perf_counter() - self._gc_started
            self._gc_started = 0.0

    def exclude(self, seconds: float) -> None:
        self.timing.excluded += seconds

    def __enter__(self) -> CallTimer:
        if self.collect:
            gc.collect()
        self.timing = Timing()
        gc.callbacks.append(self._on_gc)
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wall = time.perf_counter() - self._wall0
        cpu = time.process_time() - self._cpu0
        try:
            gc.callbacks.remove(self._on_gc)
        except ValueError:
            pass
        removed = self.timing.gc_pause + self.timing.excluded
        self.timing.wall = max(0.0, wall - removed)
        self.timing.cpu = max(0.0, cpu - min(cpu, removed))
