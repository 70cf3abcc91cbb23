"""One contract for every backend: memory, adaptive, disk, Redis and tiered (two and three
tiers) pass the same tests."""

from __future__ import annotations

import asyncio

import pytest

from perfkit import (
    AdaptiveMemoryBackend,
    DiskBackend,
    MemoryBackend,
    RedisBackend,
    TieredBackend,
    cached,
)
from perfkit.caching.backends.base import MISSING


@pytest.fixture(params=["memory", "adaptive", "disk", "redis", "tiered", "tiered3"])
def backend(request, unique_ns, tmp_path):
    if request.param == "memory":
        yield MemoryBackend(100)
        return
    if request.param == "adaptive":
        yield AdaptiveMemoryBackend(min_entries=100, memory_probe=lambda: 0.5)
        return
    if request.param == "disk":
        b = DiskBackend(tmp_path / "cache")
        yield b
        b.close()
        return
    url = request.getfixturevalue("redis_url")
    if request.param == "redis":
        b = RedisBackend(url)
    elif request.param == "tiered":
        b = TieredBackend(MemoryBackend(100), RedisBackend(url))
    else:
        b = TieredBackend(MemoryBackend(100), DiskBackend(tmp_path / "cache"), RedisBackend(url))
    yield b
    b.clear_namespace(unique_ns)
    b.close()


def test_get_set_delete_and_none(backend, unique_ns):
    key = (unique_ns, "i", 1)
    assert backend.get(key) is MISSING
    backend.set(key, None, 10)
    assert backend.get(key) is None
    backend.set(key, {"a": [1, 2]}, 10)
    assert backend.get(key) == {"a": [1, 2]}
    assert backend.delete(key) is True
    assert backend.get(key) is MISSING
    assert backend.delete(key) is False


def test_clear_and_count_touch_one_namespace_only(backend, unique_ns):
    other = unique_ns + "-other"
    for i in range(5):
        backend.set((unique_ns, "i", i), i, 10)
    backend.set((other, "i", 0), "keep", 10)
    assert backend.count_namespace(unique_ns) == 5
    assert backend.clear_namespace(unique_ns) == 5
    assert backend.count_namespace(unique_ns) == 0
    assert backend.get((other, "i", 0)) == "keep"
    backend.clear_namespace(other)


def test_namespace_with_glob_characters_is_matched_literally(backend, unique_ns):
    tricky = unique_ns + "*"
    backend.set((tricky, "i", 1), 1, 10)
    backend.set((unique_ns + "x", "i", 1), 2, 10)
    assert backend.clear_namespace(tricky) == 1
    assert backend.get((unique_ns + "x", "i", 1)) == 2
    backend.clear_namespace(unique_ns + "x")


async def test_async_api(backend, unique_ns):
    key = (unique_ns, "s", "a")
    assert await backend.aget(key) is MISSING
    await backend.aset(key, [1], 10)
    assert await backend.aget(key) == [1]
    assert await backend.adelete(key) is True
    assert await backend.aget(key) is MISSING


def test_decorator_on_every_backend(backend, unique_ns):
    calls = []

    @cached(ttl=30, backend=backend, namespace=unique_ns)
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(x=3)] == [9, 9, 9]
    assert calls == [3]
    assert square.cache_invalidate(3) is True
    assert square(3) == 9
    assert calls == [3, 3]
    assert square.cache_stats().currsize == 1
    assert square.cache_clear() == 1


async def test_async_decorator_on_every_backend_across_event_loops(backend, unique_ns):
    calls = []

    @cached(ttl=30, backend=backend, namespace=unique_ns)
    async def load(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        return {"x": x}

    results = await asyncio.gather(*(load(1) for _ in range(50)))
    assert results == [{"x": 1}] * 50
    assert calls == [1]
    assert await load.acache_invalidate(1) is True
    assert await load(1) == {"x": 1}
    assert calls == [1, 1]


def test_namespaces_that_prefix_each_other_stay_apart(backend, unique_ns):
    outer, inner = unique_ns, unique_ns + ":v2"
    backend.set((outer, "i", 1), "outer", 10)
    backend.set((inner, "i", 1), "inner", 10)
    assert backend.count_namespace(outer) == 1
    assert backend.clear_namespace(outer) == 1
    assert backend.get((inner, "i", 1)) == "inner"
    backend.clear_namespace(inner)


def test_switching_stale_ttl_on_and_off_never_mixes_entry_shapes(backend, unique_ns):
    def plain(x):
        return f"v{x}"

    first = cached(ttl=30, backend=backend, namespace=unique_ns)(plain)
    second = cached(ttl=30, stale_ttl=60, backend=backend, namespace=unique_ns)(plain)
    assert first("ab") == "vab"
    assert second("ab") == "vab"  # not an envelope, not a TypeError
    assert first("ab") == "vab"
    first.cache_clear()
    second.cache_clear()


def test_memory_backend_drops_expired_entries_without_reads_when_bounded() -> None:
    # A bounded table full of expired entries that are never read again: writes of other
    # keys clear them out (one scan per table's worth of writes), not only LRU pressure.
    now = [0.0]
    backend = MemoryBackend(maxsize=10_000, timer=lambda: now[0])
    for i in range(3000):
        backend.set(("old", i), i, 1.0)
    now[0] = 5.0  # every "old" entry has expired; none is read again
    for i in range(3000):
        backend.set(("new", i), i, None)
    assert len(backend._data) == 3000
    assert all(key[0] == "new" for key in backend._data)


def test_no_single_set_pays_for_sweeping_the_whole_table() -> None:
    # The scan for expired entries is spread over the sets after it starts, a few keys
    # each: a set never stalls for a table's worth of work (seconds of it at a few million).
    now = [0.0]
    backend = MemoryBackend(maxsize=100_000, timer=lambda: now[0])
    for i in range(5000):
        backend.set(("old", i), i, 1.0)
    now[0] = 5.0
    dropped = []
    for i in range(20_000):
        before = len(backend._data)
        backend.set(("new", i), i, None)
        dropped.append(before + 1 - len(backend._data))
    assert sum(dropped) == 5000  # every expired entry went, without a read
    assert max(dropped) <= 16
