"""perfkit.timed: latency per call and per block, failures apart, budgets warned once."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from perfkit import Registry, timed


class FakePerfCounter:
    """Replaces time.perf_counter: time only moves when the code under test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> Registry:
    return Registry(process_metrics=False)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakePerfCounter:
    fake = FakePerfCounter()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


def series(registry: Registry, function: str, outcome: str) -> dict[str, Any]:
    data = registry.snapshot()["perfkit_timed_seconds"]["series"]
    return data.get((function, outcome), {"count": 0})  # type: ignore[no-any-return]


def test_sync_calls_are_timed_with_failures_apart(fake_time: FakePerfCounter,
                                                  registry: Registry) -> None:
    @timed("svc.work", registry)
    def work(seconds: float, fail: bool = False) -> str:
        fake_time.now += seconds
        if fail:
            raise ValueError("nope")
        return "done"

    for _ in range(99):
        assert work(0.010) == "done"
    work(0.500)
    with pytest.raises(ValueError, match="nope"):
        work(0.001, fail=True)
    ok = series(registry, "svc.work", "ok")
    assert ok["count"] == 100
    assert ok["p50"] == pytest.approx(0.010, rel=0.01)
    assert ok["p99"] == pytest.approx(0.010, rel=0.01)
    assert ok["sum"] == pytest.approx(0.99 + 0.5)
    error = series(registry, "svc.work", "error")
    assert error["count"] == 1 and error["p50"] == pytest.approx(0.001, rel=0.01)


def test_bare_decorator_default_name_and_signature(registry: Registry) -> None:
    @timed
    def plain(a: int, b: int = 2) -> int:
        return a + b

    assert plain(1) == 3
    assert plain.__name__ == "plain"
    assert inspect.signature(plain).parameters.keys() == {"a", "b"}
    from perfkit import REGISTRY

    name = f"{__name__}.test_bare_decorator_default_name_and_signature.<locals>.plain"
    assert REGISTRY.snapshot()["perfkit_timed_seconds"]["series"][(name, "ok")]["count"] >= 1


