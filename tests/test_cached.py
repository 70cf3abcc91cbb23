"""The ``cached`` decorator on the memory backend: shapes, semantics, safety, concurrency."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import weakref

import pytest

from perfkit import MemoryBackend, cached
from perfkit.caching.decorator import DISABLE_ENV


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- shapes ------------------------------------------------------------------------------


def test_sync_function_keeps_signature_and_metadata():
    @cached(ttl=5)
    def add(a: int, b: int = 1) -> int:
        """Adds."""
        return a + b

    assert add(1) == 2
    assert add.__name__ == "add" and add.__doc__ == "Adds."
    assert inspect.signature(add) == inspect.signature(add.__wrapped__)
    assert list(inspect.signature(add).parameters) == ["a", "b"]
    assert add.__wrapped__(1) == 2


async def test_async_function_is_still_a_coroutine_function():
    calls = []

    @cached
    async def fetch(x):
        calls.append(x)
        return x * 2

    assert inspect.iscoroutinefunction(fetch)
    assert [await fetch(2), await fetch(2)] == [4, 4]
    assert calls == [2]


def test_methods_classmethods_staticmethods_in_both_orders():
    calls = []

    class Repo:
        @cached
        def get(self, x):
            calls.append(("get", x))
            return x

        @cached
        @classmethod
        def build(cls, x):
            calls.append(("build", x))
            return cls.__name__

        @classmethod
        @cached
        def build2(cls, x):
            calls.append(("build2", x))
            return cls.__name__

        @cached
        @staticmethod
        def util(x):
            calls.append(("util", x))
            return x

        @staticmethod
        @cached
        def util2(x):
            calls.append(("util2", x))
            return x

    repo = Repo()
    for _ in range(2):
        assert repo.get(1) == 1
        assert Repo.build(1) == repo.build(1) == "Repo"
        assert Repo.build2(1) == "Repo"
        assert Repo.util(1) == repo.util(1) == 1
        assert Repo.util2(1) == 1
    assert sorted(calls) == sorted(
        [("get", 1), ("build", 1), ("build2", 1), ("util", 1), ("util2", 1)]
    )


async def test_async_method():
    calls = []

    class Service:
        @cached
        async def load(self, x):
            calls.append(x)
            return x + 1

    s = Service()
    assert await s.load(1) == await s.load(1) == 2
    assert calls == [1]


def test_instances_never_share_entries_by_default():
    class Account:
        def __init__(self, balance):
            self.balance = balance

        @cached
        def report(self, fmt):
            return f"{self.balance}:{fmt}"

    a, b = Account(1), Account(2)
    assert a.report("x") == "1:x"
    assert b.report("x") == "2:x"
    assert a.report.cache_invalidate("x") is True
    assert a.report.cache_invalidate("x") is False


def test_instance_key_and_shared_instances():
    calls = []

    class Tenant:
        def __init__(self, tid):
            self.tid = tid

        @cached(instance_key=lambda self: self.tid)
        def settings(self):
            calls.append(self.tid)
            return {"tenant": self.tid}

        @cached(instance_key="shared")
        def constant(self):
            calls.append("constant")
            return 42

    assert Tenant("a").settings() == Tenant("a").settings() == {"tenant": "a"}
    assert Tenant("b").settings() == {"tenant": "b"}
    assert Tenant("a").constant() == Tenant("b").constant() == 42
    assert calls == ["a", "b", "constant"]


def test_cache_does_not_keep_instances_alive():
    class Heavy:
        @cached
        def value(self):
            return 1

    obj = Heavy()
    assert obj.value() == 1
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None


def test_generators_are_refused_at_decoration():
    def gen():
        yield 1

    async def agen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        cached(gen)
    with pytest.raises(TypeError, match="generator"):
        cached(agen)


# -- semantics ---------------------------------------------------------------------------


def test_none_is_cached_and_distinguished_from_a_miss():
    calls = []

    @cached
    def lookup(x):
        calls.append(x)
        return None

    assert lookup(1) is None and lookup(1) is None
    assert calls == [1]
    assert lookup.cache_stats().hits == 1


def test_exceptions_are_never_cached():
    calls = []

    @cached
    def flaky(x):
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("boom")
        return x

    with pytest.raises(ValueError):
        flaky(1)
    assert flaky(1) == 1
    assert flaky(1) == 1
    assert calls == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1}, ValueError, "ttl"),
        ({"ttl": True}, TypeError, "ttl"),
        ({"ttl": "10"}, TypeError, "ttl"),
        ({"maxsize": 0}, ValueError, "maxsize"),
        ({"maxsize": -5}, ValueError, "maxsize"),
        ({"maxsize": 1.5}, TypeError, "maxsize"),
        ({"stale_ttl": 5}, ValueError, "stale_ttl"),
        ({"ttl": 5, "stale_ttl": -1}, ValueError, "stale_ttl"),
        ({"ttl_jitter": 1.5}, ValueError, "ttl_jitter"),
        ({"key": "user_id"}, TypeError, "key"),
        ({"namespace": ""}, ValueError, "namespace"),
        ({"instance_key": 3}, TypeError, "instance_key"),
        ({"backend": {}}, TypeError, "backend"),
        ({"backend": MemoryBackend(10), "maxsize": 10}, ValueError, "maxsize"),
    ],
)
def test_bad_arguments_fail_at_decoration_naming_the_parameter(kwargs, error, match):
    with pytest.raises(error, match=match):
        cached(**kwargs)


def test_ttl_expiry_uses_a_deadline_not_a_sleep():
    clock = FakeClock()
    calls = []

    @cached(ttl=10, backend=MemoryBackend(10, timer=clock))
    def now(x):
        calls.append(x)
        return len(calls)

    assert now(1) == 1
    clock.now += 9.9
    assert now(1) == 1
    clock.now += 0.2
    assert now(1) == 2


def test_ttl_survives_event_loops():
    """aiocache's call_later TTL dies with the loop; a stored deadline does not."""
    clock = FakeClock()
    calls = []

    @cached(ttl=1, backend=MemoryBackend(10, timer=clock))
    async def value():
        calls.append(1)
        return len(calls)

    assert asyncio.run(value()) == 1
    clock.now += 1.5
    assert asyncio.run(value()) == 2


