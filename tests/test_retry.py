"""perfkit.retry: attempts, predicates, deadlines, backoff, Retry-After, budget, hooks, metrics."""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from fake_clock import FakeClock

from perfkit import retry
from perfkit.backoff import Constant, DecorrelatedJitter, Exponential
from perfkit.metrics import Registry
from perfkit.retrying import (
    NO_WAITS_ENV,
    RetryBudget,
    RetryState,
    deadline_remaining,
    no_waits,
    retry_after_seconds,
    retry_history,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> Registry:
    return Registry(process_metrics=False)


def flaky(failures: int, exc: Exception | None = None) -> Any:
    """A function that fails ``failures`` times, then returns the number of calls."""
    calls = {"n": 0}

    def fn() -> int:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc if exc is not None else ConnectionError(f"boom {calls['n']}")
        return calls["n"]

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


# ------------------------------------------------------------------ basics


def test_retries_until_success_and_keeps_signature(clock: FakeClock, registry: Registry) -> None:
    def fetch(user_id: int, *, verbose: bool = False) -> str:
        """Docstring survives."""
        inner()
        return f"user {user_id}"

    inner = flaky(2)
    wrapped = retry(on=ConnectionError, attempts=3, sleep=clock.sleep, clock=clock,
                    registry=registry)(fetch)
    assert wrapped(7, verbose=True) == "user 7"
    assert inner.calls["n"] == 3
    assert len(clock.sleeps) == 2
    assert wrapped.__doc__ == "Docstring survives."
    assert wrapped.__name__ == "fetch"
    assert inspect.signature(wrapped) == inspect.signature(fetch)


def test_gives_up_with_last_exception_and_history(clock: FakeClock, registry: Registry) -> None:
    fn = retry(on=ConnectionError, attempts=4, sleep=clock.sleep, clock=clock,
               registry=registry, name="svc.load")(flaky(10))
    with pytest.raises(ConnectionError, match="boom 4") as info:
        fn()
    history = retry_history(info.value)
    assert history is not None
    assert history.attempts == 4
    assert history.reason == "attempts"
    assert [a.number for a in history.recent] == [1, 2, 3, 4]
    assert history.recent[-1].wait is None
    assert history.total_wait == pytest.approx(sum(clock.sleeps))
    text = "".join(traceback.format_exception(info.value))
    assert "perfkit.retry gave up on svc.load after 4 attempts" in text
    assert "attempt 2: ConnectionError('boom 2')" in text
    # the last real exception is raised, not a wrapper, and earlier ones do not chain onto it
    assert info.value.__context__ is None


def test_non_matching_exception_is_not_retried(registry: Registry) -> None:
    fn = flaky(5, ValueError("bad input"))
    wrapped = retry(on=ConnectionError, registry=registry)(fn)
    with pytest.raises(ValueError, match="bad input") as info:
        wrapped()
    assert fn.calls["n"] == 1
    assert retry_history(info.value) is None  # nothing was retried, nothing to add


def test_predicate_on_exception(clock: FakeClock, registry: Registry) -> None:
    def transient(exc: Exception) -> bool:
        return isinstance(exc, OSError) and "temporary" in str(exc)

    fn = flaky(2, OSError("temporary glitch"))
    assert retry(on=transient, sleep=clock.sleep, registry=registry)(fn)() == 3
    permanent = flaky(2, OSError("disk on fire"))
    with pytest.raises(OSError, match="disk on fire"):
        retry(on=transient, sleep=clock.sleep, registry=registry)(permanent)()
    assert permanent.calls["n"] == 1


def test_retry_on_result(clock: FakeClock, registry: Registry) -> None:
    results = iter([None, None, "ready", "later"])
    poll = retry(on=ConnectionError, retry_on_result=lambda r: r is None, attempts=5,
                 sleep=clock.sleep, registry=registry)(lambda: next(results))
    assert poll() == "ready"
    assert len(clock.sleeps) == 2
    always_none = retry(on=ConnectionError, retry_on_result=lambda r: r is None, attempts=3,
                        sleep=clock.sleep, registry=registry, name="poll")(lambda: None)
    assert always_none() is None  # after the last attempt the last result is returned
    assert registry.snapshot()["perfkit_retry_giveups_total"]["series"][("poll", "result")] == 1


def test_attempts_one_means_no_retries(registry: Registry) -> None:
    fn = flaky(1)
    with pytest.raises(ConnectionError):
        retry(on=ConnectionError, attempts=1, registry=registry)(fn)()
    assert fn.calls["n"] == 1


def test_methods_static_and_class_methods(clock: FakeClock, registry: Registry) -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @retry(on=ConnectionError, sleep=clock.sleep, registry=registry)
        def get(self, x: int) -> int:
            self.calls += 1
            if self.calls < 2:
                raise ConnectionError
            return x * 2

        @retry(on=ConnectionError, registry=registry)
        @staticmethod
        def double(x: int) -> int:
            return x * 2

        @retry(on=ConnectionError, registry=registry)
        @classmethod
        def name(cls) -> str:
            return cls.__name__

    a, b = Client(), Client()
    assert a.get(2) == 4 and b.get(3) == 6
    assert (a.calls, b.calls) == (2, 2)  # state is per instance, not on the decorator
    assert Client.double(4) == 8 and a.double(5) == 10
    assert Client.name() == "Client"


# ------------------------------------------------------------------ never retried


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit,
                                      asyncio.CancelledError])