async def test_async_calls_and_cancellation(registry: Registry) -> None:
    @timed("svc.fetch", registry)
    async def fetch(delay: float) -> str:
        await asyncio.sleep(delay)
        return "ok"

    assert await asyncio.gather(*(fetch(0) for _ in range(10))) == ["ok"] * 10
    task = asyncio.ensure_future(fetch(30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert series(registry, "svc.fetch", "ok")["count"] == 10
    assert series(registry, "svc.fetch", "cancelled")["count"] == 1
    assert series(registry, "svc.fetch", "error")["count"] == 0


async def test_real_async_latency_is_measured(registry: Registry) -> None:
    @timed("svc.sleepy", registry)
    async def sleepy() -> None:
        await asyncio.sleep(0.05)

    await sleepy()
    ok = series(registry, "svc.sleepy", "ok")
    assert 0.045 <= ok["p50"] <= 1.0  # wide margin: only that the await was inside the timing


def test_methods(registry: Registry) -> None:
    class Repo:
        @timed("repo.get", registry)
        def get(self, key: str) -> str:
            return key.upper()

    assert Repo().get("a") == "A"
    assert series(registry, "repo.get", "ok")["count"] == 1
    # a function that never failed has no empty error/cancelled series cluttering /metrics
    assert set(registry.snapshot()["perfkit_timed_seconds"]["series"]) == {("repo.get", "ok")}


def test_block_form_sync_and_nested(fake_time: FakePerfCounter, registry: Registry) -> None:
    outer = timed("block.outer", registry)
    with outer:
        fake_time.now += 1.0
        with timed("block.inner", registry):
            fake_time.now += 0.25
    with pytest.raises(KeyError), outer:
        fake_time.now += 2.0
        raise KeyError("x")
    assert series(registry, "block.outer", "ok")["p50"] == pytest.approx(1.25, rel=0.01)
    assert series(registry, "block.inner", "ok")["p50"] == pytest.approx(0.25, rel=0.01)
    assert series(registry, "block.outer", "error")["p50"] == pytest.approx(2.0, rel=0.01)


async def test_shared_block_timer_across_tasks(registry: Registry) -> None:
    shared = timed("block.shared", registry)

    async def job(delay: float) -> None:
        async with shared:
            await asyncio.sleep(delay)

    await asyncio.gather(job(0.06), job(0.0), job(0.03))
    snap = series(registry, "block.shared", "ok")
    assert snap["count"] == 3
    # each task kept its own start time: the fastest block is not charged the slowest's wait
    quantile_0 = registry.histogram(
        "perfkit_timed_seconds", "Latency of perfkit.timed calls and blocks",
        ("function", "outcome"),
    ).labels("block.shared", "ok").quantile(0.0)
    assert quantile_0 < 0.03


def test_block_without_name_is_rejected() -> None:
    with pytest.raises(TypeError, match="needs a name"), timed():
        pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_ms": 0}, "budget_ms must be > 0"),
        ({"budget_ms": -5}, "budget_ms must be > 0"),
        ({"budget_interval": 0}, "budget_interval must be > 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timed("x", **kwargs)


def test_generators_are_rejected() -> None:
    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        timed("g")(gen)


def test_budget_warns_once_per_interval_not_per_call(
    fake_time: FakePerfCounter, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    @timed("svc.slow", registry, budget_ms=50, budget_interval=60)
    def slow(seconds: float) -> None:
        fake_time.now += seconds

    with caplog.at_level(logging.WARNING, logger="perfkit.timing"):
        for _ in range(500):  # 500 calls of 100 ms = 50 s: the first interval is not over
            slow(0.1)
        assert caplog.records == []
        for _ in range(500):  # through t=100 s: one check, one warning
            slow(0.1)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "svc.slow p95 over its last 512 calls is 100.0 ms, above its budget of 50.0 ms" in (
        warnings[0]
    )
    exceeded = registry.snapshot()["perfkit_timed_budget_exceeded_total"]["series"]
    assert exceeded[("svc.slow",)] == 1


def test_budget_quiet_when_recent_calls_are_fast(
    fake_time: FakePerfCounter, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    @timed("svc.recovered", registry, budget_ms=50, budget_interval=10)
    def call(seconds: float) -> None:
        fake_time.now += seconds

    for _ in range(100):
        call(0.2)  # slow once, 20 s: a warning
    for _ in range(600):
        call(0.02)  # fast again: the last 512 calls are all fast
    fake_time.now += 11
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perfkit.timing"):
        call(0.02)
    assert caplog.records == []


def test_timed_threads_lose_no_observations(registry: Registry) -> None:
    @timed("svc.threads", registry)
    def tiny() -> None:
        pass

    def run() -> None:
        for _ in range(5000):
            tiny()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert series(registry, "svc.threads", "ok")["count"] == 20_000


def test_timed_metrics_in_prometheus_text(registry: Registry) -> None:
    @timed("svc.export", registry)
    def f() -> None:
        pass

    f()
    families = {f.name: f for f in text_string_to_metric_families(registry.render_prometheus())}
    samples = families["perfkit_timed_seconds"].samples
    counts = [s for s in samples if s.name == "perfkit_timed_seconds_count"
              and s.labels == {"function": "svc.export", "outcome": "ok"}]
    assert counts and counts[0].value == 1


async def test_sync_function_returning_a_coroutine_is_timed_until_awaited(
    fake_time: FakePerfCounter, registry: Registry
) -> None:
    async def request(fail: bool) -> str:
        await asyncio.sleep(0)
        fake_time.now += 0.5  # the work happens when the coroutine is awaited
        if fail:
            raise ConnectionError
        return "ok"

    @timed("svc.forward", registry)
    def forward(fail: bool = False) -> Any:  # a plain function handing back a coroutine
        return request(fail)

    assert await forward() == "ok"
    with pytest.raises(ConnectionError):
        await forward(fail=True)
    assert series(registry, "svc.forward", "ok")["p50"] == pytest.approx(0.5, rel=0.01)
    assert series(registry, "svc.forward", "error")["count"] == 1


def test_block_budget_holds_across_fresh_timers(
    fake_time: FakePerfCounter, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """``with timed("x", budget_ms=...)`` makes a new Timer per block: the budget must still
    see the recent calls and warn once per interval."""
    with caplog.at_level(logging.WARNING, logger="perfkit.timing"):
        for _ in range(100):  # 100 blocks of 50 ms = 5 s against a 1 s interval
            with timed("block.budgeted", registry, budget_ms=10, budget_interval=1):
                fake_time.now += 0.05
    exceeded = registry.snapshot()["perfkit_timed_budget_exceeded_total"]["series"]
    assert 3 <= exceeded[("block.budgeted",)] <= 5
    assert len(caplog.records) == exceeded[("block.budgeted",)]


def test_registry_argument_is_checked_by_every_decorator() -> None:
    from perfkit import CircuitBreaker, retry

    with pytest.raises(TypeError, match=r"registry must be a perfkit\.Registry"):
        timed("x", "not a registry")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"registry must be a perfkit\.Registry"):
        retry(on=ConnectionError, registry={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"registry must be a perfkit\.Registry"):
        CircuitBreaker("x", registry=3)  # type: ignore[arg-type]
