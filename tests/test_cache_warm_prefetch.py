"""Warming (``cache_warm``) and predictive prefetch (``cached(prefetch=...)``)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from perfkit import MemoryBackend, Prefetch, cached
from perfkit.caching import Args, WarmReport

# -- warming -----------------------------------------------------------------------------


def test_warm_fills_missing_entries_and_reports_failures():
    calls = []

    @cached(ttl=60)
    def load(x, scale=1):
        calls.append((x, scale))
        if x == 13:
            raise ValueError("unlucky")
        return x * scale

    load(1)
    report = load.cache_warm([1, 2, (3,), {"x": 4, "scale": 10}, Args(5, scale=2), 13])
    assert isinstance(report, WarmReport)
    assert (report.requested, report.filled, report.already_cached, report.failed) == (6, 4, 1, 1)
    assert not report.ok
    [failure] = report.failures
    assert failure.args.args == (13,) and isinstance(failure.error, ValueError)
    before = len(calls)
    assert [load(2), load(3), load(4, scale=10), load(5, 2)] == [2, 3, 40, 10]
    assert len(calls) == before  # all served from the warmed cache
    stats = load.cache_stats()
    assert stats.misses == 6 and stats.currsize == 5


def test_a_malformed_argument_set_is_a_failure_in_the_report(monkeypatch):
    crashed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args))

    @cached
    def load(x=0, **extra):
        return x

    report = load.cache_warm([1, {1: "not a keyword"}, 3], concurrency=2)
    assert (report.requested, report.filled, report.failed) == (3, 2, 1)
    assert isinstance(report.failures[0].error, TypeError) and crashed == []


async def test_async_warm_reports_a_malformed_argument_set():
    @cached
    async def load(x=0, **extra):
        return x

    report = await load.cache_warm([1, {1: "not a keyword"}, 3], concurrency=2)
    assert (report.requested, report.filled, report.failed) == (3, 2, 1)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_broken_argument_source_raises_once_to_the_caller(monkeypatch, concurrency):
    crashed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args))

    def source():
        yield 1
        raise RuntimeError("the list of hot keys could not be read")

    @cached
    def load(x):
        return x

    with pytest.raises(RuntimeError, match="hot keys"):
        load.cache_warm(source(), concurrency=concurrency)
    assert crashed == []  # no worker thread died with it


async def test_async_warm_raises_a_broken_argument_source():
    def source():
        yield 1
        raise RuntimeError("the list of hot keys could not be read")

    @cached
    async def load(x):
        return x

    with pytest.raises(RuntimeError, match="hot keys"):
        await load.cache_warm(source(), concurrency=3)


def test_warm_bounds_concurrency_with_threads():
    active, peak, lock = 0, 0, threading.Lock()

    @cached
    def slow(x):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.005)
        with lock:
            active -= 1
        return x

    report = slow.cache_warm(range(40), concurrency=4)
    assert report.filled == 40 and report.ok
    assert 2 <= peak <= 4
    assert slow.cache_warm(iter(range(40)), concurrency=4).already_cached == 40


async def test_async_warm_bounds_concurrency_and_collects_failures():
    active, peak = 0, 0

    @cached(ttl=60)
    async def fetch(x):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        if x % 10 == 0:
            raise KeyError(x)
        return x

    report = await fetch.cache_warm(range(1, 51), concurrency=5)
    assert (report.filled, report.failed) == (45, 5)
    assert sorted(f.args.args[0] for f in report.failures) == [10, 20, 30, 40, 50]
    assert peak == 5
    again = await fetch.acache_warm(range(1, 51), concurrency=5)
    assert (again.already_cached, again.failed) == (45, 5)


async def test_acache_warm_on_a_sync_function_runs_off_the_event_loop():
    loop_thread = threading.get_ident()
    threads = set()

    @cached
    def compute(x):
        threads.add(threading.get_ident())
        return x

    report = await compute.acache_warm([1, 2, 3], concurrency=1)
    assert report.filled == 3 and loop_thread not in threads


def test_warm_on_methods_uses_the_bound_instance():
    class Repo:
        def __init__(self, name):
            self.name = name
            self.calls = 0

        @cached
        def get(self, item):
            self.calls += 1
            return f"{self.name}:{item}"

    a, b = Repo("a"), Repo("b")
    assert a.get.cache_warm([1, 2]).filled == 2
    assert [a.get(1), a.get(2)] == ["a:1", "a:2"] and a.calls == 2
    assert b.get(1) == "b:1" and b.calls == 1


def test_warm_validates_its_arguments():
    @cached
    def f(x):
        return x

    with pytest.raises(ValueError, match="concurrency"):
        f.cache_warm([1], concurrency=0)
    with pytest.raises(TypeError, match="arg_sets"):
        f.cache_warm("abc")


def test_warm_is_skipped_when_caching_is_switched_off(monkeypatch):
    monkeypatch.setenv("PERFKIT_CACHE_DISABLED", "1")
    calls = []

    @cached
    def f(x):
        calls.append(x)
        return x

    report = f.cache_warm([1, 2, 3])
    assert (report.requested, report.skipped, calls) == (3, 3, [])


# -- prefetch ----------------------------------------------------------------------------


def test_prefetch_is_off_by_default():
    @cached
    def f(x):
        return x

    assert f.cache_core.prefetcher is None
    assert f.cache_stats().prefetches == 0 and f.cache_stats().prefetch_accuracy == 0.0


def test_prefetch_learns_a_sequence_and_counts_accuracy():
    calls = []

    @cached(backend=MemoryBackend(1000),
            prefetch=Prefetch(max_fraction=1.0, min_confidence=0.6, min_count=1))
    def page(n):
        calls.append(n)
        return n

    prefetcher = page.cache_core.prefetcher
    for n in range(10):  # first walk: learn 0->1->2...
        page(n)
        prefetcher.wait_idle()
    assert page.cache_stats().prefetches == 0  # nothing to predict on a first walk
    page.cache_clear()
    calls.clear()
    for n in range(10):  # second walk: each call prefetches the next page
        page(n)
        prefetcher.wait_idle()
    stats = page.cache_stats()
    assert sorted(calls) == list(range(10))  # pages 1..9 were computed by the prefetcher
    assert stats.prefetches == 9  # 0->1 ... 8->9 (page 9 has no successor yet)
    assert stats.prefetch_used == 9 and stats.prefetch_accuracy == 1.0
    assert stats.hits == 9 and stats.misses == 10 + 1  # prefetch computations are not misses


def test_wrong_predictions_lower_the_accuracy():
    @cached(prefetch=Prefetch(max_fraction=1.0, min_confidence=0.5, min_count=1))
    def f(x):
        return x

    prefetcher = f.cache_core.prefetcher
    for x in (1, 2, 1, 2):  # learns 1 -> 2 and 2 -> 1
        f(x)
        prefetcher.wait_idle()
    f.cache_clear()
    f(1)  # prefetches 2
    prefetcher.wait_idle()
    f(3)  # but 3 came: 2 stays unused
    prefetcher.wait_idle()
    stats = f.cache_stats()
    assert stats.prefetches >= 1 and stats.prefetch_used == 0
    assert stats.prefetch_accuracy == 0.0


def test_prefetch_respects_its_budget():
    release = threading.Event()
    blocking = False

    @cached(prefetch=Prefetch(max_fraction=0.2, max_inflight=1, min_confidence=0.1))
    def f(x):
        if blocking:
            release.wait(5)
        return x

    prefetcher = f.cache_core.prefetcher
    for _ in range(3):  # learn 1 -> 2 -> 3 -> ... -> 20
        for x in range(1, 21):
            f(x)
        prefetcher.wait_idle()
        f.cache_clear()
    assert prefetcher.started <= 0.2 * prefetcher.calls  # max_fraction
    # max_inflight=1: while one prefetch blocks, no second one starts
    for x in ("a", "b", "c", "d", "a", "b", "c", "d"):
        f(x)
    prefetcher.wait_idle()
    f.cache_clear()
    prefetcher.calls += 100  # plenty of fraction budget left
    blocking = True
    try:
        f.cache_core.store(f.cache_key("a"), "a")
        f.cache_core.store(f.cache_key("c"), "c")
        f("a")  # a hit; prefetches b, which blocks
        f("c")  # a hit; would prefetch d, but one is in flight already
        assert prefetcher.inflight == {f.cache_key("b")}
    finally:
        release.set()
    assert prefetcher.wait_idle()
    assert f.cache_stats().prefetches >= 1 and not prefetcher.inflight


async def test_async_prefetch_and_joining_a_prefetch_in_flight_counts_as_used():
    gate = asyncio.Event()
    calls = []
    blocking = False

    @cached(prefetch=Prefetch(max_fraction=1.0, min_count=1))
    async def step(n):
        calls.append(n)
        if n == 2 and blocking:
            await gate.wait()
        return n * 10

    for n in (1, 2):
        await step(n)
    await asyncio.sleep(0)
    step.cache_clear()
    blocking = True
    assert await step(1) == 10  # predicts 2, starts the prefetch, which blocks on the gate
    await asyncio.sleep(0)
    assert step.cache_key(2) in step.cache_core.prefetcher.inflight
    waiter = asyncio.ensure_future(step(2))  # joins the prefetch instead of computing
    await asyncio.sleep(0.01)
    gate.set()
    assert await waiter == 20
    assert calls.count(2) == 2  # once in the learning walk, once by the prefetch
    stats = step.cache_stats()
    assert (stats.prefetches, stats.prefetch_used) == (1, 1)


def test_order_two_separates_states_that_order_one_confuses():
    @cached(prefetch=Prefetch(order=2, max_fraction=1.0, min_confidence=0.9))
    def f(x):
        return x

    prefetcher = f.cache_core.prefetcher
    # after (a, x) comes b; after (c, x) comes d: order 1 sees x -> b/d at 50 % each
    for _ in range(3):
        for x in ("a", "x", "b", "c", "x", "d"):
            f(x)
            prefetcher.wait_idle()
        f.cache_clear()
    used_before = prefetcher.used
    for x in ("a", "x", "b", "c", "x", "d"):
        f(x)
        prefetcher.wait_idle()
    assert prefetcher.used - used_before >= 2  # b and d were predicted exactly


def test_transition_table_is_bounded():
    @cached(prefetch=Prefetch(table_size=50, max_fraction=1.0))
    def f(x):
        return x

    for x in range(1000):
        f(x)
    f.cache_core.prefetcher.wait_idle()
    assert len(f.cache_core.prefetcher._table) <= 50


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"order": 3}, "order"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"max_fraction": 0}, "max_fraction"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"table_size": -1}, "table_size"),
        ({"min_count": 0}, "min_count"),
    ],
)
def test_prefetch_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Prefetch(**kwargs)


def test_prefetch_option_errors():
    with pytest.raises(TypeError, match="prefetch"):
        cached(prefetch={"order": 1})
    with pytest.raises(ValueError, match="stale_ttl"):
        cached(ttl=1, stale_ttl=1, prefetch=Prefetch())


def test_prefetch_on_a_method_calls_it_with_its_instance():
    class Pages:
        def __init__(self):
            self.calls = []

        @cached(prefetch=Prefetch(max_fraction=1.0, min_count=1))
        def page(self, n):
            self.calls.append(n)
            return n

    p = Pages()
    prefetcher = Pages.page._self_core.prefetcher
    for n in (1, 2, 1, 2):
        p.page(n)
        prefetcher.wait_idle()
    p.page.cache_clear()
    p.calls.clear()
    p.page(1)
    prefetcher.wait_idle()
    assert p.calls == [1, 2]  # 2 computed ahead, with the right self
    p.page(2)
    assert p.calls == [1, 2] and p.page.cache_stats().prefetch_used >= 1


def test_a_transition_seen_once_is_not_prefetched_by_default():
    @cached(prefetch=Prefetch(max_fraction=1.0))
    def f(x):
        return x

    prefetcher = f.cache_core.prefetcher
    for x in (1, 2, 3):
        f(x)
    f.cache_clear()
    f(1)  # 1 -> 2 seen once: below min_count=2
    prefetcher.wait_idle()
    assert prefetcher.started == 0
    f(2)
    f.cache_clear()
    f(1)  # now seen twice
    prefetcher.wait_idle()
    assert f.cache_stats().prefetches == 1


def test_prefetch_figures_are_exported_to_the_registry():
    from perfkit import Registry

    registry = Registry()

    @cached(namespace="prefetch-exported", registry=registry,
            prefetch=Prefetch(max_fraction=1.0, min_count=1))
    def f(x):
        return x

    for x in (1, 2, 1):
        f(x)
    f.cache_invalidate(2)
    f(1)
    f.cache_core.prefetcher.wait_idle()
    f(2)
    text = registry.render_prometheus()
    assert 'perfkit_cache_prefetches_total{function="prefetch-exported"} 1' in text
    assert 'perfkit_cache_prefetch_used_total{function="prefetch-exported"} 1' in text