def test_maxsize_bounds_entries_lru_and_counts_evictions():
    @cached(maxsize=2)
    def ident(x):
        return x

    ident(1), ident(2), ident(1), ident(3)  # 2 is least recently used
    stats = ident.cache_stats()
    assert stats.currsize == 2 and stats.evictions == 1
    before = ident.cache_stats().misses
    ident(1)
    assert ident.cache_stats().misses == before
    ident(2)
    assert ident.cache_stats().misses == before + 1


def test_memory_backend_byte_bound():
    backend = MemoryBackend(None, max_bytes=10_000)
    for i in range(100):
        backend.set(("ns", "i", i), b"x" * 1000, None)
    assert backend.currsize_bytes <= 10_000
    assert len(backend) < 100 and backend.evictions > 0
    backend.set(("ns", "i", -1), b"x" * 20_000, None)
    assert backend.rejected == 1


def test_invalidate_uses_call_binding_and_clear_is_per_function():
    shared = MemoryBackend(100)
    calls = []

    @cached(backend=shared)
    def a(x, y=1):
        calls.append(x)
        return x

    @cached(backend=shared)
    def b(x):
        return x

    a(1), a(2), b(1)
    assert a.cache_invalidate(x=1, y=1) is True  # same entry as a(1)
    a(1)
    assert calls == [1, 2, 1]
    assert a.cache_clear() == 2
    assert b.cache_stats().currsize == 1  # the other function's entry survives
    assert a.cache_stats().currsize == 0


def test_stats_report_hits_misses_rate_and_time_saved():
    @cached
    def double(x):
        return 2 * x

    double(1), double(1), double(1), double(2)
    stats = double.cache_stats()
    assert (stats.hits, stats.misses, stats.currsize) == (2, 2, 2)
    assert stats.hit_rate == pytest.approx(0.5)
    assert stats.time_saved == pytest.approx(2 * stats.mean_miss_seconds)


