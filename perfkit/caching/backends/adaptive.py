"""A memory cache that sizes itself: capacity moves between a floor and a ceiling.

The control law, evaluated once per window (at least ``interval`` seconds and
``min_accesses`` accesses), at most one step per window:

1. **Memory pressure shrinks.** If the memory probe reads at or above ``memory_high``
   (default: 90 % of the machine's memory in use, or of ``process_limit`` when given),
   capacity drops by ``shrink_factor`` (never below ``min_entries``) and the LRU tail is
   evicted at once.
2. **Capacity misses grow, given headroom.** A *ghost list* remembers the keys evicted
   recently (their hashes, not their values: up to 4 per entry held, at most
   ``max_entries``; ~100 bytes each, outside the byte budget). A write of a key on that
   list is a miss a larger cache would have served. If such misses reach ``grow_threshold`` of the
   window's accesses, the probe reads below ``memory_low`` and the entries still fit the
   byte budget with room to spare, capacity grows by ``grow_factor`` (never above
   ``max_entries``). Compulsory misses (keys never seen) and scans do not grow it.
3. Otherwise capacity stays. The gap between ``memory_low`` and ``memory_high`` and the
   one-step-per-window rule are the hysteresis that keeps it from oscillating.

``max_bytes`` is a hard bound, whatever the capacity: every write evicts down to it (the
same estimate as :class:`MemoryBackend`, ``sizeof``). Each adjustment is counted, kept
in a short history and logged at INFO with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perfkit.caching.backends.base import MISSING, Key
from perfkit.caching.backends.memory import MemoryBackend, _check_positive, estimate_size

logger = logging.getLogger("perfkit.cache.adaptive")

_CHECK_EVERY = 256  # hits between two looks at the clock (writes always look)
_GHOSTS_PER_ENTRY = 4  # the ghost list sees working sets up to 5x the capacity


@dataclass(frozen=True)
class Adjustment:
    """One capacity change and why it happened."""

    at: float
    old: int
    new: int
    reason: str


def psutil_probe(process_limit: int | None = None) -> Callable[[], float]:
    """Memory in use as a fraction: this process's RSS over ``process_limit`` bytes, or,
    without a limit, the machine's memory in use (``psutil.virtual_memory().percent``)."""
    try:
        import psutil
    except ImportError:
        raise ImportError(
            "AdaptiveMemoryBackend reads memory with psutil: pip install 'perfkit[memory]', "
            "or pass memory_probe=..."
        ) from None
    if process_limit is None:
        return lambda: float(psutil.virtual_memory().percent) / 100.0
    process = psutil.Process()
    return lambda: float(process.memory_info().rss) / process_limit


