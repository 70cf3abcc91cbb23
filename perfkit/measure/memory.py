"""Peak memory of one call: Python heap (tracemalloc) or the process's RSS high-water mark.

Two different questions, named apart everywhere:

* **heap peak** - the most memory Python's allocators held at once during the call, above
  what was held when it started (``tracemalloc``). Exact and deterministic, but tracing
  slows code 3-7x, so it runs in its own pass and never next to a latency measurement. It
  does not see native allocations (numpy buffers from C, drivers).
* **RSS high-water** - how far the process's resident set grew above its level at the
  start of the call. Cheap: on Linux the kernel's high-water mark (VmHWM) is reset through
  ``/proc/self/clear_refs`` and read back, so it can sit next to the timed run; elsewhere a
  psutil sampling thread approximates it (short peaks between samples are missed).
"""

from __future__ import annotations

import linecache
import os
import sys
import threading
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

__all__ = ["AllocationSite", "HeapPeak", "HeapTracer", "RssHighWater"]

_OWN_FILES = (os.sep + "perfkit" + os.sep, os.sep + "pytest_perfkit" + os.sep)
_MAX_SNAPSHOTS = 6


@dataclass(frozen=True)
class AllocationSite:
    """A source line and how much memory allocated there was alive at the high-water mark."""

    file: str
    line: int
    size: int
    count: int

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def source(self) -> str:
        return linecache.getline(self.file, self.line).strip()


@dataclass
class HeapPeak:
    """Result of a traced call: peak bytes above the starting level and the top sites."""

    peak: int = 0
    sites: list[AllocationSite] = field(default_factory=list)
    note: str = ""


class HeapTracer:
    """Trace Python allocations inside a ``with`` block; the result is in ``.result``.

    While tracing, a profile hook watches the traced size at function returns and keeps a
    snapshot whenever it reaches a new high (at most a few snapshots), so the allocation
    sites reported are the ones alive near the peak rather than whatever survived the call.
    If tracemalloc was already running (someone else is tracing), it is left running.
    """

    def __init__(self, *, top: int = 5, sites: bool = True) -> None:
        if top < 0:
            raise ValueError(f"top: must be >= 0, got {top!r}")
        self.top = top
        self.want_sites = sites and top > 0
        self.result = HeapPeak()
        self._was_tracing = False
        self._base = 0
        self._best = 0
        self._snapshot: tracemalloc.Snapshot | None = None
        self._snapshots = 0
        self._previous_profile: Any = None

    def _profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "return" and event != "c_return":
            return
        current = tracemalloc.get_traced_memory()[0]
        grown = current - self._base
        if grown > self._best * 1.25 + 65536 and self._snapshots < _MAX_SNAPSHOTS:
            self._best = grown
            self._snapshots += 1
            self._snapshot = tracemalloc.take_snapshot()

    def __enter__(self) -> HeapTracer:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start(1)
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        if self.want_sites:
            self._previous_profile = sys.getprofile()
            sys.setprofile(self._profile)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.want_sites:
            sys.setprofile(self._previous_profile)
        peak = tracemalloc.get_traced_memory()[1]
        self.result.peak = max(0, peak - self._base)
        if self._snapshot is not None:
            self.result.sites = _top_sites(self._snapshot, self.top)
        self._snapshot = None
        if not self._was_tracing:
            tracemalloc.stop()


def _top_sites(snapshot: tracemalloc.Snapshot, top: int) -> list[AllocationSite]:
    sites: list[AllocationSite] = []
    stats = snapshot.statistics("lineno")
    floor = max(4096, sum(stat.size for stat in stats) // 100)
    for stat in stats:
        if stat.size < floor:
            break
        frame = stat.traceback[0]
        if frame.filename == tracemalloc.__file__ or "<frozen" in frame.filename:
            continue
        if any(part in frame.filename for part in _OWN_FILES):
            continue
        sites.append(AllocationSite(frame.filename, frame.lineno, stat.size, stat.count))
        if len(sites) >= top:
            break
    return sites


def _read_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class RssHighWater:
    """Growth of the resident set's high-water mark inside a ``with`` block (``.peak`` bytes).

    ``method`` says how it was measured: ``"vmhwm"`` (Linux kernel counter, exact),
    ``"sampled"`` (psutil thread every ``interval`` seconds) or ``"unavailable"``.
    """

    def __init__(self, *, interval: float = 0.002, sampler: bool | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval: must be > 0, got {interval!r}")
        self.interval = interval
        self.peak = 0
        self.method = "unavailable"
        self._force_sampler = sampler
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_max = 0
        self._rss: Callable[[], int] | None = None

    def __enter__(self) -> RssHighWater:
        self.peak = 0
        use_sampler = self._force_sampler
        if use_sampler is None:
            use_sampler = not (_read_status_kib("VmHWM") is not None and _reset_high_water())
        if not use_sampler:
            self.method = "vmhwm"
            self._start = _read_status_kib("VmRSS") or 0
            _reset_high_water()
            return self
        try:
            import psutil
        except ImportError:
            self.method = "unavailable"
            return self
        process = psutil.Process()

        def rss() -> int:
            return int(process.memory_info().rss)

        self._rss = rss
        self.method = "sampled"
        self._start = self._sampled_max = rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="perfkit-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        assert self._rss is not None
        while not self._stop.wait(self.interval):
            self._sampled_max = max(self._sampled_max, self._rss())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.method == "vmhwm":
            high = _read_status_kib("VmHWM") or self._start
            self.peak = max(0, high - self._start)
        elif self.method == "sampled":
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            assert self._rss is not None
            self._sampled_max = max(self._sampled_max, self._rss())
            self.peak = max(0, self._sampled_max - self._start)
