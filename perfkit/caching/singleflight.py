"""Single flight: concurrent callers of one cold key share one computation.

- Threads: one in-flight record per key behind a lock; the leader computes *outside* the
  lock (so a re-entrant call or a slow function never blocks other keys), followers wait
  on an event and get the leader's value, or its exception (which is never cached).
- Tasks: one in-flight map per event loop (asyncio primitives are bound to their loop);
  the computation runs in a task owned by the cache and every caller awaits it through
  ``asyncio.shield``, so cancelling one caller (a client disconnect) never cancels the
  computation or the other callers.
- Processes: the decorator adds a lease lock in the shared backend on top of these.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Hashable
from typing import Any


class _Flight:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ThreadFlights:
    """Per-key single flight for threads. ``run`` returns ``(value, led)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    def run(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value, False
        try:
            flight.value = compute()
            return flight.value, True
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.event.set()

    def busy(self, key: Hashable) -> bool:
        return key in self._flights


class TaskFlights:
    """Per-key single flight for asyncio tasks, one map per running loop."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, asyncio.Task[Any]]
        ] = weakref.WeakKeyDictionary()

    def _flights(self) -> tuple[asyncio.AbstractEventLoop, dict[Hashable, asyncio.Task[Any]]]:
        loop = asyncio.get_running_loop()
        flights = self._by_loop.get(loop)
        if flights is None:
            flights = self._by_loop[loop] = {}
        return loop, flights

    async def run(
        self, key: Hashable, compute: Callable[[], Coroutine[Any, Any, Any]]
    ) -> tuple[Any, bool]:
        loop, flights = self._flights()
        task = flights.get(key)
        leader = task is None
        if task is None:
            task = flights[key] = loop.create_task(compute())
            task.add_done_callback(_forget(flights, key))
        return await asyncio.shield(task), leader

    def start(self, key: Hashable, compute: Callable[[], Coroutine[Any, Any, Any]]) -> bool:
        """Start ``compute`` in the background unless one runs for ``key``; True if started."""
        loop, flights = self._flights()
        if key in flights:
            return False
        task = loop.create_task(compute())
        flights[key] = task
        task.add_done_callback(_forget(flights, key))
        return True


def _forget(
    flights: dict[Hashable, asyncio.Task[Any]], key: Hashable
) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        if flights.get(key) is task:
            del flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a flight nobody awaited logs no warning

    return done