def test_base_exceptions_are_never_retried(exc_type: type[BaseException],
                                           registry: Registry) -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        raise exc_type()

    with pytest.raises(exc_type):
        retry(on=Exception, attempts=5, registry=registry)(fn)()
    assert calls == [1]


async def test_cancellation_during_backoff_wait_propagates(registry: Registry) -> None:
    calls = []

    @retry(on=ConnectionError, attempts=5, backoff=Constant(30), registry=registry)
    async def fn() -> None:
        calls.append(1)
        raise ConnectionError

    task = asyncio.ensure_future(fn())
    for _ in range(20):  # let it fail once and start its 30 s wait
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == [1]


def test_cancelled_error_in_on_is_rejected() -> None:
    with pytest.raises(TypeError, match="never retried"):
        retry(on=asyncio.CancelledError)
    with pytest.raises(TypeError, match="never retried"):
        retry(on=(ConnectionError, KeyboardInterrupt))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"attempts": -3}, ValueError, "attempts must be >= 1"),
        ({"attempts": 2.5}, TypeError, "attempts must be an int"),
        ({"attempts": True}, TypeError, "attempts must be an int"),
        ({"on": "ConnectionError"}, TypeError, "on= must be an exception type"),
        ({"on": (ConnectionError, 3)}, TypeError, "on= must contain exception types"),
        ({"on": ()}, ValueError, "at least one exception type"),
        ({"backoff": -1}, ValueError, "backoff must be >= 0"),
        ({"backoff": "fast"}, TypeError, "backoff must be a perfkit.backoff strategy"),
        ({"deadline": 0}, ValueError, "deadline must be > 0"),
        ({"deadline": -5}, ValueError, "deadline must be > 0"),
        ({"retry_after_cap": -1}, ValueError, "retry_after_cap must be >= 0"),
        ({"budget": 0.1}, TypeError, "budget must be a RetryBudget"),
        ({"on_retry": [print, 3]}, TypeError, "on_retry must be callable"),
        ({"retry_on_result": 3}, TypeError, "retry_on_result must be callable"),
    ],
)
def test_bad_arguments_fail_at_decoration_time(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        retry(**({"on": ConnectionError} | kwargs))


def test_on_is_required_and_bare_decorator_is_rejected() -> None:
    with pytest.raises(TypeError):
        retry()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        retry(lambda: None)  # type: ignore[call-arg, misc]


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Exponential(base=0), "base must be finite and > 0"),
        (lambda: Exponential(base=1, cap=0.5), "cap .* must be >= base"),
        (lambda: Exponential(jitter="half"), "jitter must be one of"),
        (lambda: DecorrelatedJitter(base=-1), "base must be finite"),
        (lambda: Constant(-0.1), "delay must be finite and >= 0"),
        (lambda: Constant(1).capped(-2), "cap must be finite"),
    ],
)
def test_backoff_validation(factory: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_generators_are_rejected_loudly() -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="cannot wrap the generator function"):
        retry(on=ConnectionError)(gen)
    with pytest.raises(TypeError, match="cannot wrap the generator function"):
        retry(on=ConnectionError)(agen)


# ------------------------------------------------------------------ backoff strategies


