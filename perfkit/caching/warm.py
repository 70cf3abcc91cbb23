"""Warming: fill a cached function's entries for known arguments before traffic arrives.

``fn.cache_warm(arg_sets, concurrency=8)`` calls the cached function for every argument
set that has no entry yet, with at most ``concurrency`` calls at once (threads for a sync
function, tasks for an async one), and returns a :class:`WarmReport`. A failing call is
recorded in the report, never raised, so one bad argument set (a failing call, or a mapping
that is not keywords) does not stop the rest; only an iterable that itself raises stops the
warm-up, and its error is raised once.
Calls go through the cache's single flight, so warming while traffic arrives never
computes a key twice. Each computation counts as a miss in ``cache_stats()``.

An argument set is a tuple of positional arguments, a mapping of keyword arguments, an
:class:`Args` for both, or any other value as the only positional argument.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_FAILURES_KEPT = 100


class Args:
    """One call's arguments for :func:`cache_warm`: ``Args(1, 2, region="eu")``."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Args({', '.join(parts)})"


@dataclass(frozen=True)
class WarmFailure:
    args: Args
    error: BaseException


@dataclass
class WarmReport:
    """What a warm-up did. ``failures`` keeps the first 100; ``failed`` counts them all."""

    requested: int = 0
    filled: int = 0
    already_cached: int = 0
    failed: int = 0
    skipped: int = 0
    """Argument sets not run because caching is switched off (``PERFKIT_CACHE_DISABLED``)."""
    seconds: float = 0.0
    failures: list[WarmFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def _fail(self, args: Args, error: BaseException) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(WarmFailure(args, error))


def as_args(item: Any) -> Args:
    if isinstance(item, Args):
        return item
    if isinstance(item, tuple):
        return Args(*item)
    if isinstance(item, Mapping):
        return Args(**item)
    return Args(item)


def check_concurrency(concurrency: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")


def warm(
    call: Callable[..., Any],
    is_cached: Callable[[Args], bool],
    arg_sets: Iterable[Any],
    concurrency: int,
) -> WarmReport:
    """Run ``call`` for each uncached argument set on up to ``concurrency`` threads."""
    check_concurrency(concurrency)
    report = WarmReport()
    items = _Feed(arg_sets, report)
    lock = threading.Lock()
    start = time.perf_counter()

    def worker() -> None:
        for item in items:
            args = _raw_args(item)
            try:
                args = as_args(item)
                if is_cached(args):
                    outcome = "already_cached"
                else:
                    call(*args.args, **args.kwargs)
                    outcome = "filled"
            except Exception as exc:
                with lock:
                    report._fail(args, exc)
                continue
            with lock:
                setattr(report, outcome, getattr(report, outcome) + 1)

    threads = [
        threading.Thread(target=worker, name=f"perfkit-warm-{i}", daemon=True)
        for i in range(concurrency - 1)
    ]
    for thread in threads:
        thread.start()
    worker()  # the caller's thread works too
    for thread in threads:
        thread.join()
    items.raise_source_error()
    report.seconds = time.perf_counter() - start
    return report


async def awarm(
    call: Callable[..., Awaitable[Any]],
    is_cached: Callable[[Args], Awaitable[bool]],
    arg_sets: Iterable[Any],
    concurrency: int,
) -> WarmReport:
    """Await ``call`` for each uncached argument set, at most ``concurrency`` at once."""
    check_concurrency(concurrency)
    report = WarmReport()
    items = _Feed(arg_sets, report)
    start = time.perf_counter()

    async def worker() -> None:
        for item in items:
            args = _raw_args(item)
            try:
                args = as_args(item)
                if await is_cached(args):
                    report.already_cached += 1
                    continue
                await call(*args.args, **args.kwargs)
                report.filled += 1
            except Exception as exc:
                report._fail(args, exc)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    items.raise_source_error()
    report.seconds = time.perf_counter() - start
    return report


def _raw_args(item: Any) -> Args:
    """How a failure names an argument set that could not even be turned into ``Args``."""
    return item if isinstance(item, Args) else Args(item)


class _Feed:
    """The argument sets, handed out one at a time to several workers (thread-safe).

    If the iterable itself raises, every worker stops and the warm-up re-raises that error
    once, from the caller's thread: it is not one argument set's failure.
    """

    def __init__(self, arg_sets: Iterable[Any], report: WarmReport) -> None:
        if isinstance(arg_sets, (str, bytes)) or not isinstance(arg_sets, Iterable):
            raise TypeError(
                f"arg_sets must be an iterable of argument sets, got {arg_sets!r}"
            )
        self._it = iter(arg_sets)
        self._lock = threading.Lock()
        self._report = report
        self._error: Exception | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._error is not None:
                raise StopIteration
            try:
                item = next(self._it)
            except StopIteration:
                raise
            except Exception as exc:
                self._error = exc
                raise StopIteration from None
            self._report.requested += 1
        return item

    def raise_source_error(self) -> None:
        if self._error is not None:
            raise self._error
