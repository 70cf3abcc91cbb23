"""Cache hit cost: perfkit against functools, cachetools, aiocache, cashews, async-lru and
a bare redis-py GET. Every cached case checks that its function ran exactly once."""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Case

REDIS_URL = os.environ.get("PERFKIT_REDIS_URL", "redis://127.0.0.1:6379/0")


def _counted() -> tuple[list[int], Callable[[int], int]]:
    calls: list[int] = []

    def work(x: int) -> int:
        calls.append(x)
        return x * 2

    return calls, work


def _ran_once(calls: list[Any], name: str) -> Callable[[], None]:
    def check() -> None:
        assert len(calls) == 1, f"{name}: the function ran {len(calls)} times, not once"

    return check


def _sync_case(group: str, name: str, fn: Callable[[int], Any], calls: list[Any],
               baseline: bool = False, note: str = "", ops: int = 20_000) -> Case:
    def run(n: int) -> None:
        for _ in range(n):
            fn(1)

    return Case(group, name, run=run, baseline=baseline, note=note, ops=ops,
                check=_ran_once(calls, name))


def _async_case(group: str, name: str, fn: Callable[[int], Any], calls: list[Any],
                baseline: bool = False, note: str = "", ops: int = 20_000) -> Case:
    async def arun(n: int) -> None:
        for _ in range(n):
            await fn(1)

    return Case(group, name, arun=arun, baseline=baseline, note=note, ops=ops,
                check=_ran_once(calls, name))


def sync_memory_cases() -> list[Case]:
    import cachetools
    import wrapt

    import perfkit

    group = "sync memory hit"
    cases = []
    calls, work = _counted()
    cases.append(_sync_case(group, "perfkit.cached(ttl=600)", perfkit.cached(ttl=600)(work), calls))
    calls, work = _counted()
    cases.append(_sync_case(
        group, "cachetools.cached(TTLCache, lock)",
        cachetools.cached(cachetools.TTLCache(1024, 600), lock=threading.Lock())(work),
        calls, baseline=True))
    calls, work = _counted()
    cases.append(_sync_case(group, "functools.lru_cache", functools.lru_cache(1024)(work), calls,
                            note="no TTL, no lock, no single flight"))

    @wrapt.decorator
    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    def run_wrapt(n: int) -> None:
        fn = passthrough(lambda x: x)
        for _ in range(n):
            fn(1)

    cases.append(Case(group, "bare wrapt pass-through", run=run_wrapt, ops=20_000,
                      note="reference: wrapt's own per-call cost, no caching"))
    return cases


def async_memory_cases() -> list[Case]:
    import aiocache
    from async_lru import alru_cache
    from cashews import Cache as CashewsCache

    import perfkit

    group = "async memory hit"
    cases = []

    def acounted() -> tuple[list[int], Callable[[int], Any]]:
        calls: list[int] = []

        async def work(x: int) -> int:
            calls.append(x)
            return x * 2

        return calls, work

    calls, work = acounted()
    cases.append(_async_case(group, "perfkit.cached(ttl=600)", perfkit.cached(ttl=600)(work), calls))
    calls, work = acounted()
    cases.append(_async_case(group, "async-lru alru_cache(ttl=600)",
                             alru_cache(maxsize=1024, ttl=600)(work), calls, baseline=True))
    calls, work = acounted()
    cases.append(_async_case(group, "aiocache.cached(ttl=600)", aiocache.cached(ttl=600)(work),
                             calls, note="defaults: SimpleMemoryCache, timeout=5 (wait_for)"))
    calls, work = acounted()
    cases.append(_async_case(
        group, "aiocache.cached(ttl=600, timeout=0)",
        aiocache.cached(ttl=600, timeout=0)(work), calls, note="no wait_for per call"))
    cashews = CashewsCache()
    cashews.setup("mem://")
    calls, work = acounted()
    cases.append(_async_case(group, "cashews mem:// @cache(ttl=600)",
                             cashews(ttl=600)(work), calls, note="defaults"))
    cashews_unprotected = CashewsCache()
    cashews_unprotected.setup("mem://")
    calls, work = acounted()
    cases.append(_async_case(group, "cashews mem:// protected=False",
                             cashews_unprotected(ttl=600, protected=False)(work), calls))
    return cases