def test_exponential_full_jitter_stays_within_growing_ceiling() -> None:
    strategy = Exponential(base=0.1, cap=2.0, rng=random.Random(3))
    for n in range(1, 30):
        ceiling = min(2.0, 0.1 * 2 ** (n - 1))
        samples = [strategy.delay(n, 0) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        # full jitter: spread over the whole range even at the cap, never stuck at it
        assert max(samples) - min(samples) > ceiling * 0.5
    assert Exponential(1, 8, jitter="none").delay(3, 0) == 4
    equal = Exponential(1, 8, jitter="equal", rng=random.Random(1))
    assert all(2 <= equal.delay(3, 0) <= 4 for _ in range(100))
    assert Exponential(1, 8, jitter="none").delay(10**9, 0) == 8  # no overflow


def test_decorrelated_jitter_and_composition() -> None:
    d = DecorrelatedJitter(base=0.5, cap=5, rng=random.Random(7))
    previous = 0.5
    for n in range(1, 50):
        wait = d.delay(n, previous)
        assert 0.5 <= wait <= min(5, previous * 3) + 1e-9
        previous = wait
    combo = Constant(1.0) + Exponential(base=1, cap=4, jitter="none")
    assert combo.delay(2, 0) == 3.0
    assert combo.cap == 5.0
    assert combo.capped(2.5).delay(5, 0) == 2.5
    jittered = Constant(1.0, jitter=0.5, rng=random.Random(2))
    assert all(1.0 <= jittered.delay(1, 0) <= 1.5 for _ in range(100))


def test_waits_follow_the_strategy(clock: FakeClock, registry: Registry) -> None:
    fn = retry(on=ConnectionError, attempts=5, backoff=Exponential(1, 100, jitter="none"),
               sleep=clock.sleep, clock=clock, registry=registry)(flaky(4))
    assert fn() == 5
    assert clock.sleeps == [1, 2, 4, 8]
    number = retry(on=ConnectionError, attempts=3, backoff=0.25, sleep=clock.sleep,
                   registry=registry)(flaky(2))
    assert number() == 3 and clock.sleeps[-2:] == [0.25, 0.25]


# ------------------------------------------------------------------ deadline


def test_deadline_never_starts_a_wait_past_it(clock: FakeClock, registry: Registry) -> None:
    fn = retry(on=ConnectionError, attempts=100, deadline=10,
               backoff=Exponential(1, 100, jitter="none"), sleep=clock.sleep, clock=clock,
               registry=registry)(flaky(1000))
    with pytest.raises(ConnectionError) as info:
        fn()
    # waits 1, 2, 4 (t=7); the next wait of 8 would end at 15 > 10: give up without waiting
    assert clock.sleeps == [1, 2, 4]
    assert clock.now - 1000 <= 10
    history = retry_history(info.value)
    assert history is not None and history.reason == "deadline"
    assert "deadline left 3.000s" in history.summary()


def test_deadline_counts_attempt_durations(registry: Registry) -> None:
    clock = FakeClock()

    def slow() -> None:
        clock.now += 4  # each attempt takes 4 s
        raise ConnectionError

    fn = retry(on=ConnectionError, attempts=10, deadline=10, backoff=1.0, sleep=clock.sleep,
               clock=clock, registry=registry)(slow)
    with pytest.raises(ConnectionError) as info:
        fn()
    # t=4 fail, wait 1, t=9 fail: another 1 s wait + a 4 s attempt cannot finish by t=10
    assert clock.sleeps == [1]
    assert retry_history(info.value).attempts == 2  # type: ignore[union-attr]


def test_deadline_is_visible_to_inner_code_and_nested_retries(
    clock: FakeClock, registry: Registry
) -> None:
    seen: list[float | None] = []

    @retry(on=ConnectionError, deadline=60, registry=registry, clock=clock)
    def inner() -> None:
        seen.append(deadline_remaining())

    @retry(on=ConnectionError, deadline=5, registry=registry, clock=clock)
    def outer() -> None:
        clock.now += 2
        inner()

    assert deadline_remaining() is None
    outer()
    assert seen == [3.0]  # the tighter outer deadline wins
    assert deadline_remaining() is None


async def test_async_deadline_with_real_time(registry: Registry) -> None:
    @retry(on=ConnectionError, attempts=1000, deadline=0.3, backoff=0.05, registry=registry)
    async def down() -> None:
        raise ConnectionError

    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await down()
    elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 0.25  # never waits past the deadline (wide margin for CI)


# ------------------------------------------------------------------ Retry-After


def http_error(status: int, retry_after: str | None, method: str = "GET",
               headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request(method, "https://api.example.test/v1", headers=headers or {})
    response = httpx.Response(
        status, request=request,
        headers={"Retry-After": retry_after} if retry_after is not None else {},
    )
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds(http_error(429, "7")) == 7.0
    future = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(http_error(503, future), now=now) == 30.0
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(http_error(503, past), now=now) is None
    assert retry_after_seconds(http_error(503, "soon-ish")) is None
    assert retry_after_seconds(http_error(503, None)) is None
    assert retry_after_seconds(ValueError()) is None

    class WithAttribute(Exception):
        retry_after = 2.5

    assert retry_after_seconds(WithAttribute()) == 2.5

    class AiohttpLike(Exception):
        headers = {"Retry-After": "3"}

    assert retry_after_seconds(AiohttpLike()) == 3.0


def test_retry_after_is_honoured_within_the_cap(clock: FakeClock, registry: Registry) -> None:
    errors = iter([http_error(429, "3"), http_error(503, "120"), http_error(503, "garbage")])

    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    fn = retry(on=httpx.HTTPStatusError, attempts=4,
               backoff=Exponential(1, 10, jitter="none"), sleep=clock.sleep, registry=registry)
    assert fn(call)() == "ok"
    # server said 3 s; then 120 s, truncated to the strategy's cap (10); garbage: backoff (4)
    assert clock.sleeps == [3, 10, 4]


def test_post_without_idempotency_key_is_not_retried(clock: FakeClock,
                                                     registry: Registry) -> None:
    def create() -> None:
        raise http_error(503, None, method="POST")

    with pytest.raises(httpx.HTTPStatusError) as info:
        retry(on=httpx.HTTPStatusError, sleep=clock.sleep, registry=registry)(create)()
    assert retry_history(info.value).reason == "not_idempotent"  # type: ignore[union-attr]
    assert clock.sleeps == []

    keyed = flaky(1, http_error(503, None, "POST", {"Idempotency-Key": "abc"}))
    assert retry(on=httpx.HTTPStatusError, sleep=clock.sleep, registry=registry)(keyed)() == 2
    opted_in = flaky(1, http_error(503, None, "POST"))
    assert retry(on=httpx.HTTPStatusError, idempotent=True, sleep=clock.sleep,
                 registry=registry)(opted_in)() == 2


# ------------------------------------------------------------------ budget


def test_budget_caps_attempts_against_a_dead_upstream(registry: Registry) -> None:
    clock = FakeClock()
    ratio = 0.1
    budget = RetryBudget(ratio, min_per_second=0, clock=clock)
    attempts = 0

    @retry(on=ConnectionError, attempts=5, budget=budget, registry=registry, name="dead",
           sleep=lambda s: None)
    def dead() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError

    for _ in range(1000):
        with pytest.raises(ConnectionError):
            dead()
    assert attempts <= (1 + ratio) * 1000
    assert attempts >= 1000 + 90  # the budget did allow its share of retries
    giveups = registry.snapshot()["perfkit_retry_giveups_total"]["series"]
    assert giveups[("dead", "budget")] >= 800
    # without a budget the same outage makes 5x the calls
    assert registry.snapshot()["perfkit_retry_attempts_total"]["series"][("dead",)] == attempts


def test_default_budget_lets_a_fresh_service_retry_and_still_bounds_an_outage(
    registry: Registry,
) -> None:
    clock = FakeClock()
    budget = RetryBudget(clock=clock)  # ratio 0.1, min_per_second 1
    attempts = 0

    @retry(on=ConnectionError, attempts=3, budget=budget, registry=registry, sleep=clock.sleep)
    def dead() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError

    with pytest.raises(ConnectionError):
        dead()
    assert attempts == 2  # the very first failure after start-up may retry once
    clock.sleeps.clear()
    for _ in range(999):
        with pytest.raises(ConnectionError):
            dead()
    elapsed = sum(clock.sleeps)
    assert attempts <= 1.1 * 1000 + 1 + elapsed * 1  # the floor adds min_per_second per second


def test_budget_floor_refills_with_time_and_is_capped() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.0, min_per_second=2, max_tokens=3, clock=clock)
    assert budget.try_spend() and budget.try_spend()  # one second's worth to start with
    assert not budget.try_spend()
    clock.now += 1
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()
    clock.now += 100
    assert sum(budget.try_spend() for _ in range(10)) == 3
    with pytest.raises(ValueError, match="ratio must be"):
        RetryBudget(1.5)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        RetryBudget(max_tokens=0)


def test_budget_is_thread_safe() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.5, min_per_second=0, max_tokens=10**9, clock=clock)

    def work() -> None:
        for _ in range(10_000):
            budget.deposit()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.tokens == 20_000
    spent = []

    def spend() -> None:
        spent.append(sum(budget.try_spend() for _ in range(10_000)))

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(spent) == 20_000


