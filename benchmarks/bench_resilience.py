"""Success-path overhead of perfkit.retry, CircuitBreaker and timed against the libraries users
would pick instead: tenacity, stamina and backoff (retry), pybreaker (breaker) and
prometheus_client's Histogram.time() (timing). Every case checks that the decorated function
really ran once per call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Case, Unavailable

OPS = 20_000


def _counted_sync() -> tuple[list[int], Callable[[int], int]]:
    calls = [0]

    def work(x: int) -> int:
        calls[0] += 1
        return x + 1

    return calls, work


def _counted_async() -> tuple[list[int], Callable[[int], Any]]:
    calls = [0]

    async def work(x: int) -> int:
        calls[0] += 1
        return x + 1

    return calls, work


def _checked(calls: list[int], made: list[int], name: str) -> Callable[[], None]:
    def check() -> None:
        assert made[0] > 0, f"{name}: never called"
        assert calls[0] == made[0], f"{name}: function ran {calls[0]} times for {made[0]} calls"

    return check


def _sync(group: str, name: str, make: Callable[[Callable[[int], int]], Callable[[int], int]],
          baseline: bool = False, note: str = "") -> Case:
    calls, work = _counted_sync()
    fn = make(work)
    made = [0]

    def run(n: int) -> None:
        made[0] += n
        for _ in range(n):
            fn(1)

    return Case(group, name, run=run, baseline=baseline, note=note, ops=OPS,
                check=_checked(calls, made, name))


def _async(group: str, name: str, make: Callable[[Any], Any], baseline: bool = False,
           note: str = "") -> Case:
    calls, work = _counted_async()
    fn = make(work)
    made = [0]

    async def arun(n: int) -> None:
        made[0] += n
        for _ in range(n):
            await fn(1)

    return Case(group, name, arun=arun, baseline=baseline, note=note, ops=OPS,
                check=_checked(calls, made, name))


def _retry_makers() -> list[tuple[str, Callable[[Any], Any], bool, str]]:
    try:
        import backoff
        import stamina
        import tenacity
    except ImportError as exc:
        raise Unavailable(f"anchor library missing: {exc}") from None
    import perfkit

    stamina.set_active(True)
    return [
        ("bare call", lambda f: f, False, "no decorator"),
        ("perfkit.retry", lambda f: perfkit.retry(on=ConnectionError, attempts=3)(f), False, ""),
        ("tenacity", lambda f: tenacity.retry(
            stop=tenacity.stop_after_attempt(3), retry=tenacity.retry_if_exception_type(
                ConnectionError), wait=tenacity.wait_random_exponential(0.1, 10))(f), True, ""),
        ("stamina", lambda f: stamina.retry(on=ConnectionError, attempts=3)(f), False, ""),
        ("backoff", lambda f: backoff.on_exception(backoff.expo, ConnectionError,
                                                   max_tries=3)(f), False, ""),
    ]


def retry_cases() -> list[Case]:
    makers = _retry_makers()
    cases = [_sync("retry success path, sync", name, make, baseline, note)
             for name, make, baseline, note in makers]
    cases += [_async("retry success path, async", name, make, baseline, note)
              for name, make, baseline, note in makers]
    return cases


def breaker_cases() -> list[Case]:
    import perfkit

    cases = [
        _sync("breaker closed state, sync", "bare call", lambda f: f, note="no decorator"),
        _sync("breaker closed state, sync", "perfkit.CircuitBreaker",
              lambda f: perfkit.CircuitBreaker("bench-sync")(f)),
        _async("breaker closed state, async", "bare call", lambda f: f, baseline=True,
               note="no decorator; pybreaker's async path needs Tornado"),
        _async("breaker closed state, async", "perfkit.CircuitBreaker",
               lambda f: perfkit.CircuitBreaker("bench-async")(f)),
    ]
    try:
        import pybreaker
    except ImportError:
        cases.append(Case.unavailable("breaker closed state, sync", "pybreaker",
                                      "pybreaker not installed"))
        return cases
    cases.append(_sync("breaker closed state, sync", "pybreaker",
                       lambda f: pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(f),
                       baseline=True))
    return cases


def timed_cases() -> list[Case]:
    import perfkit

    registry = perfkit.Registry(process_metrics=False)
    cases = [
        _sync("timed, sync", "bare call", lambda f: f, baseline=True, note="no decorator"),
        _sync("timed, sync", "perfkit.timed", lambda f: perfkit.timed("bench.sync", registry)(f)),
        _sync("timed, sync", "perfkit.timed(budget_ms=50)",
              lambda f: perfkit.timed("bench.budget", registry, budget_ms=50)(f)),
        _async("timed, async", "bare call", lambda f: f, baseline=True, note="no decorator"),
        _async("timed, async", "perfkit.timed",
               lambda f: perfkit.timed("bench.async", registry)(f)),
    ]
    try:
        import prometheus_client
    except ImportError:
        cases.append(Case.unavailable("timed, sync", "prometheus_client Histogram.time()",
                                      "prometheus_client not installed"))
        return cases
    prom = prometheus_client.Histogram("bench_seconds", "bench",
                                       registry=prometheus_client.CollectorRegistry())
    cases.append(_sync("timed, sync", "prometheus_client Histogram.time()",
                       lambda f: prom.time()(f)))
    return cases


def cases() -> list[Case]:
    logging.getLogger("perfkit").setLevel(logging.ERROR)  # budget warnings are not the point
    return retry_cases() + breaker_cases() + timed_cases()
