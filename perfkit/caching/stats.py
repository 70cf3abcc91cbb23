"""Per-function cache statistics: cheap counters on the hot path, a snapshot on demand."""

from __future__ import annotations

from dataclasses import dataclass


class Counters:
    """Plain attribute counters; the hot path does ``counters.hits += 1`` and nothing else.

    Increments are not atomic across threads, so under heavy contention a count can be
    off by a few: these are statistics, not accounting.
    """

    __slots__ = (
        "backend_errors",
        "compute_seconds",
        "hits",
        "joins",
        "misses",
        "refresh_errors",
        "stale_serves",
    )

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.joins = 0
        self.stale_serves = 0
        self.backend_errors = 0
        self.refresh_errors = 0
        self.compute_seconds = 0.0


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one cached function's statistics.

    ``misses`` counts computations; ``joins`` counts callers that waited for another
    caller's computation of the same key (single flight) instead of computing.
    ``time_saved`` estimates the computing time the cache spared: hits (and joins) times
    the mean measured miss latency. ``evictions`` is the backend's count (shared by every
    function using that backend instance).
    """

    hits: int
    misses: int
    joins: int
    stale_serves: int
    evictions: int
    backend_errors: int
    refresh_errors: int
    currsize: int
    mean_miss_seconds: float
    prefetches: int = 0
    """Entries computed ahead by ``prefetch=`` (0 when prefetch is off)."""
    prefetch_used: int = 0
    """Of those, entries a later call was served from."""
    prefetch_errors: int = 0

    @property
    def prefetch_accuracy(self) -> float:
        """Prefetched entries that were used, over prefetched entries (0.0 if none)."""
        return self.prefetch_used / self.prefetches if self.prefetches else 0.0

    @property
    def hit_rate(self) -> float:
        calls = self.hits + self.misses + self.joins
        return (self.hits + self.joins) / calls if calls else 0.0

    @property
    def time_saved(self) -> float:
        return (self.hits + self.joins) * self.mean_miss_seconds