class AdaptiveMemoryBackend(MemoryBackend):
    """An LRU whose entry capacity follows the workload within a byte budget.

    See the module docstring for the control law. ``clock`` times the windows and
    ``memory_probe`` returns memory in use as a fraction; both are injectable so tests
    are deterministic. ``capacity`` is the current bound on entries.
    """

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        min_entries: int = 128,
        max_entries: int = 65536,
        initial_entries: int | None = None,
        interval: float = 10.0,
        min_accesses: int = 500,
        grow_factor: float = 1.5,
        shrink_factor: float = 0.7,
        grow_threshold: float = 0.01,
        memory_high: float = 0.90,
        memory_low: float = 0.80,
        process_limit: int | None = None,
        memory_probe: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.monotonic,
        sizeof: Callable[[Any], int] = estimate_size,
    ) -> None:
        for name, value in (
            ("max_bytes", max_bytes),
            ("min_entries", min_entries),
            ("max_entries", max_entries),
            ("initial_entries", initial_entries),
            ("min_accesses", min_accesses),
            ("process_limit", process_limit),
        ):
            _check_positive(name, value)
        if min_entries > max_entries:
            raise ValueError(
                f"min_entries ({min_entries}) must not exceed max_entries ({max_entries})"
            )
        initial = min_entries if initial_entries is None else initial_entries
        if not min_entries <= initial <= max_entries:
            raise ValueError(
                f"initial_entries must be within [min_entries, max_entries], got {initial}"
            )
        _check_fraction("interval", interval, upper=None)
        _check_fraction("grow_threshold", grow_threshold, upper=1.0)
        _check_fraction("memory_high", memory_high, upper=None)
        _check_fraction("memory_low", memory_low, upper=None)
        if memory_low >= memory_high:
            raise ValueError(
                f"memory_low ({memory_low}) must be below memory_high ({memory_high})"
            )
        if not grow_factor > 1:
            raise ValueError(f"grow_factor must be > 1, got {grow_factor!r}")
        if not 0 < shrink_factor < 1:
            raise ValueError(f"shrink_factor must be in (0, 1), got {shrink_factor!r}")
        if memory_probe is not None and not callable(memory_probe):
            raise TypeError(f"memory_probe must be a callable returning a fraction, got "
                            f"{memory_probe!r}")
        super().__init__(initial, max_bytes=max_bytes, timer=timer, sizeof=sizeof)
        self.min_entries = min_entries
        self.max_entries = max_entries
        self.interval = interval
        self.min_accesses = min_accesses
        self.grow_factor = grow_factor
        self.shrink_factor = shrink_factor
        self.grow_threshold = grow_threshold
        self.memory_high = memory_high
        self.memory_low = memory_low
        self.memory_probe = memory_probe or psutil_probe(process_limit)
        self.clock = clock
        self.adjustments = 0
        self.history: deque[Adjustment] = deque(maxlen=32)
        # hashes of recently evicted keys, bounded by the current capacity
        self._ghosts: OrderedDict[int, None] = OrderedDict()
        self._ghost_lock = threading.Lock()
        self._window_lock = threading.Lock()
        self._window_start = clock()
        self._ticks = 0
        self._hits = 0
        self._writes = 0
        self._ghost_hits = 0
        self._window_evictions = 0
        self.last_hit_rate: float | None = None

    @property
    def capacity(self) -> int:
        assert self.maxsize is not None
        return self.maxsize

    # -- measuring (hits on the read path, everything else on writes) -------------------
    def get(self, key: Key) -> Any:
        value = super().get(key)
        if value is not MISSING:
            self._hits += 1
            self._ticks += 1
            if self._ticks >= _CHECK_EVERY:
                self._ticks = 0
                self.maybe_adjust()
        return value

    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        # A write is what a miss leads to; a write of a recently evicted key is a miss
        # a bigger cache would have served.
        self._writes += 1
        ghost = hash(key)
        if ghost in self._ghosts:
            with self._ghost_lock:
                if self._ghosts.pop(ghost, False) is None:
                    self._ghost_hits += 1
        super().set(key, value, ttl)
        self.maybe_adjust()

    def _keep_victims(self) -> bool:
        return True

    def _evicted(self, victims: list[tuple[Key, tuple[Any, float | None, int]]]) -> None:
        ghosts = self._ghosts
        with self._ghost_lock:
            self._window_evictions += len(victims)
            for key, _ in victims:
                ghosts[hash(key)] = None
            # Proportional to the entries actually held: under a tight byte budget a large
            # capacity is never filled, and the ghosts live outside the budget.
            held = max(len(self._data), self.min_entries)
            bound = min(self.max_entries, _GHOSTS_PER_ENTRY * min(self.capacity, held))
            while len(ghosts) > bound:
                ghosts.popitem(last=False)
        super()._evicted(victims)

    # -- the control law ------------------------------------------------------------------
    def maybe_adjust(self) -> Adjustment | None:
        """Close the window if it is due and apply at most one step; the step, if any.

        With fewer than ``min_accesses`` accesses the window stays open (its counts are
        too few to grow on) but memory pressure is still checked once per ``interval``.
        """
        now = self.clock()
        if now - self._window_start < self.interval:
            return None
        if not self._window_lock.acquire(blocking=False):
            return None  # another thread is closing this window
        try:
            self._window_start = now
            hits, writes = self._hits, self._writes
            enough = hits + writes >= self.min_accesses
            ghost_hits, evictions = self._ghost_hits, self._window_evictions
            if enough:
                self._hits = self._writes = self._ghost_hits = self._window_evictions = 0
            return self._decide(now, hits, writes, ghost_hits, evictions, enough)
        finally:
            self._window_lock.release()

    def _decide(
        self, now: float, hits: int, writes: int, ghost_hits: int, evictions: int,
        enough: bool,
    ) -> Adjustment | None:
        try:
            memory = float(self.memory_probe())
        except Exception:
            logger.debug("memory probe failed; holding capacity", exc_info=True)
            return None
        capacity = self.capacity
        if memory >= self.memory_high and capacity > self.min_entries:
            new = max(self.min_entries, int(capacity * self.shrink_factor))
            return self._resize(
                now, new, f"memory pressure: {memory:.0%} in use >= memory_high "
                f"{self.memory_high:.0%}"
            )
        if not enough:
            return None
        accesses = hits + writes
        hit_rate = hits / accesses
        previous, self.last_hit_rate = self.last_hit_rate, hit_rate
        ghost_rate = ghost_hits / accesses
        byte_room = self.max_bytes is None or self.currsize_bytes < 0.9 * self.max_bytes
        if (
            ghost_rate >= self.grow_threshold
            and capacity < self.max_entries
            and memory < self.memory_low
            and byte_room
        ):
            new = min(self.max_entries, max(capacity + 1, int(capacity * self.grow_factor)))
            trend = "" if previous is None else f" (was {previous:.2f})"
            return self._resize(
                now, new, f"hit rate {hit_rate:.2f}{trend}, {ghost_rate:.1%} of accesses "
                f"missed recently evicted keys, {evictions / accesses:.2f} evictions per "
                f"access, memory {memory:.0%} < memory_low {self.memory_low:.0%}"
            )
        return None

    def _resize(self, now: float, new: int, reason: str) -> Adjustment:
        old = self.capacity
        with self._lock:
            self.maxsize = new
            victims = self._evict_locked()
        if victims:
            self._evicted(victims)
        adjustment = Adjustment(now, old, new, reason)
        self.adjustments += 1
        self.history.append(adjustment)
        logger.info("perfkit adaptive cache: capacity %d -> %d: %s", old, new, reason)
        return adjustment


def _check_fraction(name: str, value: float, upper: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not value > 0 or (upper is not None and value > upper):
        bound = "> 0" if upper is None else f"in (0, {upper}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
