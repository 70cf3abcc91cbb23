"""What is special about Redis: signing, namespaces, processes, locks, outages, pub/sub."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time

import pytest
import redis

from perfkit import AiocacheBackend, MemoryBackend, RedisBackend, TieredBackend, cached
from perfkit.caching.backends.base import MISSING, BackendError


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# -- payloads ---------------------------------------------------------------------------


def test_tampered_payload_is_never_unpickled(redis_url, unique_ns):
    backend = RedisBackend(redis_url, secret="s3cret")
    calls = []

    @cached(ttl=30, backend=backend, namespace=unique_ns)
    def value(x):
        calls.append(x)
        return {"x": x}

    assert value(1) == {"x": 1}
    raw_key = backend._key(value.cache_key(1))
    client = redis.Redis.from_url(redis_url)
    # An attacker writes a pickle that would run code; the signature check refuses it.
    client.set(raw_key, b"\x00" * 32 + b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert value(1) == {"x": 1}
    assert calls == [1, 1]  # recomputed instead of unpickling
    assert value.cache_stats().backend_errors >= 1  # counted, not raised
    # Another service with another secret cannot read our entries either.
    other = RedisBackend(redis_url, secret="other")
    with pytest.raises(BackendError, match="signature"):
        other.get(value.cache_key(1))
    backend.clear_namespace(unique_ns)


def test_json_serializer_round_trip(redis_url, unique_ns):
    backend = RedisBackend(redis_url, serializer="json")
    backend.set((unique_ns, "i", 1), {"a": [1, None]}, 10)
    assert backend.get((unique_ns, "i", 1)) == {"a": [1, None]}
    backend.set((unique_ns, "i", 2), None, 10)
    assert backend.get((unique_ns, "i", 2)) is None
    with pytest.raises(TypeError, match="JSON"):
        backend.set((unique_ns, "i", 3), object(), 10)
    backend.clear_namespace(unique_ns)


def test_unpicklable_result_is_a_clear_error(redis_url, unique_ns):
    @cached(ttl=10, backend=RedisBackend(redis_url), namespace=unique_ns)
    def make_lock():
        return threading.Lock()

    with pytest.raises(TypeError, match=rf"{unique_ns}.*cannot store"):
        make_lock()


def test_every_key_has_the_prefix_and_a_ttl(redis_url, unique_ns):
    backend = RedisBackend(redis_url, max_ttl=100)

    @cached(backend=backend, namespace=unique_ns)  # ttl=None: the backend's max_ttl applies
    def f(x):
        return x

    f(1)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"perfkit:{unique_ns}:*"))
    assert len(keys) == 1
    assert 0 < client.ttl(keys[0]) <= 100
    f.cache_clear()


def test_cache_clear_never_touches_other_keys(redis_url, unique_ns):
    client = redis.Redis.from_url(redis_url)
    client.set(f"{unique_ns}:not-ours", "1", ex=60)
    client.set(f"perfkit:{unique_ns}-neighbour:x", "1", ex=60)

    @cached(ttl=30, backend=RedisBackend(redis_url), namespace=unique_ns)
    def f(x):
        return x

    for i in range(20):
        f(i)
    assert f.cache_clear() == 20
    assert client.get(f"{unique_ns}:not-ours") == b"1"
    assert client.get(f"perfkit:{unique_ns}-neighbour:x") == b"1"
    client.delete(f"{unique_ns}:not-ours", f"perfkit:{unique_ns}-neighbour:x")


def test_async_redis_across_event_loops(redis_url, unique_ns):
    calls = []

    @cached(ttl=30, backend=RedisBackend(redis_url), namespace=unique_ns)
    async def load(x):
        calls.append(x)
        return x

    assert asyncio.run(load(1)) == 1
    assert asyncio.run(load(1)) == 1  # a new loop gets its own client
    assert calls == [1]
    load.cache_clear()


# -- across processes ------------------------------------------------------------------------


def _process_worker(url, namespace, counter_key, barrier, results):
    backend = RedisBackend(url, socket_timeout=5)
    client = redis.Redis.from_url(url)

    @cached(ttl=60, backend=backend, namespace=namespace)
    def expensive(x):
        client.incr(counter_key)
        time.sleep(0.3)
        return x * 2

    out = []

    def call():
        out.append(expensive(21))

    barrier.wait()
    threads = [threading.Thread(target=call) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(out)


def test_200_callers_in_2_processes_compute_once(redis_url, unique_ns):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    counter_key = f"{unique_ns}:computations"
    procs = [
        ctx.Process(target=_process_worker,
                    args=(redis_url, unique_ns, counter_key, barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    client = redis.Redis.from_url(redis_url)
    assert [len(o) for o in outputs] == [100, 100]
    assert {v for o in outputs for v in o} == {42}
    assert int(client.get(counter_key)) == 1
    client.delete(counter_key)
    RedisBackend(redis_url).clear_namespace(unique_ns)


def test_crashed_lock_holder_blocks_others_at_most_the_lease(redis_url, unique_ns):
    backend = RedisBackend(redis_url)

    @cached(ttl=30, backend=backend, namespace=unique_ns, lock_lease=0.5)
    def f(x):
        return x

    # A "crashed" process took the lock and never released it.
    assert backend.acquire_lock(f.cache_key(1), 0.5) is not None
    start = time.monotonic()
    assert f(1) == 1
    waited = time.monotonic() - start
    assert 0.3 < waited < 5.0  # waited for the lease, then computed
    f.cache_clear()


# -- outages ---------------------------------------------------------------------------------


def test_redis_outage_degrades_and_recovers(redis_server, unique_ns, caplog):
    backend = RedisBackend(redis_server.url, retry_interval=0.2)
    calls = []

    @cached(ttl=60, backend=backend, namespace=unique_ns)
    def f(x):
        calls.append(x)
        return x * 2

    assert f(1) == 2 and f(1) == 2
    assert calls == [1]
    redis_server.stop()
    caplog.set_level(logging.WARNING, logger="perfkit.cache")
    for _i in range(20):
        assert f(1) == 2  # computed, never raised
    assert f.cache_stats().backend_errors > 0
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # one warning per outage, not per call
    redis_server.start()
    assert wait_until(lambda: f(5) == 10 and backend.available, timeout=10)
    before = len(calls)
    assert f(5) == 10
    assert len(calls) == before  # served from Redis again
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_async_redis_outage_degrades(redis_server, unique_ns):
    backend = RedisBackend(redis_server.url, retry_interval=0.2)

    @cached(ttl=60, backend=backend, namespace=unique_ns)
    async def f(x):
        return x * 2

    assert await f(1) == 2
    redis_server.stop()
    assert [await f(1) for _ in range(5)] == [2] * 5
    assert f.cache_stats().backend_errors > 0


def test_fail_fast_while_down(unique_ns):
    # Nothing listens on port 1: the first call fails, the next ones fail fast.
    backend = RedisBackend("redis://127.0.0.1:1/0", retry_interval=30)

    @cached(ttl=60, backend=backend, namespace=unique_ns)
    def f(x):
        return x

    f(1)
    start = time.perf_counter()
    for i in range(200):
        assert f(i) == i
    assert time.perf_counter() - start < 2.0  # no socket timeout per call
    assert backend.errors == 1


# -- tiered -----------------------------------------------------------------------------------


def test_tiered_l1_hit_needs_no_redis_and_l2_hit_fills_l1(redis_url, unique_ns):
    l2 = RedisBackend(redis_url)
    t1 = TieredBackend(MemoryBackend(100), l2, listen=False)
    t2 = TieredBackend(MemoryBackend(100), RedisBackend(redis_url), listen=False)
    key = (unique_ns, "i", 1)
    t1.set(key, "v", 30)
    assert t1.l1.get(key) == "v"
    assert t2.l1.get(key) is MISSING
    assert t2.get(key) == "v"  # from L2 ...
    assert t2.l1.get(key) == "v"  # ... and now in L1
    l2.clear_namespace(unique_ns)


def test_tiered_keeps_serving_from_l1_when_redis_is_down(redis_server, unique_ns):
    tiered = TieredBackend(MemoryBackend(100), RedisBackend(redis_server.url), listen=False)
    calls = []

    @cached(ttl=60, backend=tiered, namespace=unique_ns)
    def f(x):
        calls.append(x)
        return x

    f(1)
    redis_server.stop()
    assert f(1) == 1 and calls == [1]  # L1 still serves
    assert f(2) == 2 and f(2) == 2  # and accepts writes
    assert calls == [1, 2]
    assert f.cache_stats().backend_errors >= 1


def test_invalidation_reaches_the_l1_of_other_processes(redis_url, unique_ns):
    channel = f"{unique_ns}:inval"
    a = TieredBackend(MemoryBackend(100), RedisBackend(redis_url), channel=channel)
    b = TieredBackend(MemoryBackend(100), RedisBackend(redis_url), channel=channel)
    try:
        assert a._listener.subscribed.wait(5) and b._listener.subscribed.wait(5)

        @cached(ttl=60, backend=a, namespace=unique_ns)
        def fa(x):
            return ("a", x)

        @cached(ttl=60, backend=b, namespace=unique_ns)
        def fb(x):
            return ("b", x)

        assert fa(1) == ("a", 1)
        assert fb(1) == ("a", 1)  # b read it from Redis into its L1
        key = fa.cache_key(1)
        assert b.l1.get(key) == ("a", 1)
        fa.cache_invalidate(1)
        assert wait_until(lambda: b.l1.get(key) is MISSING)
        assert fb(1) == ("b", 1)
        fb(2)
        fa.cache_clear()
        assert wait_until(lambda: b.l1.count_namespace(unique_ns) == 0)
    finally:
        a.close()
        b.close()


# -- aiocache adapter ------------------------------------------------------------------------


async def test_aiocache_adapter_round_trips_none_and_clears(unique_ns):
    from aiocache import Cache

    backend = AiocacheBackend(Cache(Cache.MEMORY), generation_ttl=0.01)
    calls = []

    @cached(ttl=30, backend=backend, namespace=unique_ns)
    async def lookup(x):
        calls.append(x)
        return None

    assert await lookup(1) is None and await lookup(1) is None
    assert calls == [1]
    await lookup.acache_clear()
    await asyncio.sleep(0.02)
    assert await lookup(1) is None
    assert calls == [1, 1]


def test_aiocache_adapter_refuses_sync_functions():
    from aiocache import Cache

    with pytest.raises(TypeError, match="async-only"):

        @cached(backend=AiocacheBackend(Cache(Cache.MEMORY)))
        def f():
            return 1


def _l1_reader(url, namespace, channel, ready, done, results):
    tiered = TieredBackend(MemoryBackend(100), RedisBackend(url), channel=channel)
    tiered._listener.subscribed.wait(5)

    @cached(ttl=60, backend=tiered, namespace=namespace)
    def value(x):
        return ("child", x)

    results.put(value(1))  # read through into this process's L1
    ready.set()
    done.wait(10)
    key = value.cache_key(1)
    results.put(wait_until(lambda: tiered.l1.get(key) is MISSING, timeout=5))
    tiered.close()


def test_invalidation_reaches_another_real_process(redis_url, unique_ns):
    channel = f"{unique_ns}:inval"
    tiered = TieredBackend(MemoryBackend(100), RedisBackend(redis_url), channel=channel)

    @cached(ttl=60, backend=tiered, namespace=unique_ns)
    def value(x):
        return ("parent", x)

    assert value(1) == ("parent", 1)
    ctx = multiprocessing.get_context("spawn")
    ready, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_l1_reader,
                        args=(redis_url, unique_ns, channel, ready, done, results))
    child.start()
    try:
        assert results.get(timeout=30) == ("parent", 1)  # the child cached our value in its L1
        assert ready.wait(10)
        value.cache_invalidate(1)
        done.set()
        assert results.get(timeout=30) is True  # and dropped it when we invalidated
    finally:
        child.join(timeout=10)
        tiered.close()


# -- review findings ------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_undecodable_payload_degrades_instead_of_raising(redis_url, unique_ns, serializer):
    backend = RedisBackend(redis_url, serializer=serializer)
    calls = []

    @cached(ttl=30, backend=backend, namespace=unique_ns)
    def f(x):
        calls.append(x)
        return [x]

    f(1)
    client = redis.Redis.from_url(redis_url)
    client.set(backend._key(f.cache_key(1)), b"\x80\x05not a payload")
    assert f(1) == [1]  # recomputed, nothing raised
    assert calls == [1, 1]
    assert f(1) == [1] and calls == [1, 1]  # and the fresh value replaced the bad one
    f.cache_clear()


def test_stale_while_revalidate_on_redis_uses_the_wall_clock(redis_url, unique_ns):
    calls = []

    @cached(ttl=0.2, stale_ttl=30, backend=RedisBackend(redis_url), namespace=unique_ns)
    def version():
        calls.append(1)
        return len(calls)

    assert version() == 1
    time.sleep(0.3)
    assert version() == 1  # stale, served at once
    assert wait_until(lambda: version() == 2)
    assert len(calls) == 2
    version.cache_clear()


def test_asyncio_run_in_a_loop_keeps_a_bounded_number_of_clients(redis_url, unique_ns):
    backend = RedisBackend(redis_url)

    @cached(ttl=30, backend=backend, namespace=unique_ns)
    async def f(x):
        return x

    for i in range(30):
        assert asyncio.run(f(i)) == i
    assert len(backend._async_clients) <= 8
    f.cache_clear()


def test_after_an_outage_one_caller_probes_while_the_others_fail_fast(redis_server, unique_ns):
    import signal

    backend = RedisBackend(redis_server.url, retry_interval=0.3, socket_timeout=0.25)

    @cached(ttl=60, backend=backend, namespace=unique_ns)
    def f(x):
        return x

    f(1)
    redis_server.proc.send_signal(signal.SIGSTOP)  # hangs: every call would time out
    try:
        f(2)  # opens the breaker
        time.sleep(0.35)  # past retry_interval: the next call probes
        durations = []

        def call():
            start = time.monotonic()
            f(3)
            durations.append(time.monotonic() - start)

        threads = [threading.Thread(target=call) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        slow = [d for d in durations if d > 0.2]
        assert len(durations) == 20
        assert len(slow) <= 2  # one probe pays the timeout (its compute + store), not 20
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


def test_tiered_does_not_keep_in_l1_what_l2_cannot_store(redis_url, unique_ns):
    tiered = TieredBackend(MemoryBackend(10), RedisBackend(redis_url), listen=False)

    @cached(ttl=10, backend=tiered, namespace=unique_ns)
    def make_lock():
        return threading.Lock()

    for _ in range(2):
        with pytest.raises(TypeError, match="cannot store"):
            make_lock()


async def test_aiocache_adapter_honours_sub_second_ttls(unique_ns):
    from aiocache import Cache

    calls = []

    @cached(ttl=0.2, backend=AiocacheBackend(Cache(Cache.MEMORY)), namespace=unique_ns)
    async def f():
        calls.append(1)
        return len(calls)

    assert await f() == 1
    await asyncio.sleep(0.35)
    assert await f() == 2


def _async_process_worker(url, namespace, counter_key, barrier, results):
    client = redis.Redis.from_url(url)

    # generous timeout: this test is about single flight, not about a loaded machine
    @cached(ttl=60, backend=RedisBackend(url, socket_timeout=5), namespace=namespace)
    async def expensive(x):
        client.incr(counter_key)
        await asyncio.sleep(0.3)
        return x * 2

    async def burst():
        return await asyncio.gather(*(expensive(21) for _ in range(100)))

    barrier.wait()
    results.put(asyncio.run(burst()))


def test_200_async_callers_in_2_processes_compute_once(redis_url, unique_ns):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    counter_key = f"{unique_ns}:computations"
    procs = [ctx.Process(target=_async_process_worker,
                         args=(redis_url, unique_ns, counter_key, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [len(o) for o in outputs] == [100, 100]
    assert {v for o in outputs for v in o} == {42}
    client = redis.Redis.from_url(redis_url)
    assert int(client.get(counter_key)) == 1
    client.delete(counter_key)
    RedisBackend(redis_url).clear_namespace(unique_ns)


def test_a_tiered_backend_dropped_without_close_ends_its_listener(redis_url, unique_ns):
    import gc
    import threading
    import weakref

    before = {t for t in threading.enumerate() if t.name == "perfkit-tiered-invalidation"}
    tiered = TieredBackend(MemoryBackend(10), RedisBackend(redis_url), channel=f"{unique_ns}:i")
    assert tiered._listener.subscribed.wait(5)
    listener = tiered._listener
    gone = weakref.ref(tiered)
    del tiered
    gc.collect()
    assert gone() is None  # the running thread does not keep the backend alive
    listener.join(timeout=5)
    assert not listener.is_alive()
    after = {t for t in threading.enumerate() if t.name == "perfkit-tiered-invalidation"}
    assert after <= before