def test_kill_switch_makes_cached_a_pass_through(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    calls = []

    @cached
    def f(x):
        calls.append(x)
        return x

    f(1), f(1)
    assert calls == [1, 1]
    assert f.cache_clear() == 0  # controls still exist, so callers do not break


def test_version_changes_the_namespace():
    @cached(version="v2")
    def f(x):
        return x

    @cached(version="auto")
    def g(x):
        return x

    assert f.cache_key(1)[0].endswith("@v2")
    assert "@" in g.cache_key(1)[0]


def test_ttl_jitter_shortens_ttl_within_bounds():
    clock = FakeClock()
    backend = MemoryBackend(1000, timer=clock)

    @cached(ttl=100, ttl_jitter=0.2, backend=backend)
    def f(x):
        return x

    for i in range(200):
        f(i)
    deadlines = [entry[1] - clock.now for entry in backend._data.values()]
    assert all(80 <= d <= 100 for d in deadlines)
    assert max(deadlines) - min(deadlines) > 5  # they really are spread


# -- stale-while-revalidate ---------------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once():
    clock = FakeClock()
    gate = threading.Event()
    calls = []

    @cached(ttl=10, stale_ttl=100, backend=MemoryBackend(10, timer=clock))
    def price(item):
        calls.append(item)
        if len(calls) > 1:
            gate.wait(5)
        return len(calls)

    assert price("x") == 1
    clock.now += 11  # stale, within stale_ttl
    results = [price("x") for _ in range(20)]
    assert results == [1] * 20  # stale value served, nobody waits
    gate.set()
    for _ in range(200):
        if price.cache_stats().misses == 2 and price("x") == 2:
            break
        threading.Event().wait(0.01)
    assert price("x") == 2
    assert len(calls) == 2  # exactly one refresh
    assert price.cache_stats().stale_serves >= 20
    clock.now += 200  # past stale_ttl too: a plain miss
    assert price("x") == 3


async def test_async_stale_while_revalidate():
    clock = FakeClock()
    calls = []

    @cached(ttl=10, stale_ttl=100, backend=MemoryBackend(10, timer=clock))
    async def price(item):
        calls.append(item)
        await asyncio.sleep(0.01)
        return len(calls)

    assert await price("x") == 1
    clock.now += 11
    assert [await price("x") for _ in range(5)] == [1] * 5
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(calls) == 2:
            break
    await asyncio.sleep(0.02)
    assert await price("x") == 2
    assert len(calls) == 2


# -- single flight -------------------------------------------------------------------------


def test_200_threads_on_a_cold_key_compute_once():
    calls = []
    start = threading.Barrier(200)

    @cached(ttl=60)
    def slow(x):
        calls.append(x)
        threading.Event().wait(0.2)
        return x * 10

    results = []

    def caller():
        start.wait()
        results.append(slow(7))

    threads = [threading.Thread(target=caller) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [70] * 200
    assert calls == [7]
    stats = slow.cache_stats()
    assert stats.misses == 1 and stats.hits + stats.joins == 199


async def test_200_tasks_on_a_cold_key_compute_once():
    calls = []

    @cached(ttl=60)
    async def slow(x):
        calls.append(x)
        await asyncio.sleep(0.05)
        return x * 10

    results = await asyncio.gather(*(slow(7) for _ in range(200)))
    assert results == [70] * 200
    assert calls == [7]


async def test_cancelling_the_first_caller_does_not_poison_followers():
    calls = []
    started = asyncio.Event()

    @cached(ttl=60)
    async def slow():
        calls.append(1)
        started.set()
        await asyncio.sleep(0.05)
        return "value"

    first = asyncio.create_task(slow())
    await started.wait()
    second = asyncio.create_task(slow())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "value"
    assert calls == [1]
    assert await slow() == "value"  # and the value was stored


async def test_leader_exception_reaches_followers_and_is_not_cached():
    calls = []

    @cached(ttl=60)
    async def failing():
        calls.append(1)
        await asyncio.sleep(0.02)
        raise RuntimeError("upstream down")

    results = await asyncio.gather(*(failing() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls == [1]
    with pytest.raises(RuntimeError):
        await failing()
    assert calls == [1, 1]


def test_reentrant_call_does_not_deadlock():
    @cached
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(80) == 23416728348467685


def test_memory_backend_is_consistent_under_thread_churn():
    backend = MemoryBackend(50)
    errors = []

    def churn(seed):
        try:
            for i in range(3000):
                key = ("ns", "i", (seed * 7 + i) % 120)
                if backend.get(key) is None:
                    errors.append("None from a cache that never stored None")
                backend.set(key, i, 5.0 if i % 2 else None)
                if i % 50 == 0:
                    backend.delete(key)
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(repr(exc))

    threads = [threading.Thread(target=churn, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(backend) <= 50


# -- edge cases found in review -------------------------------------------------------------


def test_controls_on_methods_match_the_calls_in_every_binding():
    calls = []

    class A:
        @cached
        def f(self, x):
            calls.append(("f", x))
            return x

        @cached
        @classmethod
        def c(cls, x):
            calls.append(("c", x))
            return x

        @cached
        @staticmethod
        def s(x):
            calls.append(("s", x))
            return x

    a = A()
    a.f(1), A.c(1), a.s(1)
    assert A.f.cache_key(a, 1) == a.f.cache_key(1)
    assert a.c.cache_key(1) == A.c.cache_key(1)
    assert A.f.cache_invalidate(a, 1) is True
    assert a.c.cache_invalidate(1) is True
    assert a.s.cache_invalidate(1) is True
    a.f(1), A.c(1), a.s(1)
    assert len(calls) == 6  # every invalidation really dropped the entry the call used


async def test_kill_switch_keeps_controls_on_methods_and_async(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    calls = []

    class A:
        @cached
        def f(self, x):
            calls.append(x)
            return x

        @cached
        @classmethod
        def c(cls, x):
            return x

    @cached
    async def g(x):
        calls.append(x)
        return x

    a = A()
    a.f(1), a.f(1), await g(2), await g(2)
    assert calls == [1, 1, 2, 2]
    assert a.f.cache_invalidate(1) is False
    assert A.c.cache_invalidate(1) is False
    assert await g.acache_invalidate(2) is False


def test_float_keys_follow_repr_not_equality():
    import math

    @cached
    def sign(x):
        return math.copysign(1, x)

    assert sign(0.0) == 1.0
    assert sign(-0.0) == -1.0  # 0.0 == -0.0 in Python, but not for this function
    calls = []

    @cached
    def g(x, y=1.0):
        calls.append(x)
        return x

    nan = float("nan")
    g(nan), g(nan), g(nan, 1.0)
    assert len(calls) == 1  # nan != nan, yet one entry


def test_named_tuples_and_sequence_subclasses_hash_by_value():
    from collections import namedtuple

    Point = namedtuple("Point", "x y")

    class Path(list):
        pass

    @cached
    def length(p):
        return len(p)

    assert length(Point(1, 2)) == length(Point(1, 2)) == 2
    assert length.cache_stats().misses == 1
    assert length(Path([1, 2, 3])) == 3
    assert length.cache_key(Point(1, 2)) != length.cache_key((1, 2))
    loop = [1]
    loop.append(loop)
    with pytest.raises(TypeError, match="itself"):
        length(loop)


async def test_sync_function_returning_a_coroutine_is_refused():
    async def fetch(x):
        return x

    @cached
    def wrapper(x):
        return fetch(x)

    with pytest.raises(TypeError, match="async def"):
        wrapper(1)


async def test_callables_without_a_name_need_a_namespace():
    import functools

    async def fetch(a, b):
        return a + b

    with pytest.raises(TypeError, match="namespace"):
        cached(functools.partial(fetch, 1))
    bound = cached(namespace="fetch-plus-one")(functools.partial(fetch, 1))
    assert await bound(2) == 3

    class Client:
        async def __call__(self, x):
            return x * 2

    doubler = cached(namespace="doubler")(Client())
    assert await doubler(4) == 8


def test_stale_while_revalidate_refreshes_once_under_many_threads():
    clock = FakeClock()
    calls = []
    gate = threading.Event()

    @cached(ttl=10, stale_ttl=100, backend=MemoryBackend(10, timer=clock))
    def price():
        calls.append(1)
        if len(calls) > 1:
            gate.wait(5)
        return len(calls)

    price()
    clock.now += 11
    barrier = threading.Barrier(32)
    results = []

    def reader():
        barrier.wait()
        results.append(price())

    threads = [threading.Thread(target=reader) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate.set()
    assert results == [1] * 32
    for _ in range(200):
        if price.cache_stats().misses == 2:
            break
        threading.Event().wait(0.01)
    assert len(calls) == 2


def test_stats_are_exported_to_the_registry_at_scrape_time():
    from perfkit.metrics import Registry

    registry = Registry()

    @cached(namespace="exported-fn", registry=registry)
    def f(x):
        return x

    f(1), f(1), f(2)
    text = registry.render_prometheus()
    assert 'perfkit_cache_hits_total{function="exported-fn"} 1' in text
    assert 'perfkit_cache_misses_total{function="exported-fn"} 2' in text

    @cached(registry=None)
    def g(x):
        return x

    g(1)
    assert "test_stats_are_exported" not in registry.render_prometheus()