# ------------------------------------------------------------------ hooks, metrics, switch


def test_on_retry_hooks_and_metrics(clock: FakeClock, registry: Registry) -> None:
    states: list[RetryState] = []
    other: list[int] = []
    fn = retry(on=ConnectionError, attempts=3, sleep=clock.sleep, clock=clock,
               on_retry=[states.append, lambda s: other.append(s.attempt)],
               registry=registry, name="api.get")(flaky(2))
    assert fn() == 3
    assert [s.attempt for s in states] == [1, 2] == other
    assert all(isinstance(s.error, ConnectionError) and s.function == "api.get" for s in states)
    assert [s.wait for s in states] == clock.sleeps
    failing = retry(on=ConnectionError, attempts=2, sleep=clock.sleep, registry=registry,
                    name="api.get")(flaky(5))
    with pytest.raises(ConnectionError):
        failing()
    snap = registry.snapshot()
    assert snap["perfkit_retry_calls_total"]["series"][("api.get",)] == 2
    assert snap["perfkit_retry_retries_total"]["series"][("api.get",)] == 3
    assert snap["perfkit_retry_attempts_total"]["series"][("api.get",)] == 5
    assert snap["perfkit_retry_giveups_total"]["series"][("api.get", "attempts")] == 1
    assert "perfkit_retry_attempts_total{function=\"api.get\"} 5" in registry.render_prometheus()