def redis_cases() -> list[Case]:
    import redis

    import perfkit

    group = "redis hit (sync)"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
        client.ping()
    except Exception as exc:
        return [Case.unavailable(group, "(all)", f"Redis at {REDIS_URL}: {exc}")]
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    raw_key = f"{ns}:bare"
    client.set(raw_key, b"\x80\x05K\x02.", ex=600)  # pickle of 2, same payload size

    def run_bare(n: int) -> None:
        get = client.get
        for _ in range(n):
            get(raw_key)

    cases = [Case(group, "bare redis-py GET", run=run_bare, baseline=True, ops=2000)]
    calls, work = _counted()
    backend = perfkit.RedisBackend(REDIS_URL)
    cases.append(_sync_case(group, "perfkit.cached(backend=RedisBackend)",
                            perfkit.cached(ttl=600, backend=backend, namespace=ns)(work),
                            calls, ops=2000))
    calls, work = _counted()
    signed = perfkit.RedisBackend(REDIS_URL, secret="bench-secret")
    cases.append(_sync_case(group, "perfkit.cached(RedisBackend(secret=...))",
                            perfkit.cached(ttl=600, backend=signed, namespace=ns + "s")(work),
                            calls, ops=2000, note="HMAC-signed payloads"))

    agroup = "redis hit (async)"
    aclient_holder: dict[str, Any] = {}
    client.set(raw_key, b"\x80\x05K\x02.", ex=600)

    async def run_abare(n: int) -> None:
        aclient = aclient_holder.get("c")
        if aclient is None:
            aclient = aclient_holder["c"] = redis.asyncio.Redis.from_url(REDIS_URL)
        for _ in range(n):
            await aclient.get(raw_key)

    cases.append(Case(agroup, "bare redis.asyncio GET", arun=run_abare, baseline=True, ops=2000))
    acalls: list[int] = []

    async def awork(x: int) -> int:
        acalls.append(x)
        return x * 2

    cases.append(_async_case(agroup, "perfkit.cached(backend=RedisBackend)",
                             perfkit.cached(ttl=600, backend=backend, namespace=ns + "a")(awork),
                             acalls, ops=2000))
    import aiocache

    acalls2: list[int] = []

    async def awork2(x: int) -> int:
        acalls2.append(x)
        return x * 2

    aio_redis = aiocache.cached(ttl=600, cache=aiocache.RedisCache, namespace=ns + "aio",
                                endpoint="127.0.0.1", port=6379)(awork2)
    cases.append(_async_case(agroup, "aiocache.cached(RedisCache)", aio_redis, acalls2, ops=2000))
    return cases


def tiered_cases() -> list[Case]:
    import perfkit

    group = "tiered L1 hit vs memory hit"
    calls, work = _counted()
    cases = [_sync_case(group, "perfkit memory hit", perfkit.cached(ttl=600)(work), calls,
                        baseline=True)]
    try:
        tiered = perfkit.TieredBackend(perfkit.MemoryBackend(1024),
                                       perfkit.RedisBackend(REDIS_URL), listen=False)
    except Exception as exc:
        return [*cases, Case.unavailable(group, "perfkit tiered L1 hit", str(exc))]
    calls, work = _counted()
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    cases.append(_sync_case(group, "perfkit tiered L1 hit",
                            perfkit.cached(ttl=600, backend=tiered, namespace=ns)(work), calls))
    return cases


def cases() -> list[Case]:
    return [*sync_memory_cases(), *async_memory_cases(), *redis_cases(), *tiered_cases()]
