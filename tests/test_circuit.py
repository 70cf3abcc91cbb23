"""perfkit.CircuitBreaker: thresholds, half-open trials, fail-fast errors, safety, retry."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from fake_clock import FakeClock

from perfkit import CircuitBreaker, CircuitOpenError, retry
from perfkit.metrics import Registry
from perfkit.retrying import retry_history


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> Registry:
    return Registry(process_metrics=False)


class Upstream:
    """A dependency we can take down and bring back."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    def call(self) -> str:
        self.calls += 1
        if not self.up:
            raise ConnectionError("upstream down")
        return "ok"

    async def acall(self) -> str:
        await asyncio.sleep(0)
        return self.call()


def breaker(clock: FakeClock, registry: Registry, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("reset_timeout", 10)
    return CircuitBreaker("upstream", clock=clock, registry=registry, **kwargs)


def fail_times(fn: Any, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            fn()


def test_opens_after_consecutive_failures_and_fails_fast(clock: FakeClock,
                                                         registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=3)
    call = cb(up.call)
    up.up = False
    fail_times(call, 2)
    assert cb.state == "closed"
    fail_times(call, 1)
    assert cb.state == "open"
    clock.now += 4
    with pytest.raises(CircuitOpenError) as info:
        call()
    assert up.calls == 3  # the dependency was not called
    assert info.value.retry_after == pytest.approx(6)
    assert info.value.name == "upstream"
    assert "circuit 'upstream' is open" in str(info.value)
    assert "6.000s" in str(info.value)


def test_successes_reset_the_consecutive_count(clock: FakeClock, registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=3)
    call = cb(up.call)
    for _ in range(5):
        up.up = False
        fail_times(call, 2)
        up.up = True
        assert call() == "ok"
    assert cb.state == "closed"


def test_half_open_admits_one_trial_then_closes_on_success(clock: FakeClock,
                                                           registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=1)
    call = cb(up.call)
    up.up = False
    fail_times(call, 1)
    clock.now += 10
    assert cb.state == "half_open"
    up.up = True
    assert call() == "ok"
    assert cb.state == "closed"
    assert call() == "ok"


def test_half_open_trial_failure_reopens_for_a_full_timeout(clock: FakeClock,
                                                            registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=1)
    call = cb(up.call)
    up.up = False
    fail_times(call, 1)
    clock.now += 10
    fail_times(call, 1)  # the trial fails
    assert cb.state == "open"
    clock.now += 9.9
    with pytest.raises(CircuitOpenError):
        call()
    assert up.calls == 2


async def test_half_open_admits_exactly_trial_calls_concurrently(clock: FakeClock,
                                                                 registry: Registry) -> None:
    cb = breaker(clock, registry, failure_threshold=1, trial_calls=2)
    gate = asyncio.Event()
    entered = 0

    @cb
    async def probe(fail: bool) -> str:
        nonlocal entered
        entered += 1
        await gate.wait()
        if fail:
            raise ConnectionError
        return "ok"

    with pytest.raises(ConnectionError):
        gate.set()
        await probe(True)
    gate.clear()
    clock.now += 10
    tasks = [asyncio.ensure_future(probe(False)) for _ in range(10)]
    await asyncio.sleep(0)
    assert entered == 1 + 2  # two trials in flight, eight rejected
    rejected = [t for t in tasks if t.done()]
    assert len(rejected) == 8
    assert all(isinstance(t.exception(), CircuitOpenError) for t in rejected)
    assert cb.state == "half_open"
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("ok") == 2
    assert cb.state == "closed"


def test_failure_ratio_over_rolling_window(clock: FakeClock, registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=None, failure_ratio=0.5, window=10,
                 min_calls=10)
    call = cb(up.call)
    # alternate success/failure: never 3 in a row, but 50% of calls fail
    for i in range(9):
        up.up = i % 2 == 0
        try:
            call()
        except ConnectionError:
            pass
    assert cb.state == "closed"  # only 9 calls: below min_calls
    up.up = False
    fail_times(call, 1)  # 10 calls, 5 failures
    assert cb.state == "open"


def test_rolling_window_forgets_old_failures(clock: FakeClock, registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=None, failure_ratio=0.5, window=10,
                 min_calls=4)
    call = cb(up.call)
    up.up = False
    fail_times(call, 3)
    clock.now += 11  # those failures left the window
    up.up = True
    for _ in range(3):
        call()
    up.up = False
    fail_times(call, 1)  # 1 failure out of 4 in the window
    assert cb.state == "closed"
    assert cb.failure_stats()["window_calls"] == 4


def test_which_exceptions_count_is_configurable(clock: FakeClock, registry: Registry) -> None:
    cb = breaker(clock, registry, failure_threshold=2, failure_on=ConnectionError)

    @cb
    def lookup(key: str) -> str:
        raise KeyError(key)  # the dependency answered: "not found" is not an outage

    for _ in range(10):
        with pytest.raises(KeyError):
            lookup("x")
    assert cb.state == "closed"

    predicate_cb = breaker(clock, registry, failure_threshold=1,
                           failure_on=lambda exc: "503" in str(exc))

    @predicate_cb
    def http(status: str) -> None:
        raise RuntimeError(status)

    with pytest.raises(RuntimeError):
        http("404")
    assert predicate_cb.state == "closed"
    with pytest.raises(RuntimeError):
        http("503")
    assert predicate_cb.state == "open"


async def test_cancellation_is_not_a_failure_and_frees_the_trial(clock: FakeClock,
                                                                 registry: Registry) -> None:
    cb = breaker(clock, registry, failure_threshold=1)

    @cb
    async def slow() -> None:
        await asyncio.sleep(30)

    for _ in range(3):
        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert cb.state == "closed"

    @cb
    def fail() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        fail()
    clock.now += 10
    task = asyncio.ensure_future(slow())  # the trial call
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cb.state == "half_open"

    @cb
    async def ok() -> str:
        return "ok"

    assert await ok() == "ok"  # the slot was given back: a new trial gets through
    assert cb.state == "closed"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be an int >= 1"),
        ({"failure_ratio": 1.5}, "failure_ratio must be in"),
        ({"failure_threshold": None}, "set failure_threshold, failure_ratio"),
        ({"reset_timeout": 0}, "reset_timeout must be > 0"),
        ({"window": -1}, "window must be > 0"),
        ({"min_calls": 0}, "min_calls must be an int >= 1"),
        ({"trial_calls": 0}, "trial_calls must be an int >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("bad", **kwargs)


def test_bad_failure_on_and_generators() -> None:
    with pytest.raises(TypeError, match="failure_on must be"):
        CircuitBreaker(failure_on=(KeyboardInterrupt,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="failure_on must be"):
        CircuitBreaker(failure_on="ConnectionError")  # type: ignore[arg-type]

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        CircuitBreaker()(gen)


def test_context_manager_sync_and_nested(clock: FakeClock, registry: Registry) -> None:
    a = breaker(clock, registry, failure_threshold=1)
    b = CircuitBreaker("other", failure_threshold=1, clock=clock, registry=registry)
    with a, b:
        pass
    with pytest.raises(ConnectionError), a:
        raise ConnectionError
    assert a.state == "open" and b.state == "closed"
    with pytest.raises(CircuitOpenError), a:
        raise AssertionError("not reached")


async def test_async_context_manager_and_decorator(clock: FakeClock, registry: Registry) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=2)
    up.up = False
    for _ in range(2):
        with pytest.raises(ConnectionError):
            async with cb:
                await up.acall()
    with pytest.raises(CircuitOpenError):
        await cb(up.acall)()
    assert up.calls == 2


def test_methods_are_guarded(clock: FakeClock, registry: Registry) -> None:
    cb = breaker(clock, registry, failure_threshold=1)

    class Repo:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        @cb
        def get(self) -> str:
            if self.fail:
                raise ConnectionError
            return "row"

    assert Repo(False).get() == "row"
    with pytest.raises(ConnectionError):
        Repo(True).get()
    with pytest.raises(CircuitOpenError):
        Repo(False).get()  # one breaker per dependency, shared by all instances


def test_callback_metrics_and_reset(clock: FakeClock, registry: Registry) -> None:
    changes: list[tuple[str, str]] = []
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=1,
                 on_state_change=lambda b, old, new: changes.append((old, new)))
    call = cb(up.call)
    call()
    up.up = False
    fail_times(call, 1)
    with pytest.raises(CircuitOpenError):
        call()
    clock.now += 10
    up.up = True
    call()
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    snap = registry.snapshot()
    calls = snap["perfkit_circuit_calls_total"]["series"]
    assert calls[("upstream", "success")] == 2
    assert calls[("upstream", "failure")] == 1
    assert calls[("upstream", "rejected")] == 1
    transitions = snap["perfkit_circuit_transitions_total"]["series"]
    assert transitions[("upstream", "open")] == 1
    assert transitions[("upstream", "closed")] == 1
    assert snap["perfkit_circuit_state"]["series"][("upstream",)] == 0
    up.up = False
    fail_times(call, 1)
    assert snap != registry.snapshot()
    assert registry.snapshot()["perfkit_circuit_state"]["series"][("upstream",)] == 1
    cb.reset()
    assert cb.state == "closed" and call is not None
    assert changes[-1] == ("open", "closed")


def test_failing_callback_does_not_break_calls(clock: FakeClock, registry: Registry,
                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("callback bug")

    cb = breaker(clock, registry, failure_threshold=1, on_state_change=broken)
    with pytest.raises(ConnectionError), cb:
        raise ConnectionError
    assert cb.state == "open"
    assert "on_state_change callback failed" in caplog.text


def test_callback_may_read_the_breaker_without_deadlock(clock: FakeClock,
                                                        registry: Registry) -> None:
    seen: list[str] = []
    cb = breaker(clock, registry, failure_threshold=1,
                 on_state_change=lambda b, old, new: seen.append(b.state))
    with pytest.raises(ConnectionError), cb:
        raise ConnectionError
    assert seen == ["open"]


def test_threads_never_hold_the_lock_during_the_call(clock: FakeClock,
                                                     registry: Registry) -> None:
    """Many threads inside a slow call at once: the breaker must not serialise them."""
    cb = breaker(clock, registry, failure_threshold=1000)
    inside = 0
    most_inside = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8, timeout=10)

    @cb
    def call() -> None:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        barrier.wait()  # deadlocks (and times out) if the breaker serialised calls
        with lock:
            inside -= 1

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most_inside == 8


def test_thread_storm_counts_every_failure(registry: Registry) -> None:
    cb = CircuitBreaker("storm", failure_threshold=10**6, registry=registry)

    @cb
    def boom() -> None:
        raise ConnectionError

    def run() -> None:
        for _ in range(2000):
            try:
                boom()
            except ConnectionError:
                pass

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cb.failure_stats()["consecutive_failures"] == 8000


# ------------------------------------------------------------------ composition with retry


def test_retry_outside_breaker_stops_when_it_opens(clock: FakeClock, registry: Registry) -> None:
    up = Upstream()
    up.up = False
    cb = breaker(clock, registry, failure_threshold=3)
    call = retry(on=ConnectionError, attempts=10, sleep=clock.sleep, clock=clock,
                 registry=registry)(cb(up.call))
    with pytest.raises(CircuitOpenError) as info:
        call()
    assert up.calls == 3  # attempts 1-3 reached the upstream; attempt 4 failed fast
    history = retry_history(info.value)
    assert history is not None and history.attempts == 4
    assert history.reason == "not_retryable"


def test_retry_outside_breaker_honours_its_retry_after(clock: FakeClock,
                                                       registry: Registry) -> None:
    up = Upstream()
    up.up = False
    cb = breaker(clock, registry, failure_threshold=2, reset_timeout=5)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.sleep(seconds)
        up.up = len(waits) >= 2  # the upstream recovers while we wait

    call = retry(on=(ConnectionError, CircuitOpenError), attempts=5, backoff=1.0,
                 retry_after_cap=30, sleep=sleep, clock=clock, registry=registry)(cb(up.call))
    assert call() == "ok"
    # fail, wait 1, fail (opens), wait 1, fail fast: the breaker says 4 s more, so retry waits
    # exactly that, and the trial call then closes the breaker
    assert waits == [1.0, 1.0, 4.0]
    assert up.calls == 3
    assert cb.state == "closed"


def test_breaker_outside_retry_counts_one_logical_call(clock: FakeClock,
                                                       registry: Registry) -> None:
    up = Upstream()
    up.up = False
    cb = breaker(clock, registry, failure_threshold=2)
    call = cb(retry(on=ConnectionError, attempts=3, sleep=clock.sleep,
                    registry=registry)(up.call))
    fail_times(call, 1)
    assert up.calls == 3 and cb.failure_stats()["consecutive_failures"] == 1
    fail_times(call, 1)
    assert cb.state == "open" and up.calls == 6
    with pytest.raises(CircuitOpenError):
        call()
    assert up.calls == 6  # open: no attempt and no retry at all


def test_circuit_open_error_survives_pickling() -> None:
    import pickle

    error = CircuitOpenError("db", 2.5, "open")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.name, copy.retry_after, copy.state, str(copy)) == (
        "db", 2.5, "open", str(error))


async def test_sync_function_returning_a_coroutine_is_guarded_when_awaited(
    clock: FakeClock, registry: Registry
) -> None:
    up = Upstream()
    cb = breaker(clock, registry, failure_threshold=2)

    @cb
    def forward() -> Any:  # a plain function handing back the client's coroutine
        return up.acall()

    assert await forward() == "ok"
    up.up = False
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await forward()
    assert cb.state == "open"  # the failures happened on await, and were counted
    with pytest.raises(CircuitOpenError):
        await forward()
    assert up.calls == 3
    clock.now += 10
    up.up = True
    pending = forward()  # half-open: the trial slot is taken when awaited, not before
    assert await forward() == "ok"
    assert cb.state == "closed"
    assert await pending == "ok"


def test_outcome_of_a_call_admitted_in_a_racing_transition_is_ignored(
    clock: FakeClock, registry: Registry
) -> None:
    """The closed-state fast path reads the state, then the generation, without the lock. A
    transition between the two reads hands the call the *open* generation as a closed-state
    token; its failure must not re-open the breaker (which would push back the trial)."""
    cb = breaker(clock, registry, failure_threshold=1, reset_timeout=10)
    with pytest.raises(ConnectionError), cb:
        raise ConnectionError
    raced = (cb._generation, False)  # what the racing admission read
    clock.now += 9
    cb._on_failure(raced)
    with pytest.raises(CircuitOpenError) as info:
        cb(lambda: None)()
    assert info.value.retry_after == pytest.approx(1)  # still opens for trials at t+10
    cb._on_success(raced)
    clock.now += 1
    assert cb.state == "half_open"


async def test_async_composition_with_retry_in_both_orders(clock: FakeClock,
                                                           registry: Registry) -> None:
    up = Upstream()
    up.up = False
    outer_retry = breaker(clock, registry, failure_threshold=2)
    call = retry(on=ConnectionError, attempts=5, sleep=clock.asleep, clock=clock,
                 registry=registry)(outer_retry(up.acall))
    with pytest.raises(CircuitOpenError):
        await call()
    assert up.calls == 2  # the third attempt failed fast, and CircuitOpenError is not retried

    up.calls = 0
    outer_breaker = CircuitBreaker("other", failure_threshold=2, reset_timeout=10,
                                   clock=clock, registry=registry)
    guarded = outer_breaker(retry(on=ConnectionError, attempts=3, sleep=clock.asleep,
                                  registry=registry)(up.acall))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await guarded()
    with pytest.raises(CircuitOpenError):
        await guarded()
    assert up.calls == 6 and outer_breaker.failure_stats()["consecutive_failures"] == 0