def test_default_metrics_label_is_module_and_qualname(registry: Registry) -> None:
    @retry(on=ConnectionError, registry=registry)
    def named() -> int:
        return 1

    named()
    series = registry.snapshot()["perfkit_retry_calls_total"]["series"]
    assert series == {(f"{__name__}.test_default_metrics_label_is_module_and_qualname."
                       "<locals>.named",): 1}


def test_no_waits_switch_context_manager_and_env(monkeypatch: pytest.MonkeyPatch,
                                                 registry: Registry) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the sleep is resolved at call time
    make = retry(on=ConnectionError, attempts=3, backoff=Constant(5), registry=registry)
    assert make(flaky(2))() == 3
    assert slept == [5, 5]
    with no_waits():
        assert make(flaky(2))() == 3
    assert slept == [5, 5]
    monkeypatch.setenv(NO_WAITS_ENV, "1")
    with pytest.raises(ConnectionError) as info:
        make(flaky(5))()
    assert slept == [5, 5]
    assert retry_history(info.value).attempts == 3  # type: ignore[union-attr]


# ------------------------------------------------------------------ async and concurrency


async def test_async_retry_waits_without_blocking_the_loop(registry: Registry) -> None:
    calls = 0

    @retry(on=ConnectionError, attempts=3, backoff=0.05, registry=registry)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    tick_task = asyncio.ensure_future(ticker())
    assert await fetch() == "ok"
    tick_task.cancel()
    assert calls == 3
    assert ticks >= 5  # the loop kept running during the 2 x 50 ms waits


async def test_async_injected_sleep_and_history(clock: FakeClock, registry: Registry) -> None:
    calls = 0

    @retry(on=ConnectionError, attempts=3, sleep=clock.asleep, clock=clock, registry=registry)
    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(str(calls))

    with pytest.raises(ConnectionError, match="3") as info:
        await down()
    assert len(clock.sleeps) == 2
    assert retry_history(info.value).attempts == 3  # type: ignore[union-attr]


async def test_concurrent_tasks_keep_their_own_state(registry: Registry) -> None:
    """Per-call state is per invocation: 50 tasks interleaving their retries."""
    failures: dict[int, int] = {}

    @retry(on=ConnectionError, attempts=4, backoff=Constant(0.001), registry=registry,
           name="concurrent")
    async def work(i: int) -> int:
        failures[i] = failures.get(i, 0) + 1
        await asyncio.sleep(0)
        if failures[i] <= i % 3:
            raise ConnectionError
        return i

    results = await asyncio.gather(*(work(i) for i in range(50)))
    assert results == list(range(50))
    assert all(failures[i] == i % 3 + 1 for i in range(50))
    retries = registry.snapshot()["perfkit_retry_retries_total"]["series"][("concurrent",)]
    assert retries == sum(i % 3 for i in range(50))


