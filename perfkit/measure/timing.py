"""Time one call of the code under test without garbage-collection pauses in the window.

A full collection landing inside a measured call was the largest single cause of false
latency failures on this project's CI (a ~40 ms gen-2 pass in a fresh process). So a
measurement collects first, then times the call while summing every collector pause that
still happens inside it (``gc.callbacks``) and reports wall time with those pauses taken
out, and the pause itself, so nothing is hidden.

The second cause is other processes: on a shared 2-core machine a busy neighbour made
CPU-bound tests ~2x slower in wall time while their CPU time did not move, because the
test's thread sat in the run queue waiting for a core. Linux counts that wait per thread
(``/proc/thread-self/schedstat``, "run delay"), so the timer records it as ``cpu_wait``,
and ``own`` is the wall time without it: a neighbour's load cancels, a regression of the
code itself (more work) does not.

The counter is trusted only so far. Measured on this project's kernel (6.18, EEVDF) it
sometimes reported a whole window as waiting - a task kept queued while asleep ("delayed
dequeue") or a stale per-CPU clock - so ``own`` never goes below the CPU time the call
used, and a run whose thread blocked on its own (sleep, I/O, locks, the GIL: a voluntary
context switch) keeps its full wall time, because there the counter could hide a slower
wait. Where the counter is missing (not Linux) ``cpu_wait_known`` is False.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["CallTimer", "Timing", "cpu_wait_clock"]

_SCHEDSTAT = "/proc/thread-self/schedstat"


def _read_run_delay() -> float:
    """Seconds the calling thread has waited for a CPU since it started (Linux)."""
    fd = os.open(_SCHEDSTAT, os.O_RDONLY)
    try:
        fields = os.read(fd, 128).split()
    finally:
        os.close(fd)
    return int(fields[1]) / 1e9


def _probe() -> Callable[[], float] | None:
    try:
        _read_run_delay()
    except (OSError, IndexError, ValueError):
        return None
    return _read_run_delay


#: The calling thread's cumulative run-queue wait in seconds, or None where the platform
#: does not count it. Chosen once at import, so a timer pays one read per edge.
cpu_wait_clock: Callable[[], float] | None = _probe()


if sys.platform.startswith("linux"):
    import resource

    def _voluntary_switches() -> int:
        """How often the calling thread gave up its CPU to wait for something."""
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw

    switch_counter: Callable[[], int] | None = _voluntary_switches
else:  # pragma: no cover - only Linux counts per thread
    switch_counter = None


@dataclass
class Timing:
    """One measured call, in seconds.

    ``wall`` has GC pauses and perfkit's own time removed but still includes ``cpu_wait``;
    ``own`` removes that too where the counter can be trusted (the thread never blocked on
    its own in the window), and never goes below ``cpu``.
    """

    wall: float = 0.0
    cpu: float = 0.0
    gc_pause: float = 0.0
    excluded: float = 0.0  # time spent by perfkit itself inside the window (e.g. EXPLAIN)
    cpu_wait: float = 0.0  # runnable but waiting for a CPU held by someone else
    cpu_wait_known: bool = False
    blocked: bool = False  # the thread waited on its own at least once (sleep, I/O, lock)
    started: float = 0.0  # time.perf_counter() when the window opened (when, not how long)

    @property
    def own(self) -> float:
        if self.blocked or not self.cpu_wait_known:
            return self.wall
        return min(self.wall, max(self.wall - self.cpu_wait, self.cpu))


@dataclass
class CallTimer:
    """Context manager timing the code inside it; ``collect=True`` runs ``gc.collect()`` first.

    ``exclude(seconds)`` removes time that perfkit's own instrumentation spent in the window.
    ``wait_clock`` reads the thread's cumulative run-queue wait (injectable for tests;
    ``None`` disables the accounting).
    """

    collect: bool = True
    wait_clock: Callable[[], float] | None = field(default_factory=lambda: cpu_wait_clock)
    switches: Callable[[], int] | None = field(default_factory=lambda: switch_counter)
    timing: Timing = field(default_factory=Timing)
    _gc_started: float = 0.0
    _gc_cpu_started: float = 0.0
    _gc_cpu: float = 0.0
    _gc_wait_started: float = 0.0
    _gc_wait: float = 0.0  # run-queue wait inside GC pauses
    _wall0: float = 0.0
    _cpu0: float = 0.0
    _wait0: float = 0.0
    _switches0: int = 0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # The wait counter is read inside the pause (its cost is taken out with it): a
        # run-queue wait during a collection is already out of ``wall`` with the pause,
        # and taking it out again as ``cpu_wait`` made a slowed run look faster.
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_cpu_started = time.process_time()
            if self.wait_clock is not None:
                self._gc_wait_started = self.wait_clock()
        elif self._gc_started:
            if self.wait_clock is not None:
                self._gc_wait += self.wait_clock() - self._gc_wait_started
            self.timing.gc_pause += time.perf_counter() - self._gc_started
            self._gc_cpu += time.process_time() - self._gc_cpu_started
            self._gc_started = 0.0

    def exclude(self, seconds: float) -> None:
        self.timing.excluded += seconds

    def __enter__(self) -> CallTimer:
        if self.collect:
            gc.collect()
        self.timing = Timing()
        self._gc_cpu = 0.0
        self._gc_wait = 0.0
        gc.callbacks.append(self._on_gc)
        if self.wait_clock is not None:
            self._wait0 = self.wait_clock()
        if self.switches is not None:
            self._switches0 = self.switches()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        self.timing.started = self._wall0
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wall = time.perf_counter() - self._wall0
        cpu = time.process_time() - self._cpu0
        if self.wait_clock is not None:
            waited = self.wait_clock() - self._wait0 - self._gc_wait
            # Our own excluded time may itself have waited for a CPU; never let the two
            # subtractions together exceed the window.
            self.timing.cpu_wait = min(max(0.0, waited), wall)
            self.timing.cpu_wait_known = True
        # Unknown switches count as blocked: the wait counter is then never subtracted.
        self.timing.blocked = self.switches is None or self.switches() > self._switches0
        try:
            gc.callbacks.remove(self._on_gc)
        except ValueError:
            pass
        self.timing.wall = max(0.0, wall - self.timing.gc_pause - self.timing.excluded)
        self.timing.cpu = max(0.0, cpu - self._gc_cpu - self.timing.excluded)
