"""``perfkit.timed``: every call's latency in a histogram, failures apart, budgets watched.

::

    @timed                        # name: module.qualname
    def load_user(user_id): ...

    @timed("db.orders", budget_ms=50)
    async def orders(user_id): ...

    with timed("render.invoice"):  # a block
        ...

Each call is observed in the registry's ``perfkit_timed_seconds`` histogram, labelled
``function`` and ``outcome`` (``ok``, ``error`` for an ``Exception``, ``cancelled`` for
cancellation and other ``BaseException``\\ s), so fast failures do not flatter the latency of
successful calls. ``p50/p95/p99`` come from :meth:`perfkit.Registry.snapshot` or the
``perfkit_timed_seconds_quantile`` family in the Prometheus text.

``budget_ms``: the p95 of the last 512 successful calls is checked at most once per
``budget_interval`` seconds (default 60); when it exceeds the budget, one warning is logged
(logger ``perfkit.timing``) and ``perfkit_timed_budget_exceeded_total`` goes up. A slow
function therefore costs one log line per interval, never one per call.

A plain function that returns a coroutine is timed until that coroutine finishes (the work
happens when it is awaited). The clock is ``time.perf_counter``; the timer object may be
shared between threads and tasks (each ``with`` entry keeps its start time in a contextvar).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from typing_extensions import ParamSpec

from perfkit._wrapping import decoratable, wrap
from perfkit.metrics import HistogramSeries, Registry, resolve_registry
from perfkit.spans import record_span

__all__ = ["Timer", "timed"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("perfkit.timing")

RECENT_CALLS = 512
_MIN_SAMPLES = 20

#: Start times of ``with timer:`` blocks, innermost last (per thread and per task).
_STARTED: contextvars.ContextVar[tuple[float, ...]] = contextvars.ContextVar(
    "perfkit_timed_started", default=()
)


class Timer:
    """What ``timed(...)`` returns: a decorator and a (sync or async) context manager."""

    def __init__(
        self,
        name: str | None,
        registry: Registry | None,
        budget_ms: float | None,
        budget_interval: float,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        if budget_ms is not None and (
            isinstance(budget_ms, bool)
            or not isinstance(budget_ms, (int, float))
            or not 0 < budget_ms < math.inf
        ):
            raise ValueError(f"budget_ms must be > 0 milliseconds, got {budget_ms!r}")
        if isinstance(budget_interval, bool) or not isinstance(budget_interval, (int, float)) \
                or not 0 < budget_interval < math.inf:
            raise ValueError(f"budget_interval must be > 0 seconds, got {budget_interval!r}")
        self.name = name
        self.registry = resolve_registry(registry)
        self.budget_ms = budget_ms
        self.budget_interval = float(budget_interval)
        #: The recorders of ``with timer:`` blocks, bound on first use.
        self._block: tuple[Callable[[float], None], Callable[[str, float], None]] | None = None
        self._lock = threading.Lock()

    # -- recording ----------------------------------------------------------------------

    def _bind(self, name: str) -> tuple[Callable[[float], None], Callable[[str, float], None]]:
        """Resolve the ``ok`` series once (budget-aware); failures find theirs when they happen.

        Returns ``observe_ok(seconds)`` and ``observe_other(outcome, seconds)``, so a function
        that never fails has no empty ``error``/``cancelled`` series.
        """
        histogram = self.registry.histogram(
            "perfkit_timed_seconds", "Latency of perfkit.timed calls and blocks",
            ("function", "outcome"),
        )
        ok = histogram.labels(name, "ok")

        def observe_other(outcome: str, seconds: float) -> None:
            histogram.labels(name, outcome).observe(seconds)
            record_span(name, seconds, outcome)

        if self.budget_ms is None:
            observe = ok.observe
        else:
            observe = _budget_watch(self.registry, name, ok, self.budget_ms,
                                    self.budget_interval).observe

        def observe_ok(seconds: float) -> None:
            observe(seconds)
            record_span(name, seconds)  # a Server-Timing span when TimingMiddleware collects

        return observe_ok, observe_other

    # -- decorator ----------------------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        target = decoratable(func, "timed", "it would time only the creation of the "
                             "generator; time the code that consumes it")
        name = self.name or f"{target.__module__}.{target.__qualname__}"
        observe_ok, observe_other = self._bind(name)
        clock = time.perf_counter
        coroutine = types.CoroutineType

        async def timed_await(awaitable: Awaitable[Any]) -> Any:
            start = clock()
            try:
                result = await awaitable
            except Exception:
                observe_other("error", clock() - start)
                raise
            except BaseException:
                observe_other("cancelled", clock() - start)
                raise
            observe_ok(clock() - start)
            return result

        if inspect.iscoroutinefunction(target):

            async def async_wrapper(
                wrapped: Callable[..., Awaitable[Any]], instance: Any, args: Any, kwargs: Any
            ) -> Any:
                # timed_await's body, inlined: calling through it costs ~70 ns per call
                start = clock()
                try:
                    result = await wrapped(*args, **kwargs)
                except Exception:
                    observe_other("error", clock() - start)
                    raise
                except BaseException:
                    observe_other("cancelled", clock() - start)
                    raise
                observe_ok(clock() - start)
                return result

            return cast("Callable[P, R]", wrap(func, async_wrapper))

        def sync_wrapper(
            wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
        ) -> Any:
            start = clock()
            try:
                result = wrapped(*args, **kwargs)
            except Exception:
                observe_other("error", clock() - start)
                raise
            except BaseException:
                observe_other("cancelled", clock() - start)
                raise
            if type(result) is coroutine:  # a plain function handing back a coroutine:
                return timed_await(result)  # time the await, where the work happens
            observe_ok(clock() - start)
            return result

        return cast("Callable[P, R]", wrap(func, sync_wrapper))

    # -- context manager ----------------------------------------------------------------

    def _block_series(
        self,
    ) -> tuple[Callable[[float], None], Callable[[str, float], None]]:
        if self.name is None:
            raise TypeError('timed() as a context manager needs a name: with timed("block"):')
        with self._lock:
            if self._block is None:
                self._block = self._bind(self.name)
            return self._block

    def __enter__(self) -> Timer:
        self._block_series()
        _STARTED.set((*_STARTED.get(), time.perf_counter()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter()
        started = _STARTED.get()
        _STARTED.set(started[:-1])
        elapsed -= started[-1]
        observe_ok, observe_other = self._block_series()
        if exc is None:
            observe_ok(elapsed)
        else:
            observe_other("error" if isinstance(exc, Exception) else "cancelled", elapsed)

    async def __aenter__(self) -> Timer:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class _BudgetWatch:
    """Observes successful calls and, once per interval, compares the recent p95 to a budget."""

    def __init__(
        self, name: str, series: HistogramSeries, budget_ms: float, interval: float,
        registry: Registry,
    ) -> None:
        self.name = name
        self.series = series
        self.budget = budget_ms / 1000.0
        self.interval = interval
        self.recent: deque[float] = deque(maxlen=RECENT_CALLS)
        self.next_check = time.perf_counter() + interval
        self._check_lock = threading.Lock()
        self._exceeded = registry.counter(
            "perfkit_timed_budget_exceeded",
            "Budget checks that found a p95 above budget_ms", ("function",),
        ).labels(name)

    def observe(self, seconds: float) -> None:
        self.series.observe(seconds)
        self.recent.append(seconds)
        if time.perf_counter() >= self.next_check:
            self.check()

    def check(self) -> float | None:
        """Compare the recent p95 with the budget now; returns the p95 (None: too few calls)."""
        if not self._check_lock.acquire(blocking=False):
            return None  # another thread is checking
        try:
            self.next_check = time.perf_counter() + self.interval
            samples = sorted(self.recent)
            if len(samples) < _MIN_SAMPLES:
                return None
            p95 = samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)]
            if p95 > self.budget:
                self._exceeded.inc_one()
                logger.warning(
                    "perfkit.timed: %s p95 over its last %d calls is %.1f ms, above its budget "
                    "of %.1f ms (checked at most every %.0f s)",
                    self.name, len(samples), p95 * 1000, self.budget * 1000, self.interval,
                )
            return p95
        finally:
            self._check_lock.release()


_MAX_WATCHES = 1000
_watches: weakref.WeakKeyDictionary[Registry, dict[tuple[str, float, float], _BudgetWatch]] = (
    weakref.WeakKeyDictionary()
)
_watches_lock = threading.Lock()


def _budget_watch(
    registry: Registry, name: str, series: HistogramSeries, budget_ms: float, interval: float
) -> _BudgetWatch:
    """The one watch of ``name``'s budget in ``registry``.

    ``with timed("x", budget_ms=...):`` makes a new Timer per block; the budget must still see
    the recent calls of all of them, and keep one interval between its warnings. At most
    ``_MAX_WATCHES`` are kept per registry (names past that get a watch of their own).
    """
    key = (name, budget_ms, interval)
    with _watches_lock:
        watches = _watches.setdefault(registry, {})
        watch = watches.get(key)
        if watch is None or watch.series is not series:  # new, or the metric was re-registered
            watch = _BudgetWatch(name, series, budget_ms, interval, registry)
            if len(watches) < _MAX_WATCHES:
                watches[key] = watch
        return watch


@overload
def timed(name: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def timed(
    name: str | None = None,
    registry: Registry | None = None,
    *,
    budget_ms: float | None = None,
    budget_interval: float = 60.0,
) -> Timer: ...


def timed(
    name: str | Callable[P, R] | None = None,
    registry: Registry | None = None,
    *,
    budget_ms: float | None = None,
    budget_interval: float = 60.0,
) -> Timer | Callable[P, R]:
    """Time a function (``@timed``, ``@timed("name")``) or a block (``with timed("name"):``).

    ``registry``: where the histogram lives (default :data:`perfkit.REGISTRY`).
    ``budget_ms``/``budget_interval``: warn once per interval when the recent p95 is over.
    """
    if callable(name):
        return Timer(None, registry, budget_ms, budget_interval)(name)
    return Timer(name, registry, budget_ms, budget_interval)