def test_threads_share_nothing_but_metrics(registry: Registry) -> None:
    local = threading.local()

    @retry(on=ConnectionError, attempts=3, backoff=0, registry=registry, name="threaded")
    def work() -> int:
        local.n = getattr(local, "n", 0) + 1
        if local.n % 2:
            raise ConnectionError
        return local.n

    def run() -> None:
        for _ in range(500):
            work()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = registry.snapshot()
    assert snap["perfkit_retry_calls_total"]["series"][("threaded",)] == 2000
    assert snap["perfkit_retry_retries_total"]["series"][("threaded",)] == 2000


# ------------------------------------------------------------------ nested retries


def test_nested_retries_do_not_multiply(clock: FakeClock, registry: Registry) -> None:
    upstream_calls = 0

    @retry(on=ConnectionError, attempts=4, sleep=clock.sleep, registry=registry, name="inner")
    def inner() -> None:
        nonlocal upstream_calls
        upstream_calls += 1
        raise ConnectionError("down")

    @retry(on=OSError, attempts=3, sleep=clock.sleep, registry=registry, name="outer")
    def outer() -> None:
        inner()

    with pytest.raises(ConnectionError) as info:
        outer()
    # outer attempt 1: inner makes its 4 attempts; outer attempts 2 and 3: inner steps aside
    assert upstream_calls == 4 + 2  # not 4 x 3 = 12
    history = retry_history(info.value)
    assert history is not None and history.function == "outer"
    giveups = registry.snapshot()["perfkit_retry_giveups_total"]["series"]
    assert giveups[("inner", "nested")] == 2
    assert giveups[("inner", "attempts")] == 1


async def test_nested_async_inner_still_retries_what_the_outer_does_not(
    clock: FakeClock, registry: Registry
) -> None:
    calls = {"inner": 0}

    @retry(on=TimeoutError, attempts=3, sleep=clock.asleep, registry=registry)
    async def inner() -> str:
        calls["inner"] += 1
        if calls["inner"] in (1, 3, 4):  # a timeout on the outer's second attempt
            raise TimeoutError
        if calls["inner"] == 2:
            raise ConnectionError
        return "ok"

    @retry(on=ConnectionError, attempts=3, sleep=clock.asleep, registry=registry)
    async def outer() -> str:
        return await inner()

    # outer 1: inner timeout, retry, ConnectionError (not inner's) -> outer retries;
    # outer 2: inner timeouts twice: the outer does not retry TimeoutError, so inner does
    assert await outer() == "ok"
    assert calls["inner"] == 5


async def test_async_attempt_is_cancelled_at_the_deadline(registry: Registry) -> None:
    cancelled = []

    @retry(on=ConnectionError, attempts=5, deadline=0.2, registry=registry)
    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await hangs()
    assert time.monotonic() - started < 5  # not 30 s (wide margin for a loaded CI)
    assert cancelled == [True]
    history = retry_history(info.value)
    assert history is not None and history.reason == "deadline"
    assert "deadline passed during attempt 1" in history.summary()


async def test_async_deadline_attempts_can_still_succeed(registry: Registry) -> None:
    calls = 0

    @retry(on=ConnectionError, attempts=3, deadline=5, backoff=0, registry=registry)
    async def flaky_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError
        await asyncio.sleep(0)
        return "ok"

    assert await flaky_once() == "ok"
    assert calls == 2


def test_a_reused_exception_instance_does_not_pile_up_notes(clock: FakeClock,
                                                            registry: Registry) -> None:
    shared = ConnectionError("always the same instance")

    @retry(on=ConnectionError, attempts=2, sleep=clock.sleep, registry=registry)
    def down() -> None:
        raise shared

    for _ in range(50):
        with pytest.raises(ConnectionError):
            down()
    notes = shared.__notes__
    assert len(notes) == 1 and "gave up" in notes[0]


# ------------------------------------------------------------------ review fixes


