"""Predictive prefetch: learn which call follows which, compute the next one early.

A bounded transition table maps the last ``order`` keys a function was called with to
the keys that came next (at most four per state, with counts that age), plus the
arguments to call them with. After each call, the most likely successors seen at least
``min_count`` times whose share of that state's observations reaches ``min_confidence``
are computed in the background and stored, so the call that follows is a hit. A caller
that arrives while its key is being prefetched joins that computation (single flight)
instead of starting another.

Budget: at most ``max_inflight`` prefetches of one function run at once, and prefetches
started never exceed ``max_fraction`` of the calls seen. Accuracy is measured: a
prefetched entry is *used* when a later call is served by it (a hit, or a join of the
prefetch in flight); ``cache_stats().prefetch_accuracy`` is used / prefetched.

The sequence is per function and process-wide: concurrent callers interleave their
calls, which dilutes patterns (the accuracy figure shows it). Prefetches are computed
without the cross-process lock of a shared backend: they are best-effort.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.caching.backends.base import MISSING, Key

if TYPE_CHECKING:
    from perfkit.caching.decorator import _Core

logger = logging.getLogger("perfkit.cache.prefetch")

_SUCCESSORS = 4  # successors kept per state
_AGE_AT = 64  # a state's counts are halved once they sum past this: patterns can shift


@dataclass(frozen=True)
class Prefetch:
    """Prefetch settings for ``cached(prefetch=Prefetch(...))``; off unless given."""

    order: int = 1
    """How many previous keys form the state: 1 (``a -> b``) or 2 (``a, b -> c``)."""
    max_inflight: int = 4
    max_fraction: float = 0.25
    """Prefetches started never exceed this fraction of calls."""
    min_confidence: float = 0.5
    """A successor is prefetched once it followed the state at least this often..."""
    min_count: int = 2
    """...and at least this many times (a transition seen once is often chance)."""
    width: int = 1
    """At most this many successors prefetched after one call."""
    table_size: int = 10_000
    """States remembered (least recently seen dropped first); also bounds the record of
    prefetched entries waiting to be used."""

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order!r}")
        for name in ("max_inflight", "width", "table_size", "min_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("max_fraction", "min_confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value <= 1
            ):
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


class _Successor:
    __slots__ = ("args", "count", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.count = 0
        self.args = args
        self.kwargs = kwargs


class _State:
    """What followed one state: up to ``_SUCCESSORS`` keys and the sum of their counts."""

    __slots__ = ("best", "successors", "total")

    def __init__(self) -> None:
        self.successors: dict[Key, _Successor] = {}
        self.total = 0
        self.best: Key | None = None  # the most frequent successor

    def rank(self) -> None:
        successors = self.successors
        self.best = max(successors, key=lambda k: successors[k].count, default=None)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(8, thread_name_prefix="perfkit-prefetch")
    return _pool


class Prefetcher:
    """The learning and the budget for one decorated function."""

    def __init__(self, spec: Prefetch, core: _Core, is_async: bool) -> None:
        self.spec = spec
        self.core = core
        self.is_async = is_async
        self._probe = core.backend.probe  # a no-I/O lookup in the local tier, if any
        self._lock = threading.Lock()
        self._table: OrderedDict[Hashable, _State] = OrderedDict()
        self._recent: deque[Key] = deque(maxlen=spec.order)
        self.inflight: set[Key] = set()
        self._pending: OrderedDict[Key, None] = OrderedDict()  # prefetched, not yet used
        self._claimed: set[Key] = set()  # in flight, and a caller already joined it
        self.calls = 0
        self.started = 0
        self.prefetched = 0
        self.used = 0
        self.errors = 0
        self._idle = threading.Condition(self._lock)

    # -- learning and deciding (on the caller's path, under one short lock) -------------
    def observe(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any],
                served: bool) -> None:
        """Record a call of ``key``; ``served`` if a hit or a join answered it."""
        spec = self.spec
        with self._lock:
            self.calls += 1
            if self._pending.pop(key, MISSING) is None:
                self.used += served
            elif served and key in self.inflight:  # joined the prefetch in flight
                self._claimed.add(key)
                self.used += 1
            recent = self._recent
            if len(recent) == spec.order:
                self._learn(recent[0] if spec.order == 1 else tuple(recent), key, args, kwargs)
            recent.append(key)
            jobs = self._choose(recent[0] if spec.order == 1 else tuple(recent))
        for next_key, successor in jobs:
            self._start(next_key, successor)

    def _learn(self, state: Hashable, key: Key, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> None:
        table = self._table
        entry = table.get(state)
        if entry is None:
            entry = table[state] = _State()
            if len(table) > self.spec.table_size:
                table.popitem(last=False)
        else:
            table.move_to_end(state)
        successors = entry.successors
        successor = successors.get(key)
        if successor is None:
            if len(successors) >= _SUCCESSORS:
                weakest = min(successors, key=lambda k: successors[k].count)
                entry.total -= successors.pop(weakest).count
                if weakest == entry.best:
                    entry.rank()
            successor = successors[key] = _Successor(args, kwargs)
        successor.count += 1
        entry.total += 1
        best = entry.best
        if best is None or (best != key and successor.count > successors[best].count):
            entry.best = key
        if entry.total > _AGE_AT:
            for k in list(successors):
                successors[k].count //= 2
                if not successors[k].count:
                    del successors[k]
            entry.total = sum(s.count for s in successors.values())
            entry.rank()

    def _choose(self, state: Hashable) -> list[tuple[Key, _Successor]]:
        spec = self.spec
        if len(self.inflight) >= spec.max_inflight or (
            self.started + 1 > spec.max_fraction * self.calls
        ):
            return []  # no budget: do not even look
        entry = self._table.get(state)
        if entry is None or entry.best is None:
            return []
        successors = entry.successors
        if spec.width == 1:
            ranked = [(entry.best, successors[entry.best])]
        else:
            ranked = sorted(successors.items(), key=lambda item: -item[1].count)[: spec.width]
        threshold = max(spec.min_count, spec.min_confidence * entry.total)
        jobs = []
        for next_key, successor in ranked:
            if successor.count < threshold:
                break
            if next_key in self.inflight or next_key in self._pending:
                continue
            if self._probe is not None and self._probe(next_key) is not MISSING:
                continue  # already in the local tier: nothing to fetch
            if len(self.inflight) >= spec.max_inflight or (
                self.started + 1 > spec.max_fraction * self.calls
            ):
                break
            self.inflight.add(next_key)
            self.started += 1
            jobs.append((next_key, successor))
        return jobs

    # -- running prefetches in the background ------------------------------------------
    def _start(self, key: Key, successor: _Successor) -> None:
        args, kwargs = successor.args, successor.kwargs
        if self.is_async:
            if not self.core.tasks.start(key, lambda: self._arun(key, args, kwargs)):
                self._done(key, filled=False)  # a caller computes it already
        else:
            _executor().submit(self._run, key, args, kwargs)

    def _run(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        filled = False
        try:
            if self.core.read_raw(key) is MISSING:
                _, filled = self.core.threads.run(
                    key, lambda: self.core.compute_quietly(key, args, kwargs)
                )
        except Exception:
            self._error()
        finally:
            self._done(key, filled)

    async def _arun(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Callers of ``key`` may join this task: it returns the value, or raises.
        filled = False
        try:
            value = await self.core.aread(key)
            if value is MISSING:
                value = await self.core.acompute_quietly(key, args, kwargs)
                filled = True
            return value
        except Exception:
            self._error()
            raise
        finally:
            self._done(key, filled)

    def _error(self) -> None:
        with self._lock:
            self.errors += 1
        logger.debug("prefetch of %s failed", self.core.namespace, exc_info=True)

    def _done(self, key: Key, filled: bool) -> None:
        with self._lock:
            self.inflight.discard(key)
            claimed = key in self._claimed
            self._claimed.discard(key)
            if filled:
                self.prefetched += 1
                if not claimed:
                    self._pending[key] = None
                    if len(self._pending) > self.spec.table_size:
                        self._pending.popitem(last=False)
            else:
                self.started -= 1  # nothing was prefetched: give the budget back
                self.used -= claimed
            if not self.inflight:
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until no prefetch of this function is running (for tests and benchmarks)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self.inflight, timeout)