def test_error_whose_request_property_raises_is_still_retried(clock: FakeClock,
                                                              registry: Registry) -> None:
    """httpx's RequestError.request raises RuntimeError when unset: that must not leak out."""
    calls = 0

    @retry(on=httpx.TransportError, attempts=3, sleep=clock.sleep, registry=registry)
    def connect() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("connection refused")  # no request attached
        return "ok"

    assert connect() == "ok"
    assert calls == 3
    assert retry_after_seconds(httpx.ConnectError("refused")) is None


def test_aiohttp_style_post_without_idempotency_key_is_not_retried(
    clock: FakeClock, registry: Registry
) -> None:
    """aiohttp's ClientResponseError carries the request as ``request_info`` (no aiohttp here:
    the attribute shape is what matters)."""

    class RequestInfo:
        def __init__(self, method: str, headers: dict[str, str]) -> None:
            self.method, self.headers = method, headers

    class ClientResponseError(Exception):
        def __init__(self, method: str, headers: dict[str, str] | None = None) -> None:
            super().__init__(f"503 on {method}")
            self.request_info = RequestInfo(method, headers or {})
            self.headers = {"Retry-After": "1"}

    post = flaky(1, ClientResponseError("POST"))
    with pytest.raises(ClientResponseError) as info:
        retry(on=ClientResponseError, sleep=clock.sleep, registry=registry)(post)()
    assert retry_history(info.value).reason == "not_idempotent"  # type: ignore[union-attr]
    keyed = flaky(1, ClientResponseError("POST", {"Idempotency-Key": "k"}))
    assert retry(on=ClientResponseError, sleep=clock.sleep, registry=registry)(keyed)() == 2
    assert clock.sleeps == [1.0]  # and its Retry-After header was honoured


async def test_async_on_retry_hooks_are_awaited(clock: FakeClock, registry: Registry) -> None:
    seen: list[int] = []

    async def hook(state: RetryState) -> None:
        await asyncio.sleep(0)
        seen.append(state.attempt)

    calls = 0

    @retry(on=ConnectionError, attempts=3, sleep=clock.asleep, on_retry=[hook, print],
           registry=registry)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    assert await fetch() == "ok"
    assert seen == [1, 2]


def test_async_hook_on_a_sync_function_is_refused_at_decoration() -> None:
    async def hook(state: RetryState) -> None:
        pass

    with pytest.raises(TypeError, match=r"on_retry hook .*hook is async"):
        retry(on=ConnectionError, on_retry=hook)(lambda: None)


async def test_sync_function_returning_a_coroutine_is_retried_as_async(
    clock: FakeClock, registry: Registry
) -> None:
    calls = 0

    async def request() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    @retry(on=ConnectionError, attempts=3, sleep=clock.asleep, registry=registry, name="fwd")
    def forward() -> Any:  # a plain function handing back the client's coroutine
        return request()

    assert await forward() == "ok"
    assert calls == 3 and len(clock.sleeps) == 2

    class AsyncCallable:  # an object with an async __call__ looks sync to inspect on 3.11
        async def __call__(self) -> str:
            raise ConnectionError("down")

    down = retry(on=ConnectionError, attempts=2, sleep=clock.asleep, registry=registry,
                 deadline=60, retry_on_result=lambda r: r is None)(AsyncCallable())
    with pytest.raises(ConnectionError) as info:
        await down()
    assert retry_history(info.value).attempts == 2  # type: ignore[union-attr]
    assert registry.snapshot()["perfkit_retry_retries_total"]["series"][("fwd",)] == 2


def test_shared_budget_bounds_a_dead_upstream_under_real_threads(registry: Registry) -> None:
    """The issue's bound, with the calls coming from 4 threads sharing one budget."""
    budget = RetryBudget(0.1, min_per_second=0, clock=FakeClock())
    attempts = 0
    lock = threading.Lock()

    @retry(on=ConnectionError, attempts=5, budget=budget, backoff=0, registry=registry)
    def dead() -> None:
        nonlocal attempts
        with lock:
            attempts += 1
        raise ConnectionError

    def run() -> None:
        for _ in range(250):
            try:
                dead()
            except ConnectionError:
                pass

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1000 < attempts <= 1.1 * 1000


def test_sync_cancellation_during_a_wait_propagates(registry: Registry) -> None:
    calls = 0

    def interrupted_sleep(seconds: float) -> None:
        raise KeyboardInterrupt  # Ctrl-C while waiting between attempts

    @retry(on=ConnectionError, attempts=5, sleep=interrupted_sleep, registry=registry)
    def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    with pytest.raises(KeyboardInterrupt):
        down()
    assert calls == 1
